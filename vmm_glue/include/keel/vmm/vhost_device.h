// keel/vmm/vhost_device.h - what the vhost-user server drives: a virtio device of one guest
// (virtio-blk: Paravisor; virtio-net: NetParavisor), with the path-state vocabulary both
// share (the design brief's failover: Absent, Ready, Active, Draining, Fallback).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "keel/result.h"
#include "keel/vmm/virtqueue.h"

namespace keel::vmm {

/// Which path carries the guest's IO (design brief, "Failover").
enum class PathState : std::uint8_t {
  absent,    ///< No VF: everything on the fallback.
  ready,     ///< VF up again, traffic about to move back.
  active,    ///< Accelerated: IO goes to the VF.
  draining,  ///< VF lost: in-flight VF IO is being re-issued on the fallback.
  fallback,  ///< Software path; the VF is probed for its return.
};
const char* to_string(PathState s) noexcept;

struct Transition {
  PathState from;
  PathState to;
  std::string reason;
  std::uint64_t card_time_ns;
};

struct ParavisorCounters {
  std::uint64_t requests = 0;          ///< Guest requests completed.
  std::uint64_t vf_ios = 0;            ///< NVMe commands completed on the VF.
  std::uint64_t fallback_ios = 0;      ///< Requests completed by the host service.
  std::uint64_t reissued = 0;          ///< VF commands re-issued on the fallback.
  std::uint64_t bounced = 0;           ///< VF transfers that went through the bounce pool.
  std::uint64_t pool_bounced = 0;      ///< Host transfers through the shared pool (confidential).
  std::uint64_t errors = 0;            ///< Requests completed with a non-OK status.
  std::uint64_t bad_requests = 0;      ///< Malformed requests (completed with an error).
  std::uint64_t notifications = 0;     ///< Interrupts sent to the guest.
  std::uint64_t given_back = 0;        ///< Unfinished requests returned to the ring at a stop.
  std::uint64_t to_fallback = 0;       ///< Switches to the fallback.
  std::uint64_t to_vf = 0;             ///< Switches back to the VF.
  std::uint64_t kept_queue_pairs = 0;  ///< VF queue pairs taken over running (keepalive).
};
/// A virtio device behind the vhost-user server (keel/vmm/vhost_user.h): the server handles
/// the protocol and guest memory, the device its queues. Threading as the server documents.
class VhostDevice {
 public:
  virtual ~VhostDevice() = default;

  /// Virtio feature bits the device offers (VERSION_1 at least).
  virtual std::uint64_t device_features() const noexcept = 0;
  /// Errors: invalid_argument (features not offered, or VERSION_1 missing).
  virtual Status set_features(std::uint64_t features) = 0;
  /// The vhost-user protocol features to offer, of those the server can (`offered`): a device
  /// drops those it has no use for (virtio-net: no config space messages, no inflight records,
  /// which QEMU's vhost-user-net never sends and warns about).
  virtual std::uint64_t protocol_features(std::uint64_t offered) const noexcept { return offered; }
  /// Virtqueues the device has (what the front end may set up).
  virtual unsigned num_queues() const noexcept = 0;
  /// The device-specific configuration space as GET_CONFIG returns it (at most 256 bytes).
  virtual std::vector<std::byte> config_bytes() const = 0;
  /// SET_CONFIG of `bytes` at `offset`. The default: no field is writable, so only writing
  /// what is already there succeeds. Errors: invalid_argument naming the byte.
  virtual Status write_config(std::uint32_t offset, std::span<const std::byte> bytes);

  /// Sets up virtqueue `q`. Errors: invalid_argument (bad index, size, layout).
  virtual Status set_queue(unsigned q, const Virtqueue::Layout& layout,
                           std::uint16_t last_avail = 0) = 0;
  /// The eventfd signalled when queue `q` has used buffers for the guest (-1: none).
  virtual void set_call_fd(unsigned q, int fd) = 0;
  /// The eventfd the guest kicks queue `q` on (-1: the device polls the ring).
  virtual void set_kick_fd(unsigned q, int fd) = 0;
  /// Starts the data path for every configured queue.
  virtual Status start() = 0;
  /// Stops the data path; what is in flight completes or goes back to its ring first.
  /// `keep_vf_queues`: servicing (the device keeps what it can of its VF running).
  virtual void stop(bool keep_vf_queues = false) = 0;
  /// DEVICE_NEEDS_RESET: the driver broke a virtqueue.
  virtual bool needs_reset() const noexcept = 0;
  /// Last avail index of queue `q` (GET_VRING_BASE).
  virtual std::uint16_t last_avail(unsigned q) const noexcept = 0;
  /// One pass of the data path when the device runs without threads; returns the work done.
  virtual unsigned run_once() = 0;

  virtual std::vector<Transition> transitions() const = 0;
  virtual ParavisorCounters counters() const = 0;
};

}  // namespace keel::vmm
