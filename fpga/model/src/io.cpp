// NVM command set (Read, Write, Flush, Write Zeroes) and PRP data transfer of the reference
// card's NVMe controller.
#include <algorithm>
#include <cstring>

#include <keel/regs/keel_regs.h>

#include "vf_controller.h"

namespace keel::fpga::model {

namespace sc = nvme::sc;
using nvme::Sqe;

namespace {

constexpr std::uint32_t kFlushAllNamespaces = 0xFFFFFFFFu;

std::uint64_t data_cycles(std::uint64_t bytes) { return (bytes + 63) / 64; }  // 512-bit beats

}  // namespace

VfController::Outcome VfController::io(const Sqe& sqe, std::uint64_t now_ns) noexcept {
  (void)now_ns;
  if (sqe.flags != 0) return fail(sc::kInvalidField);  // no fused ops, no SGLs
  switch (sqe.opc) {
    case nvme::io::kRead: return rw(sqe, false);
    case nvme::io::kWrite: return rw(sqe, true);
    case nvme::io::kFlush: return flush_cmd(sqe);
    case nvme::io::kWriteZeroes: return write_zeroes(sqe);
    default: return fail(sc::kInvalidOpcode);
  }
}

VfController::Outcome VfController::rw(const Sqe& sqe, bool write) noexcept {
  if (sqe.nsid != 1) return fail(sc::kInvalidNamespace);
  const std::uint64_t slba = sqe.cdw10 | (std::uint64_t{sqe.cdw11} << 32);
  const std::uint64_t nlb = (sqe.cdw12 & 0xFFFF) + 1ull;
  const std::uint64_t bytes = nlb << p_.lba_shift;
  if (bytes > (1ull << p_.mdts) * 4096) return fail(sc::kInvalidField);
  if (slba >= res_.slice_lbas || nlb > res_.slice_lbas - slba) return fail(sc::kLbaOutOfRange);
  std::byte* card = storage_.data() + ((res_.slice_base + slba) << p_.lba_shift);
  const nvme::StatusCode st = transfer(sqe, card, static_cast<std::size_t>(bytes), !write);
  if (st != sc::kSuccess) return {st};
  counters_.bytes.fetch_add(bytes, std::memory_order_relaxed);
  counters_.busy_cycles.fetch_add(data_cycles(bytes), std::memory_order_relaxed);
  if (res_.rate_mbps != 0) tokens_ -= static_cast<std::int64_t>(bytes);
  if (write) {
    ++host_writes_;
    units_written_ += nlb;
  } else {
    ++host_reads_;
    units_read_ += nlb;
  }
  return {};
}

VfController::Outcome VfController::write_zeroes(const Sqe& sqe) noexcept {
  if (sqe.nsid != 1) return fail(sc::kInvalidNamespace);
  const std::uint64_t slba = sqe.cdw10 | (std::uint64_t{sqe.cdw11} << 32);
  const std::uint64_t nlb = (sqe.cdw12 & 0xFFFF) + 1ull;
  if (slba >= res_.slice_lbas || nlb > res_.slice_lbas - slba) return fail(sc::kLbaOutOfRange);
  std::memset(storage_.data() + ((res_.slice_base + slba) << p_.lba_shift), 0,
              static_cast<std::size_t>(nlb << p_.lba_shift));
  counters_.busy_cycles.fetch_add(data_cycles(nlb << p_.lba_shift), std::memory_order_relaxed);
  return {};
}

VfController::Outcome VfController::flush_cmd(const Sqe& sqe) noexcept {
  if (sqe.nsid != 1 && sqe.nsid != kFlushAllNamespaces) return fail(sc::kInvalidNamespace);
  const Status st =
      storage_.flush(res_.slice_base << p_.lba_shift, res_.slice_lbas << p_.lba_shift);
  if (!st.ok()) return {sc::kInternalError};
  return {};
}

nvme::StatusCode VfController::transfer(const Sqe& sqe, std::byte* card, std::size_t bytes,
                                        bool to_host) noexcept {
  // 1. Walk PRP1/PRP2/PRP lists into segments (NVMe 1.4 section 4.3).
  const std::uint64_t ps = page_bytes();
  segs_.clear();
  if ((sqe.prp1 & 3) != 0) return static_cast<nvme::StatusCode>(sc::kPrpOffsetInvalid | nvme::kDnr);
  const std::uint64_t first = std::min<std::uint64_t>(bytes, ps - (sqe.prp1 & (ps - 1)));
  segs_.push_back({sqe.prp1, static_cast<std::uint32_t>(first)});
  std::uint64_t rem = bytes - first;
  if (rem > 0 && rem <= ps) {
    if ((sqe.prp2 & (ps - 1)) != 0) {
      return static_cast<nvme::StatusCode>(sc::kPrpOffsetInvalid | nvme::kDnr);
    }
    segs_.push_back({sqe.prp2, static_cast<std::uint32_t>(rem)});
    rem = 0;
  }
  Iova list = sqe.prp2;
  if (rem > 0 && (list & 7) != 0) {
    return static_cast<nvme::StatusCode>(sc::kPrpOffsetInvalid | nvme::kDnr);
  }
  while (rem > 0) {
    if (faults_.refuse_dma) {
      iommu_.count_fault(p_.function);
      return sc::kDataTransferError;
    }
    const std::uint64_t slots = (ps - (list & (ps - 1))) / 8;
    const std::uint64_t pages = (rem + ps - 1) / ps;
    const bool chained = pages > slots;
    const std::uint64_t entries = chained ? slots : pages;
    prp_list_.resize(static_cast<std::size_t>(entries));
    if (!iommu_.dma_read(p_.function, list, prp_list_.data(), entries * 8)) {
      return sc::kDataTransferError;
    }
    const std::uint64_t data_entries = chained ? entries - 1 : entries;
    for (std::uint64_t i = 0; i < data_entries; ++i) {
      const std::uint64_t e = prp_list_[static_cast<std::size_t>(i)];
      if ((e & (ps - 1)) != 0) {
        return static_cast<nvme::StatusCode>(sc::kPrpOffsetInvalid | nvme::kDnr);
      }
      const std::uint64_t n = std::min(ps, rem);
      segs_.push_back({e, static_cast<std::uint32_t>(n)});
      rem -= n;
    }
    if (chained) {
      list = prp_list_.back();
      if ((list & 7) != 0) return static_cast<nvme::StatusCode>(sc::kPrpOffsetInvalid | nvme::kDnr);
    }
  }
  // 2. Every segment must be reachable before any byte moves.
  for (const Segment& s : segs_) {
    if (faults_.refuse_dma || !iommu_.covered(p_.function, s.iova, s.bytes)) {
      iommu_.count_fault(p_.function);
      return sc::kDataTransferError;
    }
  }
  // 3. Move the data.
  std::size_t done = 0;
  for (const Segment& s : segs_) {
    const bool ok = to_host ? iommu_.dma_write(p_.function, s.iova, card + done, s.bytes)
                            : iommu_.dma_read(p_.function, s.iova, card + done, s.bytes);
    if (!ok) return sc::kDataTransferError;  // a window vanished mid-command (counted)
    done += s.bytes;
  }
  return sc::kSuccess;
}

}  // namespace keel::fpga::model
