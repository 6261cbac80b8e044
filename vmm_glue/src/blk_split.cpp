#include "keel/vmm/blk_split.h"

#include <algorithm>

namespace keel::vmm {

namespace blk = virtio::blk;

SplitResult split_blk_request(const BlkRequest& r, const SplitParams& p,
                              std::span<SubRequest> out) noexcept {
  std::size_t n = 0;
  auto result = [&] { return SplitResult{static_cast<unsigned>(n), ""}; };
  if (r.type == blk::kFlush) {
    if (!push_bounded(out, n, SubRequest{SubOp::flush, 0, 0, 0, 0})) return {0, "no room"};
    return result();
  }
  if (r.type == blk::kWriteZeroes) {
    const std::uint64_t total = r.sectors * blk::kSectorBytes;
    for (std::uint64_t done = 0; done < total;) {
      const auto bytes =
          static_cast<std::uint32_t>(std::min<std::uint64_t>(total - done, p.max_zero_bytes));
      const SubRequest sub{SubOp::write_zeroes, r.sector + done / blk::kSectorBytes, bytes, 0, 0};
      if (!push_bounded(out, n, sub))
        return {0, "write-zeroes needs more sub-requests than a slot holds"};
      done += bytes;
    }
    return result();
  }
  const SubOp op = r.type == blk::kIn ? SubOp::read : SubOp::write;
  std::uint64_t total = 0;
  for (const DataSeg& d : r.data) total += d.len;
  // Cursor: byte `off` of the data stream, `used` bytes into segment `si`.
  std::size_t si = 0;
  std::uint32_t used = 0;
  std::uint64_t off = 0;
  while (off < total) {
    while (si < r.data.size() && used == r.data[si].len) {  // skip exhausted (or empty) segments
      ++si;
      used = 0;
    }
    if (si == r.data.size()) break;
    // The furthest end reachable with at most kMaxSubSegs segments and max_sub_bytes bytes.
    std::uint64_t end = off + (r.data[si].len - used);
    for (std::size_t k = si + 1, segs = 1; k < r.data.size() && segs < kMaxSubSegs; ++k) {
      if (r.data[k].len == 0) continue;
      end += r.data[k].len;
      ++segs;
    }
    end = std::min<std::uint64_t>({end, off + p.max_sub_bytes, total});
    end -= end % p.block_bytes;  // data offset 0 is the first block's start
    if (end <= off) return {0, "a block spread over more descriptors than a sub-request takes"};
    const SubRequest sub{op, r.sector + off / blk::kSectorBytes,
                         static_cast<std::uint32_t>(end - off), static_cast<std::uint16_t>(si),
                         used};
    if (!push_bounded(out, n, sub)) {
      return {0, "request too fragmented (more sub-requests than a slot holds)"};
    }
    // Advance the cursor by end - off bytes.
    for (std::uint64_t left = end - off; left > 0;) {
      const std::uint64_t take = std::min<std::uint64_t>(left, r.data[si].len - used);
      used += static_cast<std::uint32_t>(take);
      left -= take;
      if (used == r.data[si].len && left > 0) {
        ++si;
        used = 0;
      }
    }
    off = end;
  }
  if (off != total) return {0, "data shorter than its segments claim"};
  return result();
}

unsigned sub_segments(const BlkRequest& r, const SubRequest& s, std::span<DataSeg> out) noexcept {
  std::size_t n = 0;
  std::uint64_t left = s.bytes;
  std::uint32_t skip = s.seg_off;
  for (std::size_t i = s.seg; left > 0; ++i, skip = 0) {
    if (i >= r.data.size() || skip > r.data[i].len) return 0;
    const std::uint32_t take =
        static_cast<std::uint32_t>(std::min<std::uint64_t>(left, r.data[i].len - skip));
    if (take == 0) continue;
    if (!push_bounded(out, n, DataSeg{r.data[i].gpa + skip, take})) return 0;
    left -= take;
  }
  return static_cast<unsigned>(n);
}

unsigned max_subs_per_request(const BlkLimits& limits, const SplitParams& p) noexcept {
  // Byte-limited subs, plus segment-limited ones: each of those consumes kMaxSubSegs - 1 whole
  // segments at least (when segments are whole blocks), and every byte-limited cut adds one.
  const std::uint64_t by_bytes = (limits.max_request_bytes + p.max_sub_bytes - 1) / p.max_sub_bytes;
  const std::uint64_t by_segs = (limits.max_pieces + by_bytes) / (kMaxSubSegs - 1) + 1;
  const std::uint64_t zero =
      (std::uint64_t{limits.max_write_zeroes_sectors} * blk::kSectorBytes + p.max_zero_bytes - 1) /
      p.max_zero_bytes;
  return static_cast<unsigned>(std::max<std::uint64_t>(by_bytes + by_segs + 1, zero));
}

}  // namespace keel::vmm
