// keel/vmm/blk_split.h - a parsed virtio-blk request cut into sub-requests that each fit one
// NVMe command (VF) or one host-service request (fallback), and the segments of each.
//
// A sub-request is a byte range of the request's data stream: it never copies segments, so a
// slot's sub-requests are small and preallocated. Every sub-request ends on a block boundary
// and spans at most kMaxSubSegs data segments, by construction; a request that cannot be cut
// that way (a block spread over more than kMaxSubSegs descriptors) or that needs more
// sub-requests than the caller has room for is refused, never truncated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "keel/vmm/blk_request.h"

namespace keel::vmm {

/// Data segments one sub-request may span (the fixed arrays submissions are built in).
inline constexpr unsigned kMaxSubSegs = 32;

/// Appends `v` to the fixed array `out` of which `n` entries are used, if there is room: the
/// bound and the write in one place. False, writing nothing, when `out` is full.
template <typename T>
bool push_bounded(std::span<T> out, std::size_t& n, const T& v) noexcept {
  if (n >= out.size()) return false;
  out[n++] = v;
  return true;
}

enum class SubOp : std::uint8_t { read, write, flush, write_zeroes };

struct SubRequest {
  SubOp op = SubOp::read;
  std::uint64_t sector = 0;   ///< First 512-byte sector.
  std::uint32_t bytes = 0;    ///< Data bytes (read/write) or bytes to zero; 0 for flush.
  std::uint16_t seg = 0;      ///< Read/write: first data segment of the request it covers,
  std::uint32_t seg_off = 0;  ///< and the offset into that segment where it starts.
};

struct SplitParams {
  std::uint32_t max_sub_bytes = 128 * 1024;     ///< Largest read/write sub (a multiple of block).
  std::uint32_t block_bytes = 512;              ///< Subs start and end on these boundaries.
  std::uint32_t max_zero_bytes = 65536u * 512;  ///< Largest write-zeroes sub (ditto).
};

struct SplitResult {
  unsigned count = 0;    ///< Sub-requests written (0: refused, see why).
  const char* why = "";  ///< Why the request was refused.
};

/// Cuts `r` (ParseOutcome::submit) into sub-requests in `out`. Refuses (count 0) a request
/// that needs more than out.size() subs or one that cannot end a sub on a block boundary within
/// kMaxSubSegs segments.
SplitResult split_blk_request(const BlkRequest& r, const SplitParams& p,
                              std::span<SubRequest> out) noexcept;

/// The data segments of read/write sub `s` of `r`, written to `out`. Returns how many, or 0 if
/// `out` is too small or `s` does not lie within `r`'s data (a bug, never a guest's doing).
unsigned sub_segments(const BlkRequest& r, const SubRequest& s, std::span<DataSeg> out) noexcept;

/// How many preallocated subs a slot needs so that every request within the limits whose data
/// segments are multiples of `block_bytes` splits (others may be refused as too fragmented).
unsigned max_subs_per_request(const BlkLimits& limits, const SplitParams& p) noexcept;

}  // namespace keel::vmm
