// nbd_device_queue.h - the virtio-blk requests of the NBD server on their way to the device
// (nbd_device.h): queued in order until the virtqueue has descriptors for them, published with
// one kick per batch, and matched with their completions.
//
// Threading: used by the server thread only.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "keel/vmm/guest_memory.h"
#include "nbd_buffers.h"
#include "nbd_device.h"
#include "nbd_stats.h"

namespace keel::vmm::nbd_internal {

struct Req;

enum class VKind : std::uint8_t { read, write, flush, zeroes };

/// One virtio-blk request of an NBD request.
struct VOp {
  Req* req = nullptr;
  VKind kind = VKind::read;
  bool scratch = false;     // data in the request's scratch chunk instead of its buffer
  std::uint32_t pos = 0;    // byte position in the buffer (or scratch chunk)
  std::uint32_t bytes = 0;  // data bytes (read/write) or zeroed bytes
  std::uint64_t sector = 0;
  int wz_slot = -1;  // write-zeroes payload slot while on the device
};

/// Told of every completed virtio-blk request.
class OpSink {
 public:
  virtual ~OpSink() = default;
  /// `status`: the virtio-blk status byte.
  virtual void op_done(const VOp& op, std::uint8_t status) = 0;
};

class DeviceQueue {
 public:
  DeviceQueue(NbdDevice& dev, GuestMemory& mem, const DataBuffers& buffers, Counters& counters)
      : dev_(dev), mem_(mem), buffers_(buffers), counters_(counters) {}

  /// A write-zeroes payload slot per virtqueue entry (16 bytes each at `wz_gpa`) and the table of
  /// requests on the device. Allocates; called once at setup.
  void init(std::uint64_t wz_gpa, std::uint16_t entries);

  /// Queues `op` behind the others.
  void push(const VOp& op) { pending_.push_back(op); }
  /// Nothing waits for descriptors.
  bool empty() const noexcept { return pending_.empty(); }
  /// The first queued request fits the virtqueue now.
  bool can_submit() const;
  /// Publishes queued requests in order while they fit, then kicks once.
  void submit();
  /// Takes every used entry, telling `sink` of each; returns how many.
  unsigned reap(OpSink& sink);

 private:
  NbdDevice& dev_;
  GuestMemory& mem_;
  const DataBuffers& buffers_;
  Counters& counters_;
  std::uint64_t wz_gpa_ = 0;
  std::vector<int> free_wz_;
  std::deque<VOp> pending_;    // waiting for descriptors
  std::vector<VOp> inflight_;  // by virtio request id (descriptor head)
  std::vector<bool> inflight_valid_;
};

}  // namespace keel::vmm::nbd_internal
