// keel/vmm/virtqueue.h - the device side of a virtio 1.1 split virtqueue.
#pragma once

#include <cstdint>
#include <vector>

#include "keel/result.h"
#include "keel/vmm/guest_memory.h"
#include "keel/wire/virtio.h"

namespace keel::vmm {

class InflightQueue;  // keel/vmm/vhost_user_inflight.h

/// One buffer of a descriptor chain, already bounds-checked against guest memory.
struct ChainSeg {
  std::uint64_t gpa;
  std::uint32_t len;
  bool device_writes;
};

/// Why a chain could not be read. The spec treats the first three as a broken driver: the
/// device sets DEVICE_NEEDS_RESET. A buffer outside guest memory fails only its request.
enum class ChainError : std::uint8_t {
  ok,
  bad_index,         ///< A descriptor index (head or next) is beyond the queue.
  loop,              ///< The chain is longer than the queue: it loops.
  indirect,          ///< VIRTQ_DESC_F_INDIRECT, which keel does not offer.
  outside_memory,    ///< A buffer lies (partly) outside guest RAM.
  write_before_read  ///< A driver-readable buffer follows a device-writable one.
};

const char* to_string(ChainError e) noexcept;

/// Bytes from `gpa` to the end of the guest memory region holding it (0 if none does). Adjacent
/// regions are separate mappings: a buffer that crosses from one into the next is walked in
/// pieces of at most this length.
std::uint64_t region_run(const GuestMemory& mem, std::uint64_t gpa) noexcept;
/// Whether every byte of [gpa, gpa + len) is guest RAM, in one region or several adjacent ones.
bool in_guest_memory(const GuestMemory& mem, std::uint64_t gpa, std::uint64_t len) noexcept;

/// Split ring, device side. Owned by one thread. Ring indices are read and written with the
/// orderings the spec requires (acquire on avail->idx, release on used->idx, a full fence
/// before reading used_event/flags for the notification decision).
class Virtqueue {
 public:
  struct Layout {
    std::uint16_t size = 0;
    std::uint64_t desc = 0;   ///< GPA of the descriptor table.
    std::uint64_t avail = 0;  ///< GPA of the available ring.
    std::uint64_t used = 0;   ///< GPA of the used ring.
    /// vhost-user inflight record of this ring (INFLIGHT_SHMFD), or nullptr. setup() ignores
    /// it: the queue worker checks it (InflightQueue::start) and hands it to track_inflight().
    InflightQueue* inflight = nullptr;
  };

  /// Checks the layout (power-of-two size up to 32768, alignment, all three areas inside
  /// guest RAM) and starts from `last_avail` (0 for a new queue; vhost-user SET_VRING_BASE).
  /// Errors: invalid_argument naming the problem.
  Status setup(const GuestMemory& mem, const Layout& layout, bool event_idx,
               std::uint16_t last_avail = 0);
  bool ready() const noexcept { return size_ != 0; }
  std::uint16_t size() const noexcept { return size_; }
  std::uint16_t last_avail() const noexcept { return last_avail_; }
  /// The used ring's idx as the device last wrote it (read from the ring at setup()).
  std::uint16_t used_idx() const noexcept { return used_idx_; }

  /// After setup(): records every request in `inflight` (nullptr: none), which start() has
  /// accepted for this ring, and takes the next avail entry at `last_avail` (its answer).
  void track_inflight(InflightQueue* inflight, std::uint16_t last_avail) noexcept {
    inflight_ = inflight;
    last_avail_ = last_avail;
  }
  /// Marks `head` (just popped, or being resubmitted) as taken in the inflight record, before
  /// it is submitted. No-op without one.
  void mark_taken(std::uint16_t head) noexcept;
  /// `head` goes back to the avail ring unprocessed (before unpop()): no longer taken.
  void mark_given_back(std::uint16_t head) noexcept;

  /// Next available chain head. False when the ring is empty, or when the driver published
  /// an impossible index (then broken() is true).
  bool pop(std::uint16_t* head) noexcept;
  /// Gives the last `n` popped entries back (the device did not consume them after all): the
  /// next pop returns them again and last_avail() no longer counts them.
  void unpop(std::uint16_t n) noexcept {
    last_avail_ = static_cast<std::uint16_t>(last_avail_ - n);
  }
  /// Reads the chain starting at `head` into `out` (cleared first).
  ChainError read_chain(std::uint16_t head, std::vector<ChainSeg>& out) const noexcept;
  /// Returns the chain to the driver with `written` bytes written into it (and, with an
  /// inflight record, records it there in the spec's order around the used-ring update).
  void push_used(std::uint16_t head, std::uint32_t written) noexcept;
  /// After push_used: does the driver want an interrupt for what was pushed since the last
  /// call? (EVENT_IDX used_event, or VIRTQ_AVAIL_F_NO_INTERRUPT.)
  bool should_notify() noexcept;
  /// Ask (EVENT_IDX avail_event / used flags) to be kicked on the next available entry.
  /// Returns true if entries arrived meanwhile (process them instead of sleeping).
  bool enable_kicks() noexcept;
  void disable_kicks() noexcept;

  bool broken() const noexcept { return broken_; }
  /// The driver broke the queue (a chain that loops or points outside it): stop using it.
  void mark_broken() noexcept { broken_ = true; }

 private:
  std::uint16_t avail_idx() const noexcept;

  const GuestMemory* mem_ = nullptr;
  std::uint16_t size_ = 0;
  bool event_idx_ = false;
  virtio::Desc* desc_ = nullptr;
  std::byte* avail_ = nullptr;
  std::byte* used_ = nullptr;
  std::uint16_t last_avail_ = 0;
  std::uint16_t used_idx_ = 0;
  std::uint16_t signalled_used_ = 0;  // used idx at the last notification decision
  bool broken_ = false;
  InflightQueue* inflight_ = nullptr;
};

}  // namespace keel::vmm
