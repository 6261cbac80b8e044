// A queue worker's accelerated path: its VF queue pair, the bounce pool for transfers the VF
// cannot address in place, and the drain of a queue pair whose VF was lost. Owned by the worker
// (one thread at a time).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "keel/drivers/nvme/queue_pair.h"
#include "keel/fpga/dma.h"
#include "worker_link.h"
#include "worker_requests.h"

namespace keel::vmm::worker {

class VfPath {
 public:
  VfPath(const WorkerConfig& config, const WorkerPorts& ports, Requests& requests,
         Counters& counters);
  ~VfPath();
  VfPath(const VfPath&) = delete;
  VfPath& operator=(const VfPath&) = delete;

  /// A new virtqueue setup: the bounce chunks are free again unless a queue pair may still use
  /// them; the bounce pool is allocated if the VF takes mappings now.
  void setup() noexcept;
  /// New sub-requests go to the VF: a queue pair that is not draining, and the path active.
  bool usable() const noexcept;
  /// The queue pair, or nullptr (no VF, not created yet, dropped after a loss).
  drivers::nvme::QueuePair* queue() const noexcept { return qp_.get(); }

  /// What sync() saw at the start of a pass (the paravisor may move on while it runs).
  struct Look {
    PathState state;
    std::uint64_t epoch;
  };
  /// First half of a pass's sync: a queue pair of a lost VF (older epoch, path not active)
  /// starts draining. The caller then reaps it if must_reap().
  Look look() noexcept;
  bool must_reap() const noexcept { return draining_ && qp_ != nullptr; }
  /// After that reap: drops the drained queue pair, reports the drain once per loss, and
  /// creates a queue pair when the path is active again and the virtqueue is set up.
  void settle(const Look& look, bool vq_ready, std::uint16_t vq_size) noexcept;
  /// A command failed on the VF (gone, timed out): no new ones go there until the next sync.
  void start_draining() noexcept { draining_ = true; }

  /// Submits sub-request `sub` of slot `slot`.
  Submitted submit(std::uint16_t slot, std::uint16_t sub) noexcept;

  struct Done {
    std::uint16_t slot;
    std::uint16_t sub;
    drivers::nvme::IoStatus status;
  };
  struct Reaped {
    unsigned polled;  ///< Completions taken from the queue pair (a full span: poll again).
    unsigned count;   ///< Of those, the ones of the current setup, written to `out`.
  };
  /// Reaps completions (reads copied back out of the bounce pool, chunks freed). Only with a
  /// queue pair.
  Reaped reap(std::span<Done> out) noexcept;

  /// Drops the queue pair (deleting its queues) and frees every bounce chunk: no VF command
  /// can still use one.
  void drop() noexcept;
  /// Servicing: the queue pair's state, appended to `out` (nothing without one); the queue
  /// pair is then the next process's (QueuePair::save).
  Status save(std::vector<drivers::nvme::SavedQueuePair>& out) noexcept;

 private:
  /// The bounce pool, allocated on first use; false while the VF cannot map it (absent).
  bool alloc_bounce() noexcept;
  void free_all_bounce() noexcept;

  const WorkerConfig& config_;
  WorkerPorts ports_;
  Requests& requests_;
  Counters& counters_;
  std::unique_ptr<drivers::nvme::QueuePair> qp_;
  std::uint64_t qp_epoch_ = 0;
  std::uint64_t tried_epoch_ =
      ~std::uint64_t{0};  ///< The VF bring-up a queue pair was last tried for.
  bool draining_ = false;
  std::uint64_t drained_epoch_ = 0;  // the loss this worker reported drained
  fpga::DmaBuffer bounce_;
  std::vector<int> free_bounce_;
  std::vector<DataSeg> seg_scratch_;  // kMaxSubSegs: one sub's segments
};

}  // namespace keel::vmm::worker
