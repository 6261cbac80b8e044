// The data path of one virtqueue: guest requests in, NVMe commands (VF) or host-service
// requests (fallback) out, completions back to the guest. Owned by one thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "keel/drivers/nvme/queue_pair.h"
#include "keel/thread_cpu.h"
#include "keel/vmm/blk_request.h"
#include "keel/vmm/blk_split.h"
#include "keel/vmm/host_service.h"
#include "keel/vmm/paravisor.h"
#include "keel/vmm/virtqueue.h"

namespace keel::vmm {

class QueueWorker {
 public:
  /// Chunks per worker of the VF bounce pool and of the shared pool (confidential), each the
  /// size of the largest sub-request.
  static constexpr unsigned kPoolChunks = 32;
  static constexpr std::uint32_t kChunkBytes = 128 * 1024;

  /// `pool`: confidential mode, this worker's kPoolChunks * kChunkBytes of the shared pool
  /// (at `pool_addr` in the host service); nullptr otherwise.
  QueueWorker(Paravisor& pv, unsigned index, std::unique_ptr<HostServiceClient> host,
              std::byte* pool = nullptr, std::uint64_t pool_addr = 0);
  ~QueueWorker();

  Status setup(const Virtqueue::Layout& layout, bool event_idx, std::uint16_t last_avail);
  bool configured() const noexcept { return vq_.ready(); }
  /// One pass: reap completions, take new requests, submit, notify. Returns requests completed.
  unsigned run_once() noexcept { return pass(true); }
  /// Thread body until the paravisor stops.
  void run_thread();
  /// Takes no new request; waits (bounded by ParavisorConfig::quiesce_timeout) until the
  /// requests taken have completed, then drops the VF queue pair. Requests still not complete
  /// then are given back: if they are the last ones taken, last_avail is moved back before
  /// them (the front end makes them available again after GET_VRING_BASE); one followed by a
  /// completed request cannot be given back that way and completes with IOERR. Late
  /// completions of their IO are recognised (tag epoch) and ignored.
  void quiesce();

  unsigned index() const noexcept { return index_; }
  int call_fd = -1;
  int kick_fd = -1;
  Virtqueue& vq() noexcept { return vq_; }
  /// CPU time of the worker thread so far (its final figure once it has ended).
  std::uint64_t thread_cpu_ns() const noexcept { return cpu_.ns(); }
  /// True once run_thread() has returned (stop() waits for it, interrupting a blocked write).
  bool thread_exited() const noexcept { return exited_.load(std::memory_order_acquire); }

  struct Counters {
    std::atomic<std::uint64_t> requests{0}, vf_ios{0}, fallback_ios{0}, reissued{0}, bounced{0},
        pool_bounced{0}, errors{0}, bad_requests{0}, notifications{0}, given_back{0};
  };
  const Counters& counters() const noexcept { return counters_; }

 private:
  struct Sub {
    SubRequest r;
    bool done = false;
    bool ok = false;
    bool on_vf = false;
    bool reissued = false;
    int bounce = -1;  // bounce chunk index while the VF uses one
    int pool = -1;    // shared-pool chunk index while the host uses one (confidential)
  };
  struct Slot {
    bool busy = false;
    std::uint16_t avail_pos = 0;  // the avail index it was taken from
    BlkRequest req;
    std::vector<Sub> subs;  // sized at setup (max_subs_per_request), never grown
    unsigned nsubs = 0;
    unsigned left = 0;
  };
  struct Pending {
    std::uint16_t slot;
    std::uint16_t sub;
  };

  unsigned pass(bool take) noexcept;
  void sync_vf() noexcept;
  /// The VF bounce pool, allocated on first use; false while the VF cannot map it (absent).
  bool alloc_bounce() noexcept;
  void take_requests() noexcept;
  bool split(Slot& s) noexcept;
  std::uint64_t tag_of(std::uint16_t slot, std::uint16_t sub, int pool_chunk) const noexcept;
  void release_pool(int chunk) noexcept;
  void give_back_unfinished() noexcept;
  void submit_pending() noexcept;
  bool submit_vf(std::uint16_t slot, std::uint16_t sub) noexcept;
  bool submit_host(std::uint16_t slot, std::uint16_t sub) noexcept;
  void reap_vf() noexcept;
  void reap_host() noexcept;
  void finish(std::uint16_t slot, std::uint16_t sub, bool ok) noexcept;
  void complete(Slot& s) noexcept;
  void notify_guest() noexcept;
  bool use_vf() const noexcept;

  Paravisor& pv_;
  const unsigned index_;
  std::unique_ptr<HostServiceClient> host_;
  Virtqueue vq_;
  BlkLimits limits_;
  std::vector<Slot> slots_;       // indexed by chain head
  std::vector<ChainSeg> chain_;   // scratch
  std::vector<Pending> pending_;  // subs waiting for a path (ring full, no bounce/pool chunk)
  std::vector<Pending> retry_;    // scratch for submit_pending
  std::unique_ptr<drivers::nvme::QueuePair> qp_;
  std::uint64_t qp_epoch_ = 0;
  bool draining_ = false;
  std::uint64_t drained_epoch_ = 0;  // the loss this worker reported drained
  fpga::DmaBuffer bounce_;
  std::vector<int> free_bounce_;
  std::byte* pool_ = nullptr;  // confidential: the shared pool, the host's only view of data
  std::uint64_t pool_addr_ = 0;
  std::vector<int> free_pool_;
  std::uint64_t held_pool_ = 0;  // pool chunks the host service may still use (bit per chunk)
  std::uint32_t max_sub_bytes_ = kChunkBytes;
  SplitParams split_params_;
  unsigned sub_cap_ = 0;     // subs per slot
  std::uint32_t epoch_ = 0;  // in every tag; bumps at setup() and when requests are given back
  std::vector<DataSeg> seg_scratch_;       // kMaxSubSegs: one sub's segments
  std::vector<SubRequest> split_scratch_;  // sub_cap_

  unsigned inflight_ = 0;  // requests taken and not yet completed
  bool pushed_ = false;    // used entries pushed since the last notification decision
  ThreadCpuMeter cpu_;
  std::atomic<bool> exited_{false};
  bool quiescing_ = false;  // quiesce() runs the data path on the control thread
  Counters counters_;
};

}  // namespace keel::vmm
