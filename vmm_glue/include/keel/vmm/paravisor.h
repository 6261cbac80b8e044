// keel/vmm/paravisor.h - one guest's paravisor: a virtio-blk device backed by the guest's VF,
// with a software fallback through the host that loses nothing.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "keel/clock.h"
#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/queue_pair.h"
#include "keel/fpga/dma_arena.h"
#include "keel/fpga/function.h"
#include "keel/fpga/stepper.h"
#include "keel/result.h"
#include "keel/unique_fd.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/host_service.h"
#include "keel/vmm/vhost_device.h"
#include "keel/vmm/virtqueue.h"

namespace keel::vmm {

/// Every member has a default.
struct ParavisorConfig {
  /// Virtqueues (and VF queue pairs, and host channels): one worker each.
  unsigned queues = 1;
  /// Largest virtqueue the device accepts.
  std::uint16_t max_queue_size = 256;
  /// Guest memory is private (as for SNP/TDX guests under OpenHCL): never mapped for the VF,
  /// never given to the host storage service. VF transfers bounce through the paravisor's DMA
  /// bounce pool; host-path transfers bounce through a shared pool the paravisor owns (a memfd
  /// it creates and registers with HostStorageService::add_shared_region()), the only memory of
  /// this guest the host sees. The host service must then be started without this guest's RAM
  /// (create() refuses one that maps it).
  bool confidential = false;
  /// Bounds on the VF path; a command past its timeout triggers failover.
  std::chrono::nanoseconds command_timeout = std::chrono::seconds(1);
  std::chrono::nanoseconds admin_timeout = std::chrono::milliseconds(500);
  /// How often a paravisor on the fallback checks whether its VF is back.
  std::chrono::nanoseconds probe_interval = std::chrono::milliseconds(50);
  /// How long stop() (vhost-user GET_VRING_BASE, SET_MEM_TABLE...) waits for the requests a
  /// worker has taken; 0: 2 x command_timeout + 2 x admin_timeout. Requests still unfinished
  /// then are given back to the ring (see QueueWorker::quiesce).
  std::chrono::nanoseconds quiesce_timeout{0};
  /// Data descriptors per request (virtio-blk seg_max); more fail with IOERR.
  std::uint32_t seg_max = 126;
  /// Bytes per data descriptor (virtio-blk size_max, advertised); larger fail with IOERR.
  /// 4 KiB at least.
  std::uint32_t size_max = 128 * 1024;
  /// Data bytes per read or write request (virtio-blk has no field to advertise it); larger
  /// fail with IOERR. Bounds the work and the sub-requests one request costs (a slot holds
  /// about max_request_bytes / 128 KiB of them, preallocated: ~1.7 MiB per 256-entry queue at
  /// the default). The default is seg_max x size_max (126 x 128 KiB = 15.75 MiB) rounded up, so
  /// a guest that honours what is advertised (Linux caps a request at max_segments x
  /// max_segment_size, whatever max_sectors_kb says) never meets it. A multiple of 512 up to
  /// 64 MiB.
  std::uint32_t max_request_bytes = 16u << 20;
  /// Disk size when no VF answers at creation (otherwise the VF's namespace decides).
  std::uint64_t capacity_sectors = 0;
  /// Logical block size the guest is told when no VF answers at creation (otherwise the VF's
  /// LBA size): 512, or a power of two up to 128 KiB.
  std::uint32_t block_bytes = 512;
  /// Servicing (NVMe keepalive): where the VF driver's DMA memory comes from (admin and IO
  /// queues, PRP lists, the bounce pools): an arena that a next process adopts, so save() can
  /// hand the VF over running. Null: the VF's own alloc_dma(). Outlives the paravisor; its
  /// window must not overlap guest RAM (IOVA = GPA).
  fpga::DmaArena* arena = nullptr;
  /// The VF as a previous process left it (save()), in `arena`: create() takes the controller
  /// and its queue pairs over as they run, never touching CC.EN. If the device is not as saved
  /// (reset or FLR meanwhile) or the state does not fit, create() falls back to the full
  /// bring-up, which resets the controller. Read during create() only.
  const drivers::nvme::SavedDriver* restore = nullptr;
  /// virtio-blk GET_ID answer.
  std::string serial = "keel";
  /// true: a thread per queue runs the data path; false: the caller runs run_once().
  bool threads = false;
};

class QueueWorker;

/// The paravisor of one guest. Owns the guest's virtio-blk device state, its VF driver and
/// its host-service channels.
class Paravisor final : public VhostDevice {
 public:
  /// `vf` may be null (the guest starts without one). The VF's resources must already be
  /// committed by the PF manager. Errors: from the VF bring-up (then the guest starts on the
  /// fallback, and this returns ok), invalid_argument (also: confidential, and `host` maps
  /// this guest's RAM), io_error (the shared pool), and host-service errors.
  ///
  /// Like the driver it runs, the paravisor gets its VF, the clock its timeouts and transition
  /// times run on, and the stepper its waits advance (fpga/stepper.h) - on a card, the card
  /// for both - not the card itself. All of them outlive the paravisor.
  static Result<std::unique_ptr<Paravisor>> create(fpga::Function* vf, const Clock& clock,
                                                   fpga::Stepper& stepper, GuestMemory& memory,
                                                   HostStorage& host,
                                                   const ParavisorConfig& config = {});
  ~Paravisor() override;
  Paravisor(const Paravisor&) = delete;
  Paravisor& operator=(const Paravisor&) = delete;

  // ---- virtio-blk device (what a front end drives) ----
  std::uint64_t device_features() const noexcept override;
  /// Errors: invalid_argument (features not offered, or VERSION_1 missing).
  Status set_features(std::uint64_t features) override;
  /// The device configuration space (capacity, seg_max, blk_size, num_queues, ...).
  virtio::blk::Config config_space() const noexcept;
  unsigned num_queues() const noexcept override { return config_space().num_queues; }
  /// config_space() as the 60 bytes of virtio-blk's configuration that are fields.
  std::vector<std::byte> config_bytes() const override;
  /// Sets up virtqueue `q`. Errors: invalid_argument (bad index, size, layout).
  Status set_queue(unsigned q, const Virtqueue::Layout& layout,
                   std::uint16_t last_avail = 0) override;
  /// Where completions are signalled: called with the queue index (in-process guests), or
  /// an eventfd per queue (vhost-user call fds; -1 to use the callback).
  void set_notifier(std::function<void(unsigned)> notify);
  void set_call_fd(unsigned q, int fd) override;
  /// Kick fd per queue (vhost-user): the worker sleeps on it when idle.
  void set_kick_fd(unsigned q, int fd) override;
  /// Starts the workers (threads when configured) for every configured queue.
  Status start() override;
  /// Stops the workers; in-flight requests finish first (bounded by the timeouts). The VF
  /// queue pairs are deleted, unless `keep_vf_queues` (before save(): those with nothing
  /// outstanding stay, running).
  void stop(bool keep_vf_queues = false) override;
  /// Servicing, after stop(): the VF driver's state (controller and every queue pair) for the
  /// next process, which passes it as ParavisorConfig::restore. The VF is left running and
  /// from now on this paravisor writes nothing to it (destroying it deletes no queue and
  /// leaves CC alone); its guest-RAM windows go when it is destroyed. Errors: busy (still
  /// running), invalid_argument (no arena), unavailable (the VF path is not active, or a queue
  /// pair still has commands: the next process then resets the VF), gone.
  Result<drivers::nvme::SavedDriver> save();
  /// DEVICE_NEEDS_RESET: a virtqueue was broken by the driver.
  bool needs_reset() const noexcept override;
  /// Last avail index of queue q (vhost-user GET_VRING_BASE).
  std::uint16_t last_avail(unsigned q) const noexcept override;

  /// Runs every worker once (threads == false): take new requests, reap completions, notify.
  /// Returns the number of guest requests completed.
  unsigned run_once() override;

  /// What wait_for_host() did.
  enum class HostWait {
    not_needed,  ///< Nothing waits on the host service alone (none there, or work elsewhere).
    ready,       ///< The host service completed something: run_once() reaps it.
    timed_out,   ///< `timeout` of real time passed with requests still at the service.
  };
  /// threads == false: if the only outstanding work of the workers is at the host storage
  /// service (nothing on the VF, nothing waiting for a path, in any worker), sleeps until the
  /// service completes a request or `timeout` passes. Lets a lockstep caller wait for the kernel's
  /// IO (real time) without spinning turns of its own clock.
  HostWait wait_for_host(std::chrono::nanoseconds timeout);

  // ---- failover ----
  PathState state() const noexcept { return state_.load(std::memory_order_acquire); }
  /// The VF went away (hot-remove announced by the host). In-flight VF IO moves to the fallback.
  void vf_removed(const std::string& reason);
  /// The VF is back (hot-add announced by the host): probe it now instead of at the next
  /// probe interval.
  void vf_arrived();
  std::vector<Transition> transitions() const override;
  ParavisorCounters counters() const override;
  /// Guest-visible capacity in 512-byte sectors.
  std::uint64_t capacity_sectors() const noexcept { return capacity_; }
  /// Confidential mode: where the shared pool lies in the host service's address space (0 and
  /// 0 otherwise). Its memfd is the paravisor's; the host service maps it.
  std::uint64_t shared_pool_address() const noexcept { return pool_addr_; }
  std::uint64_t shared_pool_bytes() const noexcept { return pool_bytes_; }
  /// CPU time of the worker threads (threads == true), for benchmarks.
  std::uint64_t worker_cpu_ns() const;

 private:
  /// What the queue workers see of the paravisor (worker::WorkerLink; paravisor.cpp).
  class Link;
  Paravisor(fpga::Function* vf, const Clock& clock, fpga::Stepper& stepper, GuestMemory& memory,
            HostStorage& host, const ParavisorConfig& config);
  void transition(PathState to, const std::string& reason);
  /// A worker saw its VF fail (gone or timeout).
  void vf_failed(const std::string& reason);
  void worker_drained();
  void maybe_probe();
  Status bring_up_vf();
  /// Confidential mode: creates the shared pool and registers it with the host service.
  Status make_shared_pool();

  fpga::Function* vf_;
  const Clock& clock_;
  fpga::Stepper& stepper_;
  GuestMemory& memory_;
  HostStorage& host_;
  ParavisorConfig config_;
  std::uint64_t capacity_ = 0;
  std::uint32_t block_bytes_ = 512;  // logical block size the guest sees (the VF's LBA size)
  std::uint64_t features_ = 0;
  int pool_fd_ = -1;           // confidential: memfd of the shared pool
  std::byte* pool_ = nullptr;  // its mapping here
  std::uint64_t pool_bytes_ = 0;
  std::uint64_t pool_addr_ = 0;  // its address in the host service
  std::unique_ptr<drivers::nvme::Controller> ctrl_;
  std::atomic<PathState> state_{PathState::absent};
  std::atomic<std::uint64_t> vf_epoch_{0};  // bumps on every loss; workers drop old queue pairs
  std::atomic<unsigned> drained_{0};
  std::atomic<bool> probe_now_{false};
  bool vf_refused_ = false;  // the VF cannot serve this guest (LBA size, memory layout)
  std::uint64_t next_probe_ns_ = 0;
  mutable std::mutex mu_;  // transitions, controller lifecycle
  std::vector<Transition> log_;
  std::atomic<std::uint64_t> to_fallback_{0}, to_vf_{0};
  /// Queue pairs taken over with the controller (keepalive), until a worker takes each;
  /// guarded by mu_.
  std::vector<std::unique_ptr<drivers::nvme::QueuePair>> kept_pool_;
  std::atomic<std::uint64_t> kept_qps_{0};
  std::unique_ptr<Link> link_;
  std::vector<std::unique_ptr<QueueWorker>> workers_;
  std::function<void(unsigned)> notify_;
  std::vector<std::thread> threads_;
  std::atomic<bool> running_{false};
  UniqueFd stop_fd_;  ///< An eventfd, signalled by stop(), drained by start().
};

}  // namespace keel::vmm
