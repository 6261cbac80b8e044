// keel/drivers/net/queue_pair.h - one TX/RX queue pair of a NIC VF.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "keel/drivers/net/nic.h"
#include "keel/fpga/dma.h"
#include "keel/wire/knic.h"

namespace keel::drivers::net {

/// One buffer of a zero-copy TX frame: an IOVA in the VF's DMA domain (the paravisor's guest
/// buffers, IOVA = guest physical address) and its length (1..65535).
struct TxSegment {
  fpga::Iova iova = 0;
  std::uint32_t len = 0;
};

/// The outcome of one zero-copy TX frame, returned by reap() with the caller's cookie. A frame
/// that did not complete kOk was not sent; kFlushed means the queue pair was rebuilt (recover)
/// before the card sent it, and the owner may resend it.
struct TxCompletion {
  std::uint64_t cookie = 0;
  knic::Status status = knic::kOk;
};

/// An empty RX buffer of the caller (caller-buffer mode, QueuePair::use_caller_rx_buffers): an
/// IOVA in the VF's DMA domain (the paravisor's guest buffers, IOVA = guest physical address),
/// its size (1..65535) and a cookie that comes back with its completion.
struct RxBuffer {
  fpga::Iova iova = 0;
  std::uint32_t len = 0;
  std::uint64_t cookie = 0;
};

/// One caller RX buffer back from the card, in the order the buffers were posted. A frame
/// spans consecutive completions, all but the last with `more` set; every one carries the
/// frame's status and length. kFlushed: the buffer is returned unfilled because the queue pair
/// stopped or was rebuilt (disable, recover): the card no longer writes it.
struct RxCompletion {
  std::uint64_t cookie = 0;
  std::uint32_t len = 0;    ///< Bytes the card wrote into this buffer (0 unless status kOk).
  std::uint32_t frame = 0;  ///< Length of the whole frame.
  knic::Status status = knic::kOk;
  bool more = false;  ///< The frame continues in the next completion.
};

/// What wait() waits for.
enum class WaitFor : std::uint8_t { rx, tx, any };

/// A queue pair: a TX ring and an RX ring with their completion rings. Owned by one thread at a
/// time: no locks and no atomic read-modify-write on its hot path.
///
/// TX: send() copies a frame into the driver's buffer of its ring slot (one descriptor);
/// send_zero_copy() puts caller segments on the ring (one descriptor each, kTxMore on all but
/// the last) with a cookie. Both only queue: flush() publishes them with one TX_TAIL write
/// (wait() flushes too). reap() consumes TX completions, frees the slots, counts results and
/// returns the cookie and status of every finished zero-copy frame; it writes TX_CQ_HEAD once.
///
/// RX, driver buffers (the default): every RX slot owns a driver buffer of
/// NicConfig::rx_buffer_bytes and all but one are posted at all times. poll_rx() hands each
/// received frame to a callback as one contiguous span valid during the call: a frame that fits one
/// buffer is passed in place (no copy); a frame the card spread over several buffers is reassembled
/// into a per-queue buffer of max_frame() bytes first. The consumed buffers are posted again and
/// RX_CQ_HEAD and RX_TAIL written once per call.
///
/// RX, caller buffers (use_caller_rx_buffers(true), for zero-copy receive): the driver owns no
/// RX buffer. post_rx() queues the caller's buffers (flush() publishes them with one RX_TAIL
/// write) and poll_rx_buffers() returns each one as the card completes it, with its cookie;
/// the caller puts frames together from them. When the queue pair stops or is rebuilt, every
/// buffer still posted comes back kFlushed, so the caller can reclaim its memory.
///
/// Device loss: send() fails with down or gone once the Nic has seen the device lost or reset
/// (Nic::state(), a wait() that timed out, or every 1024th reap() or poll_rx() that found
/// nothing, which reads STATUS once).
///
/// Completions are trusted only if they name the descriptor the driver expects next (the
/// card completes each ring in order); anything else is dropped and counted in
/// Stats::device_errors.
///
/// Queue pairs are created, rebuilt and destroyed by their Nic.
class QueuePair {
 public:
  ~QueuePair();
  QueuePair(const QueuePair&) = delete;
  QueuePair& operator=(const QueuePair&) = delete;

  unsigned id() const noexcept { return q_; }
  /// Descriptors that can be posted at once (ring entries - 1).
  unsigned tx_capacity() const noexcept { return tx_size_ - 1; }
  /// Descriptors queued or in flight (not yet reaped).
  unsigned tx_in_flight() const noexcept { return (tx_tail_ - tx_clean_) & tx_mask(); }
  unsigned tx_free() const noexcept { return tx_capacity() - tx_in_flight(); }

  /// Queues one frame given as the concatenation of `parts` (copied). Errors (nothing
  /// queued): invalid (empty or shorter than an Ethernet header), too_large, full, down, gone.
  NetErrc send(std::span<const std::span<const std::uint8_t>> parts) noexcept;
  NetErrc send(std::span<const std::uint8_t> frame) noexcept {
    const std::span<const std::uint8_t> one[1] = {frame};
    return send(one);
  }
  /// Queues one frame made of `segs` (1..NIC_MAX_SEGS, each 1..65535 bytes), no copy: the
  /// memory stays the caller's and must not change until reap() returns `cookie`. Errors
  /// (nothing queued): invalid, too_large, full, down, gone.
  NetErrc send_zero_copy(std::span<const TxSegment> segs, std::uint64_t cookie) noexcept;
  /// Publishes queued TX descriptors and (caller-buffer mode) queued RX buffers: one TX_TAIL /
  /// RX_TAIL write each, if anything was queued since the last.
  void flush() noexcept;

  /// Switches between driver RX buffers (false) and caller RX buffers (true). A control-path
  /// call from the thread owning the queue pair: when the mode changes, the queue pair is
  /// stopped and rebuilt as by Nic::recover() (TX in flight comes back kFlushed, frames waiting
  /// in driver buffers are lost, caller buffers come back kFlushed). The mode stays across
  /// recover(). Errors: as Nic::open()'s queue-pair bring-up.
  Status use_caller_rx_buffers(bool on);
  bool caller_rx_buffers() const noexcept { return rx_caller_; }
  /// disable() ran (or a rebuild failed): the queue pair refuses work until it is rebuilt.
  bool disabled() const noexcept { return disabled_; }
  /// Caller-buffer mode: buffers that can be posted now.
  unsigned rx_free() const noexcept { return rx_size_ - 1 - ((rx_tail_ - rx_clean_) & rx_mask()); }
  /// Caller-buffer mode: buffers posted and not yet returned.
  unsigned rx_posted() const noexcept { return (rx_tail_ - rx_clean_) & rx_mask(); }
  /// Caller-buffer mode: queues one empty buffer. Errors (nothing queued): invalid (driver
  /// buffer mode, or a length of 0 or over 65535), full, down, gone.
  NetErrc post_rx(const RxBuffer& buf) noexcept;
  /// Caller-buffer mode: returns completed (or flushed) buffers in posting order, at most
  /// out.size(); writes RX_CQ_HEAD once. A completion that claims more bytes than its buffer
  /// holds is returned kBadDesc with len 0.
  unsigned poll_rx_buffers(std::span<RxCompletion> out) noexcept;
  /// Stops the queue pair on the device (CFG 0; nothing is written to a removed one): TX in
  /// flight comes back kFlushed from reap() and caller RX buffers from poll_rx_buffers(). It
  /// refuses work (down) until Nic::recover() or use_caller_rx_buffers() rebuilds it. The card
  /// finishes a frame it is writing first: disable() waits until QSTATUS says the queue pair
  /// stopped, and a buffer the card filled meanwhile comes back with its completion.
  void disable() noexcept;

  /// Consumes TX completions. Finished zero-copy frames go to `out` (reaping stops when it is
  /// full); returns how many were written. Copy frames are only counted.
  unsigned reap(std::span<TxCompletion> out) noexcept;
  unsigned reap() noexcept { return reap(std::span<TxCompletion>{}); }

  /// Driver-buffer mode: receives up to `budget` frames, calling
  /// `on_frame(std::span<const std::uint8_t>)` for each; returns how many were delivered (0 in
  /// caller-buffer mode).
  template <typename F>
  unsigned poll_rx(unsigned budget, F&& on_frame) {
    return poll_rx_impl(
        budget,
        [](void* ctx, std::span<const std::uint8_t> frame) {
          (*static_cast<std::remove_reference_t<F>*>(ctx))(frame);
        },
        &on_frame);
  }

  /// Flushes TX, then blocks until a completion of the kind asked for is ready (RX frame, TX
  /// completion) or `timeout` passes on the Nic's clock. Interrupt mode: sleeps on the MSI-X
  /// vector (2q for TX, 2q + 1 for RX; for `any` it alternates between them in short slices,
  /// losing nothing since the function counts every fire). Polled mode: looks at the
  /// completion rings, advancing the stepper between looks. Returns true when something is
  /// ready; on false it has read the device's state once (so a lost device is noticed: send()
  /// then fails with down or gone).
  bool wait(WaitFor what, std::chrono::nanoseconds timeout) noexcept;
  bool wait(std::chrono::nanoseconds timeout) noexcept { return wait(WaitFor::any, timeout); }

  /// True if a TX / RX completion is waiting (no device access).
  bool tx_ready() const noexcept;
  bool rx_ready() const noexcept;

  /// MSI-X vectors of this queue pair.
  unsigned tx_vector() const noexcept { return 2 * q_; }
  unsigned rx_vector() const noexcept { return 2 * q_ + 1; }
  /// Interrupt mode: eventfds that become readable when the TX / RX vector fires, for callers
  /// that wait on several sources with epoll. -1 in polled mode or when the backend has none.
  int tx_interrupt_fd() noexcept { return interrupts_ ? fn_.interrupt_fd(tx_vector()) : -1; }
  int rx_interrupt_fd() noexcept { return interrupts_ ? fn_.interrupt_fd(rx_vector()) : -1; }
  /// Interrupt mode: unmask (true) or mask (false) both vectors. They are unmasked after every
  /// (re)build; a caller that busy-polls masks them, and wait() unmasks the vector it sleeps
  /// on. Nothing in polled mode.
  void arm_interrupts(bool armed) noexcept;

  const Nic::Stats& stats() const noexcept { return stats_; }

 private:
  friend class Nic;
  struct TxSlot {
    std::uint64_t cookie = 0;
    std::uint32_t frame_bytes = 0;  ///< On the last slot of a frame: the frame's length.
    std::uint8_t status = knic::kOk;
    bool last = false;       ///< Last descriptor of its frame.
    bool zero_copy = false;  ///< On the last slot: report the cookie.
  };
  QueuePair(Nic& nic, unsigned q);

  /// Allocates fresh rings and buffers, programs the NICQ registers, enables the queue pair
  /// and posts every RX buffer. What was in flight goes to flushed_ first.
  Status build();
  /// Disables the queue pair on the device (CFG 0) unless it is gone, and waits (bounded by
  /// NicConfig::enable_timeout) until QSTATUS says it stopped.
  void stop() noexcept;
  /// TX work still on the ring completes as kFlushed through reap().
  void flush_in_flight() noexcept;
  /// Caller RX buffers still posted come back through poll_rx_buffers(): those the card
  /// completed before it stopped with their completion, the others kFlushed.
  void flush_rx_posted() noexcept;
  /// Takes the next RX completion if the card has written one (false: none). `ok` false: it
  /// names no posted buffer or not the next one (counted in device_errors; skip it).
  bool pop_rx_cqe(knic::Cqe& c, bool& ok) noexcept;
  /// The completion `c` of the buffer at rx_clean_ (caller-buffer mode), counted.
  RxCompletion take_rx(const knic::Cqe& c) noexcept;
  NetErrc check_device() const noexcept;
  /// A reap() or poll_rx() that found nothing: every kHealthEvery-th looks at the device.
  void idle() noexcept;
  unsigned poll_rx_impl(unsigned budget, void (*cb)(void*, std::span<const std::uint8_t>),
                        void* ctx) noexcept;
  /// Counts the frame whose last slot is `slot`.
  void finish_frame(const TxSlot& slot, std::uint8_t status) noexcept;
  unsigned tx_mask() const noexcept { return tx_size_ - 1; }
  unsigned rx_mask() const noexcept { return rx_size_ - 1; }
  std::uint64_t reg(std::uint64_t r) const noexcept;

  Nic& nic_;
  fpga::Function& fn_;
  const unsigned q_;
  const bool interrupts_;
  unsigned tx_size_ = 0, rx_size_ = 0;
  std::uint32_t tx_buf_bytes_ = 0, rx_buf_bytes_ = 0, max_frame_ = 0;
  fpga::DmaBuffer tx_ring_, tx_cq_, rx_ring_, rx_cq_, tx_bufs_, rx_bufs_;
  std::vector<TxSlot> tx_slots_;
  // TX: descriptors [tx_clean_, tx_tail_) are queued or in flight; [tx_clean_, tx_published_)
  // are published with the doorbell.
  unsigned tx_tail_ = 0, tx_published_ = 0, tx_clean_ = 0;
  unsigned tx_cq_head_ = 0;
  bool tx_phase_ = true;
  std::uint8_t tx_frame_status_ = knic::kOk;  // worst status of the frame being reaped
  // RX: buffers [rx_clean_, rx_tail_) are posted, [rx_clean_, rx_published_) published with
  // the doorbell (the same in driver-buffer mode); rx_cq_head_ tracks the completion ring.
  unsigned rx_tail_ = 0, rx_published_ = 0, rx_clean_ = 0;
  unsigned rx_cq_head_ = 0;
  bool rx_phase_ = true;
  // A frame spread over buffers, being reassembled.
  std::vector<std::uint8_t> rx_scratch_;
  std::uint32_t rx_partial_ = 0;
  bool rx_partial_bad_ = false;
  bool rx_in_frame_ = false;
  // Zero-copy frames failed by a rebuild, reported by the next reap().
  std::vector<TxCompletion> flushed_;
  std::size_t flushed_next_ = 0;
  // Caller-buffer mode: each slot's buffer, and buffers a stop gave back.
  bool rx_caller_ = false;
  struct RxSlot {
    std::uint64_t cookie = 0;
    std::uint32_t len = 0;
  };
  std::vector<RxSlot> rx_slots_;
  std::vector<RxCompletion> rx_flushed_;
  std::size_t rx_flushed_next_ = 0;
  bool disabled_ = false;  ///< disable() ran: no work until a rebuild.
  unsigned idle_polls_ = 0;
  Nic::Stats stats_;
};

}  // namespace keel::drivers::net
