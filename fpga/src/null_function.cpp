// The null NVMe function: a controller that completes every command inside the doorbell write.
#include "keel/fpga/null_function.h"

#include <nvme/types.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include <keel/regs/keel_regs.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

namespace keel::fpga {

namespace nv = regs::nvme;
namespace sc = keel::nvme::sc;
using keel::nvme::Sqe;
using keel::nvme::StatusCode;

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::uint32_t kBlockShift = 9;

std::uint64_t steady_ns() noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

// A cheap timestamp for the device's share of a doorbell write: the TSC where there is one
// (converted with the rate observed since construction), else the steady clock.
inline std::uint64_t ticks() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#else
  return steady_ns();
#endif
}

inline void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) noexcept {
  // One writer per counter (the thread that owns the queue): no read-modify-write needed.
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

constexpr StatusCode error(StatusCode s) noexcept {
  return static_cast<StatusCode>(s | keel::nvme::kDnr);
}

void put_padded(char* dst, std::size_t n, const char* src) {
  std::memset(dst, ' ', n);
  std::memcpy(dst, src, std::min(n, std::strlen(src)));
}

std::uint64_t make_cap(const NullFunctionConfig& c) noexcept {
  std::uint64_t cap = 0;
  cap = regs::field_set(cap, nv::CAP_MQES_MASK, nv::CAP_MQES_SHIFT, c.max_queue_entries - 1u);
  cap = regs::field_set(cap, nv::CAP_CQR_MASK, nv::CAP_CQR_SHIFT, 1);
  cap = regs::field_set(cap, nv::CAP_TO_MASK, nv::CAP_TO_SHIFT, 1);  // 500 ms
  cap = regs::field_set(cap, nv::CAP_DSTRD_MASK, nv::CAP_DSTRD_SHIFT, 0);
  cap = regs::field_set(cap, nv::CAP_CSS_MASK, nv::CAP_CSS_SHIFT, 1);  // NVM command set
  cap = regs::field_set(cap, nv::CAP_MPSMIN_MASK, nv::CAP_MPSMIN_SHIFT, 0);
  cap = regs::field_set(cap, nv::CAP_MPSMAX_MASK, nv::CAP_MPSMAX_SHIFT, 0);
  return cap;
}

}  // namespace

NullFunction::NullFunction(const NullFunctionConfig& config)
    : config_([&] {
        NullFunctionConfig c = config;
        c.io_queues = std::max<std::uint16_t>(c.io_queues, 1);
        c.max_queue_entries = std::clamp<std::uint16_t>(c.max_queue_entries, 2, 4096);
        c.mdts = std::min<std::uint8_t>(c.mdts, 8);
        // The doorbells of every queue must fit in BAR0.
        const auto fit = static_cast<std::uint16_t>(
            (kBarBytes - regs::NVME_DOORBELL_BASE) / regs::NVME_DOORBELL_STRIDE - 1);
        c.io_queues = std::min(c.io_queues, fit);
        return c;
      }()),
      cap_(make_cap(config_)),
      sqs_(config_.io_queues + 1u),
      cqs_(config_.io_queues + 1u),
      next_iova_(kDmaAllocBase) {
  tsc0_ = ticks();
  steady0_ns_ = steady_ns();
}

NullFunction::~NullFunction() {
  std::lock_guard lock(dma_mu_);
  for (auto& [iova, w] : windows_) {
    if (w.owned) munmap(w.host, w.bytes);  // a DmaBuffer outlived its function
  }
}

// ---- DMA ----------------------------------------------------------------------------------------

Result<DmaBuffer> NullFunction::alloc_dma(std::size_t bytes) {
  if (bytes == 0) return make_error(Errc::invalid_argument, "DMA allocation of 0 bytes");
  const std::size_t len = (bytes + kPage - 1) & ~(kPage - 1);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return make_error(Errc::no_memory, "DMA allocation of " + std::to_string(len) +
                                           " bytes failed: " + std::strerror(errno));
  }
  // As IommuFunction: 64 KiB aligned IOVAs with an unmapped guard page after each buffer.
  constexpr std::size_t kIovaAlign = 64 * 1024;
  std::lock_guard lock(dma_mu_);
  const Iova iova = next_iova_;
  next_iova_ += (len + kPage + kIovaAlign - 1) & ~(kIovaAlign - 1);
  windows_.emplace(iova, Window{static_cast<std::byte*>(p), len, true});
  return DmaBuffer(this, p, len, iova);
}

Status NullFunction::map_dma(void* host, std::size_t bytes, Iova iova) {
  if (bytes == 0 || iova % kPage != 0 || bytes % kPage != 0 ||
      reinterpret_cast<std::uintptr_t>(host) % kPage != 0) {
    return make_error(Errc::invalid_argument,
                      "map_dma: iova, host address and length must be 4 KiB aligned and non-zero");
  }
  if (iova + bytes < iova) return make_error(Errc::out_of_range, "map_dma: window wraps");
  std::lock_guard lock(dma_mu_);
  auto next = windows_.lower_bound(iova);
  if (next != windows_.end() && next->first < iova + bytes) {
    return make_error(Errc::out_of_range, "map_dma: IOVA window overlaps an existing one");
  }
  if (next != windows_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.bytes > iova) {
      return make_error(Errc::out_of_range, "map_dma: IOVA window overlaps an existing one");
    }
  }
  windows_.emplace(iova, Window{static_cast<std::byte*>(host), bytes, false});
  return {};
}

Status NullFunction::unmap_dma(Iova iova) {
  std::size_t bytes = 0;
  {
    std::lock_guard lock(dma_mu_);
    auto it = windows_.find(iova);
    if (it == windows_.end() || it->second.owned) {
      return make_error(Errc::not_found, "unmap_dma: no window mapped by map_dma starts there");
    }
    bytes = it->second.bytes;
    windows_.erase(it);
  }
  // A live queue in that memory can no longer be reached: a device would fault on it.
  auto inside = [&](Iova q) { return q >= iova && q - iova < bytes; };
  for (std::size_t q = 0; q < sqs_.size(); ++q) {
    if ((sqs_[q].live && inside(sqs_[q].iova)) || (cqs_[q].live && inside(cqs_[q].iova))) {
      fatal();
      break;
    }
  }
  return {};
}

void NullFunction::release_dma(void* host, std::size_t bytes, Iova iova) noexcept {
  {
    std::lock_guard lock(dma_mu_);
    windows_.erase(iova);
  }
  for (std::size_t q = 0; q < sqs_.size(); ++q) {
    if ((sqs_[q].live && sqs_[q].iova >= iova && sqs_[q].iova - iova < bytes) ||
        (cqs_[q].live && cqs_[q].iova >= iova && cqs_[q].iova - iova < bytes)) {
      fatal();
      break;
    }
  }
  munmap(host, bytes);
}

std::byte* NullFunction::translate(Iova iova, std::size_t bytes) const noexcept {
  std::lock_guard lock(dma_mu_);
  auto it = windows_.upper_bound(iova);
  if (it == windows_.begin()) return nullptr;
  --it;
  const Iova off = iova - it->first;
  if (off >= it->second.bytes || bytes > it->second.bytes - off) return nullptr;
  return it->second.host + off;
}

Result<std::uint32_t> NullFunction::wait_interrupt(unsigned vector, std::chrono::nanoseconds) {
  return make_error(Errc::invalid_argument, "the null function has no MSI-X vector " +
                                                std::to_string(vector) + " (it has none)");
}

Status NullFunction::flr() {
  controller_reset();
  cc_.store(0, std::memory_order_release);
  csts_.store(0, std::memory_order_release);
  aqa_ = 0;
  asq_ = acq_ = 0;
  return {};
}

// ---- Registers ----------------------------------------------------------------------------------

std::uint32_t NullFunction::read32(std::uint64_t offset) noexcept {
  switch (offset) {
    case nv::CAP: return static_cast<std::uint32_t>(cap_);
    case nv::CAP + 4: return static_cast<std::uint32_t>(cap_ >> 32);
    case nv::VS: return static_cast<std::uint32_t>(regs::NVME_VS_1_4);
    case nv::CC: return cc_.load(std::memory_order_acquire);
    case nv::CSTS: return csts_.load(std::memory_order_acquire);
    case nv::AQA: return aqa_;
    case nv::ASQ: return static_cast<std::uint32_t>(asq_);
    case nv::ASQ + 4: return static_cast<std::uint32_t>(asq_ >> 32);
    case nv::ACQ: return static_cast<std::uint32_t>(acq_);
    case nv::ACQ + 4: return static_cast<std::uint32_t>(acq_ >> 32);
    default: return 0;  // reserved registers and the (write-only) doorbells read as 0
  }
}

std::uint64_t NullFunction::read64(std::uint64_t offset) noexcept {
  return read32(offset) | (std::uint64_t{read32(offset + 4)} << 32);
}

void NullFunction::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  switch (offset) {
    case nv::ASQ: asq_ = value; return;
    case nv::ACQ: acq_ = value; return;
    default:
      write32(offset, static_cast<std::uint32_t>(value));
      write32(offset + 4, static_cast<std::uint32_t>(value >> 32));
  }
}

void NullFunction::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (offset >= regs::NVME_DOORBELL_BASE) {
    doorbell(offset, value);
    return;
  }
  switch (offset) {
    case nv::CC: write_cc(value); return;
    case nv::AQA: aqa_ = value; return;
    case nv::ASQ: asq_ = (asq_ & ~std::uint64_t{0xFFFFFFFF}) | value; return;
    case nv::ASQ + 4: asq_ = (asq_ & 0xFFFFFFFF) | (std::uint64_t{value} << 32); return;
    case nv::ACQ: acq_ = (acq_ & ~std::uint64_t{0xFFFFFFFF}) | value; return;
    case nv::ACQ + 4: acq_ = (acq_ & 0xFFFFFFFF) | (std::uint64_t{value} << 32); return;
    default: return;  // read-only or unimplemented (INTMS/INTMC: MSI-X only, and none)
  }
}

void NullFunction::fatal() noexcept {
  for (std::size_t q = 0; q < sqs_.size(); ++q) {
    sqs_[q].live = false;
    cqs_[q].live = false;
  }
  csts_.store(csts_.load(std::memory_order_relaxed) | static_cast<std::uint32_t>(nv::CSTS_CFS_MASK),
              std::memory_order_release);
}

void NullFunction::controller_reset() noexcept {
  for (std::size_t q = 0; q < sqs_.size(); ++q) {
    Sq& s = sqs_[q];
    s.live = false;
    s.base = nullptr;
    s.iova = 0;
    s.size = s.head = s.tail = s.cqid = 0;
    Cq& c = cqs_[q];
    c.live = false;
    c.base = nullptr;
    c.iova = 0;
    c.size = c.head = c.tail = c.sq_refs = 0;
    c.phase = true;
    c.starved = false;
  }
  nsqa_ = ncqa_ = 0;
}

void NullFunction::write_cc(std::uint32_t value) noexcept {
  const std::uint32_t old = cc_.load(std::memory_order_relaxed);
  const bool was = (old & nv::CC_EN_MASK) != 0;
  const bool en = (value & nv::CC_EN_MASK) != 0;
  cc_.store(value, std::memory_order_release);
  if (was && !en) {
    controller_reset();
    csts_.store(0, std::memory_order_release);
    return;
  }
  if (!was && en) {
    const unsigned asqs = regs::field_get(aqa_, nv::AQA_ASQS_MASK, nv::AQA_ASQS_SHIFT) + 1u;
    const unsigned acqs = regs::field_get(aqa_, nv::AQA_ACQS_MASK, nv::AQA_ACQS_SHIFT) + 1u;
    std::byte* sq = translate(asq_, std::size_t{asqs} * keel::nvme::kSqeBytes);
    std::byte* cq = translate(acq_, std::size_t{acqs} * keel::nvme::kCqeBytes);
    const bool ok = asqs >= 2 && acqs >= 2 && asqs <= config_.max_queue_entries &&
                    acqs <= config_.max_queue_entries && asq_ % kPage == 0 && acq_ % kPage == 0 &&
                    regs::field_get(value, nv::CC_MPS_MASK, nv::CC_MPS_SHIFT) == 0 &&
                    regs::field_get(value, nv::CC_CSS_MASK, nv::CC_CSS_SHIFT) == 0 &&
                    sq != nullptr && cq != nullptr;
    if (!ok) {
      csts_.store(static_cast<std::uint32_t>(nv::CSTS_CFS_MASK), std::memory_order_release);
      return;
    }
    controller_reset();
    Sq& s = sqs_[0];
    s.live = true;
    s.base = sq;
    s.iova = asq_;
    s.size = static_cast<std::uint16_t>(asqs);
    Cq& c = cqs_[0];
    c.live = true;
    c.base = cq;
    c.iova = acq_;
    c.size = static_cast<std::uint16_t>(acqs);
    c.sq_refs = 1;
    csts_.store(static_cast<std::uint32_t>(nv::CSTS_RDY_MASK), std::memory_order_release);
  }
  if (en && regs::field_get(value, nv::CC_SHN_MASK, nv::CC_SHN_SHIFT) != 0) {
    csts_.store(regs::field_set(csts_.load(std::memory_order_relaxed), nv::CSTS_SHST_MASK,
                                nv::CSTS_SHST_SHIFT, 2),
                std::memory_order_release);
  }
}

// ---- Queues -------------------------------------------------------------------------------------

void NullFunction::doorbell(std::uint64_t offset, std::uint32_t value) noexcept {
  const std::uint64_t index = (offset - regs::NVME_DOORBELL_BASE) / 4;
  const std::uint64_t qid = index / 2;
  const bool ready = (csts_.load(std::memory_order_relaxed) &
                      (nv::CSTS_RDY_MASK | nv::CSTS_CFS_MASK)) == nv::CSTS_RDY_MASK;
  if (offset % 4 != 0 || qid >= sqs_.size() || !ready) {
    bad_doorbells_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const bool timed = config_.measure_device_time && qid != 0;
  const std::uint64_t t0 = timed ? ticks() : 0;
  if ((index & 1) == 0) {  // SQ tail
    Sq& sq = sqs_[qid];
    if (!sq.live || value >= sq.size) {
      bad_doorbells_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (qid != 0) bump(sq.doorbells);
    sq.tail = static_cast<std::uint16_t>(value);
    run_sq(static_cast<std::uint16_t>(qid));
  } else {  // CQ head
    Cq& cq = cqs_[qid];
    if (!cq.live || value >= cq.size) {
      bad_doorbells_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    // The head may not pass the tail: entries the device has not written are not the host's.
    const unsigned size = cq.size;
    const unsigned moved = (value + size - cq.head) % size;
    const unsigned posted = (cq.tail + size - cq.head) % size;
    if (moved > posted) {
      bad_doorbells_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (qid != 0) bump(cq.doorbells);
    cq.head = static_cast<std::uint16_t>(value);
    if (cq.starved) {  // room again: fetch what was left for lack of it
      cq.starved = false;
      for (std::size_t s = 0; s < sqs_.size(); ++s) {
        if (sqs_[s].live && sqs_[s].cqid == qid && sqs_[s].head != sqs_[s].tail) {
          run_sq(static_cast<std::uint16_t>(s));
        }
      }
    }
  }
  if (timed) bump(sqs_[qid].device_ticks, ticks() - t0);
}

void NullFunction::run_sq(std::uint16_t qid) noexcept {
  Sq& sq = sqs_[qid];
  Cq& cq = cqs_[sq.cqid];
  std::uint16_t head = sq.head;
  std::uint16_t ctail = cq.tail;
  bool phase = cq.phase;
  std::uint64_t done = 0, errors = 0;
  while (head != sq.tail) {
    const std::uint16_t next = static_cast<std::uint16_t>(ctail + 1u == cq.size ? 0 : ctail + 1u);
    if (next == cq.head) {  // full: leave the command in the SQ until the host makes room
      cq.starved = true;
      if (qid != 0) bump(sq.cq_full);
      break;
    }
    Sqe sqe;
    std::memcpy(&sqe, sq.base + std::size_t{head} * keel::nvme::kSqeBytes, sizeof sqe);
    head = static_cast<std::uint16_t>(head + 1u == sq.size ? 0 : head + 1u);
    StatusCode status;
    std::uint32_t dw0 = 0;
    if (qid == 0) {
      const AdminOutcome o = execute_admin(sqe);
      status = o.status;
      dw0 = o.dw0;
      admin_commands_.fetch_add(1, std::memory_order_relaxed);
      if (!cq.live) break;  // the command made the controller fatal
    } else {
      status = execute_io(sqe);
      ++done;
      errors += status != sc::kSuccess ? 1 : 0;
    }
    std::byte* e = cq.base + std::size_t{ctail} * keel::nvme::kCqeBytes;
    const std::uint32_t dw2 = head | (std::uint32_t{qid} << 16);
    const std::uint32_t dw3 =
        sqe.cid | (static_cast<std::uint32_t>((status << 1) | (phase ? 1u : 0u)) << 16);
    const std::uint32_t dw1 = 0;
    std::memcpy(e, &dw0, 4);
    std::memcpy(e + 4, &dw1, 4);
    std::memcpy(e + 8, &dw2, 4);
    // The phase tag goes last, with release: a host that acquires it sees the whole entry.
    std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(e + 12))
        .store(dw3, std::memory_order_release);
    ctail = next;
    if (ctail == 0) phase = !phase;
  }
  sq.head = head;
  cq.tail = ctail;
  cq.phase = phase;
  if (qid != 0) {
    bump(sq.commands, done);
    if (errors != 0) bump(sq.errors, errors);
  }
}

StatusCode NullFunction::execute_io(const Sqe& sqe) const noexcept {
  if (sqe.flags != 0) return error(sc::kInvalidField);  // no fused commands, no SGLs
  switch (sqe.opc) {
    case keel::nvme::io::kRead:
    case keel::nvme::io::kWrite:
    case keel::nvme::io::kWriteZeroes: {
      if (sqe.nsid != 1) return error(sc::kInvalidNamespace);
      const std::uint64_t slba = sqe.cdw10 | (std::uint64_t{sqe.cdw11} << 32);
      const std::uint64_t nlb = (sqe.cdw12 & 0xFFFFu) + 1u;
      if (slba >= config_.blocks || nlb > config_.blocks - slba) {
        return error(sc::kLbaOutOfRange);
      }
      if (sqe.opc == keel::nvme::io::kWriteZeroes) return sc::kSuccess;
      if ((nlb << kBlockShift) > (std::uint64_t{kPage} << config_.mdts)) {
        return error(sc::kInvalidField);  // beyond MDTS
      }
      if ((sqe.prp1 & 3u) != 0) return error(sc::kPrpOffsetInvalid);
      return sc::kSuccess;  // a null device: no data moves
    }
    case keel::nvme::io::kFlush:
      if (sqe.nsid != 1 && sqe.nsid != 0xFFFFFFFFu) return error(sc::kInvalidNamespace);
      return sc::kSuccess;
    default: return error(sc::kInvalidOpcode);
  }
}

// ---- Admin commands -----------------------------------------------------------------------------

NullFunction::AdminOutcome NullFunction::execute_admin(const Sqe& sqe) noexcept {
  if (sqe.flags != 0) return {error(sc::kInvalidField)};
  switch (sqe.opc) {
    case keel::nvme::admin::kIdentify: return identify(sqe);
    case keel::nvme::admin::kCreateCq: return create_cq(sqe);
    case keel::nvme::admin::kCreateSq: return create_sq(sqe);
    case keel::nvme::admin::kDeleteCq: return delete_cq(sqe);
    case keel::nvme::admin::kDeleteSq: return delete_sq(sqe);
    case keel::nvme::admin::kSetFeatures: return features(sqe, true);
    case keel::nvme::admin::kGetFeatures: return features(sqe, false);
    case keel::nvme::admin::kAbort: return {sc::kSuccess, 1};  // nothing is ever in flight
    default: return {error(sc::kInvalidOpcode)};
  }
}

bool NullFunction::to_host(const Sqe& sqe, const void* data, std::size_t bytes) noexcept {
  const auto* src = static_cast<const std::byte*>(data);
  const std::size_t first = std::min(bytes, kPage - static_cast<std::size_t>(sqe.prp1 % kPage));
  std::byte* a = (sqe.prp1 & 3u) == 0 ? translate(sqe.prp1, first) : nullptr;
  if (a == nullptr) return false;
  std::byte* b = nullptr;
  if (first < bytes) {
    b = sqe.prp2 % kPage == 0 ? translate(sqe.prp2, bytes - first) : nullptr;
    if (b == nullptr) return false;
  }
  std::memcpy(a, src, first);
  if (b != nullptr) std::memcpy(b, src + first, bytes - first);
  return true;
}

NullFunction::AdminOutcome NullFunction::identify(const Sqe& sqe) noexcept {
  alignas(8) std::byte page[kPage] = {};
  switch (sqe.cdw10 & 0xFF) {
    case keel::nvme::cns::kController: {
      auto* id = reinterpret_cast<nvme_id_ctrl*>(page);  // staging buffer
      id->vid = 0x10EE;
      id->ssvid = 0x10EE;
      put_padded(id->sn, sizeof id->sn, "KEELNULL0001");
      put_padded(id->mn, sizeof id->mn, "keel null NVMe function");
      put_padded(id->fr, sizeof id->fr, "0.1");
      id->mdts = config_.mdts;
      id->cntlid = static_cast<std::uint16_t>(config_.number);
      id->ver = static_cast<std::uint32_t>(regs::NVME_VS_1_4);
      id->acl = 3;
      id->aerl = 0;
      id->sqes = 0x66;
      id->cqes = 0x44;
      id->maxcmd = config_.max_queue_entries;
      id->nn = 1;
      id->oncs = 1u << 3;  // Write Zeroes
      std::snprintf(id->subnqn, sizeof id->subnqn, "nqn.2026-11.dev.keel:null:%u", config_.number);
      break;
    }
    case keel::nvme::cns::kNamespace: {
      if (sqe.nsid != 1 && sqe.nsid != 0xFFFFFFFFu) return {error(sc::kInvalidNamespace)};
      auto* ns = reinterpret_cast<nvme_id_ns*>(page);  // staging buffer
      if (sqe.nsid == 1) {
        ns->nsze = config_.blocks;
        ns->ncap = config_.blocks;
        ns->nuse = config_.blocks;
      }
      ns->nlbaf = 0;
      ns->flbas = 0;
      ns->lbaf[0].ds = kBlockShift;
      break;
    }
    case keel::nvme::cns::kActiveNamespaces: {
      if (sqe.nsid >= 0xFFFFFFFEu) return {error(sc::kInvalidNamespace)};
      if (sqe.nsid < 1) {
        const std::uint32_t one = 1;
        std::memcpy(page, &one, sizeof one);
      }
      break;
    }
    default: return {error(sc::kInvalidField)};
  }
  if (!to_host(sqe, page, sizeof page)) return {error(sc::kDataTransferError)};
  return {};
}

NullFunction::AdminOutcome NullFunction::create_cq(const Sqe& sqe) noexcept {
  const unsigned qid = sqe.cdw10 & 0xFFFF;
  const unsigned qsize = (sqe.cdw10 >> 16) + 1;
  if (qid == 0 || qid > granted_cqs() || qid >= cqs_.size() || cqs_[qid].live) {
    return {error(sc::kInvalidQueueId)};
  }
  if (qsize < 2 || qsize > config_.max_queue_entries) return {error(sc::kInvalidQueueSize)};
  if ((sqe.cdw11 & 1) == 0) return {error(sc::kInvalidField)};  // CAP.CQR: contiguous only
  if ((sqe.cdw11 & 2) != 0) return {error(sc::kInvalidInterruptVector)};  // no vectors
  const std::uint32_t cc = cc_.load(std::memory_order_relaxed);
  if (regs::field_get(cc, nv::CC_IOCQES_MASK, nv::CC_IOCQES_SHIFT) != keel::nvme::kCqesLog2) {
    return {error(sc::kInvalidField)};
  }
  if (sqe.prp1 == 0 || sqe.prp1 % kPage != 0) return {error(sc::kPrpOffsetInvalid)};
  std::byte* base = translate(sqe.prp1, std::size_t{qsize} * keel::nvme::kCqeBytes);
  if (base == nullptr) return {error(sc::kDataTransferError)};  // not (all) mapped
  Cq& c = cqs_[qid];
  c.base = base;
  c.iova = sqe.prp1;
  c.size = static_cast<std::uint16_t>(qsize);
  c.head = c.tail = c.sq_refs = 0;
  c.phase = true;
  c.starved = false;
  c.live = true;
  return {};
}

NullFunction::AdminOutcome NullFunction::create_sq(const Sqe& sqe) noexcept {
  const unsigned qid = sqe.cdw10 & 0xFFFF;
  const unsigned qsize = (sqe.cdw10 >> 16) + 1;
  const unsigned cqid = sqe.cdw11 >> 16;
  if (qid == 0 || qid > granted_sqs() || qid >= sqs_.size() || sqs_[qid].live) {
    return {error(sc::kInvalidQueueId)};
  }
  if (cqid == 0 || cqid >= cqs_.size() || !cqs_[cqid].live) return {error(sc::kCqInvalid)};
  if (qsize < 2 || qsize > config_.max_queue_entries) return {error(sc::kInvalidQueueSize)};
  if ((sqe.cdw11 & 1) == 0) return {error(sc::kInvalidField)};
  const std::uint32_t cc = cc_.load(std::memory_order_relaxed);
  if (regs::field_get(cc, nv::CC_IOSQES_MASK, nv::CC_IOSQES_SHIFT) != keel::nvme::kSqesLog2) {
    return {error(sc::kInvalidField)};
  }
  if (sqe.prp1 == 0 || sqe.prp1 % kPage != 0) return {error(sc::kPrpOffsetInvalid)};
  const std::byte* base = translate(sqe.prp1, std::size_t{qsize} * keel::nvme::kSqeBytes);
  if (base == nullptr) return {error(sc::kDataTransferError)};
  Sq& s = sqs_[qid];
  s.base = base;
  s.iova = sqe.prp1;
  s.size = static_cast<std::uint16_t>(qsize);
  s.head = s.tail = 0;
  s.cqid = static_cast<std::uint16_t>(cqid);
  s.live = true;
  ++cqs_[cqid].sq_refs;
  return {};
}

NullFunction::AdminOutcome NullFunction::delete_sq(const Sqe& sqe) noexcept {
  const unsigned qid = sqe.cdw10 & 0xFFFF;
  if (qid == 0 || qid >= sqs_.size() || !sqs_[qid].live) return {error(sc::kInvalidQueueId)};
  // Commands left unfetched (their CQ was full) are dropped with the queue: there is no room
  // to post their aborts either.
  Sq& s = sqs_[qid];
  s.live = false;
  --cqs_[s.cqid].sq_refs;
  s.base = nullptr;
  s.iova = 0;
  s.head = s.tail = 0;
  return {};
}

NullFunction::AdminOutcome NullFunction::delete_cq(const Sqe& sqe) noexcept {
  const unsigned qid = sqe.cdw10 & 0xFFFF;
  if (qid == 0 || qid >= cqs_.size() || !cqs_[qid].live) return {error(sc::kInvalidQueueId)};
  Cq& c = cqs_[qid];
  if (c.sq_refs != 0) return {error(sc::kInvalidQueueDeletion)};
  c.live = false;
  c.base = nullptr;
  c.iova = 0;
  return {};
}

NullFunction::AdminOutcome NullFunction::features(const Sqe& sqe, bool set) noexcept {
  if ((sqe.cdw10 & 0xFF) != keel::nvme::feature::kNumberOfQueues) {
    return {error(sc::kInvalidField)};
  }
  if (set) {
    if ((sqe.cdw10 >> 31) != 0) return {error(sc::kFeatureNotChangeable)};  // not saveable
    const unsigned nsqr = sqe.cdw11 & 0xFFFF;
    const unsigned ncqr = sqe.cdw11 >> 16;
    if (nsqr == 0xFFFF || ncqr == 0xFFFF) return {error(sc::kInvalidField)};
    for (std::size_t q = 1; q < sqs_.size(); ++q) {
      if (sqs_[q].live || cqs_[q].live) return {error(sc::kCommandSequenceError)};
    }
    nsqa_ = static_cast<std::uint16_t>(std::min<unsigned>(nsqr + 1, config_.io_queues));
    ncqa_ = static_cast<std::uint16_t>(std::min<unsigned>(ncqr + 1, config_.io_queues));
  }
  return {sc::kSuccess,
          (static_cast<std::uint32_t>(granted_cqs() - 1u) << 16) | (granted_sqs() - 1u)};
}

// ---- Counters -----------------------------------------------------------------------------------

NullFunction::Stats NullFunction::stats() const noexcept {
  Stats s;
  for (std::size_t q = 1; q < sqs_.size(); ++q) {
    s.sq_doorbells += sqs_[q].doorbells.load(std::memory_order_relaxed);
    s.cq_doorbells += cqs_[q].doorbells.load(std::memory_order_relaxed);
    s.io_commands += sqs_[q].commands.load(std::memory_order_relaxed);
    s.io_errors += sqs_[q].errors.load(std::memory_order_relaxed);
    s.cq_full += sqs_[q].cq_full.load(std::memory_order_relaxed);
  }
  s.admin_commands = admin_commands_.load(std::memory_order_relaxed);
  s.bad_doorbells = bad_doorbells_.load(std::memory_order_relaxed);
  return s;
}

double NullFunction::device_ns() const noexcept {
  std::uint64_t total = 0;
  for (std::size_t q = 1; q < sqs_.size(); ++q) {
    total += sqs_[q].device_ticks.load(std::memory_order_relaxed);
  }
  if (total == 0) return 0;
  const std::uint64_t dt = ticks() - tsc0_;
  const std::uint64_t dns = steady_ns() - steady0_ns_;
  if (dt == 0) return 0;
  return static_cast<double>(total) * static_cast<double>(dns) / static_cast<double>(dt);
}

}  // namespace keel::fpga
