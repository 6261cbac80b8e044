// keel/vmm/split_ring_driver.h - the driver side of one split virtqueue (virtio 1.1 2.6), as a
// guest kernel's virtio core runs it: descriptor free list, chains, the available ring, reaping
// the used ring, EVENT_IDX for both directions. keel plays the guest with it in process
// (GuestDriver, for tests and benchmarks) and in the scripted vhost-user front end of the tests.
//
// Not a device: nothing here trusts or checks what the device wrote beyond what a driver must
// (a used id out of range frees nothing). Threading: one thread drives a ring.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "keel/result.h"
#include "keel/wire/virtio.h"

namespace keel::vmm {

class SplitRingDriver {
 public:
  /// Host pointer of [gpa, gpa + len) of guest memory, or nullptr.
  using Translate = std::function<std::byte*(std::uint64_t gpa, std::uint64_t len)>;
  /// Where the ring's three parts are (guest physical addresses).
  struct Layout {
    std::uint16_t size = 0;
    std::uint64_t desc = 0, avail = 0, used = 0;
  };
  /// One descriptor of a chain: a buffer and whether the device writes it.
  struct Piece {
    std::uint64_t gpa;
    std::uint32_t len;
    bool device_writes;
  };

  /// Zeroes the ring's memory. The caller checked that the layout lies in guest memory.
  SplitRingDriver(Translate translate, const Layout& layout);

  /// Writes `pieces` as one chain from free descriptors and makes its head available (no
  /// kick). Errors: busy (not enough free descriptors).
  Result<std::uint16_t> publish(std::span<const Piece> pieces);
  /// Writes raw descriptors into the table from index `first` (wrapping), for malformed-input
  /// tests; takes nothing from the free list.
  void write_raw(std::span<const virtio::Desc> descs, std::uint16_t first);
  /// Makes `head` available as it is.
  void publish_head(std::uint16_t head);

  /// The device's used index (acquire).
  std::uint16_t used_idx() const;
  /// The next used entry, if the device has used one since the last call; frees its chain.
  std::optional<virtio::UsedElem> pop_used();
  /// EVENT_IDX: asks the device to notify when the entry after those reaped is used.
  void arm_used_event();
  /// EVENT_IDX: whether the device asked to be kicked for what was published since the last
  /// call (vring_need_event on its avail_event).
  bool need_kick();

  const Layout& layout() const noexcept { return layout_; }
  std::uint16_t avail_idx() const noexcept { return avail_idx_; }
  std::uint16_t last_used() const noexcept { return last_used_; }
  std::size_t free_descriptors() const noexcept { return free_.size(); }
  /// The head the next publish() will use (callers keep per-head data, such as a request's
  /// header, beside it). Needs a free descriptor.
  std::uint16_t next_free() const noexcept { return free_.back(); }

 private:
  std::byte* at(std::uint64_t gpa, std::uint64_t len) const { return translate_(gpa, len); }

  Translate translate_;
  Layout layout_;
  std::vector<std::uint16_t> free_;
  std::vector<std::uint16_t> chain_len_;  ///< Descriptors per head, to free them on reap.
  std::uint16_t avail_idx_ = 0, last_used_ = 0, kicked_at_ = 0;
};

}  // namespace keel::vmm
