// keel/drivers/nvme/controller.h - user-mode NVMe driver for one VF.
#pragma once

#include <nvme/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "keel/clock.h"
#include "keel/drivers/nvme/io_status.h"
#include "keel/drivers/nvme/saved_state.h"
#include "keel/fpga/dma_arena.h"
#include "keel/fpga/function.h"
#include "keel/fpga/stepper.h"
#include "keel/result.h"
#include "keel/wire/nvme.h"

namespace keel::drivers::nvme {

class QueuePair;

/// What a controller's status register (CSTS) says about the device, typed so that callers
/// (the paravisor's failover) ask the driver instead of decoding registers themselves.
enum class DeviceState : std::uint8_t {
  ready,      ///< Enabled and ready (CSTS.RDY, no CSTS.CFS).
  not_ready,  ///< Present but disabled, resetting or after an FLR (CSTS.RDY clear).
  fatal,      ///< Controller fatal status (CSTS.CFS): only a reset brings it back.
  gone,       ///< The function reads as all ones: removed.
};
const char* to_string(DeviceState s) noexcept;

/// Every member has a default; the device decides the rest.
struct ControllerConfig {
  /// Admin queue entries.
  std::uint16_t admin_entries = 32;
  /// IO queue pairs to ask for with Set Features (0: as many as the controller grants).
  std::uint16_t io_queues = 0;
  /// Bound on every admin command.
  std::chrono::nanoseconds admin_timeout = std::chrono::seconds(2);
  /// Where the driver's DMA memory (admin and IO queues, PRP lists, the admin data page) comes
  /// from: an arena that outlives the process, for servicing (save() and restore() need one),
  /// or, when null, the function's alloc_dma(). Outlives the controller.
  fpga::DmaArena* arena = nullptr;
};

struct QueuePairConfig {
  /// SQ and CQ entries (the queue holds entries - 1 commands). Capped at CAP.MQES + 1.
  std::uint16_t entries = 256;
  /// Completion interrupts on (wait() sleeps on MSI-X) or off (wait() polls).
  bool interrupts = false;
  /// A command outstanding longer than this is aborted; if the abort does not resolve it, the
  /// controller is reset.
  std::chrono::nanoseconds command_timeout = std::chrono::seconds(5);
};

/// The NVMe controller of one function: bring-up, admin commands, queue pairs, recovery.
///
/// Threading: admin commands and queue-pair creation are serialised internally and may be
/// called from any thread. Each QueuePair is owned by one thread at a time. reset() may run
/// while queue pairs are in use: they notice the new generation on their next call and fail
/// their outstanding commands with IoErrc::gone.
///
/// Locks: admin_mu_ guards the admin queue (its rings, tail, head, phase and CIDs) and the queue
/// ids; reset_mu_ serialises resets. A reset holds reset_mu_ and takes admin_mu_ for the whole
/// bring-up; nothing takes reset_mu_ while holding admin_mu_ (order: reset_mu_, then admin_mu_).
///
/// The admin queue runs one command at a time; its CID is a 16-bit sequence number (a
/// generation with no slot bits), so a late completion of a command given up on never matches.
/// An admin completion with another CID, another SQ id than 0 or an SQ head beyond the admin SQ
/// is dropped and counted in device_errors().
class Controller {
 public:
  /// The MSI-X vector IO queue `qid` raises: `qid` itself, or that modulo `vectors` when the
  /// function has fewer vectors than queues (queues then share one, as NVMe allows).
  static std::uint16_t vector_for(std::uint16_t qid, unsigned vectors) noexcept {
    return vectors == 0 ? 0 : static_cast<std::uint16_t>(qid % vectors);
  }

  /// Brings the controller up: CC.EN = 0 and wait (bounded by CAP.TO), admin queue, CC.EN = 1
  /// and wait, Identify controller and namespace 1, Set Features Number of Queues.
  /// Errors: timeout (CSTS.RDY), device_error (CSTS.CFS or a failed admin command, with the
  /// NVMe status text), gone (the function reads all ones), no_memory, invalid_argument.
  ///
  /// The driver is given the one function it drives, the clock its timeouts run on and the
  /// stepper its waits advance (a lockstep card moves only when stepped; see fpga/stepper.h),
  /// not the card: it has no business with the VF count or the fault injector. On a card, pass
  /// the card for both (`open(vf, card, card)`). All three outlive the controller.
  static Result<std::unique_ptr<Controller>> open(fpga::Function& fn, const Clock& clock,
                                                  fpga::Stepper& stepper,
                                                  const ControllerConfig& config = {});
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  const nvme_id_ctrl& identify() const noexcept { return id_ctrl_; }
  const nvme_id_ns& namespace_info() const noexcept { return id_ns_; }
  std::uint64_t block_count() const noexcept { return id_ns_.nsze; }
  std::uint32_t block_bytes() const noexcept { return block_bytes_; }
  /// Largest transfer in bytes (Identify MDTS).
  std::uint32_t max_transfer_bytes() const noexcept { return max_transfer_; }
  /// IO queue pairs allocated by Set Features.
  unsigned io_queue_count() const noexcept { return io_queues_; }
  std::uint16_t max_queue_entries() const noexcept { return mqes_ + 1u; }

  /// Creates the next free IO queue pair. Errors: busy (all allocated queues in use),
  /// device_error, timeout, gone, no_memory.
  Result<std::unique_ptr<QueuePair>> create_queue_pair(const QueuePairConfig& config = {});

  /// Runs one admin command (its PRPs filled by the caller) and returns its completion.
  /// Errors: timeout (then the controller is reset), gone.
  Result<keel::nvme::Cqe> admin(keel::nvme::Sqe sqe);
  /// Admin command returning data into an internal buffer; copies `bytes` into `out`.
  Result<keel::nvme::Cqe> admin_read(keel::nvme::Sqe sqe, void* out, std::size_t bytes);

  /// Controller reset and re-initialisation (admin queue, Set Features). Every queue pair is
  /// invalidated. Errors: as open().
  Status reset();

  /// NVMe keepalive, the old process's half: the controller as it runs, into `out`. Save every
  /// queue pair first (QueuePair::save). The device is left enabled, and from now on this
  /// object writes nothing to it: no admin command, no queue deletion, no CC write when it is
  /// destroyed. Errors: invalid_argument (no arena: the queues would die with the process),
  /// gone (removed), busy (a reset is in progress).
  Status save(SavedController& out);
  /// The new process's half: the controller of `state`, on a device that kept running; CC.EN
  /// is never touched. Buffers are claimed in `config.arena` at their saved offsets. Errors:
  /// invalid_argument (no arena, or `state` out of its bounds), gone, unavailable (the device
  /// is not as it was saved: not ready, or CAP, CC, AQA, ASQ or ACQ differ, as after a reset or
  /// FLR meanwhile; or the buffers are not free in the arena). On any error the caller takes
  /// the reset path: open() with the same arena.
  static Result<std::unique_ptr<Controller>> restore(fpga::Function& fn, const Clock& clock,
                                                     fpga::Stepper& stepper,
                                                     const SavedController& state,
                                                     const ControllerConfig& config);
  /// A queue pair of the saved state, after restore(): the commands it had in flight complete
  /// on it with their tags (those the device completed meanwhile on its first poll), and it
  /// takes new ones. Errors: invalid_argument (`state` out of bounds, its id in use), unavailable
  /// (its buffers are not free in the arena), gone.
  Result<std::unique_ptr<QueuePair>> restore_queue_pair(const SavedQueuePair& state);
  /// A queue pair of the saved state that restore_queue_pair() refused: its queues are deleted
  /// on the device (they may point at memory put to other use now), so the id is free for a
  /// new one. Ids outside the controller's are ignored.
  void abandon_queue_pair(std::uint16_t qid) noexcept;
  /// One CSTS read, no side effects (no reset, no generation change): for callers deciding
  /// whether the device is worth a reset or a bring-up.
  DeviceState status() noexcept { return status_of(fn_); }
  /// The same for a function no controller has been opened on yet (a VF that was absent when
  /// its user started): whether Controller::open() has a device to talk to.
  static DeviceState status_of(fpga::Function& fn) noexcept;
  /// True once the function reads as all ones (surprise removal).
  bool gone() noexcept { return status() == DeviceState::gone; }
  /// One CSTS read: false when the function reads as all ones (removed), is no longer ready
  /// (reset or FLR under the driver) or reports a fatal status (CSTS.CFS). Then, unless a reset
  /// has already moved the generation past `seen`, the queue pairs of that generation are
  /// invalidated (they fail their commands with IoErrc::gone) and a controller that is still
  /// there is reset and brought up again (bounded by CAP.TO and the admin timeout).
  bool check_alive(std::uint64_t seen) noexcept;
  /// Changes on every reset; queue pairs compare it on each call.
  std::uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }
  /// Admin completion entries dropped as untrustworthy (see the class comment). Queue pairs count
  /// their own in QueuePair::Stats::device_errors.
  std::uint64_t device_errors() const noexcept {
    return admin_device_errors_.load(std::memory_order_relaxed);
  }

  fpga::Function& function() noexcept { return fn_; }
  /// The clock every timeout of this controller and its queue pairs runs on.
  const Clock& clock() const noexcept { return clock_; }
  fpga::Stepper& stepper() noexcept { return stepper_; }

 private:
  friend class QueuePair;
  Controller(fpga::Function& fn, const Clock& clock, fpga::Stepper& stepper,
             const ControllerConfig& config);

  /// Caller holds reset_mu_ (or is open(), before anyone else can reach the controller); takes
  /// admin_mu_ for the whole bring-up, and first moves the generation if `new_generation`.
  Status bring_up(bool new_generation);
  Status wait_csts(std::uint32_t mask, std::uint32_t want, const char* what);
  /// Caller holds admin_mu_.
  Result<keel::nvme::Cqe> admin_locked(keel::nvme::Sqe sqe);
  Result<keel::nvme::Cqe> admin_read_locked(keel::nvme::Sqe sqe, void* out, std::size_t bytes);
  /// Called by a queue pair of generation `seen` whose command timed out: Abort, then reset if
  /// that fails.
  void recover_timeout(std::uint64_t seen, std::uint16_t qid, std::uint16_t cid);
  /// Resets the controller unless a reset has already moved the generation past `seen`.
  void reset_generation(std::uint64_t seen) noexcept;
  /// Deletes IO queue pair `qid` of `generation` and frees its id; nothing if a reset (or a
  /// removal) has moved the generation on.
  void delete_queue(std::uint64_t generation, std::uint16_t qid) noexcept;
  std::chrono::nanoseconds ready_timeout() const;
  /// DMA memory from the arena, or the function.
  Result<fpga::DmaBuffer> dma(std::size_t bytes);
  SavedBuffer saved(const fpga::DmaBuffer& b) const noexcept {
    return SavedBuffer{config_.arena->offset_of(b), b.size()};
  }

  fpga::Function& fn_;
  const Clock& clock_;
  fpga::Stepper& stepper_;
  ControllerConfig config_;
  std::mutex admin_mu_;
  std::mutex reset_mu_;
  fpga::DmaBuffer asq_, acq_, admin_buf_;
  std::uint16_t asq_tail_ = 0, acq_head_ = 0;
  bool acq_phase_ = true;
  std::uint16_t next_cid_ = 0;
  std::atomic<std::uint64_t> admin_device_errors_{0};
  std::atomic<std::uint64_t> generation_{1};
  /// Saved (or not yet restored): the device belongs to whoever restores it; nothing is
  /// written to it from here.
  std::atomic<bool> handed_over_{false};
  std::vector<bool> qid_used_;  // by qid; guarded by admin_mu_
  nvme_id_ctrl id_ctrl_{};
  nvme_id_ns id_ns_{};
  std::uint32_t block_bytes_ = 512;
  std::uint32_t max_transfer_ = 0;
  std::uint16_t mqes_ = 0;
  unsigned io_queues_ = 0;
  std::uint64_t cap_ = 0;
};

}  // namespace keel::drivers::nvme
