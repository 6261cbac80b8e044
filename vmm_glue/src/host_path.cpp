// The host path of a queue worker: host storage service requests, and the shared pool a
// confidential guest's data goes through.
#include "host_path.h"

#include <algorithm>
#include <cstring>

namespace keel::vmm::worker {

namespace blk = virtio::blk;

static_assert(kMaxSubSegs <= kHostMaxSegments, "a sub-request must fit one host request");

HostPath::HostPath(const WorkerConfig& config, GuestMemory& memory,
                   std::unique_ptr<HostServiceClient> client, Requests& requests,
                   Counters& counters)
    : config_(config),
      memory_(memory),
      client_(std::move(client)),
      requests_(requests),
      counters_(counters) {
  if (config_.pool != nullptr) {
    free_pool_.reserve(kPoolChunks);
    for (unsigned i = 0; i < kPoolChunks; ++i) free_pool_.push_back(static_cast<int>(i));
  }
  seg_scratch_.resize(kMaxSubSegs);
}

void HostPath::setup() noexcept {
  if (config_.pool == nullptr) return;
  free_pool_.clear();
  for (unsigned i = 0; i < kPoolChunks; ++i) {
    if ((held_pool_ >> i & 1) == 0) free_pool_.push_back(static_cast<int>(i));
  }
}

void HostPath::release_pool(int chunk) noexcept {
  if (chunk < 0 || chunk >= static_cast<int>(kPoolChunks)) return;
  if ((held_pool_ >> chunk & 1) == 0) return;
  held_pool_ &= ~(std::uint64_t{1} << chunk);
  free_pool_.push_back(chunk);
}

Submitted HostPath::submit(std::uint16_t slot, std::uint16_t sub) noexcept {
  Slot& s = requests_.slots[slot];
  Sub& b = s.subs[sub];
  HostSegment segs[kMaxSubSegs];
  std::size_t n = 0;
  int chunk_index = -1;
  const bool rw = b.r.op == SubOp::read || b.r.op == SubOp::write;
  const unsigned nd = rw ? sub_segments(s.req, b.r, seg_scratch_) : 0;
  if (rw && (nd == 0 || b.r.bytes > kMaxSubBytes)) return Submitted::failed;  // split() bounds
  std::span<const DataSeg> data{seg_scratch_.data(), nd};
  if (config_.pool != nullptr && rw) {
    // Confidential: the host sees only the shared pool. Writes are copied in here, reads are
    // copied out in reap().
    if (free_pool_.empty() || client_->outstanding() >= client_->capacity()) {
      return Submitted::later;
    }
    chunk_index = free_pool_.back();
    std::byte* chunk = config_.pool + std::size_t(chunk_index) * kMaxSubBytes;
    if (b.r.op == SubOp::write) {
      std::size_t off = 0;
      for (const DataSeg& d : data) {
        std::memcpy(chunk + off, memory_.translate(d.gpa, d.len), d.len);
        off += d.len;
      }
    }
    const HostSegment whole{config_.pool_addr + std::uint64_t(chunk_index) * kMaxSubBytes,
                            b.r.bytes};
    (void)push_bounded<HostSegment>(segs, n, whole);
  } else {
    for (const DataSeg& d : data) (void)push_bounded<HostSegment>(segs, n, {d.gpa, d.len});
    if (n != nd) return Submitted::failed;  // never: nd <= kMaxSubSegs
  }
  HostOp op = HostOp::read;
  switch (b.r.op) {
    case SubOp::read: op = HostOp::read; break;
    case SubOp::write: op = HostOp::write; break;
    case SubOp::flush: op = HostOp::flush; break;
    case SubOp::write_zeroes: op = HostOp::write_zeroes; break;
  }
  const std::uint32_t zero_bytes = b.r.op == SubOp::write_zeroes ? b.r.bytes : 0;
  if (!client_->submit(tag_of(requests_.epoch, slot, sub, chunk_index), op,
                       b.r.sector * blk::kSectorBytes, {segs, n}, zero_bytes)) {
    return Submitted::later;
  }
  if (chunk_index >= 0) {
    free_pool_.pop_back();
    held_pool_ |= std::uint64_t{1} << chunk_index;
    b.pool = chunk_index;
    counters_.pool_bounced.fetch_add(1, std::memory_order_relaxed);
  }
  b.on_vf = false;
  return Submitted::yes;
}

HostPath::Reaped HostPath::reap(std::span<Done> out) noexcept {
  HostCompletion c[64];
  const std::size_t room = std::min(out.size(), std::size(c));
  const unsigned n = client_->poll({c, room});
  unsigned kept = 0;
  for (unsigned i = 0; i < n; ++i) {
    const std::uint16_t slot = slot_of(c[i].tag), sub = sub_of(c[i].tag);
    if (!tag_current(requests_, c[i].tag) ||
        requests_.slots[slot].subs[sub].pool != chunk_of(c[i].tag)) {
      release_pool(chunk_of(c[i].tag));  // a request given back earlier: its chunk is free now
      continue;
    }
    counters_.fallback_ios.fetch_add(1, std::memory_order_relaxed);
    Sub& b = requests_.slots[slot].subs[sub];
    if (b.pool >= 0) {
      if (c[i].result == 0 && b.r.op == SubOp::read) {
        const std::byte* chunk = config_.pool + std::size_t(b.pool) * kMaxSubBytes;
        const unsigned nd = sub_segments(requests_.slots[slot].req, b.r, seg_scratch_);
        std::size_t off = 0;
        for (unsigned k = 0; k < nd; ++k) {
          const DataSeg& d = seg_scratch_[k];
          std::memcpy(memory_.translate(d.gpa, d.len), chunk + off, d.len);
          off += d.len;
        }
      }
      release_pool(b.pool);
      b.pool = -1;
    }
    out[kept++] = Done{slot, sub, c[i].result == 0};
  }
  return {n, kept};
}

}  // namespace keel::vmm::worker
