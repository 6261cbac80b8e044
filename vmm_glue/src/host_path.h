// A queue worker's fallback path: requests to the host storage service over its channel and,
// for a confidential guest, the chunks of the shared pool the host reads and writes instead of
// guest memory. Owned by the worker (one thread at a time).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "keel/vmm/guest_memory.h"
#include "keel/vmm/host_service.h"
#include "worker_link.h"
#include "worker_requests.h"

namespace keel::vmm::worker {

class HostPath {
 public:
  HostPath(const WorkerConfig& config, GuestMemory& memory,
           std::unique_ptr<HostServiceClient> client, Requests& requests, Counters& counters);

  /// A new virtqueue setup: every pool chunk the host service no longer holds is free.
  void setup() noexcept;
  /// Submits sub-request `sub` of slot `slot` (copied into a pool chunk when confidential).
  Submitted submit(std::uint16_t slot, std::uint16_t sub) noexcept;

  struct Done {
    std::uint16_t slot;
    std::uint16_t sub;
    bool ok;
  };
  struct Reaped {
    unsigned polled;  ///< Completions taken from the channel (a full span: poll again).
    unsigned count;   ///< Of those, the ones of the current setup, written to `out`.
  };
  /// Reaps completions (reads copied back out of the pool). A completion of a request given
  /// back earlier only frees its chunk.
  Reaped reap(std::span<Done> out) noexcept;

  HostServiceClient& client() noexcept { return *client_; }
  unsigned client_outstanding() const noexcept { return client_->outstanding(); }

 private:
  void release_pool(int chunk) noexcept;

  const WorkerConfig& config_;
  GuestMemory& memory_;
  std::unique_ptr<HostServiceClient> client_;
  Requests& requests_;
  Counters& counters_;
  std::vector<int> free_pool_;
  std::uint64_t held_pool_ = 0;       // pool chunks the host service may still use (bit per chunk)
  std::vector<DataSeg> seg_scratch_;  // kMaxSubSegs: one sub's segments
};

}  // namespace keel::vmm::worker
