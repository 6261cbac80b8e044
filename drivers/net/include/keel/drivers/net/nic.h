// keel/drivers/net/nic.h - user-mode NIC driver for one NIC VF (keel's own NIC programming
// model: registers in blocks NIC and NICQ of keel/regs/keel_regs.h, ring entries in
// keel/wire/knic.h).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "keel/clock.h"
#include "keel/fpga/dma_arena.h"
#include "keel/fpga/function.h"
#include "keel/fpga/stepper.h"
#include "keel/result.h"
#include "keel/wire/knic.h"

namespace keel::drivers::net {

class QueuePair;

/// What the VF's STATUS register says about the device, typed so that callers ask the driver
/// instead of decoding registers themselves (as nvme::DeviceState).
enum class DeviceState : std::uint8_t {
  ready,      ///< Enabled and moving frames (STATUS.READY, no STATUS.FATAL).
  not_ready,  ///< Present but disabled: after an FLR, or a restore after a surprise removal.
  fatal,      ///< STATUS.FATAL (a ring outside the VF's DMA windows): only recover() helps.
  gone,       ///< The function reads as all ones: removed.
};
const char* to_string(DeviceState s) noexcept;

/// Hot-path outcome of a queue-pair operation: no allocation, no message.
enum class NetErrc : std::uint8_t {
  ok,
  full,       ///< Not enough free TX descriptors: reap() completions, then try again.
  invalid,    ///< Malformed request (no segments, a zero or > 65535-byte segment, too many).
  too_large,  ///< The frame exceeds the MTU plus knic::kEthHeader + 4 (802.1Q tag).
  down,       ///< The device is not ready (FLR, fatal, restored): call Nic::recover().
  gone,       ///< The function was removed.
};
const char* to_string(NetErrc e) noexcept;

/// Every member has a default; the device decides the rest.
struct NicConfig {
  /// Queue pairs (1..NIC CAPS.QUEUES).
  unsigned queues = 1;
  /// log2 of the TX and RX descriptor ring entries (NIC_MIN_RING_LOG2..CAPS.RING_LOG2). A ring
  /// holds entries - 1 posted descriptors.
  unsigned tx_ring_log2 = 8;
  unsigned rx_ring_log2 = 8;
  /// Bytes of each RX buffer (64..65535, a multiple of 64). A frame longer than one buffer is
  /// written across consecutive buffers.
  std::uint32_t rx_buffer_bytes = 2048;
  /// MTU written to the VF (NIC_MIN_MTU..CAPS.MAX_MTU); frames may be MTU + 18 bytes.
  std::uint32_t mtu = 1500;
  /// Completion interrupts on (QueuePair::wait sleeps on MSI-X) or off (it polls).
  bool interrupts = false;
  /// Queue pairs start with caller RX buffers (QueuePair::use_caller_rx_buffers): nothing is
  /// posted until the caller posts its own, so no frame lands in a driver buffer that a
  /// later switch of mode would throw away.
  bool caller_rx_buffers = false;
  /// Bound on waiting for STATUS.READY and QSTATUS.ENABLED after an enable.
  std::chrono::nanoseconds enable_timeout = std::chrono::milliseconds(100);
  /// Where the driver's DMA memory (rings, TX copy buffers, RX buffers) comes from, or, when
  /// null, the function's alloc_dma(). Outlives the Nic.
  fpga::DmaArena* arena = nullptr;
};

/// The driver of one NIC VF: bring-up, queue pairs, device state, recovery.
///
/// Threading: open(), recover(), reset() and destruction are control-path calls that must not
/// run while any queue pair is in use (the caller stops its queue threads around them; this is
/// what lets the queue pairs' hot paths take no locks). state(), mac(), link_up() and stats()
/// may be called from any thread. Each QueuePair is owned by one thread at a time.
///
/// Recovery: after an FLR under the driver, a surprise removal followed by a restore, or a
/// fatal status, queue pairs return NetErrc::down (or gone while the function reads all ones)
/// once anyone has looked at the device (state(), or a queue pair's wait() that found
/// nothing). recover() re-enables the VF, sets the MTU again and rebuilds every queue pair on
/// fresh DMA memory: TX frames in flight are reported by reap() as failed with knic::kFlushed
/// (zero-copy ones with their cookies, so their owner can resend or drop them), every RX buffer
/// is posted again. The QueuePair objects stay valid across it.
class Nic {
 public:
  /// Checks the VF's identity (ID.MAGIC), enables it (CTRL.ENABLE, waits for STATUS.READY),
  /// writes the MTU, then creates, enables and fills every queue pair (all RX buffers posted).
  /// Errors: gone (the function reads all ones), device_error (another ID, a refused MTU or
  /// queue enable, STATUS.FATAL), timeout (READY or QSTATUS.ENABLED), invalid_argument (the
  /// config outside what the VF offers), no_memory.
  ///
  /// As the NVMe driver, it is given the function it drives, the clock its timeouts run on and
  /// the stepper its waits advance (on a card: `open(vf, card, card, config)`). All three
  /// outlive the Nic.
  static Result<std::unique_ptr<Nic>> open(fpga::Function& vf, const Clock& clock,
                                           fpga::Stepper& stepper, const NicConfig& config = {});
  /// Stops the queue pairs and disables the VF (nothing is written to a removed one).
  ~Nic();
  Nic(const Nic&) = delete;
  Nic& operator=(const Nic&) = delete;

  /// The MAC address the PF assigned (read at open and recover).
  const knic::Mac& mac() const noexcept { return mac_; }
  std::uint32_t mtu() const noexcept { return config_.mtu; }
  /// Largest frame the VF sends or receives: MTU + NIC_FRAME_OVERHEAD.
  std::uint32_t max_frame() const noexcept { return config_.mtu + 18; }
  const NicConfig& config() const noexcept { return config_; }
  unsigned queue_count() const noexcept { return static_cast<unsigned>(queues_.size()); }
  /// Queue pair `i` (< queue_count()), owned by the Nic.
  QueuePair& queue(unsigned i) noexcept { return *queues_[i]; }

  /// One STATUS read (ID when it reads all ones); remembered, so queue pairs refuse work with
  /// NetErrc::down or gone from then on until recover() succeeds.
  DeviceState state() noexcept;
  /// The same for a function no Nic has been opened on.
  static DeviceState status_of(fpga::Function& fn) noexcept;
  /// STATUS.LINK: the PF has enabled the VF's switch port.
  bool link_up() noexcept;

  /// Re-initialises the VF and every queue pair after an FLR, a restore after a surprise
  /// removal, or a fatal status (see the class comment). Errors: as open().
  Status recover();
  /// FLR of the VF, then recover(). Errors: as open(), and those of Function::flr().
  Status reset();

  struct Stats {
    std::uint64_t tx_frames = 0;  ///< Frames completed kOk.
    std::uint64_t tx_bytes = 0;
    std::uint64_t rx_frames = 0;  ///< Frames delivered to a callback.
    std::uint64_t rx_bytes = 0;
    /// TX frames that failed, by knic::Status (index kOk unused).
    std::array<std::uint64_t, 8> tx_errors{};
    std::uint64_t rx_errors = 0;      ///< RX frames dropped (bad status or length).
    std::uint64_t device_errors = 0;  ///< Completions that named no descriptor in flight.
    std::uint64_t tx_doorbells = 0;   ///< TX_TAIL writes.
    std::uint64_t rx_doorbells = 0;   ///< RX_TAIL writes.
  };
  /// Sum of the queue pairs' counters. Call it from the thread owning the queue pairs, or
  /// accept counters that may be slightly stale.
  Stats stats() const noexcept;

  fpga::Function& function() noexcept { return fn_; }
  const Clock& clock() const noexcept { return clock_; }
  fpga::Stepper& stepper() noexcept { return stepper_; }

 private:
  friend class QueuePair;
  Nic(fpga::Function& fn, const Clock& clock, fpga::Stepper& stepper, const NicConfig& config);
  /// Enables the VF and (re)builds every queue pair.
  Status bring_up();
  Result<fpga::DmaBuffer> dma(std::size_t bytes);
  /// What queue pairs check before they queue work.
  DeviceState seen() const noexcept { return seen_.load(std::memory_order_acquire); }
  void note(DeviceState s) noexcept { seen_.store(s, std::memory_order_release); }

  fpga::Function& fn_;
  const Clock& clock_;
  fpga::Stepper& stepper_;
  NicConfig config_;
  knic::Mac mac_{};
  std::atomic<DeviceState> seen_{DeviceState::not_ready};
  std::vector<std::unique_ptr<QueuePair>> queues_;
};

}  // namespace keel::drivers::net
