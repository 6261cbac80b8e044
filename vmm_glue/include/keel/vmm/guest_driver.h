// keel/vmm/guest_driver.h - an in-process virtio-blk guest driver, for tests and benchmarks.
//
// Plays the unmodified guest: lays out split virtqueues in guest memory, negotiates features,
// builds virtio-blk descriptor chains for requests and runs each ring with SplitRingDriver,
// exactly as a guest kernel's inbox driver does (minus the kernel).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "keel/result.h"
#include "keel/vmm/blk_request.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/paravisor.h"
#include "keel/vmm/split_ring_driver.h"
#include "keel/wire/virtio.h"

namespace keel::vmm {

struct GuestCompletion {
  std::uint16_t id;     ///< What submit() returned.
  std::uint8_t status;  ///< virtio-blk status byte.
  std::uint32_t len;    ///< used.len.
};

class GuestDriver {
 public:
  /// Negotiates features with `dev` and sets up `queues` virtqueues of `size` entries in
  /// guest memory from `ring_gpa` (a few pages per queue). Errors: from the device.
  static Result<std::unique_ptr<GuestDriver>> attach(Paravisor& dev, GuestMemory& mem,
                                                     unsigned queues, std::uint16_t size,
                                                     std::uint64_t ring_gpa);
  ~GuestDriver();

  /// Builds a chain [header][data...][status] and publishes it (no kick). Data segments longer
  /// than the device's size_max are cut into several descriptors, as Linux does. Data segments are
  /// device-writable for reads. Returns the request id (chain head), or an error if the ring
  /// is full.
  Result<std::uint16_t> submit(unsigned q, std::uint32_t type, std::uint64_t sector,
                               std::span<const DataSeg> data);
  Result<std::uint16_t> write_zeroes(unsigned q, std::uint64_t sector, std::uint32_t sectors);
  /// Publishes a hand-made chain of raw descriptors (for malformed-input tests): writes
  /// `descs` into the table from index `first` and makes `head` available.
  void publish_raw(unsigned q, std::span<const virtio::Desc> descs, std::uint16_t first,
                   std::uint16_t head);
  /// Reaps used entries; returns how many.
  unsigned reap(unsigned q, std::span<GuestCompletion> out);
  /// Kicks the device if it asked for it (EVENT_IDX avail_event).
  void kick(unsigned q);
  /// Free descriptors left in queue q.
  unsigned free_descriptors(unsigned q) const;
  int kick_fd(unsigned q) const { return queues_[q].kick_fd; }
  /// Sleeps until the device signals queue q (its call eventfd) or `timeout_ms` passes, as a
  /// guest vCPU halts until its interrupt. Call reap() first: it re-arms EVENT_IDX.
  void wait(unsigned q, int timeout_ms);

  /// Servicing: the guest's queues go on with another device (a paravisor that took the old
  /// one's VF over), as a vhost-user front end re-sends them to a new back end: features,
  /// kick and call fds, and every ring at its device's `last_avail`. The old device must be
  /// stopped; the guest's data path (publish, reap, kick, wait) never touches the device, so it
  /// may run on another thread meanwhile. Errors: from the device.
  Status rebind(Paravisor& dev, std::span<const std::uint16_t> last_avail);

  /// Guest memory the test may use for data, above the rings.
  std::uint64_t alloc(std::uint64_t bytes, std::uint64_t align = 4096);
  std::byte* host(std::uint64_t gpa, std::uint64_t len) const { return mem_.translate(gpa, len); }

 private:
  struct Queue {
    std::unique_ptr<SplitRingDriver> ring;
    std::uint64_t hdr = 0;  ///< Per-head scratch: header, status at +16, payload at +32.
    int kick_fd = -1;
    int call_fd = -1;
  };
  GuestDriver(Paravisor& dev, GuestMemory& mem) : dev_(&dev), mem_(mem) {}
  Result<std::uint16_t> publish(unsigned q, std::uint32_t type, std::uint64_t sector,
                                std::span<const DataSeg> data, bool device_writes,
                                std::span<const std::byte> payload);

  Paravisor* dev_;
  GuestMemory& mem_;
  /// The device's, at attach or rebind (the data path asks no device).
  std::atomic<std::uint32_t> size_max_{512};
  std::vector<Queue> queues_;
  std::uint64_t next_free_ = 0;
};

}  // namespace keel::vmm
