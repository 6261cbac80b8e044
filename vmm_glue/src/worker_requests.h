// The requests a queue worker has in flight, as its VF path, its host path and its loop all see
// them: slots by chain head, sub-requests, the tags that name them on either path, counters.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "keel/vmm/blk_request.h"
#include "keel/vmm/blk_split.h"

namespace keel::vmm::worker {

/// Chunks per worker of the VF bounce pool and of the shared pool (confidential), each the size
/// of the largest sub-request.
inline constexpr unsigned kPoolChunks = 32;
inline constexpr std::uint32_t kChunkBytes = 128 * 1024;
/// The largest sub-request: one chunk.
inline constexpr std::uint32_t kMaxSubBytes = kChunkBytes;
static_assert(kPoolChunks <= 64, "HostPath keeps the pool chunks it lent in a 64-bit mask");

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
  bool resubmitted = false;     // from the inflight record (no avail_pos of its own)
  BlkRequest req;
  std::vector<Sub> subs;  // sized at setup (max_subs_per_request), never grown
  unsigned nsubs = 0;
  unsigned left = 0;
};

/// A sub-request waiting for a path (ring full, no bounce or pool chunk).
struct Pending {
  std::uint16_t slot;
  std::uint16_t sub;
};

/// The slots of one virtqueue and the epoch their tags carry. Owned by the worker; the paths
/// read them and note where each sub-request is (on_vf, bounce, pool).
struct Requests {
  std::vector<Slot> slots;  // indexed by chain head
  std::uint32_t epoch = 0;  // in every tag; bumps at setup and when requests are given back
};

// Tag layout: sub (16 bits), slot (16), pool chunk + 1 (8; 0 = none), epoch (24).
inline constexpr unsigned kSlotShift = 16, kChunkShift = 32, kEpochShift = 40;
inline constexpr std::uint32_t kEpochMask = (1u << 24) - 1;

inline std::uint64_t tag_of(std::uint32_t epoch, std::uint16_t slot, std::uint16_t sub,
                            int pool_chunk) noexcept {
  return (std::uint64_t{epoch & kEpochMask} << kEpochShift) |
         (std::uint64_t(pool_chunk + 1) << kChunkShift) | (std::uint64_t{slot} << kSlotShift) | sub;
}
inline std::uint16_t sub_of(std::uint64_t tag) noexcept { return static_cast<std::uint16_t>(tag); }
inline std::uint16_t slot_of(std::uint64_t tag) noexcept {
  return static_cast<std::uint16_t>(tag >> kSlotShift);
}
inline int chunk_of(std::uint64_t tag) noexcept {
  return static_cast<int>((tag >> kChunkShift) & 0xFF) - 1;
}
inline std::uint32_t epoch_of(std::uint64_t tag) noexcept {
  return static_cast<std::uint32_t>(tag >> kEpochShift) & kEpochMask;
}
/// True when `tag` names a sub-request of the current setup (not one given back or older).
inline bool tag_current(const Requests& q, std::uint64_t tag) noexcept {
  const std::uint16_t slot = slot_of(tag), sub = sub_of(tag);
  return epoch_of(tag) == (q.epoch & kEpochMask) && slot < q.slots.size() &&
         sub < q.slots[slot].nsubs;
}

/// How a path took a sub-request.
enum class Submitted : std::uint8_t {
  yes,     ///< On its way.
  later,   ///< No room now (ring full, no chunk, device resetting): keep it pending.
  failed,  ///< Cannot be done at all (past the end, too large): complete it with an error.
};

struct Counters {
  std::atomic<std::uint64_t> requests{0}, vf_ios{0}, fallback_ios{0}, reissued{0}, bounced{0},
      pool_bounced{0}, errors{0}, bad_requests{0}, notifications{0}, given_back{0};
};

}  // namespace keel::vmm::worker
