// The data path of one virtqueue: guest requests in, sub-requests out on the VF path or the
// host path, completions back to the guest; and the loop (or the control thread's passes) that
// drives it. Owned by one thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "host_path.h"
#include "keel/thread_cpu.h"
#include "keel/vmm/blk_request.h"
#include "keel/vmm/blk_split.h"
#include "keel/vmm/host_service.h"
#include "keel/vmm/vhost_user_inflight.h"
#include "keel/vmm/virtqueue.h"
#include "vf_path.h"
#include "worker_link.h"
#include "worker_requests.h"

namespace keel::vmm {

class QueueWorker {
 public:
  static constexpr unsigned kPoolChunks = worker::kPoolChunks;
  static constexpr std::uint32_t kChunkBytes = worker::kChunkBytes;
  using Counters = worker::Counters;

  /// Everything the worker uses comes in here: its settings, the paravisor's side of it
  /// (`ports.link`), the guest's memory, the VF, the clock, and its host-service channel.
  QueueWorker(const worker::WorkerConfig& config, const worker::WorkerPorts& ports,
              std::unique_ptr<HostServiceClient> host);
  ~QueueWorker();
  QueueWorker(const QueueWorker&) = delete;
  QueueWorker& operator=(const QueueWorker&) = delete;

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
  /// completions of their IO are recognised (tag epoch) and ignored. `keep_vf`: a queue pair
  /// with nothing outstanding stays (servicing saves it running); one with commands left is
  /// dropped all the same.
  void quiesce(bool keep_vf = false);

  /// Work that does not wait on the host service: commands on the VF, or requests waiting
  /// for a path.
  bool has_work_off_host() const noexcept;
  /// Requests at the host service (0 when none).
  unsigned host_outstanding() const noexcept { return host_.client_outstanding(); }
  /// The host channel's wake-up protocol (HostServiceClient::prepare_wait / end_wait).
  HostServiceClient& host_client() noexcept { return host_.client(); }

  unsigned index() const noexcept { return config_.index; }
  int call_fd = -1;
  int kick_fd = -1;
  Virtqueue& vq() noexcept { return vq_; }
  /// CPU time of the worker thread so far (its final figure once it has ended).
  std::uint64_t thread_cpu_ns() const noexcept { return cpu_.ns(); }
  /// True once run_thread() has returned (stop() waits for it, interrupting a blocked write).
  bool thread_exited() const noexcept { return exited_.load(std::memory_order_acquire); }

  const Counters& counters() const noexcept { return counters_; }
  /// Commands on the VF queue pair (0 without one).
  unsigned vf_outstanding() const noexcept {
    return vf_.queue() != nullptr ? vf_.queue()->outstanding() : 0;
  }
  /// Servicing: appends the VF queue pair's saved state (nothing without one).
  Status save_vf(std::vector<drivers::nvme::SavedQueuePair>& out) noexcept { return vf_.save(out); }

 private:
  unsigned pass(bool take) noexcept;
  void sync_vf() noexcept;
  void take_requests() noexcept;
  /// Takes one chain (popped at avail index `pos`, or resubmitted from the inflight record).
  /// False: the ring broke, take nothing more.
  bool take(std::uint16_t head, std::uint16_t pos, bool resubmitted) noexcept;
  bool split(worker::Slot& s) noexcept;
  /// Sends a sub-request down the path in use; false: keep it pending.
  bool submit(std::uint16_t slot, std::uint16_t sub) noexcept;
  bool submit_host(std::uint16_t slot, std::uint16_t sub) noexcept;
  void submit_pending() noexcept;
  void give_back_unfinished() noexcept;
  void reap_vf() noexcept;
  void reap_host() noexcept;
  void finish(std::uint16_t slot, std::uint16_t sub, bool ok) noexcept;
  void complete(worker::Slot& s) noexcept;
  void notify_guest() noexcept;

  const worker::WorkerConfig config_;
  worker::WorkerPorts ports_;
  Counters counters_;
  worker::Requests requests_;
  worker::VfPath vf_;
  worker::HostPath host_;
  Virtqueue vq_;
  BlkLimits limits_;
  std::vector<ChainSeg> chain_;           // scratch
  std::vector<worker::Pending> pending_;  // subs waiting for a path
  std::vector<worker::Pending> retry_;    // scratch for submit_pending
  SplitParams split_params_;
  unsigned sub_cap_ = 0;                   // subs per slot
  std::vector<SubRequest> split_scratch_;  // sub_cap_

  // Heads the inflight record holds from a previous back end (InflightQueue::resubmit()),
  // taken before any new avail entry; nullptr when none.
  const std::vector<std::uint16_t>* resubmit_ = nullptr;
  std::size_t resubmit_next_ = 0;
  unsigned inflight_ = 0;  // requests taken and not yet completed
  bool pushed_ = false;    // used entries pushed since the last notification decision
  ThreadCpuMeter cpu_;
  std::atomic<bool> exited_{false};
  bool quiescing_ = false;  // quiesce() runs the data path on the control thread
};

}  // namespace keel::vmm
