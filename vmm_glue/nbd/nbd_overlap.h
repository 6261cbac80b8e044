// nbd_overlap.h - ordering of overlapping NBD requests.
//
// Every request that touches the disk (read, write, write zeroes, trim) holds the byte range it
// covers on the device (for an unaligned request: the whole sectors around it) from admission
// until the device has really finished with it. A request may start only when no request
// admitted before it that is still held overlaps it where one of the two writes. So
//   - a write never passes an earlier overlapping write, read or read-modify-write, and the
//     edge sectors an RMW reads cannot change before it writes them back;
//   - a request that timed out on the device (answered EIO) keeps its range until the device
//     completes it, so a later write to that range cannot be overwritten by the late one.
// Reads do not order against reads; flushes hold no range.
//
// The list is intrusive (no allocation); checks walk it from the oldest entry, so they cost
// O(requests held), which the queue depth and the connection limit bound.
//
// One RangeOrder is shared by all the server's workers (nbd_server.cpp), so the order holds
// across connections served by different threads: its own mutex guards the list.
//
// Threading: any thread; every call locks the list.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>

namespace keel::vmm::nbd_internal {

struct HeldRange {
  std::uint64_t begin = 0, end = 0;  ///< Bytes [begin, end) on the device.
  bool writes = false;               ///< The request changes the range.
  bool linked = false;
  HeldRange* prev = nullptr;
  HeldRange* next = nullptr;
};

class RangeOrder {
 public:
  /// Appends `r` (admission order). An empty range is not held.
  void hold(HeldRange& r) noexcept;
  /// Releases `r` (no-op when it is not held).
  void release(HeldRange& r) noexcept;
  /// True when no range held before `r` conflicts with it (`r` must be held, or empty).
  bool may_start(const HeldRange& r) const noexcept;
  std::size_t size() const noexcept {
    std::lock_guard lock(mu_);
    return size_;
  }

 private:
  mutable std::mutex mu_;  // everything below, and the links of every HeldRange in the list
  HeldRange* head_ = nullptr;
  HeldRange* tail_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace keel::vmm::nbd_internal
