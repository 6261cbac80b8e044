// Register file, arbitration turn, queues and completions of one VF's NVMe controller.
#include "vf_controller.h"

#include <algorithm>
#include <cstring>

#include <keel/regs/keel_regs.h>

namespace keel::fpga::model {

namespace nv = regs::nvme;
using nvme::Cqe;
using nvme::Sqe;

VfController::VfController(const ControllerParams& params, Iommu& iommu, CardStorage& storage,
                           Activity& activity)
    : p_(params),
      iommu_(iommu),
      storage_(storage),
      activity_(activity),
      irq_(params.max_ioq + 1),
      doorbells_(std::make_unique<std::atomic<std::uint32_t>[]>(2 * (params.max_ioq + 1))),
      sqs_(params.max_ioq + 1),
      cqs_(params.max_ioq + 1) {
  scratch_.resize(64 * 1024);
  segs_.reserve((1u << params.mdts) + 2);
  prp_list_.reserve(65536 / 8);  // one PRP list page at the largest page size
  pending_.reserve(64);
  stuck_.reserve(64);
}

std::uint64_t VfController::cap() const noexcept {
  std::uint64_t v = 0;
  v = regs::field_set(v, nv::CAP_MQES_MASK, nv::CAP_MQES_SHIFT, p_.mqes);
  v = regs::field_set(v, nv::CAP_CQR_MASK, nv::CAP_CQR_SHIFT, 1);
  v = regs::field_set(v, nv::CAP_TO_MASK, nv::CAP_TO_SHIFT, 2);    // 1 s
  v = regs::field_set(v, nv::CAP_CSS_MASK, nv::CAP_CSS_SHIFT, 1);  // NVM command set
  v = regs::field_set(v, nv::CAP_MPSMIN_MASK, nv::CAP_MPSMIN_SHIFT, 0);
  v = regs::field_set(v, nv::CAP_MPSMAX_MASK, nv::CAP_MPSMAX_SHIFT, 4);
  return v;
}

std::uint32_t VfController::page_bytes() const noexcept {
  const auto mps = regs::field_get(last_cc_, nv::CC_MPS_MASK, nv::CC_MPS_SHIFT);
  return 4096u << mps;
}

// ---------------------------------------------------------------- host side

std::uint32_t VfController::read32(std::uint64_t offset) const noexcept {
  if (removed()) return 0xFFFFFFFFu;
  switch (offset) {
    case nv::CAP: return static_cast<std::uint32_t>(cap());
    case nv::CAP + 4: return static_cast<std::uint32_t>(cap() >> 32);
    case nv::VS: return static_cast<std::uint32_t>(regs::NVME_VS_1_4);
    case nv::INTMS:
    case nv::INTMC: return intms_.load(std::memory_order_relaxed);
    case nv::CC: return cc_.load(std::memory_order_acquire);
    case nv::CSTS: return csts_.load(std::memory_order_acquire);
    case nv::AQA: return aqa_.load(std::memory_order_relaxed);
    case nv::ASQ: return static_cast<std::uint32_t>(asq_.load(std::memory_order_relaxed));
    case nv::ASQ + 4: return static_cast<std::uint32_t>(asq_.load(std::memory_order_relaxed) >> 32);
    case nv::ACQ: return static_cast<std::uint32_t>(acq_.load(std::memory_order_relaxed));
    case nv::ACQ + 4: return static_cast<std::uint32_t>(acq_.load(std::memory_order_relaxed) >> 32);
    default: return 0;  // reserved registers and doorbells read as zero
  }
}

std::uint64_t VfController::read64(std::uint64_t offset) const noexcept {
  if (removed()) return ~std::uint64_t{0};
  switch (offset) {
    case nv::CAP: return cap();
    case nv::ASQ: return asq_.load(std::memory_order_relaxed);
    case nv::ACQ: return acq_.load(std::memory_order_relaxed);
    default: return read32(offset) | (static_cast<std::uint64_t>(read32(offset + 4)) << 32);
  }
}

void VfController::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (removed()) return;
  if (offset >= regs::NVME_DOORBELL_BASE) {
    const std::uint64_t idx = (offset - regs::NVME_DOORBELL_BASE) / 4;
    if (offset % 4 != 0 || idx >= 2ull * (p_.max_ioq + 1)) return;  // outside the doorbells
    doorbells_[idx].store(value, std::memory_order_release);
    activity_.kick();
    return;
  }
  auto set_lo = [](std::atomic<std::uint64_t>& r, std::uint32_t v) {
    r.store((r.load(std::memory_order_relaxed) & ~0xFFFFFFFFull) | v, std::memory_order_relaxed);
  };
  auto set_hi = [](std::atomic<std::uint64_t>& r, std::uint32_t v) {
    r.store(
        (r.load(std::memory_order_relaxed) & 0xFFFFFFFFull) | (static_cast<std::uint64_t>(v) << 32),
        std::memory_order_relaxed);
  };
  switch (offset) {
    case nv::INTMS: intms_.fetch_or(value, std::memory_order_relaxed); break;
    case nv::INTMC: intms_.fetch_and(~value, std::memory_order_relaxed); break;
    case nv::CC:
      if ((value & nv::CC_EN_MASK) == 0) en_cleared_.store(true, std::memory_order_relaxed);
      cc_.store(value, std::memory_order_release);
      break;
    case nv::AQA: aqa_.store(value, std::memory_order_relaxed); break;
    case nv::ASQ: set_lo(asq_, value); break;
    case nv::ASQ + 4: set_hi(asq_, value); break;
    case nv::ACQ: set_lo(acq_, value); break;
    case nv::ACQ + 4: set_hi(acq_, value); break;
    default: return;  // read-only or reserved: ignored
  }
  activity_.kick();
}

void VfController::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  if (removed()) return;
  switch (offset) {
    case nv::ASQ: asq_.store(value, std::memory_order_relaxed); break;
    case nv::ACQ: acq_.store(value, std::memory_order_relaxed); break;
    default:
      write32(offset, static_cast<std::uint32_t>(value));
      write32(offset + 4, static_cast<std::uint32_t>(value >> 32));
      return;
  }
  activity_.kick();
}

// ---------------------------------------------------------------- card side

void VfController::handle_cc(std::uint64_t now_ns) noexcept {
  if (en_cleared_.exchange(false, std::memory_order_acquire) && (last_cc_ & nv::CC_EN_MASK) != 0) {
    reset();  // EN went to 0 since the last step, even if it is 1 again now
    last_cc_ &= ~static_cast<std::uint32_t>(nv::CC_EN_MASK);
  }
  const std::uint32_t cc = cc_.load(std::memory_order_acquire);
  if (cc != last_cc_) {
    const bool was_en = (last_cc_ & nv::CC_EN_MASK) != 0;
    const bool en = (cc & nv::CC_EN_MASK) != 0;
    const auto old_shn = regs::field_get(last_cc_, nv::CC_SHN_MASK, nv::CC_SHN_SHIFT);
    const auto shn = regs::field_get(cc, nv::CC_SHN_MASK, nv::CC_SHN_SHIFT);
    last_cc_ = cc;
    if (was_en && !en) {
      reset();
      last_cc_ = cc;
    } else if (!was_en && en) {
      enable(now_ns);
    }
    if (shn != 0 && old_shn == 0) {
      (void)storage_.flush((res_.slice_base << p_.lba_shift), res_.slice_lbas << p_.lba_shift);
      std::uint32_t cs = csts_.load(std::memory_order_relaxed);
      cs = static_cast<std::uint32_t>(
          regs::field_set(cs, nv::CSTS_SHST_MASK, nv::CSTS_SHST_SHIFT, 2));
      csts_.store(cs, std::memory_order_release);
    } else if (shn == 0 && old_shn != 0) {
      csts_.fetch_and(static_cast<std::uint32_t>(~nv::CSTS_SHST_MASK), std::memory_order_release);
    }
  }
  if (ready_pending_ && now_ns >= ready_at_ns_) {
    ready_pending_ = false;
    ready_ = true;
    csts_.fetch_or(static_cast<std::uint32_t>(nv::CSTS_RDY_MASK), std::memory_order_release);
  }
}

void VfController::enable(std::uint64_t now_ns) noexcept {
  const std::uint32_t cc = last_cc_;
  const std::uint32_t aqa = aqa_.load(std::memory_order_relaxed);
  const auto asqs = regs::field_get(aqa, nv::AQA_ASQS_MASK, nv::AQA_ASQS_SHIFT) + 1;
  const auto acqs = regs::field_get(aqa, nv::AQA_ACQS_MASK, nv::AQA_ACQS_SHIFT) + 1;
  const std::uint64_t asq = asq_.load(std::memory_order_relaxed);
  const std::uint64_t acq = acq_.load(std::memory_order_relaxed);
  const auto mps = regs::field_get(cc, nv::CC_MPS_MASK, nv::CC_MPS_SHIFT);
  const std::uint64_t page = 4096ull << mps;
  // A VF whose resources are not committed, or a configuration the controller cannot run,
  // is a fatal controller status rather than a silent hang.
  if (!res_.enabled || regs::field_get(cc, nv::CC_CSS_MASK, nv::CC_CSS_SHIFT) != 0 || mps > 4 ||
      asqs < 2 || acqs < 2 || asq % page != 0 || acq % page != 0 || asq == 0 || acq == 0) {
    fatal();
    return;
  }
  sqs_[0] = Sq{true, asq, static_cast<std::uint16_t>(asqs), 0, 0};
  cqs_[0] = Cq{true, acq, static_cast<std::uint16_t>(acqs), 0, true, true, 0, 1, 0, {}, false};
  doorbells_[0].store(0, std::memory_order_relaxed);
  doorbells_[1].store(0, std::memory_order_relaxed);
  ready_at_ns_ = now_ns + faults_.ready_delay_ns;
  faults_.ready_delay_ns = 0;
  ready_pending_ = true;
  tokens_ = 0;
  tokens_at_ns_ = now_ns;
}

void VfController::fatal() noexcept {
  fatal_ = true;
  csts_.fetch_or(static_cast<std::uint32_t>(nv::CSTS_CFS_MASK), std::memory_order_release);
}

void VfController::raise_fatal() noexcept { fatal(); }

void VfController::reset() noexcept {
  for (auto& q : sqs_) q = Sq{};
  for (auto& q : cqs_) q = Cq{};
  for (unsigned i = 0; i < 2 * (p_.max_ioq + 1); ++i) {
    doorbells_[i].store(0, std::memory_order_relaxed);
  }
  pending_.clear();
  stuck_.clear();
  aers_.clear();
  nsqa_ = ncqa_ = 0;
  ready_ = false;
  ready_pending_ = false;
  fatal_ = false;
  rr_ = 1;
  irq_.clear();
  csts_.store(0, std::memory_order_release);
}

void VfController::flr() noexcept {
  reset();
  cc_.store(0, std::memory_order_relaxed);
  aqa_.store(0, std::memory_order_relaxed);
  asq_.store(0, std::memory_order_relaxed);
  acq_.store(0, std::memory_order_relaxed);
  intms_.store(0, std::memory_order_relaxed);
  last_cc_ = 0;
  en_cleared_.store(false, std::memory_order_relaxed);
  faults_ = VfFaults{};
  irq_.wake_all();
}

void VfController::set_removed(bool removed) noexcept {
  flr();
  removed_.store(removed, std::memory_order_release);
  irq_.wake_all();
}

bool VfController::timers_pending() const noexcept { return ready_pending_ || !pending_.empty(); }

bool VfController::busy(std::uint64_t now_ns) const noexcept {
  (void)now_ns;
  if (removed()) return false;
  if (cc_.load(std::memory_order_relaxed) != last_cc_ || timers_pending()) return true;
  if (!ready_ || fatal_) return false;
  for (std::size_t q = 0; q < sqs_.size(); ++q) {
    if (sqs_[q].live && doorbells_[2 * q].load(std::memory_order_relaxed) != sqs_[q].head) {
      return true;
    }
  }
  return false;
}

unsigned VfController::service(std::uint64_t now_ns, unsigned budget) noexcept {
  if (removed()) return 0;
  handle_cc(now_ns);
  if (!ready_ || fatal_) return 0;
  post_due(now_ns);
  unsigned done = drain_sq(0, budget, now_ns);
  // IO queues: round robin, one command per queue per pass.
  while (done < budget && !fatal_) {
    bool progress = false;
    for (unsigned i = 0; i < p_.max_ioq && done < budget; ++i) {
      const unsigned q = rr_;
      rr_ = rr_ % p_.max_ioq + 1;
      if (!sqs_[q].live) continue;
      const unsigned n = drain_sq(static_cast<std::uint16_t>(q), 1, now_ns);
      done += n;
      progress = progress || n > 0;
    }
    if (!progress) break;
  }
  return done;
}

bool VfController::cq_has_room(const Cq& cq, unsigned entries) const noexcept {
  const std::size_t qid = static_cast<std::size_t>(&cq - cqs_.data());
  const std::uint32_t head = doorbells_[2 * qid + 1].load(std::memory_order_acquire);
  if (head >= cq.size) return false;  // invalid head doorbell: post nothing until fixed
  const unsigned used = (cq.tail + cq.size - head) % cq.size;
  return used + cq.reserved + entries < cq.size;
}

bool VfController::rate_allows(std::uint64_t now_ns) noexcept {
  if (res_.rate_mbps == 0) return true;
  const std::int64_t burst =
      std::max<std::int64_t>(128 * 1024, std::int64_t{res_.rate_mbps} * 1000);
  const std::uint64_t elapsed = now_ns - tokens_at_ns_;
  tokens_at_ns_ = now_ns;
  tokens_ = std::min<std::int64_t>(
      burst, tokens_ + static_cast<std::int64_t>(elapsed * res_.rate_mbps / 1000));
  return tokens_ > 0;
}

unsigned VfController::drain_sq(std::uint16_t qid, unsigned budget, std::uint64_t now_ns) noexcept {
  Sq& sq = sqs_[qid];
  unsigned n = 0;
  while (n < budget && sq.live && !fatal_) {
    const std::uint32_t tail = doorbells_[2 * qid].load(std::memory_order_acquire);
    if (tail >= sq.size) {
      counters_.bad_doorbells.fetch_add(1, std::memory_order_relaxed);
      break;
    }
    if (tail == sq.head) break;
    if (!cq_has_room(cqs_[sq.cqid])) break;
    if (qid != 0 && !rate_allows(now_ns)) break;
    Sqe sqe;
    if (!iommu_.dma_read(p_.function, sq.base + std::uint64_t{sq.head} * nvme::kSqeBytes, &sqe,
                         sizeof sqe)) {
      fatal();  // the controller cannot fetch its own queue
      break;
    }
    sq.head = static_cast<std::uint16_t>((sq.head + 1) % sq.size);
    cur_sqid_ = qid;
    const std::uint16_t cqid = sq.cqid;
    const Outcome r = qid == 0 ? admin(sqe, now_ns) : io(sqe, now_ns);
    complete(qid, cqid, sqe, r, now_ns);
    ++n;
  }
  return n;
}

void VfController::complete(std::uint16_t sqid, std::uint16_t cqid, const Sqe& sqe, Outcome r,
                            std::uint64_t now_ns) noexcept {
  counters_.busy_cycles.fetch_add(16, std::memory_order_relaxed);  // fetch, decode, post
  if (r.no_completion) return;
  Cqe cqe{};
  cqe.dw0 = r.dw0;
  cqe.sq_head = sqs_[sqid].head;
  cqe.sq_id = sqid;
  cqe.cid = sqe.cid;
  cqe.status = static_cast<std::uint16_t>(r.status << 1);
  if (faults_.drop > 0) {
    --faults_.drop;
    stuck_.push_back(Stuck{sqid, cqid, sqe.cid, cqe.sq_head});
    return;
  }
  if (faults_.delay_count > 0) {
    --faults_.delay_count;
    pending_.push_back(Pending{now_ns + faults_.delay_ns, cqid, cqe});
    ++cqs_[cqid].reserved;
    return;
  }
  post_faulty(cqid, cqe);
}

void VfController::post_faulty(std::uint16_t cqid, Cqe cqe) noexcept {
  Cq& cq = cqs_[cqid];
  if (faults_.wrong_sq_id > 0) {
    --faults_.wrong_sq_id;
    cqe.sq_id = static_cast<std::uint16_t>((cqe.sq_id + 1u) % (p_.max_ioq + 1u));
  } else if (faults_.bad_sq_head > 0) {
    --faults_.bad_sq_head;
    cqe.sq_head = sqs_[cqe.sq_id].size;  // one past the last entry
  } else if (faults_.stale > 0 && cq.has_last && cq_has_room(cq, 2)) {
    --faults_.stale;
    post(cqid, cq.last);  // an old command's entry again, ahead of this one
  }
  const bool twice = faults_.duplicate > 0 && cq_has_room(cq, 2);
  post(cqid, cqe);
  if (twice) {
    --faults_.duplicate;
    post(cqid, cqe);
  }
}

bool VfController::post(std::uint16_t cqid, Cqe cqe) noexcept {
  Cq& cq = cqs_[cqid];
  if (!cq.live) return false;
  cqe.status = static_cast<std::uint16_t>((cqe.status & ~1u) | (cq.phase ? 1u : 0u));
  if (!iommu_.dma_write_release_last32(
          p_.function, cq.base + std::uint64_t{cq.tail} * nvme::kCqeBytes, &cqe, sizeof cqe)) {
    fatal();  // the controller cannot reach its own completion queue
    return false;
  }
  cq.last = cqe;
  cq.has_last = true;
  cq.tail = static_cast<std::uint16_t>(cq.tail + 1);
  if (cq.tail == cq.size) {
    cq.tail = 0;
    cq.phase = !cq.phase;
  }
  counters_.cmds.fetch_add(1, std::memory_order_relaxed);
  if (nvme::cqe_status(cqe) != nvme::sc::kSuccess) {
    counters_.cmd_errors.fetch_add(1, std::memory_order_relaxed);
  }
  if (cq.ien) irq_.fire(cq.iv);
  return true;
}

void VfController::post_due(std::uint64_t now_ns) noexcept {
  if (pending_.empty()) return;
  std::size_t keep = 0;
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    Pending& p = pending_[i];
    if (p.due_ns > now_ns) {
      pending_[keep++] = p;
      continue;
    }
    Cq& cq = cqs_[p.cqid];
    if (cq.reserved > 0) --cq.reserved;
    post(p.cqid, p.cqe);
  }
  pending_.resize(keep);
}

}  // namespace keel::fpga::model
