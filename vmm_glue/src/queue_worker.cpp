#include "queue_worker.h"

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "keel/log.h"

namespace keel::vmm {

namespace drv = drivers::nvme;
namespace blk = virtio::blk;

namespace {

constexpr log::Logger kLog{"paravisor"};
constexpr unsigned kBounceChunks = QueueWorker::kPoolChunks;
constexpr std::uint32_t kPage = 4096;
static_assert(kMaxSubSegs <= kHostMaxSegments, "a sub-request must fit one host request");
static_assert(QueueWorker::kPoolChunks <= 64, "held_pool_ is a 64-bit mask");

// Tag layout: sub (16 bits), slot (16), pool chunk + 1 (8; 0 = none), epoch (24).
constexpr unsigned kSlotShift = 16, kChunkShift = 32, kEpochShift = 40;
constexpr std::uint32_t kEpochMask = (1u << 24) - 1;

std::uint16_t sub_of(std::uint64_t tag) { return static_cast<std::uint16_t>(tag); }
std::uint16_t slot_of(std::uint64_t tag) { return static_cast<std::uint16_t>(tag >> kSlotShift); }
int chunk_of(std::uint64_t tag) { return static_cast<int>((tag >> kChunkShift) & 0xFF) - 1; }
std::uint32_t epoch_of(std::uint64_t tag) {
  return static_cast<std::uint32_t>(tag >> kEpochShift) & kEpochMask;
}

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

QueueWorker::QueueWorker(Paravisor& pv, unsigned index, std::unique_ptr<HostServiceClient> host,
                         std::byte* pool, std::uint64_t pool_addr)
    : pv_(pv), index_(index), host_(std::move(host)), pool_(pool), pool_addr_(pool_addr) {
  if (pool_ != nullptr) {
    free_pool_.reserve(kPoolChunks);
    for (unsigned i = 0; i < kPoolChunks; ++i) free_pool_.push_back(static_cast<int>(i));
  }
  seg_scratch_.resize(kMaxSubSegs);
}

QueueWorker::~QueueWorker() { qp_.reset(); }

std::uint64_t QueueWorker::tag_of(std::uint16_t slot, std::uint16_t sub,
                                  int pool_chunk) const noexcept {
  return (std::uint64_t{epoch_ & kEpochMask} << kEpochShift) |
         (std::uint64_t(pool_chunk + 1) << kChunkShift) | (std::uint64_t{slot} << kSlotShift) | sub;
}

Status QueueWorker::setup(const Virtqueue::Layout& layout, bool event_idx,
                          std::uint16_t last_avail) {
  if (layout.size > pv_.config_.max_queue_size) {
    return make_error(Errc::invalid_argument, "virtqueue size " + std::to_string(layout.size) +
                                                  " above the device's " +
                                                  std::to_string(pv_.config_.max_queue_size));
  }
  if (Status st = vq_.setup(pv_.memory_, layout, event_idx, last_avail); !st.ok()) return st;
  limits_.capacity_sectors = pv_.capacity_;
  limits_.seg_max = pv_.config_.seg_max;
  limits_.size_max = pv_.config_.size_max;
  limits_.max_request_bytes = pv_.config_.max_request_bytes;
  limits_.max_pieces = pv_.config_.seg_max + 16;
  limits_.block_bytes = pv_.block_bytes_;
  limits_.serial = pv_.config_.serial.c_str();
  split_params_.max_sub_bytes = max_sub_bytes_;
  split_params_.block_bytes = pv_.block_bytes_;
  split_params_.max_zero_bytes = 65536u * 512;
  sub_cap_ = max_subs_per_request(limits_, split_params_);
  split_scratch_.assign(sub_cap_, SubRequest{});
  // Every per-queue structure starts afresh: nothing of a previous setup may complete (its
  // late completions carry an old epoch), and nothing grows on the data path.
  ++epoch_;
  slots_.assign(layout.size, Slot{});
  for (Slot& s : slots_) {
    s.req.data.reserve(limits_.max_pieces);
    s.subs.resize(sub_cap_);
  }
  chain_.reserve(layout.size);
  pending_.clear();
  retry_.clear();
  pending_.reserve(std::size_t{layout.size} * sub_cap_);
  retry_.reserve(std::size_t{layout.size} * sub_cap_);
  inflight_ = 0;
  pushed_ = false;
  if (pool_ != nullptr) {
    free_pool_.clear();
    for (unsigned i = 0; i < kPoolChunks; ++i) {
      if ((held_pool_ >> i & 1) == 0) free_pool_.push_back(static_cast<int>(i));
    }
  }
  if (qp_ == nullptr && bounce_.valid()) {  // no VF command can still use a bounce chunk
    free_bounce_.clear();
    for (unsigned i = 0; i < kBounceChunks; ++i) free_bounce_.push_back(static_cast<int>(i));
  }
  // A VF that is absent now (removed, being serviced) gets its bounce pool when it answers:
  // until then the host path serves the ring.
  (void)alloc_bounce();
  return {};
}

bool QueueWorker::alloc_bounce() noexcept {
  if (bounce_.valid()) return true;
  if (pv_.vf_ == nullptr) return false;
  auto b = pv_.vf_->alloc_dma(std::size_t{kBounceChunks} * max_sub_bytes_);
  if (!b) return false;
  bounce_ = std::move(b).value();
  free_bounce_.clear();
  for (unsigned i = 0; i < kBounceChunks; ++i) free_bounce_.push_back(static_cast<int>(i));
  return true;
}

bool QueueWorker::use_vf() const noexcept {
  return qp_ != nullptr && !draining_ && pv_.state() == PathState::active;
}

void QueueWorker::sync_vf() noexcept {
  const PathState st = pv_.state();
  const std::uint64_t epoch = pv_.vf_epoch_.load(std::memory_order_acquire);
  if (qp_ != nullptr && (epoch != qp_epoch_ || st != PathState::active)) draining_ = true;
  if (draining_ && qp_ != nullptr) {
    reap_vf();  // outstanding commands fail (the controller was reset) and move to the host
    if (qp_->outstanding() == 0) qp_.reset();
  }
  if (qp_ == nullptr && draining_) draining_ = false;
  if (st == PathState::draining && qp_ == nullptr && drained_epoch_ != epoch) {
    drained_epoch_ = epoch;
    pv_.worker_drained();
  }
  if (qp_ == nullptr && st == PathState::active && vq_.ready()) {
    std::lock_guard lock(pv_.mu_);
    if (pv_.ctrl_ == nullptr || pv_.state() != PathState::active) return;
    if (!alloc_bounce()) return;  // the VF is not taking DMA mappings: stay on the host path
    drv::QueuePairConfig c;
    c.entries = static_cast<std::uint16_t>(
        std::min<unsigned>(vq_.size() * 2u + 1u, pv_.ctrl_->max_queue_entries()));
    c.command_timeout = pv_.config_.command_timeout;
    c.interrupts = pv_.config_.threads;  // a worker thread sleeps on the queue's MSI-X
    auto qp = pv_.ctrl_->create_queue_pair(c);
    if (qp.ok()) {
      qp_ = std::move(qp).value();
      qp_epoch_ = pv_.vf_epoch_.load(std::memory_order_acquire);
    }
  }
}

bool QueueWorker::split(Slot& s) noexcept {
  const SplitResult r = split_blk_request(s.req, split_params_, split_scratch_);
  s.nsubs = r.count;
  s.left = r.count;
  if (r.count == 0) {
    s.req.why = r.why;
    return false;
  }
  for (unsigned i = 0; i < r.count; ++i) {
    Sub& b = s.subs[i];
    b = Sub{};
    b.r = split_scratch_[i];
  }
  return true;
}

void QueueWorker::release_pool(int chunk) noexcept {
  if (chunk < 0 || chunk >= static_cast<int>(kPoolChunks)) return;
  if ((held_pool_ >> chunk & 1) == 0) return;
  held_pool_ &= ~(std::uint64_t{1} << chunk);
  free_pool_.push_back(chunk);
}

bool QueueWorker::submit_vf(std::uint16_t slot, std::uint16_t sub) noexcept {
  Slot& s = slots_[slot];
  Sub& b = s.subs[sub];
  const std::uint64_t tag = tag_of(slot, sub, -1);
  const std::uint32_t bb = pv_.block_bytes_;
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
    const bool bounce = pv_.config_.confidential || !prp_compatible(data);
    const bool valid = nd != 0 && b.r.bytes <= max_sub_bytes_;  // split() ensures both
    if (!valid) {
      st = drv::IoStatus{drv::IoErrc::invalid};
    } else if (bounce) {
      if (free_bounce_.empty()) return false;
      b.bounce = free_bounce_.back();
      free_bounce_.pop_back();
      std::byte* chunk = bounce_.data() + std::size_t(b.bounce) * max_sub_bytes_;
      if (b.r.op == SubOp::write) {
        std::size_t off = 0;
        for (const DataSeg& d : data) {
          std::memcpy(chunk + off, pv_.memory_.translate(d.gpa, d.len), d.len);
          off += d.len;
        }
      }
      const drv::Segment whole{bounce_.iova() + std::uint64_t(b.bounce) * max_sub_bytes_,
                               b.r.bytes};
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
    if (st.code == drv::IoErrc::queue_full || st.code == drv::IoErrc::gone) return false;
    finish(slot, sub, false);  // the request itself is impossible (past the end, too large)
    return true;
  }
  b.on_vf = true;
  return true;
}

bool QueueWorker::submit_host(std::uint16_t slot, std::uint16_t sub) noexcept {
  Slot& s = slots_[slot];
  Sub& b = s.subs[sub];
  HostSegment segs[kMaxSubSegs];
  std::size_t n = 0;
  int chunk_index = -1;
  const bool rw = b.r.op == SubOp::read || b.r.op == SubOp::write;
  const unsigned nd = rw ? sub_segments(s.req, b.r, seg_scratch_) : 0;
  if (rw && (nd == 0 || b.r.bytes > max_sub_bytes_)) {  // never: split() bounds both
    finish(slot, sub, false);
    return true;
  }
  std::span<const DataSeg> data{seg_scratch_.data(), nd};
  if (pool_ != nullptr && rw) {
    // Confidential: the host sees only the shared pool. Writes are copied in here, reads are
    // copied out in reap_host().
    if (free_pool_.empty() || host_->outstanding() >= host_->capacity()) return false;
    chunk_index = free_pool_.back();
    std::byte* chunk = pool_ + std::size_t(chunk_index) * max_sub_bytes_;
    if (b.r.op == SubOp::write) {
      std::size_t off = 0;
      for (const DataSeg& d : data) {
        std::memcpy(chunk + off, pv_.memory_.translate(d.gpa, d.len), d.len);
        off += d.len;
      }
    }
    const HostSegment whole{pool_addr_ + std::uint64_t(chunk_index) * max_sub_bytes_, b.r.bytes};
    (void)push_bounded<HostSegment>(segs, n, whole);
  } else {
    for (const DataSeg& d : data) (void)push_bounded<HostSegment>(segs, n, {d.gpa, d.len});
    if (n != nd) {  // never: nd <= kMaxSubSegs
      finish(slot, sub, false);
      return true;
    }
  }
  HostOp op = HostOp::read;
  switch (b.r.op) {
    case SubOp::read: op = HostOp::read; break;
    case SubOp::write: op = HostOp::write; break;
    case SubOp::flush: op = HostOp::flush; break;
    case SubOp::write_zeroes: op = HostOp::write_zeroes; break;
  }
  const std::uint32_t zero_bytes = b.r.op == SubOp::write_zeroes ? b.r.bytes : 0;
  if (!host_->submit(tag_of(slot, sub, chunk_index), op, b.r.sector * blk::kSectorBytes, {segs, n},
                     zero_bytes)) {
    return false;
  }
  if (chunk_index >= 0) {
    free_pool_.pop_back();
    held_pool_ |= std::uint64_t{1} << chunk_index;
    b.pool = chunk_index;
    counters_.pool_bounced.fetch_add(1, std::memory_order_relaxed);
  }
  b.on_vf = false;
  return true;
}

void QueueWorker::submit_pending() noexcept {
  if (pending_.empty()) return;
  retry_.clear();
  for (const Pending& p : pending_) {
    const bool ok = use_vf() ? submit_vf(p.slot, p.sub) : submit_host(p.slot, p.sub);
    if (!ok) retry_.push_back(p);
  }
  pending_.swap(retry_);
}

void QueueWorker::take_requests() noexcept {
  std::uint16_t head;
  for (;;) {
    const std::uint16_t pos = vq_.last_avail();
    if (!vq_.pop(&head)) break;
    const ChainError ce = vq_.read_chain(head, chain_);
    if (ce == ChainError::bad_index || head >= slots_.size()) {  // a head beyond the queue
      counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
      vq_.mark_broken();
      return;
    }
    Slot& s = slots_[head];
    if (s.busy) {  // the driver made a chain available twice
      counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
      vq_.mark_broken();
      return;
    }
    ParseOutcome outcome = parse_blk_request(pv_.memory_, limits_, head, ce, chain_, s.req);
    if (outcome == ParseOutcome::submit && !split(s)) {
      s.req.status = blk::kStatusIoErr;  // too fragmented to cut into sub-requests
      outcome = ParseOutcome::complete;
    }
    switch (outcome) {
      case ParseOutcome::broken:
        counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
        vq_.mark_broken();
        return;
      case ParseOutcome::complete:
        if (s.req.status != blk::kStatusOk) {
          counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
          counters_.errors.fetch_add(1, std::memory_order_relaxed);
        }
        (void)write_blk_status(pv_.memory_, s.req, s.req.status);
        vq_.push_used(head, s.req.written);
        counters_.requests.fetch_add(1, std::memory_order_relaxed);
        pushed_ = true;
        break;
      case ParseOutcome::submit:
        s.busy = true;
        s.avail_pos = pos;
        ++inflight_;
        for (unsigned i = 0; i < s.nsubs; ++i) {
          const auto sub = static_cast<std::uint16_t>(i);
          const bool ok = use_vf() ? submit_vf(head, sub) : submit_host(head, sub);
          if (!ok) pending_.push_back({head, sub});
        }
        break;
    }
  }
}

void QueueWorker::reap_vf() noexcept {
  drv::Completion c[64];
  for (;;) {
    const unsigned n = qp_->poll(c);
    for (unsigned i = 0; i < n; ++i) {
      const std::uint16_t slot = slot_of(c[i].tag), sub = sub_of(c[i].tag);
      if (epoch_of(c[i].tag) != (epoch_ & kEpochMask) || slot >= slots_.size() ||
          sub >= slots_[slot].nsubs) {
        continue;  // not a tag of this setup
      }
      Sub& b = slots_[slot].subs[sub];
      const drv::IoStatus st = c[i].status;
      if (b.bounce >= 0) {
        if (st.ok() && b.r.op == SubOp::read) {
          const std::byte* chunk = bounce_.data() + std::size_t(b.bounce) * max_sub_bytes_;
          const unsigned nd = sub_segments(slots_[slot].req, b.r, seg_scratch_);
          std::size_t off = 0;
          for (unsigned k = 0; k < nd; ++k) {
            const DataSeg& d = seg_scratch_[k];
            std::memcpy(pv_.memory_.translate(d.gpa, d.len), chunk + off, d.len);
            off += d.len;
          }
        }
        free_bounce_.push_back(b.bounce);
        b.bounce = -1;
      }
      if (st.ok() || st.code == drv::IoErrc::nvme) {
        counters_.vf_ios.fetch_add(1, std::memory_order_relaxed);
        finish(slot, sub, st.ok());
        continue;
      }
      // The VF could not finish it (gone, timed out, reset): re-issue on the fallback, once.
      if (b.reissued) {
        finish(slot, sub, false);
        continue;
      }
      b.reissued = true;
      b.on_vf = false;
      counters_.reissued.fetch_add(1, std::memory_order_relaxed);
      pv_.vf_failed(std::string("VF command ") + (st.code == drv::IoErrc::timeout
                                                      ? "timed out"
                                                      : "lost (device gone or reset)"));
      draining_ = true;
      if (!submit_host(slot, sub)) pending_.push_back({slot, sub});
    }
    if (n < std::size(c)) break;
  }
}

void QueueWorker::reap_host() noexcept {
  HostCompletion c[64];
  for (;;) {
    const unsigned n = host_->poll(c);
    for (unsigned i = 0; i < n; ++i) {
      const std::uint16_t slot = slot_of(c[i].tag), sub = sub_of(c[i].tag);
      if (epoch_of(c[i].tag) != (epoch_ & kEpochMask) || slot >= slots_.size() ||
          sub >= slots_[slot].nsubs || slots_[slot].subs[sub].pool != chunk_of(c[i].tag)) {
        release_pool(chunk_of(c[i].tag));  // a request given back earlier: its chunk is free now
        continue;
      }
      counters_.fallback_ios.fetch_add(1, std::memory_order_relaxed);
      Sub& b = slots_[slot].subs[sub];
      if (b.pool >= 0) {
        if (c[i].result == 0 && b.r.op == SubOp::read) {
          const std::byte* chunk = pool_ + std::size_t(b.pool) * max_sub_bytes_;
          const unsigned nd = sub_segments(slots_[slot].req, b.r, seg_scratch_);
          std::size_t off = 0;
          for (unsigned k = 0; k < nd; ++k) {
            const DataSeg& d = seg_scratch_[k];
            std::memcpy(pv_.memory_.translate(d.gpa, d.len), chunk + off, d.len);
            off += d.len;
          }
        }
        release_pool(b.pool);
        b.pool = -1;
      }
      finish(slot, sub, c[i].result == 0);
    }
    if (n < std::size(c)) break;
  }
}

void QueueWorker::finish(std::uint16_t slot, std::uint16_t sub, bool ok) noexcept {
  Slot& s = slots_[slot];
  Sub& b = s.subs[sub];
  if (!s.busy || b.done) return;  // never complete twice
  b.done = true;
  b.ok = ok;
  if (--s.left == 0) complete(s);
}

void QueueWorker::complete(Slot& s) noexcept {
  bool ok = true;
  for (unsigned i = 0; i < s.nsubs; ++i) ok = ok && s.subs[i].ok;
  (void)write_blk_status(pv_.memory_, s.req, ok ? blk::kStatusOk : blk::kStatusIoErr);
  vq_.push_used(s.req.head, s.req.written);
  s.busy = false;
  --inflight_;
  pushed_ = true;
  counters_.requests.fetch_add(1, std::memory_order_relaxed);
  if (!ok) counters_.errors.fetch_add(1, std::memory_order_relaxed);
}

void QueueWorker::notify_guest() noexcept {
  if (!pushed_) return;
  pushed_ = false;
  if (!vq_.should_notify()) return;
  counters_.notifications.fetch_add(1, std::memory_order_relaxed);
  if (call_fd >= 0) {
    // The front end shares the fd's O_NONBLOCK flag and can clear it. On the worker thread a
    // blocked write is interrupted by stop(); the control thread (quiesce) must never block:
    // there, a full counter (no POLLOUT) means the guest has a notification pending anyway.
    if (quiescing_) {
      pollfd p{call_fd, POLLOUT, 0};
      if (::poll(&p, 1, 0) != 1 || (p.revents & POLLOUT) == 0) return;
    }
    const std::uint64_t one = 1;
    (void)!write(call_fd, &one, sizeof one);
  } else if (pv_.notify_) {
    pv_.notify_(index_);
  }
}

unsigned QueueWorker::pass(bool take) noexcept {
  sync_vf();
  if (!vq_.ready()) return 0;
  const std::uint64_t before = counters_.requests.load(std::memory_order_relaxed);
  if (qp_ != nullptr) reap_vf();
  reap_host();
  submit_pending();
  if (take && !vq_.broken()) take_requests();
  if (qp_ != nullptr) qp_->commit();
  host_->notify();
  notify_guest();
  return static_cast<unsigned>(counters_.requests.load(std::memory_order_relaxed) - before);
}

void QueueWorker::quiesce() {
  const std::chrono::nanoseconds bound =
      pv_.config_.quiesce_timeout.count() > 0
          ? pv_.config_.quiesce_timeout
          : pv_.config_.command_timeout * 2 + pv_.config_.admin_timeout * 2;
  quiescing_ = true;  // the data path runs on the control thread until the end of quiesce()
  // Only what was taken: a busy guest must not hold the pause (and the control plane) open.
  fpga::poll_until(pv_.clock_, pv_.stepper_, bound, [&] {
    pass(false);
    return inflight_ == 0 && pending_.empty();
  });
  if (qp_ != nullptr && qp_->outstanding() > 0) {
    // The device has not finished commands within the bound: it may still DMA into bounce
    // chunks or guest pages. Disable the controller (CC.EN=0 stops its DMA) before those
    // chunks are reused and before the requests are given back or failed. The other workers'
    // queue pairs fail their commands and re-issue them on the host path (failover).
    std::lock_guard lock(pv_.mu_);
    if (pv_.ctrl_ != nullptr) (void)pv_.ctrl_->reset();
  }
  if (inflight_ != 0 || !pending_.empty()) give_back_unfinished();
  quiescing_ = false;
  qp_.reset();  // deletes its queues: no VF command still uses a bounce chunk
  if (bounce_.valid() && free_bounce_.size() != kBounceChunks) {
    free_bounce_.clear();
    for (unsigned i = 0; i < kBounceChunks; ++i) free_bounce_.push_back(static_cast<int>(i));
  }
}

void QueueWorker::give_back_unfinished() noexcept {
  // Age 1 is the request taken last. The newest requests that are all unfinished go back to
  // the ring: last_avail moves back over them, so GET_VRING_BASE does not report them consumed
  // and the front end makes them available again. An older unfinished request (a completed one
  // was taken after it) cannot be given back without replaying the completed one: it fails.
  const std::uint16_t last = vq_.last_avail();
  auto busy_at_age = [&](unsigned age) {
    for (const Slot& s : slots_) {
      if (s.busy && static_cast<std::uint16_t>(last - s.avail_pos) == age) return true;
    }
    return false;
  };
  unsigned back = 0;
  while (back < slots_.size() && busy_at_age(back + 1)) ++back;
  unsigned failed = 0;
  for (Slot& s : slots_) {
    if (!s.busy) continue;
    const unsigned age = static_cast<std::uint16_t>(last - s.avail_pos);
    for (unsigned i = 0; i < s.nsubs; ++i) {
      if (!s.subs[i].done) {
        s.subs[i].done = true;
        s.subs[i].ok = false;
      }
    }
    if (age >= 1 && age <= back) {
      s.busy = false;  // given back: no used entry
      --inflight_;
      counters_.given_back.fetch_add(1, std::memory_order_relaxed);
    } else {
      s.left = 0;
      complete(s);  // IOERR
      ++failed;
    }
  }
  vq_.unpop(static_cast<std::uint16_t>(back));
  pending_.clear();
  inflight_ = 0;
  ++epoch_;  // their IO may still complete: those completions are ignored (chunks released)
  notify_guest();
  kLog.warn(
      "queue %u: stopping with requests unfinished after the bound: %u given back to the "
      "ring, %u failed (a completed request followed them)",
      index_, back, failed);
}

void QueueWorker::run_thread() {
  const std::string name = "keel-pv-q" + std::to_string(index_);
  pthread_setname_np(pthread_self(), name.c_str());
  cpu_.start();
  exited_.store(false, std::memory_order_release);
  // Spin briefly after the last piece of work, then sleep on every event source at once:
  // the guest's kick, the VF queue's MSI-X, the host service's completions.
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  int vf_fd = -1;
  auto watch = [&](int fd) {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = fd;
    (void)epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
  };
  if (kick_fd >= 0) watch(kick_fd);
  watch(host_->completion_fd());
  unsigned spins = 0;
  const drivers::nvme::QueuePair* watched_qp = nullptr;
  int watched_fd = -1;
  while (pv_.running_.load(std::memory_order_acquire)) {
    if (index_ == 0) pv_.maybe_probe();
    const unsigned n = run_once();
    // The queue pair's MSI-X fd, looked up again only when the queue pair changes.
    if (qp_.get() != watched_qp) {
      watched_qp = qp_.get();
      watched_fd = qp_ != nullptr ? qp_->interrupt_fd() : -1;
    }
    const int qfd = watched_fd;
    if (qfd != vf_fd) {
      if (vf_fd >= 0) (void)epoll_ctl(ep, EPOLL_CTL_DEL, vf_fd, nullptr);
      vf_fd = qfd;
      if (vf_fd >= 0) {
        watch(vf_fd);
        qp_->arm_interrupt(false);  // polling: no interrupts until we sleep
      }
    }
    if (n > 0 || !pending_.empty()) {
      spins = 0;
      continue;
    }
    // With commands on the VF, completions are microseconds away: poll a while longer
    // before paying for a sleep and an interrupt.
    const unsigned spin_limit = qp_ != nullptr && qp_->outstanding() > 0 ? 1024 : 64;
    if (++spins < spin_limit) {
      __builtin_ia32_pause();
      continue;
    }
    spins = 0;
    bool ready = false;
    if (vq_.ready() && kick_fd >= 0) ready = vq_.enable_kicks();
    if (host_->outstanding() > 0 && !host_->prepare_wait()) ready = true;
    if (qp_ != nullptr && qp_->outstanding() > 0) {
      qp_->check_deadlines();  // a lost VF is noticed before the sleep, not after it
      qp_->arm_interrupt(true);
      // A completion that landed before the vector was armed raised no interrupt: look.
      ready = ready || run_once() > 0;
    }
    if (!ready) {
      // Bounded: the probe timer (worker 0) and stop() need turns.
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::min<std::chrono::nanoseconds>(pv_.config_.probe_interval,
                                                             std::chrono::milliseconds(100)))
                          .count();
      epoll_event ev[4];
      const int k = epoll_wait(ep, ev, 4, static_cast<int>(std::max<long long>(ms, 1)));
      for (int i = 0; i < k; ++i) {
        std::uint64_t v;
        (void)!read(ev[i].data.fd, &v, sizeof v);
      }
      host_->end_wait();
    }
    if (vq_.ready()) vq_.disable_kicks();
    if (qp_ != nullptr) qp_->arm_interrupt(false);
  }
  close(ep);
  cpu_.finish();
  exited_.store(true, std::memory_order_release);
}

}  // namespace keel::vmm
