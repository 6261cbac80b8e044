#include "nvme_host.h"

#include <atomic>
#include <cstring>
#include <string>

#include <keel/regs/keel_regs.h>

namespace keel::testing {

namespace nv = regs::nvme;

std::chrono::nanoseconds NvmeHost::ready_timeout() const {
  const std::uint64_t cap = fn_.read64(nv::CAP);
  const auto to = regs::field_get(cap, nv::CAP_TO_MASK, nv::CAP_TO_SHIFT);
  return std::chrono::milliseconds(500 * (to == 0 ? 1 : to));
}

NvmeHost::Queue& NvmeHost::q(std::uint16_t qid) {
  if (queues_.size() <= qid) queues_.resize(qid + 1u);
  return queues_[qid];
}

Status NvmeHost::disable() {
  fn_.write32(nv::CC, 0);
  // The reset is done when RDY is 0 and a fatal status (if any) has been cleared by it.
  const bool ok = fpga::poll_until(card_, ready_timeout(), [&] {
    return (fn_.read32(nv::CSTS) & (nv::CSTS_RDY_MASK | nv::CSTS_CFS_MASK)) == 0;
  });
  for (auto& queue : queues_) queue = Queue{};
  if (!ok) return make_error(Errc::timeout, "CSTS.RDY/CFS did not clear after CC.EN=0");
  return {};
}

Status NvmeHost::enable(std::uint16_t admin_entries, std::uint32_t mps) {
  if (Status st = disable(); !st.ok()) return st;
  Queue& a = q(0);
  const std::size_t page = std::size_t{kPage} << mps;
  auto sq = fn_.alloc_dma(std::max<std::size_t>(page, admin_entries * nvme::kSqeBytes));
  auto cq = fn_.alloc_dma(std::max<std::size_t>(page, admin_entries * nvme::kCqeBytes));
  if (!sq) return sq.error();
  if (!cq) return cq.error();
  a.sq = std::move(sq).value();
  a.cq = std::move(cq).value();
  a.entries = admin_entries;
  a.live = true;
  fn_.write32(nv::AQA, static_cast<std::uint32_t>(((admin_entries - 1u) << nv::AQA_ACQS_SHIFT) |
                                                  (admin_entries - 1u)));
  fn_.write64(nv::ASQ, a.sq.iova());
  fn_.write64(nv::ACQ, a.cq.iova());
  const std::uint32_t cc = static_cast<std::uint32_t>(nv::CC_EN_MASK | (mps << nv::CC_MPS_SHIFT) |
                                                      (nvme::kSqesLog2 << nv::CC_IOSQES_SHIFT) |
                                                      (nvme::kCqesLog2 << nv::CC_IOCQES_SHIFT));
  fn_.write32(nv::CC, cc);
  std::uint32_t csts = 0;
  const bool ok = fpga::poll_until(card_, ready_timeout(), [&] {
    csts = fn_.read32(nv::CSTS);
    return (csts & (nv::CSTS_RDY_MASK | nv::CSTS_CFS_MASK)) != 0;
  });
  if ((csts & nv::CSTS_CFS_MASK) != 0) {
    return make_error(Errc::device_error, "controller fatal status (CSTS.CFS) during enable");
  }
  if (!ok) return make_error(Errc::timeout, "CSTS.RDY did not set within CAP.TO");
  return {};
}

void NvmeHost::write_sqe(Queue& queue, const nvme::Sqe& sqe) {
  std::memcpy(queue.sq.data() + std::size_t{queue.sq_tail} * nvme::kSqeBytes, &sqe, sizeof sqe);
  queue.sq_tail = static_cast<std::uint16_t>((queue.sq_tail + 1) % queue.entries);
}

std::uint16_t NvmeHost::queue(std::uint16_t qid, nvme::Sqe sqe) {
  sqe.cid = next_cid_++;
  if (next_cid_ == 0xFFFF) next_cid_ = 1;
  write_sqe(q(qid), sqe);
  return sqe.cid;
}

void NvmeHost::ring(std::uint16_t qid) {
  fn_.write32(regs::NVME_DOORBELL_BASE + regs::NVME_DOORBELL_STRIDE * qid, q(qid).sq_tail);
}

std::uint16_t NvmeHost::submit(std::uint16_t qid, nvme::Sqe sqe, bool keep_cid) {
  std::uint16_t cid = sqe.cid;
  if (keep_cid) {
    write_sqe(q(qid), sqe);
  } else {
    cid = queue(qid, sqe);
  }
  ring(qid);
  return cid;
}

bool NvmeHost::try_reap(std::uint16_t qid, nvme::Cqe* out) {
  Queue& queue = q(qid);
  auto* slot = queue.cq.data() + std::size_t{queue.cq_head} * nvme::kCqeBytes;
  // The device stores the CQE's last dword (with the phase tag) last, with release; acquire
  // it before reading the rest.
  const std::uint32_t dw3 =
      std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(slot + 12))
          .load(std::memory_order_acquire);
  if (((dw3 >> 16) & 1u) != (queue.phase ? 1u : 0u)) return false;
  std::memcpy(out, slot, sizeof *out);
  queue.cq_head = static_cast<std::uint16_t>(queue.cq_head + 1);
  if (queue.cq_head == queue.entries) {
    queue.cq_head = 0;
    queue.phase = !queue.phase;
  }
  fn_.write32(regs::NVME_DOORBELL_BASE + regs::NVME_DOORBELL_STRIDE * qid + 4, queue.cq_head);
  return true;
}

Result<nvme::Cqe> NvmeHost::reap(std::uint16_t qid, std::chrono::nanoseconds timeout) {
  nvme::Cqe cqe{};
  if (fpga::poll_until(card_, timeout, [&] { return try_reap(qid, &cqe); })) return cqe;
  return make_error(Errc::timeout, "no completion on queue " + std::to_string(qid) + " within " +
                                       std::to_string(timeout.count() / 1000) + " us");
}

Result<nvme::Cqe> NvmeHost::run(std::uint16_t qid, nvme::Sqe sqe,
                                std::chrono::nanoseconds timeout) {
  const std::uint16_t cid = submit(qid, sqe);
  auto cqe = reap(qid, timeout);
  if (!cqe) return cqe;
  if (cqe->cid != cid) {
    return make_error(Errc::device_error, "completion for CID " + std::to_string(cqe->cid) +
                                              ", expected " + std::to_string(cid));
  }
  return cqe;
}

Status NvmeHost::create_io_pair(std::uint16_t qid, std::uint16_t entries, bool irq,
                                std::uint16_t vector) {
  Queue& queue = q(qid);
  auto sq = fn_.alloc_dma(std::size_t{entries} * nvme::kSqeBytes);
  auto cq = fn_.alloc_dma(std::size_t{entries} * nvme::kCqeBytes);
  if (!sq) return sq.error();
  if (!cq) return cq.error();
  nvme::Sqe c{};
  c.opc = nvme::admin::kCreateCq;
  c.prp1 = cq->iova();
  c.cdw10 = (static_cast<std::uint32_t>(entries - 1) << 16) | qid;
  c.cdw11 = (static_cast<std::uint32_t>(vector) << 16) | (irq ? 2u : 0u) | 1u;
  auto r = run(0, c);
  if (!r) return r.error();
  if (nvme::cqe_status(*r) != 0) {
    return make_error(Errc::device_error,
                      "Create IO CQ failed with status " + std::to_string(nvme::cqe_status(*r)));
  }
  nvme::Sqe s{};
  s.opc = nvme::admin::kCreateSq;
  s.prp1 = sq->iova();
  s.cdw10 = (static_cast<std::uint32_t>(entries - 1) << 16) | qid;
  s.cdw11 = (static_cast<std::uint32_t>(qid) << 16) | 1u;
  r = run(0, s);
  if (!r) return r.error();
  if (nvme::cqe_status(*r) != 0) {
    return make_error(Errc::device_error,
                      "Create IO SQ failed with status " + std::to_string(nvme::cqe_status(*r)));
  }
  queue = Queue{};
  queue.sq = std::move(sq).value();
  queue.cq = std::move(cq).value();
  queue.entries = entries;
  queue.live = true;
  return {};
}

void NvmeHost::drop_queue(std::uint16_t qid) { q(qid) = Queue{}; }

Status NvmeHost::set_prps(nvme::Sqe& sqe, fpga::Iova iova, std::size_t bytes, unsigned list_slots) {
  sqe.prp1 = iova;
  sqe.prp2 = 0;
  const std::size_t first = std::min<std::size_t>(bytes, kPage - (iova % kPage));
  if (bytes <= first) return {};
  const fpga::Iova base = iova + first;  // page aligned from here on
  const std::size_t pages = (bytes - first + kPage - 1) / kPage;
  if (pages == 1) {
    sqe.prp2 = base;
    return {};
  }
  const unsigned slots = list_slots == 0 ? kPage / 8 : list_slots;
  if (slots < 2 || slots > kPage / 8) {
    return make_error(Errc::invalid_argument, "PRP list slots must be 2..512");
  }
  // A ring of list pages: enough for every command a test keeps in flight.
  constexpr std::size_t kRing = 512;
  auto new_list = [&]() -> Result<std::uint64_t*> {
    if (prp_pages_.size() < kRing && next_prp_page_ == prp_pages_.size()) {
      auto page = fn_.alloc_dma(kPage);
      if (!page) return page.error();
      prp_pages_.push_back(std::move(page).value());
    }
    fpga::DmaBuffer& page = prp_pages_[next_prp_page_];
    next_prp_page_ = (next_prp_page_ + 1) % kRing;
    // With fewer slots, the list sits at the end of its page, so the device must chain.
    return reinterpret_cast<std::uint64_t*>(page.data() + (kPage - std::size_t{slots} * 8));
  };
  auto iova_of = [&](std::uint64_t* entries) {
    const std::size_t idx = (next_prp_page_ + kRing - 1) % kRing;
    (void)entries;
    return prp_pages_[idx].iova() + (kPage - std::size_t{slots} * 8);
  };
  auto list = new_list();
  if (!list) return list.error();
  std::uint64_t* cur = *list;
  sqe.prp2 = iova_of(cur);
  std::size_t i = 0;
  while (i < pages) {
    const std::size_t left = pages - i;
    if (left <= slots) {
      for (std::size_t k = 0; k < left; ++k) cur[k] = base + (i + k) * kPage;
      break;
    }
    for (std::size_t k = 0; k + 1 < slots; ++k) cur[k] = base + (i + k) * kPage;
    i += slots - 1;
    auto nxt = new_list();
    if (!nxt) return nxt.error();
    cur[slots - 1] = iova_of(*nxt);  // chain pointer in the last slot
    cur = *nxt;
  }
  return {};
}

nvme::Sqe NvmeHost::rw_cmd(bool write, std::uint64_t slba, std::uint32_t nlb, fpga::Iova iova,
                           std::size_t bytes) {
  nvme::Sqe s{};
  s.opc = write ? nvme::io::kWrite : nvme::io::kRead;
  s.nsid = 1;
  s.cdw10 = static_cast<std::uint32_t>(slba);
  s.cdw11 = static_cast<std::uint32_t>(slba >> 32);
  s.cdw12 = nlb - 1;
  (void)set_prps(s, iova, bytes);
  return s;
}

namespace {

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

}  // namespace

void fill_pattern(std::byte* dst, std::size_t bytes, std::uint64_t lba, std::uint32_t seed) {
  for (std::size_t i = 0; i < bytes; i += 8) {
    const std::uint64_t v = mix((lba + i / 512) * 0x9E3779B97F4A7C15ull + (i % 512) + seed);
    std::memcpy(dst + i, &v, std::min<std::size_t>(8, bytes - i));
  }
}

long check_pattern(const std::byte* src, std::size_t bytes, std::uint64_t lba, std::uint32_t seed) {
  std::byte expect[8];
  for (std::size_t i = 0; i < bytes; i += 8) {
    const std::uint64_t v = mix((lba + i / 512) * 0x9E3779B97F4A7C15ull + (i % 512) + seed);
    std::memcpy(expect, &v, 8);
    const std::size_t n = std::min<std::size_t>(8, bytes - i);
    for (std::size_t k = 0; k < n; ++k) {
      if (src[i + k] != expect[k]) return static_cast<long>(i + k);
    }
  }
  return -1;
}

}  // namespace keel::testing
