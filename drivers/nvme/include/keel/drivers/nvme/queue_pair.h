// keel/drivers/nvme/queue_pair.h - one IO submission/completion queue pair.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/io_status.h"

namespace keel::drivers::nvme {

/// An IO queue pair. Owned by one thread at a time: no locks and no atomic read-modify-write
/// on its hot path (the only atomics are acquire loads of completion entries, which are plain
/// loads on x86). Submissions are written into the SQ and published by commit(), which fences
/// and rings the doorbell only if the tail moved.
///
/// Command ids: CID = slot | generation << slot_bits, the generation incremented on every reuse
/// of the slot, and free slots reused oldest first. A completion is trusted only if its SQ id is
/// this queue's, its SQ head lies inside the SQ and its CID is the current command of a slot in
/// flight; anything else (a duplicate, a stale or foreign entry) is dropped and counted in
/// Stats::device_errors, and the command it may have meant completes through its timeout.
///
/// A command past its timeout is aborted; if the device acknowledges the abort but the command
/// still does not complete within another command_timeout, the controller is reset (its slot
/// could otherwise never be reused, nor its buffer freed, while the device may still use it).
///
/// Must be destroyed before its Controller.
class QueuePair {
 public:
  ~QueuePair();
  QueuePair(const QueuePair&) = delete;
  QueuePair& operator=(const QueuePair&) = delete;

  std::uint16_t id() const noexcept { return qid_; }
  /// Commands that can be outstanding at once.
  unsigned depth() const noexcept { return static_cast<unsigned>(slots_.size()); }
  unsigned outstanding() const noexcept { return outstanding_; }

  /// Queue a Read/Write of `blocks` logical blocks at `lba` into/from `data` (device
  /// addresses). Segments must be PRP-compatible: only the first may start inside a page, only
  /// the last may end inside a page, and every address is dword aligned. Errors (nothing
  /// queued): invalid, too_large, queue_full, gone.
  IoStatus read(std::uint64_t lba, std::uint32_t blocks, std::span<const Segment> data,
                std::uint64_t tag) noexcept;
  IoStatus write(std::uint64_t lba, std::uint32_t blocks, std::span<const Segment> data,
                 std::uint64_t tag) noexcept;
  IoStatus flush(std::uint64_t tag) noexcept;
  IoStatus write_zeroes(std::uint64_t lba, std::uint32_t blocks, std::uint64_t tag) noexcept;

  /// Publishes queued commands: one doorbell write if anything was queued since the last one.
  void commit() noexcept;

  /// Reaps up to out.size() completions without blocking; returns how many. While commands
  /// are outstanding it also looks, at most every health_interval (time-based, so a lost device
  /// is noticed within milliseconds however often it is called), for commands past their
  /// timeout (then recovers, which may block for a bounded time) and for a device that reads
  /// as removed, reset or fatal; on that, or a controller reset, every outstanding command
  /// completes with IoErrc::gone.
  unsigned poll(std::span<Completion> out) noexcept;

  /// Commits, then blocks until at least one completion arrives (MSI-X wait in interrupt mode,
  /// polling otherwise; a lockstep card is stepped) or `timeout` passes. Returns the number
  /// reaped (0 on timeout).
  unsigned wait(std::span<Completion> out, std::chrono::nanoseconds timeout) noexcept;

  /// With interrupts on: an eventfd that becomes readable when this queue's MSI-X vector fires
  /// (for callers that wait on several sources with epoll). -1 otherwise.
  int interrupt_fd() const noexcept { return config_.interrupts ? fn_.interrupt_fd(vector_) : -1; }
  /// The MSI-X vector its completions raise: its queue id, or that modulo the function's
  /// vectors when it has fewer than queues (an SSD's VF may have one: the admin queue's,
  /// shared, as NVMe allows).
  std::uint16_t vector() const noexcept { return vector_; }

  /// Interrupt mode: unmask (true) or mask (false) this queue's MSI-X vector. A caller that
  /// polls keeps it masked and arms it just before sleeping on interrupt_fd(), then polls
  /// once more before actually sleeping.
  void arm_interrupt(bool armed) noexcept {
    if (config_.interrupts) fn_.set_interrupt_masked(vector_, !armed);
  }

  /// Runs poll()'s health check now (device state and command deadlines), whenever it last
  /// ran: for callers about to sleep with commands outstanding. May recover (abort, reset):
  /// bounded.
  void check_deadlines() noexcept { check_health(ctrl_.clock().now_ns()); }

  /// NVMe keepalive: commits what was queued, tells the device the CQ head, and describes the
  /// queue pair in `out` (its place in the arena, positions, every slot's CID and tag). From
  /// then on it submits nothing (gone), reaps nothing (a completion is the next process's),
  /// and its destruction does not delete its queues. Errors: gone (lost, or reset),
  /// invalid_argument (its memory is not in an arena).
  Status save(SavedQueuePair& out) noexcept;

  struct Stats {
    std::uint64_t submitted = 0;
    std::uint64_t completed = 0;
    std::uint64_t doorbells = 0;   ///< SQ tail doorbell writes.
    std::uint64_t idle_polls = 0;  ///< poll() calls that found nothing.
    std::uint64_t timeouts = 0;    ///< Commands that timed out.
    /// Completion entries dropped as untrustworthy: unknown, stale or duplicate CID, another
    /// SQ's id, an SQ head beyond the SQ.
    std::uint64_t device_errors = 0;
    /// Aborted commands that still did not complete: each one reset the controller.
    std::uint64_t abort_escalations = 0;
  };
  const Stats& stats() const noexcept { return stats_; }

 private:
  friend class Controller;
  struct Slot {
    std::uint64_t tag = 0;
    /// Busy: when the command times out; timed out: when the abort must have resolved it.
    std::uint64_t deadline_ns = 0;
    std::uint16_t cid = 0;  ///< CID of the slot's current (or last) command.
    bool busy = false;
    bool timed_out = false;  ///< Aborted.
  };
  QueuePair(Controller& ctrl, std::uint64_t generation, std::uint16_t qid, std::uint16_t entries,
            const QueuePairConfig& config, fpga::DmaBuffer sq, fpga::DmaBuffer cq,
            fpga::DmaBuffer prp_lists);

  /// Takes the positions and slots of `state` (restore_queue_pair, which checked them).
  void resume(const SavedQueuePair& state) noexcept;
  IoStatus submit_rw(std::uint8_t opc, std::uint64_t lba, std::uint32_t blocks,
                     std::span<const Segment> data, std::uint64_t tag) noexcept;
  IoStatus push(keel::nvme::Sqe& sqe, std::uint64_t tag) noexcept;
  /// A free slot (the one freed longest ago) with a fresh CID, or -1.
  int take_slot() noexcept;
  void free_slot(std::uint16_t slot) noexcept;
  /// True if the completion entry names a command of this queue in flight.
  bool trusted(std::uint16_t cid, std::uint16_t sq_id, std::uint16_t sq_head) const noexcept;
  void check_health(std::uint64_t now) noexcept;
  void check_timeouts(std::uint64_t now) noexcept;
  unsigned fail_all(std::span<Completion> out, IoErrc why) noexcept;
  void write_cq_head() noexcept;

  Controller& ctrl_;
  fpga::Function& fn_;
  const std::uint16_t qid_;
  const std::uint16_t vector_;
  const std::uint16_t entries_;
  const QueuePairConfig config_;
  const std::uint64_t generation_;
  fpga::DmaBuffer sq_, cq_, prp_lists_;
  std::uint16_t sq_tail_ = 0;
  std::uint16_t sq_committed_ = 0;
  std::uint16_t cq_head_ = 0;
  unsigned unreported_ = 0;  // completions consumed since the CQ head doorbell was written
  bool phase_ = true;
  bool dead_ = false;
  bool handed_over_ = false;  // saved: the next process's now
  std::vector<Slot> slots_;
  std::vector<std::uint16_t> free_;  // free slot indices, a FIFO ring of slots_.size()
  std::size_t free_head_ = 0;        // oldest free slot in free_
  std::size_t free_count_ = 0;
  unsigned slot_bits_ = 0;  // CID bits that hold the slot index; the rest is its generation
  unsigned outstanding_ = 0;
  unsigned polls_since_check_ = 0;
  std::uint64_t next_check_ns_ = 0;
  std::uint64_t check_interval_ns_ = 0;
  std::uint32_t page_ = 4096;
  std::uint32_t max_transfer_ = 0;
  std::uint64_t block_count_ = 0;
  Stats stats_;
};

}  // namespace keel::drivers::nvme
