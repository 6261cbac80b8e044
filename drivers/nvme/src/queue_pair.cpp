// The IO hot path: submit, commit, poll.
#include "keel/drivers/nvme/queue_pair.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include <keel/regs/keel_regs.h>

namespace keel::drivers::nvme {

namespace wire = keel::nvme;

QueuePair::QueuePair(Controller& ctrl, std::uint64_t generation, std::uint16_t qid,
                     std::uint16_t entries, const QueuePairConfig& config, fpga::DmaBuffer sq,
                     fpga::DmaBuffer cq, fpga::DmaBuffer prp_lists)
    : ctrl_(ctrl),
      fn_(ctrl.function()),
      qid_(qid),
      vector_(Controller::vector_for(qid, fn_.num_vectors())),
      entries_(entries),
      config_(config),
      generation_(generation),
      sq_(std::move(sq)),
      cq_(std::move(cq)),
      prp_lists_(std::move(prp_lists)),
      slots_(entries - 1u),
      max_transfer_(ctrl.max_transfer_bytes()),
      block_count_(ctrl.block_count()) {
  // Look at the device and the deadlines a few times per timeout, and within 10 ms of a loss.
  check_interval_ns_ = static_cast<std::uint64_t>(
      std::clamp<std::chrono::nanoseconds>(
          config.command_timeout / 4, std::chrono::microseconds(100), std::chrono::milliseconds(10))
          .count());
  while ((std::size_t{1} << slot_bits_) < slots_.size()) ++slot_bits_;
  free_.resize(slots_.size());
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    free_[i] = static_cast<std::uint16_t>(i);
    slots_[i].cid = static_cast<std::uint16_t>(i);  // generation 0, never issued
  }
  free_count_ = slots_.size();
}

QueuePair::~QueuePair() {
  if (!handed_over_) ctrl_.delete_queue(generation_, qid_);
}

Status QueuePair::save(SavedQueuePair& out) noexcept {
  fpga::DmaArena* arena = ctrl_.config_.arena;
  if (arena == nullptr) {
    return make_error(Errc::invalid_argument,
                      "queue pair " + std::to_string(qid_) + " is not in a DMA arena");
  }
  if (dead_ || handed_over_ || ctrl_.generation() != generation_) {
    return make_error(Errc::gone, "queue pair " + std::to_string(qid_) +
                                      " is no longer live (lost, reset or saved)");
  }
  commit();
  write_cq_head();  // the device's view of the CQ is exactly what is saved
  SavedQueuePair q;
  q.qid = qid_;
  q.entries = entries_;
  q.interrupts = config_.interrupts;
  q.command_timeout_ns = static_cast<std::int64_t>(config_.command_timeout.count());
  q.sq = ctrl_.saved(sq_);
  q.cq = ctrl_.saved(cq_);
  q.prp_lists = ctrl_.saved(prp_lists_);
  q.sq_tail = sq_tail_;
  q.cq_head = cq_head_;
  q.phase = phase_;
  q.slots.reserve(slots_.size());
  for (const Slot& sl : slots_) q.slots.push_back(SavedSlot{sl.tag, sl.cid, sl.busy, sl.timed_out});
  q.free_order.reserve(free_count_);
  for (std::size_t i = 0, at = free_head_; i < free_count_; ++i) {
    q.free_order.push_back(free_[at]);
    at = at + 1 == free_.size() ? 0 : at + 1;
  }
  out = std::move(q);
  handed_over_ = true;
  return {};
}

void QueuePair::resume(const SavedQueuePair& state) noexcept {
  sq_tail_ = sq_committed_ = state.sq_tail;
  cq_head_ = state.cq_head;
  phase_ = state.phase;
  outstanding_ = 0;
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    const SavedSlot& sl = state.slots[i];
    slots_[i] = Slot{sl.tag, 0, sl.cid, sl.busy, sl.timed_out};  // deadlines: stamped afresh
    if (sl.busy) ++outstanding_;
  }
  free_head_ = 0;
  free_count_ = state.free_order.size();
  std::copy(state.free_order.begin(), state.free_order.end(), free_.begin());
}

int QueuePair::take_slot() noexcept {
  if (free_count_ == 0) return -1;
  const std::uint16_t s = free_[free_head_];
  free_head_ = free_head_ + 1 == free_.size() ? 0 : free_head_ + 1;
  --free_count_;
  // The next generation of this slot: a late or repeated completion of the slot's previous
  // command carries the old CID and no longer matches.
  Slot& slot = slots_[s];
  const unsigned generation = (slot.cid >> slot_bits_) + 1u;
  slot.cid = static_cast<std::uint16_t>(s | (generation << slot_bits_));
  return s;
}

void QueuePair::free_slot(std::uint16_t s) noexcept {
  std::size_t at = free_head_ + free_count_;
  if (at >= free_.size()) at -= free_.size();
  free_[at] = s;
  ++free_count_;
}

bool QueuePair::trusted(std::uint16_t cid, std::uint16_t sq_id,
                        std::uint16_t sq_head) const noexcept {
  if (sq_id != qid_ || sq_head >= entries_) return false;
  const std::size_t s = cid & ((std::size_t{1} << slot_bits_) - 1);
  return s < slots_.size() && slots_[s].busy && slots_[s].cid == cid;
}

IoStatus QueuePair::push(wire::Sqe& sqe, std::uint64_t tag) noexcept {
  // take_slot() was done by the caller for rw (the PRP list page belongs to the slot).
  Slot& slot = slots_[sqe.cid & ((std::size_t{1} << slot_bits_) - 1)];
  slot.tag = tag;
  slot.busy = true;
  slot.timed_out = false;
  slot.deadline_ns = 0;  // stamped lazily by check_timeouts
  std::memcpy(sq_.data() + std::size_t{sq_tail_} * wire::kSqeBytes, &sqe, sizeof sqe);
  sq_tail_ = static_cast<std::uint16_t>(sq_tail_ + 1 == entries_ ? 0 : sq_tail_ + 1);
  ++outstanding_;
  ++stats_.submitted;
  return IoStatus::success();
}

IoStatus QueuePair::submit_rw(std::uint8_t opc, std::uint64_t lba, std::uint32_t blocks,
                              std::span<const Segment> data, std::uint64_t tag) noexcept {
  if (dead_ || handed_over_ || ctrl_.generation() != generation_) {
    return IoStatus::error(IoErrc::gone);
  }
  if (blocks == 0 || blocks > 65536 || data.empty()) return IoStatus::error(IoErrc::invalid);
  if (lba >= block_count_ || blocks > block_count_ - lba) return IoStatus::error(IoErrc::invalid);
  const std::uint64_t bytes = std::uint64_t{blocks} * ctrl_.block_bytes();
  if (bytes > max_transfer_) return IoStatus::error(IoErrc::too_large);
  // Validate the segments against the PRP rules and the length.
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < data.size(); ++i) {
    const Segment& s = data[i];
    if (s.bytes == 0 || (s.iova & 3) != 0) return IoStatus::error(IoErrc::invalid);
    if (i > 0 && (s.iova & (page_ - 1)) != 0) return IoStatus::error(IoErrc::invalid);
    if (i + 1 < data.size() && ((s.iova + s.bytes) & (page_ - 1)) != 0) {
      return IoStatus::error(IoErrc::invalid);
    }
    total += s.bytes;
  }
  if (total != bytes) return IoStatus::error(IoErrc::invalid);
  const int slot = take_slot();
  if (slot < 0) return IoStatus::error(IoErrc::queue_full);

  wire::Sqe sqe{};
  sqe.opc = opc;
  sqe.cid = slots_[static_cast<std::size_t>(slot)].cid;
  sqe.nsid = 1;
  sqe.cdw10 = static_cast<std::uint32_t>(lba);
  sqe.cdw11 = static_cast<std::uint32_t>(lba >> 32);
  sqe.cdw12 = blocks - 1;
  // PRP1 is the first byte; then one entry per page that follows.
  sqe.prp1 = data[0].iova;
  auto* list = reinterpret_cast<std::uint64_t*>(  // this slot's PRP list page (DMA memory)
      prp_lists_.data() + static_cast<std::size_t>(slot) * 4096);
  unsigned n = 0;
  for (std::size_t i = 0; i < data.size(); ++i) {
    fpga::Iova page = (data[i].iova & ~std::uint64_t{page_ - 1});
    const fpga::Iova end = data[i].iova + data[i].bytes;
    if (i == 0) page += page_;  // PRP1 covers the first page
    for (; page < end; page += page_) list[n++] = page;
  }
  if (n == 1) {
    sqe.prp2 = list[0];
  } else if (n > 1) {
    sqe.prp2 = prp_lists_.iova() + static_cast<std::uint64_t>(slot) * 4096;
  }
  return push(sqe, tag);
}

IoStatus QueuePair::read(std::uint64_t lba, std::uint32_t blocks, std::span<const Segment> data,
                         std::uint64_t tag) noexcept {
  return submit_rw(wire::io::kRead, lba, blocks, data, tag);
}

IoStatus QueuePair::write(std::uint64_t lba, std::uint32_t blocks, std::span<const Segment> data,
                          std::uint64_t tag) noexcept {
  return submit_rw(wire::io::kWrite, lba, blocks, data, tag);
}

IoStatus QueuePair::flush(std::uint64_t tag) noexcept {
  if (dead_ || handed_over_ || ctrl_.generation() != generation_) {
    return IoStatus::error(IoErrc::gone);
  }
  const int slot = take_slot();
  if (slot < 0) return IoStatus::error(IoErrc::queue_full);
  wire::Sqe sqe{};
  sqe.opc = wire::io::kFlush;
  sqe.cid = slots_[static_cast<std::size_t>(slot)].cid;
  sqe.nsid = 1;
  return push(sqe, tag);
}

IoStatus QueuePair::write_zeroes(std::uint64_t lba, std::uint32_t blocks,
                                 std::uint64_t tag) noexcept {
  if (dead_ || handed_over_ || ctrl_.generation() != generation_) {
    return IoStatus::error(IoErrc::gone);
  }
  if (blocks == 0 || blocks > 65536) return IoStatus::error(IoErrc::invalid);
  if (lba >= block_count_ || blocks > block_count_ - lba) return IoStatus::error(IoErrc::invalid);
  const int slot = take_slot();
  if (slot < 0) return IoStatus::error(IoErrc::queue_full);
  wire::Sqe sqe{};
  sqe.opc = wire::io::kWriteZeroes;
  sqe.cid = slots_[static_cast<std::size_t>(slot)].cid;
  sqe.nsid = 1;
  sqe.cdw10 = static_cast<std::uint32_t>(lba);
  sqe.cdw11 = static_cast<std::uint32_t>(lba >> 32);
  sqe.cdw12 = blocks - 1;
  return push(sqe, tag);
}

void QueuePair::commit() noexcept {
  if (sq_tail_ == sq_committed_ || handed_over_) return;
  // SQ entries must be visible before the doorbell write.
  std::atomic_thread_fence(std::memory_order_release);
  fn_.write32(regs::NVME_DOORBELL_BASE + regs::NVME_DOORBELL_STRIDE * qid_, sq_tail_);
  sq_committed_ = sq_tail_;
  ++stats_.doorbells;
}

unsigned QueuePair::fail_all(std::span<Completion> out, IoErrc why) noexcept {
  dead_ = true;
  unsigned n = 0;
  for (std::size_t i = 0; i < slots_.size() && n < out.size(); ++i) {
    Slot& s = slots_[i];
    if (!s.busy) continue;
    s.busy = false;
    out[n++] = Completion{s.tag, IoStatus::error(s.timed_out ? IoErrc::timeout : why)};
    free_slot(static_cast<std::uint16_t>(i));
    --outstanding_;
    ++stats_.completed;
  }
  return n;
}

void QueuePair::write_cq_head() noexcept {
  fn_.write32(regs::NVME_DOORBELL_BASE + regs::NVME_DOORBELL_STRIDE * qid_ + 4, cq_head_);
  unreported_ = 0;
}

unsigned QueuePair::poll(std::span<Completion> out) noexcept {
  if (handed_over_) return 0;  // its completions are the next process's
  if (ctrl_.generation() != generation_ || dead_) {
    return fail_all(out, IoErrc::gone);
  }
  unsigned n = 0;
  while (n < out.size()) {
    auto* slot = cq_.data() + std::size_t{cq_head_} * wire::kCqeBytes;
    // The device stores the entry's last dword (phase tag) last, with release ordering.
    const std::uint32_t dw3 =
        std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(slot + 12))
            .load(std::memory_order_acquire);
    if (((dw3 >> 16) & 1u) != (phase_ ? 1u : 0u)) break;
    // Ordered after the phase tag by the acquire load above.
    const std::uint32_t dw2 = *reinterpret_cast<const std::uint32_t*>(slot + 8);
    const std::uint16_t cid = static_cast<std::uint16_t>(dw3 & 0xFFFF);
    const wire::StatusCode status = static_cast<wire::StatusCode>(dw3 >> 17);
    if (++cq_head_ == entries_) {
      cq_head_ = 0;
      phase_ = !phase_;
    }
    if (!trusted(cid, static_cast<std::uint16_t>(dw2 >> 16), static_cast<std::uint16_t>(dw2))) {
      ++stats_.device_errors;  // duplicate, stale, foreign or corrupt: completes nothing
      continue;
    }
    const std::uint16_t index = static_cast<std::uint16_t>(cid & ((1u << slot_bits_) - 1));
    Slot& s = slots_[index];
    s.busy = false;
    IoStatus st = IoStatus::success();
    if (wire::status_base(status) != 0) {
      st = s.timed_out && wire::status_base(status) == wire::sc::kAbortRequested
               ? IoStatus::error(IoErrc::timeout)
               : IoStatus::device(status);
    }
    out[n++] = Completion{s.tag, st};
    free_slot(index);
    --outstanding_;
    ++stats_.completed;
  }
  // The CQ head doorbell is written lazily: after a quarter of the queue, or as soon as a poll
  // finds nothing (so a device waiting for CQ room is never left waiting).
  if (n > 0) {
    unreported_ += n;
    if (unreported_ >= entries_ / 4u) write_cq_head();
  } else {
    ++stats_.idle_polls;
    if (unreported_ > 0) write_cq_head();
  }
  // With commands outstanding, look at the clock on every idle poll and every 256th busy one
  // (a stuck command among completing ones); every check_interval, check the device and the
  // deadlines: one CSTS read, a walk over the slots.
  if (outstanding_ > 0 && (n == 0 || ++polls_since_check_ >= 256)) {
    polls_since_check_ = 0;
    const std::uint64_t now = ctrl_.clock().now_ns();
    if (now >= next_check_ns_) {
      check_health(now);
      if (ctrl_.generation() != generation_) return n + fail_all(out.subspan(n), IoErrc::gone);
    }
  }
  return n;
}

void QueuePair::check_health(std::uint64_t now) noexcept {
  next_check_ns_ = now + check_interval_ns_;
  if (outstanding_ == 0 || handed_over_ || ctrl_.generation() != generation_) return;
  // A removed, reset (FLR) or failed device completes nothing: fail now, not at the timeout.
  if (!ctrl_.check_alive(generation_)) return;
  check_timeouts(now);
}

void QueuePair::check_timeouts(std::uint64_t now) noexcept {
  const auto limit = static_cast<std::uint64_t>(config_.command_timeout.count());
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (!s.busy) continue;
    if (s.deadline_ns == 0) {
      s.deadline_ns = now + limit;  // first seen outstanding at this check
      continue;
    }
    if (now < s.deadline_ns) continue;
    if (s.timed_out) {
      // Aborted, the abort acknowledged, and still no completion a whole timeout later. The
      // device may yet complete it or move its data, so neither the slot nor the buffer can be
      // given back: only a controller reset ends the command (every queue pair of this
      // generation then fails its commands, this one with IoErrc::timeout).
      ++stats_.abort_escalations;
      ctrl_.reset_generation(generation_);
      return;
    }
    s.timed_out = true;
    ++stats_.timeouts;
    ctrl_.recover_timeout(generation_, qid_, s.cid);
    if (ctrl_.generation() != generation_) return;
    // The device acknowledged the abort: the command must complete within another timeout,
    // counted from now (the abort itself may have taken up to the admin timeout).
    s.deadline_ns = ctrl_.clock().now_ns() + limit;
  }
}

unsigned QueuePair::wait(std::span<Completion> out, std::chrono::nanoseconds timeout) noexcept {
  if (handed_over_) return 0;
  commit();
  unsigned n = poll(out);
  if (n > 0) return n;
  if (config_.interrupts) {
    const auto deadline = ctrl_.clock().now_ns() + static_cast<std::uint64_t>(timeout.count());
    for (;;) {
      const std::uint64_t now = ctrl_.clock().now_ns();
      if (now >= deadline) break;
      auto r = fn_.wait_interrupt(vector_, std::chrono::nanoseconds(deadline - now));
      n = poll(out);
      if (n > 0 || !r.ok()) break;  // completions, or timeout / device gone
    }
  } else {
    fpga::poll_until(ctrl_.clock(), ctrl_.stepper(), timeout, [&] {
      n = poll(out);
      return n > 0;
    });
  }
  if (n == 0 && outstanding_ > 0) {
    check_health(ctrl_.clock().now_ns());
    if (ctrl_.generation() != generation_) return fail_all(out, IoErrc::gone);
  }
  return n;
}

}  // namespace keel::drivers::nvme
