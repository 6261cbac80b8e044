// Controller bring-up, admin queue, reset and timeout recovery.
#include "keel/drivers/nvme/controller.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>

#include <keel/regs/keel_regs.h>

#include "keel/drivers/nvme/queue_pair.h"

namespace keel::drivers::nvme {

namespace nv = regs::nvme;
namespace wire = keel::nvme;

namespace {

std::string status_text(const wire::Cqe& c) {
  return to_string(IoStatus::device(wire::cqe_status(c)));
}

}  // namespace

Controller::Controller(fpga::Function& fn, const Clock& clock, fpga::Stepper& stepper,
                       const ControllerConfig& config)
    : fn_(fn), clock_(clock), stepper_(stepper), config_(config) {}

Controller::~Controller() {
  // Leave the controller disabled; do not wait long for a dead one. A controller handed over
  // is the next process's: left running.
  if (!handed_over_.load() && !gone()) fn_.write32(nv::CC, 0);
}

Result<fpga::DmaBuffer> Controller::dma(std::size_t bytes) {
  if (config_.arena != nullptr) return config_.arena->alloc(bytes);
  return fn_.alloc_dma(bytes);
}

Result<std::unique_ptr<Controller>> Controller::open(fpga::Function& fn, const Clock& clock,
                                                     fpga::Stepper& stepper,
                                                     const ControllerConfig& config) {
  if (config.admin_entries < 2) {
    return make_error(Errc::invalid_argument, "admin queue needs at least 2 entries");
  }
  std::unique_ptr<Controller> c(new Controller(fn, clock, stepper, config));
  auto asq = c->dma(std::max<std::size_t>(4096, config.admin_entries * wire::kSqeBytes));
  if (!asq) return asq.error();
  auto acq = c->dma(std::max<std::size_t>(4096, config.admin_entries * wire::kCqeBytes));
  if (!acq) return acq.error();
  auto buf = c->dma(4096);
  if (!buf) return buf.error();
  c->asq_ = std::move(asq).value();
  c->acq_ = std::move(acq).value();
  c->admin_buf_ = std::move(buf).value();
  if (Status st = c->bring_up(false); !st.ok()) return st.error();
  return c;
}

const char* to_string(DeviceState s) noexcept {
  switch (s) {
    case DeviceState::ready: return "ready";
    case DeviceState::not_ready: return "not ready";
    case DeviceState::fatal: return "fatal (CSTS.CFS)";
    case DeviceState::gone: return "gone";
  }
  return "unknown";
}

DeviceState Controller::status_of(fpga::Function& fn) noexcept {
  const std::uint32_t csts = fn.read32(nv::CSTS);
  if (csts == 0xFFFFFFFFu) return DeviceState::gone;
  if ((csts & nv::CSTS_CFS_MASK) != 0) return DeviceState::fatal;
  if ((csts & nv::CSTS_RDY_MASK) != 0) return DeviceState::ready;
  return DeviceState::not_ready;
}

bool Controller::check_alive(std::uint64_t seen) noexcept {
  const DeviceState state = status();
  if (state == DeviceState::gone) {
    // Removed: nothing to re-initialise. Only the first to notice moves the generation.
    (void)generation_.compare_exchange_strong(seen, seen + 1, std::memory_order_acq_rel);
    return false;
  }
  if (state == DeviceState::ready) return true;
  // Reset (FLR) or failed under the driver: bring it up again, unless a reset has already
  // moved the generation on (a reset in progress holds reset_mu_ until it is done; resetting
  // again would invalidate the queue pairs it is about to hand out).
  std::lock_guard lock(reset_mu_);
  if (generation_.load(std::memory_order_acquire) != seen) return false;
  (void)bring_up(true);  // on failure the caller's next look finds it still down
  return false;
}

std::chrono::nanoseconds Controller::ready_timeout() const {
  const auto to = regs::field_get(cap_, nv::CAP_TO_MASK, nv::CAP_TO_SHIFT);
  return std::chrono::milliseconds(500 * std::max<std::uint64_t>(to, 1));
}

Status Controller::wait_csts(std::uint32_t mask, std::uint32_t want, const char* what) {
  std::uint32_t csts = 0;
  const bool ok = fpga::poll_until(clock_, stepper_, ready_timeout(), [&] {
    csts = fn_.read32(nv::CSTS);
    return csts == 0xFFFFFFFFu || (csts & mask) == want ||
           (want != 0 && (csts & nv::CSTS_CFS_MASK) != 0);
  });
  if (csts == 0xFFFFFFFFu) return make_error(Errc::gone, "the function reads all ones (removed)");
  if (want != 0 && (csts & nv::CSTS_CFS_MASK) != 0) {
    return make_error(Errc::device_error,
                      std::string("controller fatal status (CSTS.CFS) while waiting for ") + what);
  }
  if (!ok) {
    return make_error(Errc::timeout, std::string("waited CAP.TO (") +
                                         std::to_string(ready_timeout().count() / 1000000) +
                                         " ms) for " + what);
  }
  return {};
}

Status Controller::bring_up(bool new_generation) {
  // The admin queue is reset and used below: under admin_mu_ throughout, like every other use.
  std::lock_guard admin_lock(admin_mu_);
  // Moved under admin_mu_: a queue pair being created meanwhile (admin_mu_ held) keeps the
  // generation whose queues this reset destroys, so it notices; one created after gets the new.
  if (new_generation) generation_.fetch_add(1, std::memory_order_acq_rel);
  cap_ = fn_.read64(nv::CAP);
  if (cap_ == ~std::uint64_t{0}) return make_error(Errc::gone, "the function reads all ones");
  if ((regs::field_get(cap_, nv::CAP_CSS_MASK, nv::CAP_CSS_SHIFT) & 1u) == 0) {
    return make_error(Errc::device_error, "controller does not support the NVM command set");
  }
  if (regs::field_get(cap_, nv::CAP_MPSMIN_MASK, nv::CAP_MPSMIN_SHIFT) != 0) {
    return make_error(Errc::device_error, "controller does not support 4 KiB pages");
  }
  mqes_ = static_cast<std::uint16_t>(regs::field_get(cap_, nv::CAP_MQES_MASK, nv::CAP_MQES_SHIFT));
  // Disable and wait for the reset to finish (RDY and CFS both clear).
  fn_.write32(nv::CC, 0);
  if (Status st = wait_csts(nv::CSTS_RDY_MASK | nv::CSTS_CFS_MASK, 0, "CSTS.RDY to clear");
      !st.ok()) {
    return st;
  }
  const std::uint16_t entries =
      static_cast<std::uint16_t>(std::min<unsigned>(config_.admin_entries, mqes_ + 1u));
  std::memset(asq_.data(), 0, asq_.size());
  std::memset(acq_.data(), 0, acq_.size());
  config_.admin_entries = entries;
  asq_tail_ = acq_head_ = 0;
  acq_phase_ = true;
  fn_.write32(nv::AQA,
              static_cast<std::uint32_t>(((entries - 1u) << nv::AQA_ACQS_SHIFT) | (entries - 1u)));
  fn_.write64(nv::ASQ, asq_.iova());
  fn_.write64(nv::ACQ, acq_.iova());
  fn_.write32(nv::CC,
              static_cast<std::uint32_t>(nv::CC_EN_MASK | (wire::kSqesLog2 << nv::CC_IOSQES_SHIFT) |
                                         (wire::kCqesLog2 << nv::CC_IOCQES_SHIFT)));
  if (Status st = wait_csts(nv::CSTS_RDY_MASK, nv::CSTS_RDY_MASK, "CSTS.RDY"); !st.ok()) {
    return st;
  }

  wire::Sqe id{};
  id.opc = wire::admin::kIdentify;
  id.cdw10 = wire::cns::kController;
  auto c = admin_read_locked(id, &id_ctrl_, sizeof id_ctrl_);
  if (!c) return c.error();
  if (wire::cqe_status(*c) != 0) {
    return make_error(Errc::device_error, "Identify Controller failed: " + status_text(*c));
  }
  id = {};
  id.opc = wire::admin::kIdentify;
  id.nsid = 1;
  id.cdw10 = wire::cns::kNamespace;
  c = admin_read_locked(id, &id_ns_, sizeof id_ns_);
  if (!c) return c.error();
  if (wire::cqe_status(*c) != 0) {
    return make_error(Errc::device_error, "Identify Namespace 1 failed: " + status_text(*c));
  }
  const unsigned lbads = id_ns_.lbaf[id_ns_.flbas & 0xF].ds;
  if (lbads < 9 || lbads > 16) {
    return make_error(Errc::device_error,
                      "namespace 1 has an unsupported block size 2^" + std::to_string(lbads));
  }
  block_bytes_ = 1u << lbads;
  max_transfer_ = id_ctrl_.mdts == 0 ? (1u << 20) : (4096u << std::min<unsigned>(id_ctrl_.mdts, 8));

  wire::Sqe nq{};
  nq.opc = wire::admin::kSetFeatures;
  nq.cdw10 = wire::feature::kNumberOfQueues;
  const std::uint32_t want = config_.io_queues == 0 ? 0xFFFEu : config_.io_queues - 1u;
  nq.cdw11 = (want << 16) | want;
  c = admin_locked(nq);
  if (!c) return c.error();
  if (wire::cqe_status(*c) != 0) {
    return make_error(Errc::device_error,
                      "Set Features (Number of Queues) failed: " + status_text(*c));
  }
  io_queues_ = std::min((c->dw0 & 0xFFFF) + 1, (c->dw0 >> 16) + 1);
  if (config_.io_queues != 0) io_queues_ = std::min<unsigned>(io_queues_, config_.io_queues);
  qid_used_.assign(io_queues_ + 1u, false);
  return {};
}

Result<wire::Cqe> Controller::admin(wire::Sqe sqe) {
  std::lock_guard lock(admin_mu_);
  return admin_locked(sqe);
}

Result<wire::Cqe> Controller::admin_read(wire::Sqe sqe, void* out, std::size_t bytes) {
  std::lock_guard lock(admin_mu_);
  return admin_read_locked(sqe, out, bytes);
}

Result<wire::Cqe> Controller::admin_read_locked(wire::Sqe sqe, void* out, std::size_t bytes) {
  if (bytes > admin_buf_.size()) {
    return make_error(Errc::invalid_argument, "admin data larger than one page");
  }
  std::memset(admin_buf_.data(), 0, admin_buf_.size());
  sqe.prp1 = admin_buf_.iova();
  sqe.prp2 = 0;
  auto c = admin_locked(sqe);
  if (c.ok() && wire::cqe_status(*c) == 0) std::memcpy(out, admin_buf_.data(), bytes);
  return c;
}

Result<wire::Cqe> Controller::admin_locked(wire::Sqe sqe) {
  sqe.cid = next_cid_++;
  std::memcpy(asq_.data() + std::size_t{asq_tail_} * wire::kSqeBytes, &sqe, sizeof sqe);
  asq_tail_ = static_cast<std::uint16_t>((asq_tail_ + 1) % config_.admin_entries);
  std::atomic_thread_fence(std::memory_order_release);
  fn_.write32(regs::NVME_DOORBELL_BASE, asq_tail_);
  wire::Cqe cqe{};
  bool found = false;
  const bool ok = fpga::poll_until(clock_, stepper_, config_.admin_timeout, [&] {
    auto* slot = acq_.data() + std::size_t{acq_head_} * wire::kCqeBytes;
    // The device stores the entry's last dword (phase tag) last, with release ordering.
    const std::uint32_t dw3 =
        std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(slot + 12))
            .load(std::memory_order_acquire);
    if (((dw3 >> 16) & 1u) != (acq_phase_ ? 1u : 0u)) return false;
    std::memcpy(&cqe, slot, sizeof cqe);
    if (++acq_head_ == config_.admin_entries) {
      acq_head_ = 0;
      acq_phase_ = !acq_phase_;
    }
    fn_.write32(regs::NVME_DOORBELL_BASE + 4, acq_head_);
    // One command at a time: anything but its completion (a late one of a command given up
    // on, a duplicate, another queue's, a corrupt SQ head) is dropped and counted.
    found = cqe.cid == sqe.cid && cqe.sq_id == 0 && cqe.sq_head < config_.admin_entries;
    if (!found) admin_device_errors_.fetch_add(1, std::memory_order_relaxed);
    return found;
  });
  if (ok && found) return cqe;
  if (gone()) return make_error(Errc::gone, "device removed during an admin command");
  return make_error(Errc::timeout, "admin command opcode " + std::to_string(sqe.opc) +
                                       " did not complete within " +
                                       std::to_string(config_.admin_timeout.count() / 1000000) +
                                       " ms");
}

Result<std::unique_ptr<QueuePair>> Controller::create_queue_pair(const QueuePairConfig& config) {
  std::lock_guard lock(admin_mu_);
  // A reset moves the generation under admin_mu_ (bring_up): the queues created here belong to
  // this generation, and a later reset invalidates them.
  const std::uint64_t generation = generation_.load(std::memory_order_acquire);
  std::uint16_t qid = 0;
  for (std::uint16_t q = 1; q < qid_used_.size(); ++q) {
    if (!qid_used_[q]) {
      qid = q;
      break;
    }
  }
  if (qid == 0) {
    return make_error(Errc::busy, "all " + std::to_string(io_queues_) +
                                      " IO queue pairs of this controller are in use");
  }
  const std::uint16_t entries = static_cast<std::uint16_t>(
      std::clamp<unsigned>(config.entries, 2u, std::min<unsigned>(mqes_ + 1u, 4096u)));
  if (config.interrupts && fn_.num_vectors() == 0) {
    return make_error(Errc::invalid_argument, "no MSI-X vector for queue " + std::to_string(qid) +
                                                  ": the function has none");
  }
  const std::uint16_t vector = vector_for(qid, fn_.num_vectors());
  auto sq = dma(std::size_t{entries} * wire::kSqeBytes);
  if (!sq) return sq.error();
  auto cq = dma(std::size_t{entries} * wire::kCqeBytes);
  if (!cq) return cq.error();
  // One PRP list page per command slot: enough for any transfer up to MDTS.
  auto prp = dma(std::size_t{entries} * 4096);
  if (!prp) return prp.error();

  wire::Sqe c{};
  c.opc = wire::admin::kCreateCq;
  c.prp1 = cq->iova();
  c.cdw10 = (static_cast<std::uint32_t>(entries - 1) << 16) | qid;
  c.cdw11 = (config.interrupts ? (static_cast<std::uint32_t>(vector) << 16) | 2u : 0u) | 1u;
  auto r = admin_locked(c);
  if (!r) return r.error();
  if (wire::cqe_status(*r) != 0) {
    return make_error(Errc::device_error,
                      "Create IO CQ " + std::to_string(qid) + " failed: " + status_text(*r));
  }
  wire::Sqe s{};
  s.opc = wire::admin::kCreateSq;
  s.prp1 = sq->iova();
  s.cdw10 = (static_cast<std::uint32_t>(entries - 1) << 16) | qid;
  s.cdw11 = (static_cast<std::uint32_t>(qid) << 16) | 1u;
  r = admin_locked(s);
  if (!r) return r.error();
  if (wire::cqe_status(*r) != 0) {
    wire::Sqe d{};
    d.opc = wire::admin::kDeleteCq;
    d.cdw10 = qid;
    (void)admin_locked(d);
    return make_error(Errc::device_error,
                      "Create IO SQ " + std::to_string(qid) + " failed: " + status_text(*r));
  }
  qid_used_[qid] = true;
  return std::unique_ptr<QueuePair>(new QueuePair(*this, generation, qid, entries, config,
                                                  std::move(sq).value(), std::move(cq).value(),
                                                  std::move(prp).value()));
}

void Controller::delete_queue(std::uint64_t generation, std::uint16_t qid) noexcept {
  std::lock_guard lock(admin_mu_);
  // Under admin_mu_, which a reset holds while it moves the generation: a reset either freed
  // the queues already (and the qid may belong to a newer queue pair) or waits until they are
  // deleted here.
  if (generation_.load(std::memory_order_acquire) != generation || handed_over_.load() || gone()) {
    return;
  }
  wire::Sqe d{};
  d.opc = wire::admin::kDeleteSq;
  d.cdw10 = qid;
  (void)admin_locked(d);
  d.opc = wire::admin::kDeleteCq;
  (void)admin_locked(d);
  if (qid < qid_used_.size()) qid_used_[qid] = false;
}

void Controller::abandon_queue_pair(std::uint16_t qid) noexcept {
  {
    std::lock_guard lock(admin_mu_);
    if (qid == 0 || qid >= qid_used_.size() || qid_used_[qid]) return;  // not one to abandon
  }
  delete_queue(generation(), qid);
}

Status Controller::save(SavedController& out) {
  if (config_.arena == nullptr) {
    return make_error(Errc::invalid_argument,
                      "the driver's queues are not in a DMA arena: they would not outlive this "
                      "process (ControllerConfig::arena)");
  }
  std::unique_lock reset_lock(reset_mu_, std::try_to_lock);
  if (!reset_lock.owns_lock()) return make_error(Errc::busy, "a controller reset is in progress");
  std::lock_guard lock(admin_mu_);
  if (status() != DeviceState::ready) {
    return make_error(Errc::gone, std::string("the controller is ") + to_string(status()) +
                                      ": nothing running to hand over");
  }
  SavedController c;
  c.cap = cap_;
  c.cc = fn_.read32(nv::CC);
  c.aqa = fn_.read32(nv::AQA);
  c.asq = fn_.read64(nv::ASQ);
  c.acq = fn_.read64(nv::ACQ);
  c.asq_buf = saved(asq_);
  c.acq_buf = saved(acq_);
  c.admin_buf = saved(admin_buf_);
  c.admin_entries = config_.admin_entries;
  c.asq_tail = asq_tail_;
  c.acq_head = acq_head_;
  c.acq_phase = acq_phase_;
  c.next_cid = next_cid_;
  c.io_queues = static_cast<std::uint16_t>(io_queues_);
  c.mqes = mqes_;
  c.block_bytes = block_bytes_;
  c.max_transfer = max_transfer_;
  c.id_ctrl = id_ctrl_;
  c.id_ns = id_ns_;
  out = c;
  handed_over_.store(true);
  return {};
}

Result<std::unique_ptr<Controller>> Controller::restore(fpga::Function& fn, const Clock& clock,
                                                        fpga::Stepper& stepper,
                                                        const SavedController& state,
                                                        const ControllerConfig& config) {
  if (config.arena == nullptr) {
    return make_error(Errc::invalid_argument, "restoring needs the DMA arena the state names");
  }
  if (Status st = check(state); !st.ok()) return st.error();
  std::unique_ptr<Controller> c(new Controller(fn, clock, stepper, config));
  c->handed_over_.store(true);  // until restored: a failure leaves the device alone
  const DeviceState now = c->status();
  if (now == DeviceState::gone) return make_error(Errc::gone, "the function reads all ones");
  if (now != DeviceState::ready) {
    return make_error(Errc::unavailable, std::string("the controller is ") + to_string(now) +
                                             ", not running as it was saved (reset or FLR?)");
  }
  const struct {
    const char* name;
    std::uint64_t saved, device;
  } regs[] = {{"CAP", state.cap, fn.read64(nv::CAP)},
              {"CC", state.cc, fn.read32(nv::CC)},
              {"AQA", state.aqa, fn.read32(nv::AQA)},
              {"ASQ", state.asq, fn.read64(nv::ASQ)},
              {"ACQ", state.acq, fn.read64(nv::ACQ)}};
  for (const auto& r : regs) {
    if (r.saved != r.device) {
      char buf[120];
      std::snprintf(buf, sizeof buf, "%s reads 0x%llx, saved 0x%llx: the controller was reset",
                    r.name, static_cast<unsigned long long>(r.device),
                    static_cast<unsigned long long>(r.saved));
      return make_error(Errc::unavailable, buf);
    }
  }
  fpga::DmaArena& arena = *config.arena;
  if (state.asq != arena.base() + state.asq_buf.offset ||
      state.acq != arena.base() + state.acq_buf.offset) {
    return make_error(Errc::unavailable, "the admin queues are not where the arena has them");
  }
  auto claim = [&](const SavedBuffer& b) { return arena.claim(b.offset, b.bytes); };
  auto asq = claim(state.asq_buf);
  auto acq = claim(state.acq_buf);
  auto buf = claim(state.admin_buf);
  for (const auto* r : {&asq, &acq, &buf}) {
    if (!r->ok()) return make_error(Errc::unavailable, r->error().message);
  }
  c->asq_ = std::move(asq).value();
  c->acq_ = std::move(acq).value();
  c->admin_buf_ = std::move(buf).value();
  c->config_.admin_entries = state.admin_entries;
  c->asq_tail_ = state.asq_tail;
  c->acq_head_ = state.acq_head;
  c->acq_phase_ = state.acq_phase;
  c->next_cid_ = state.next_cid;
  c->cap_ = state.cap;
  c->mqes_ = state.mqes;
  c->io_queues_ = state.io_queues;
  c->block_bytes_ = state.block_bytes;
  c->max_transfer_ = state.max_transfer;
  c->id_ctrl_ = state.id_ctrl;
  c->id_ns_ = state.id_ns;
  c->qid_used_.assign(std::size_t{state.io_queues} + 1, false);
  c->handed_over_.store(false);
  return c;
}

Result<std::unique_ptr<QueuePair>> Controller::restore_queue_pair(const SavedQueuePair& state) {
  std::lock_guard lock(admin_mu_);
  SavedController bounds;
  bounds.io_queues = static_cast<std::uint16_t>(io_queues_);
  bounds.mqes = mqes_;
  if (Status st = check(bounds, state); !st.ok()) return st.error();
  if (qid_used_[state.qid]) {
    return make_error(Errc::invalid_argument,
                      "queue pair " + std::to_string(state.qid) + " is restored already");
  }
  if (state.interrupts && fn_.num_vectors() == 0) {
    return make_error(Errc::invalid_argument, "queue pair " + std::to_string(state.qid) +
                                                  " used interrupts; the function has none now");
  }
  if (config_.arena == nullptr) {
    return make_error(Errc::invalid_argument, "restoring needs the DMA arena the state names");
  }
  if (status() == DeviceState::gone) return make_error(Errc::gone, "the function reads all ones");
  auto sq = config_.arena->claim(state.sq.offset, state.sq.bytes);
  auto cq = config_.arena->claim(state.cq.offset, state.cq.bytes);
  auto prp = config_.arena->claim(state.prp_lists.offset, state.prp_lists.bytes);
  for (const auto* r : {&sq, &cq, &prp}) {
    if (!r->ok()) return make_error(Errc::unavailable, r->error().message);
  }
  QueuePairConfig qc;
  qc.entries = state.entries;
  qc.interrupts = state.interrupts;
  qc.command_timeout = std::chrono::nanoseconds(state.command_timeout_ns);
  std::unique_ptr<QueuePair> qp(new QueuePair(*this, generation(), state.qid, state.entries, qc,
                                              std::move(sq).value(), std::move(cq).value(),
                                              std::move(prp).value()));
  qp->resume(state);
  qid_used_[state.qid] = true;
  return qp;
}

Status Controller::reset() {
  std::lock_guard lock(reset_mu_);
  return bring_up(true);
}

void Controller::reset_generation(std::uint64_t seen) noexcept {
  std::lock_guard lock(reset_mu_);
  if (generation_.load(std::memory_order_acquire) != seen) return;  // someone reset already
  (void)bring_up(true);  // on failure the queue pairs' next health check finds it still down
}

void Controller::recover_timeout(std::uint64_t seen, std::uint16_t qid, std::uint16_t cid) {
  if (gone()) {
    (void)generation_.compare_exchange_strong(seen, seen + 1, std::memory_order_acq_rel);
    return;
  }
  wire::Sqe abort{};
  abort.opc = wire::admin::kAbort;
  abort.cdw10 = (static_cast<std::uint32_t>(cid) << 16) | qid;
  auto r = admin(abort);
  // Acknowledged: the command completes (aborted) soon; if it does not, the queue pair resets
  // through reset_generation() after another command timeout.
  if (r.ok() && wire::cqe_status(*r) == 0 && (r->dw0 & 1u) == 0) return;
  reset_generation(seen);  // not resolved: reset; every queue pair fails its commands
}

}  // namespace keel::drivers::nvme
