// What a queue worker is given by the paravisor that owns it, and all it may use of it: fixed
// settings (WorkerConfig), the resources it works on (WorkerPorts) and the failover state
// machine it follows and reports to (WorkerLink). Nothing else of the paravisor is reachable.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "keel/clock.h"
#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/queue_pair.h"
#include "keel/fpga/function.h"
#include "keel/fpga/stepper.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/paravisor.h"

namespace keel::vmm::worker {

/// Settings fixed for the worker's life (taken from ParavisorConfig and the disk the guest was
/// given at creation). Every member has a default.
struct WorkerConfig {
  unsigned index = 0;  ///< Virtqueue (and VF queue pair, host channel) index.
  std::uint16_t max_queue_size = 256;
  std::uint32_t seg_max = 126;
  std::uint32_t size_max = 128 * 1024;
  std::uint32_t max_request_bytes = 16u << 20;
  std::uint64_t capacity_sectors = 0;
  std::uint32_t block_bytes = 512;  ///< The guest's logical block (the VF's LBA size).
  std::string serial = "keel";
  /// Guest memory is never mapped for the VF (bounce every transfer) nor shown to the host.
  bool confidential = false;
  /// The worker runs on a thread of its own: VF queue pairs use MSI-X to wake it.
  bool interrupts = false;
  std::chrono::nanoseconds command_timeout = std::chrono::seconds(1);
  /// How long quiesce() waits for the requests taken.
  std::chrono::nanoseconds quiesce_timeout = std::chrono::seconds(3);
  /// Longest idle sleep of the worker thread (the probe timer and stop() need turns).
  std::chrono::nanoseconds max_sleep = std::chrono::milliseconds(50);
  /// Confidential mode: this worker's kPoolChunks * kChunkBytes of the shared pool, at
  /// `pool_addr` in the host service; nullptr otherwise.
  std::byte* pool = nullptr;
  std::uint64_t pool_addr = 0;
};

/// The paravisor side of a worker: its failover state, its VF controller and the guest's
/// notifier. Implemented by the paravisor; every call may come from the worker's thread.
class WorkerLink {
 public:
  virtual ~WorkerLink() = default;
  virtual PathState state() const noexcept = 0;
  /// Moves on every loss of the VF: a queue pair of an older epoch is drained and dropped.
  virtual std::uint64_t vf_epoch() const noexcept = 0;
  /// This worker saw the VF fail (a command gone or timed out): start the failover.
  virtual void vf_failed(const std::string& reason) = 0;
  /// This worker has re-issued every VF command of the current loss on the host path.
  virtual void worker_drained() = 0;
  /// Runs `fn` on the VF controller while no transition can happen, if there is a controller
  /// and (with `only_active`) the VF path is active. Returns whether `fn` ran.
  virtual bool with_controller(bool only_active,
                               const std::function<void(drivers::nvme::Controller&)>& fn) = 0;
  /// Signals a completion to the guest of a queue without a call fd (in-process front ends).
  virtual void notify(unsigned queue) = 0;
  /// False once the paravisor stops its worker threads.
  virtual bool running() const noexcept = 0;
  /// Readable once the paravisor stops its worker threads, so a sleeping worker wakes at once
  /// (a control-plane pause, an upgrade's drain, waits for none of its idle sleeps); -1: none.
  /// Never read: every worker must see it.
  virtual int stop_fd() const noexcept { return -1; }
  /// Worker 0's thread calls it on every turn: the VF probe timer of the fallback.
  virtual void tick() = 0;
  /// DMA memory for a worker's VF bounce pool: from the paravisor's DMA arena when it has one
  /// (memory that outlives the process, for servicing), else the VF's own. Errors: as
  /// fpga::Function::alloc_dma.
  virtual Result<fpga::DmaBuffer> vf_dma(std::size_t bytes) = 0;
  /// A queue pair a previous process left running on the VF (NVMe keepalive), restored when
  /// the controller was taken over, for this worker to use instead of creating one; null once
  /// every one is taken. Call inside with_controller (the controller of its generation).
  virtual std::unique_ptr<drivers::nvme::QueuePair> take_kept_queue_pair() = 0;

 protected:
  WorkerLink() = default;
  WorkerLink(const WorkerLink&) = default;
  WorkerLink& operator=(const WorkerLink&) = default;
};

/// What a worker works on. All of it outlives the worker.
struct WorkerPorts {
  WorkerLink& link;
  GuestMemory& memory;
  fpga::Function* vf;  ///< Null: no VF for this guest (its bounce pool is never allocated).
  const Clock& clock;
  fpga::Stepper& stepper;
};

}  // namespace keel::vmm::worker
