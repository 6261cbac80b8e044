// nbd_device.h - the virtio-blk device the NBD server drives: in production the paravisor
// through an in-process guest driver (nbd_guest_device.cpp); in the fuzz target an in-memory
// disk. One virtqueue; every call comes from the server thread.
#pragma once

#include <cstdint>
#include <span>

#include "keel/result.h"
#include "keel/vmm/guest_driver.h"

namespace keel::vmm {

class NbdDevice {
 public:
  virtual ~NbdDevice() = default;
  /// Disk size in 512-byte sectors.
  virtual std::uint64_t capacity_sectors() const noexcept = 0;
  /// Guest memory for the server's buffers (GPA), above the rings.
  virtual std::uint64_t alloc(std::uint64_t bytes, std::uint64_t align) = 0;
  /// Completions are signalled on this eventfd.
  virtual void set_call_fd(int fd) = 0;
  /// Starts the device side (the paravisor's workers).
  virtual Status start() = 0;
  virtual unsigned free_descriptors() const noexcept = 0;
  /// Publishes a virtio-blk request (no kick); returns its id. Errors: the ring is full.
  virtual Result<std::uint16_t> submit(std::uint32_t type, std::uint64_t sector,
                                       std::span<const DataSeg> data) = 0;
  virtual unsigned reap(std::span<GuestCompletion> out) = 0;
  virtual void kick() = 0;
};

struct NbdServerConfig;
/// Checks a server configuration against the guest memory it gets. Errors: invalid_argument,
/// naming the setting and its allowed values.
Status check_nbd_config(const NbdServerConfig& config, const GuestMemory& memory);

}  // namespace keel::vmm
