// The VF path of a queue worker: queue pair lifecycle across failovers, NVMe submission with
// bounce buffers where PRPs cannot describe the guest's segments, completion reaping.
#include "vf_path.h"

#include <algorithm>
#include <cstring>

#include "keel/log.h"

namespace keel::vmm::worker {

namespace drv = drivers::nvme;
namespace blk = virtio::blk;

namespace {

constexpr log::Logger kLog{"paravisor"};

constexpr unsigned kBounceChunks = kPoolChunks;
constexpr std::uint32_t kPage = 4096;

// NVMe PRPs need dword-aligned addresses, page-aligned joins between segments.
bool prp_compatible(std::span<const DataSeg> segs) {
  for (std::size_t i = 0; i < segs.size(); ++i) {
    if ((segs[i].gpa & 3) != 0) return false;
    if (i > 0 && (segs[i].gpa % kPage) != 0) return false;
    if (i + 1 < segs.size() && ((segs[i].gpa + segs[i].len) % kPage) != 0) return false;
  }
  return true;
}

}  // namespace

VfPath::VfPath(const WorkerConfig& config, const WorkerPorts& ports, Requests& requests,
               Counters& counters)
    : config_(config), ports_(ports), requests_(requests), counters_(counters) {
  seg_scratch_.resize(kMaxSubSegs);
}

VfPath::~VfPath() { qp_.reset(); }

void VfPath::free_all_bounce() noexcept {
  free_bounce_.clear();
  for (unsigned i = 0; i < kBounceChunks; ++i) free_bounce_.push_back(static_cast<int>(i));
}

void VfPath::setup() noexcept {
  if (qp_ == nullptr && bounce_.valid()) free_all_bounce();  // no VF command can still use one
  // A VF that is absent now (removed, being serviced) gets its bounce pool when it answers:
  // until then the host path serves the ring.
  (void)alloc_bounce();
}

bool VfPath::alloc_bounce() noexcept {
  if (bounce_.valid()) return true;
  if (ports_.vf == nullptr) return false;
  auto b = ports_.link.vf_dma(std::size_t{kBounceChunks} * kMaxSubBytes);
  if (!b) return false;
  bounce_ = std::move(b).value();
  free_all_bounce();
  return true;
}

bool VfPath::usable() const noexcept {
  return qp_ != nullptr && !draining_ && ports_.link.state() == PathState::active;
}

VfPath::Look VfPath::look() noexcept {
  const Look look{ports_.link.state(), ports_.link.vf_epoch()};
  if (qp_ != nullptr && (look.epoch != qp_epoch_ || look.state != PathState::active)) {
    draining_ = true;
  }
  return look;
}

void VfPath::settle(const Look& look, bool vq_ready, std::uint16_t vq_size) noexcept {
  if (draining_ && qp_ != nullptr && qp_->outstanding() == 0) qp_.reset();
  if (qp_ == nullptr && draining_) draining_ = false;
  if (look.state == PathState::draining && qp_ == nullptr && drained_epoch_ != look.epoch) {
    drained_epoch_ = look.epoch;
    ports_.link.worker_drained();
  }
  if (qp_ != nullptr || look.state != PathState::active || !vq_ready) return;
  (void)ports_.link.with_controller(true, [&](drv::Controller& ctrl) {
    const bool first_try = tried_epoch_ != ports_.link.vf_epoch();
    tried_epoch_ = ports_.link.vf_epoch();
    if (!alloc_bounce()) {
      // The VF is not taking DMA mappings: this queue stays on the host path (said once).
      if (first_try)
        kLog.warn("VF bounce buffer: no DMA memory; this queue stays on the host path");
      return;
    }
    // Keepalive: a queue pair the previous process left running on the VF comes first.
    if (auto kept = ports_.link.take_kept_queue_pair()) {
      qp_ = std::move(kept);
      qp_epoch_ = ports_.link.vf_epoch();
      return;
    }
    drv::QueuePairConfig c;
    c.entries =
        static_cast<std::uint16_t>(std::min<unsigned>(vq_size * 2u + 1u, ctrl.max_queue_entries()));
    c.command_timeout = config_.command_timeout;
    c.interrupts = config_.interrupts;  // a worker thread sleeps on the queue's MSI-X
    auto qp = ctrl.create_queue_pair(c);
    if (qp.ok()) {
      qp_ = std::move(qp).value();
      qp_epoch_ = ports_.link.vf_epoch();
    } else if (first_try) {
      // Said once per VF bring-up: the guest is served, on the host path, but not fast.
      kLog.warn("no VF queue pair for this queue (%s); it stays on the host path",
                to_string(qp.error()).c_str());
    }
  });
}

Submitted VfPath::submit(std::uint16_t slot, std::uint16_t sub) noexcept {
  Slot& s = requests_.slots[slot];
  Sub& b = s.subs[sub];
  const std::uint64_t tag = tag_of(requests_.epoch, slot, sub, -1);
  const std::uint32_t bb = config_.block_bytes;
  const std::uint64_t lba = b.r.sector * blk::kSectorBytes / bb;  // aligned (parser)
  const std::uint32_t blocks = b.r.bytes / bb;
  drv::IoStatus st;
  if (b.r.op == SubOp::flush) {
    st = qp_->flush(tag);
  } else if (b.r.op == SubOp::write_zeroes) {
    st = qp_->write_zeroes(lba, blocks, tag);
  } else {
    const unsigned nd = sub_segments(s.req, b.r, seg_scratch_);
    std::span<const DataSeg> data{seg_scratch_.data(), nd};
    drv::Segment segs[kMaxSubSegs];
    std::size_t n = 0;
    const bool bounce = config_.confidential || !prp_compatible(data);
    const bool valid = nd != 0 && b.r.bytes <= kMaxSubBytes;  // split() ensures both
    if (!valid) {
      st = drv::IoStatus{drv::IoErrc::invalid};
    } else if (bounce) {
      if (free_bounce_.empty()) return Submitted::later;
      b.bounce = free_bounce_.back();
      free_bounce_.pop_back();
      std::byte* chunk = bounce_.data() + std::size_t(b.bounce) * kMaxSubBytes;
      if (b.r.op == SubOp::write) {
        std::size_t off = 0;
        for (const DataSeg& d : data) {
          std::memcpy(chunk + off, ports_.memory.translate(d.gpa, d.len), d.len);
          off += d.len;
        }
      }
      const drv::Segment whole{bounce_.iova() + std::uint64_t(b.bounce) * kMaxSubBytes, b.r.bytes};
      (void)push_bounded<drv::Segment>(segs, n, whole);
      counters_.bounced.fetch_add(1, std::memory_order_relaxed);
    } else {
      for (const DataSeg& d : data) (void)push_bounded<drv::Segment>(segs, n, {d.gpa, d.len});
      if (n != nd) st = drv::IoStatus{drv::IoErrc::invalid};  // never: nd <= kMaxSubSegs
    }
    if (valid && (bounce || n == nd)) {
      st = b.r.op == SubOp::read ? qp_->read(lba, blocks, {segs, n}, tag)
                                 : qp_->write(lba, blocks, {segs, n}, tag);
    }
  }
  if (!st.ok()) {
    if (b.bounce >= 0) free_bounce_.push_back(b.bounce);
    b.bounce = -1;
    if (st.code == drv::IoErrc::queue_full || st.code == drv::IoErrc::gone) {
      return Submitted::later;
    }
    return Submitted::failed;  // the request itself is impossible (past the end, too large)
  }
  b.on_vf = true;
  return Submitted::yes;
}

VfPath::Reaped VfPath::reap(std::span<Done> out) noexcept {
  drv::Completion c[64];
  const std::size_t room = std::min(out.size(), std::size(c));
  const unsigned n = qp_->poll({c, room});
  unsigned kept = 0;
  for (unsigned i = 0; i < n; ++i) {
    if (!tag_current(requests_, c[i].tag)) continue;  // not a tag of this setup
    const std::uint16_t slot = slot_of(c[i].tag), sub = sub_of(c[i].tag);
    Sub& b = requests_.slots[slot].subs[sub];
    const drv::IoStatus st = c[i].status;
    if (b.bounce >= 0) {
      if (st.ok() && b.r.op == SubOp::read) {
        const std::byte* chunk = bounce_.data() + std::size_t(b.bounce) * kMaxSubBytes;
        const unsigned nd = sub_segments(requests_.slots[slot].req, b.r, seg_scratch_);
        std::size_t off = 0;
        for (unsigned k = 0; k < nd; ++k) {
          const DataSeg& d = seg_scratch_[k];
          std::memcpy(ports_.memory.translate(d.gpa, d.len), chunk + off, d.len);
          off += d.len;
        }
      }
      free_bounce_.push_back(b.bounce);
      b.bounce = -1;
    }
    out[kept++] = Done{slot, sub, st};
  }
  return {n, kept};
}

void VfPath::drop() noexcept {
  qp_.reset();  // deletes its queues: no VF command still uses a bounce chunk
  if (bounce_.valid() && free_bounce_.size() != kBounceChunks) free_all_bounce();
}

Status VfPath::save(std::vector<drv::SavedQueuePair>& out) noexcept {
  if (qp_ == nullptr) return {};
  drv::SavedQueuePair q;
  if (Status st = qp_->save(q); !st.ok()) return st;
  out.push_back(std::move(q));
  return {};
}

}  // namespace keel::vmm::worker
