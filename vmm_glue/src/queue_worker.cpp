#include "queue_worker.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace keel::vmm {

namespace drv = drivers::nvme;
namespace blk = virtio::blk;

namespace {

constexpr unsigned kBounceChunks = QueueWorker::kPoolChunks;
constexpr unsigned kMaxSubSegs = 32;
constexpr std::uint32_t kPage = 4096;

std::uint64_t tag_of(std::uint16_t slot, std::uint16_t sub) {
  return (std::uint64_t{slot} << 16) | sub;
}

// NVMe PRPs need dword-aligned addresses, page-aligned joins between segments.
bool prp_compatible(const std::vector<DataSeg>& segs) {
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
}

QueueWorker::~QueueWorker() { qp_.reset(); }

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
  limits_.serial = pv_.config_.serial.c_str();
  slots_.assign(layout.size, Slot{});
  for (Slot& s : slots_) {
    s.req.data.reserve(pv_.config_.seg_max + 2);
    s.subs.resize(4);
    for (Sub& b : s.subs) b.segs.reserve(kMaxSubSegs + 2);
  }
  chain_.reserve(layout.size);
  pending_.reserve(layout.size * 4u);
  retry_.reserve(layout.size * 4u);
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

void QueueWorker::split(Slot& s) noexcept {
  s.nsubs = 0;
  auto next_sub = [&]() -> Sub& {
    if (s.nsubs == s.subs.size()) {
      s.subs.emplace_back();
      s.subs.back().segs.reserve(kMaxSubSegs + 2);
    }
    Sub& b = s.subs[s.nsubs++];
    b.segs.clear();
    b.done = b.ok = b.on_vf = b.reissued = false;
    b.bounce = -1;
    b.pool = -1;
    return b;
  };
  const BlkRequest& r = s.req;
  if (r.type == blk::kFlush) {
    next_sub().op = Op::flush;
  } else if (r.type == blk::kWriteZeroes) {
    for (std::uint64_t done = 0; done < r.sectors;) {
      Sub& b = next_sub();
      b.op = Op::write_zeroes;
      b.lba = r.sector + done;
      b.blocks = static_cast<std::uint32_t>(std::min<std::uint64_t>(r.sectors - done, 65536));
      done += b.blocks;
    }
  } else {
    const Op op = r.type == blk::kIn ? Op::read : Op::write;
    Sub* b = nullptr;
    std::uint64_t offset = 0;  // bytes of the request already assigned
    std::uint32_t sub_bytes = 0;
    for (const DataSeg& seg : r.data) {
      std::uint32_t used = 0;
      while (used < seg.len) {
        if (b == nullptr) {
          b = &next_sub();
          b->op = op;
          b->lba = r.sector + offset / blk::kSectorBytes;
          sub_bytes = 0;
        }
        std::uint32_t take = std::min(seg.len - used, max_sub_bytes_ - sub_bytes);
        // Near the segment limit, end the sub-request on a sector boundary.
        if (b->segs.size() + 1 >= kMaxSubSegs) {
          const std::uint32_t to_sector =
              (blk::kSectorBytes - sub_bytes % blk::kSectorBytes) % blk::kSectorBytes;
          if (to_sector != 0 && take > to_sector) take = to_sector;
        }
        b->segs.push_back({seg.gpa + used, take});
        used += take;
        sub_bytes += take;
        offset += take;
        if (sub_bytes == max_sub_bytes_ ||
            (b->segs.size() >= kMaxSubSegs && sub_bytes % blk::kSectorBytes == 0)) {
          b->blocks = sub_bytes / blk::kSectorBytes;
          b = nullptr;
        }
      }
    }
    if (b != nullptr) b->blocks = sub_bytes / blk::kSectorBytes;
  }
  s.left = s.nsubs;
}

bool QueueWorker::submit_vf(std::uint16_t slot, std::uint16_t sub) noexcept {
  Sub& b = slots_[slot].subs[sub];
  const std::uint64_t tag = tag_of(slot, sub);
  drv::IoStatus st;
  if (b.op == Op::flush) {
    st = qp_->flush(tag);
  } else if (b.op == Op::write_zeroes) {
    st = qp_->write_zeroes(b.lba, b.blocks, tag);
  } else {
    drv::Segment segs[kMaxSubSegs + 2];
    std::size_t n = 0;
    const bool bounce = pv_.config_.confidential || !prp_compatible(b.segs);
    if (bounce) {
      if (free_bounce_.empty()) return false;
      b.bounce = free_bounce_.back();
      free_bounce_.pop_back();
      std::byte* chunk = bounce_.data() + std::size_t(b.bounce) * max_sub_bytes_;
      if (b.op == Op::write) {
        std::size_t off = 0;
        for (const DataSeg& d : b.segs) {
          std::memcpy(chunk + off, pv_.memory_.translate(d.gpa, d.len), d.len);
          off += d.len;
        }
      }
      segs[n++] = {bounce_.iova() + std::uint64_t(b.bounce) * max_sub_bytes_,
                   b.blocks * blk::kSectorBytes};
      counters_.bounced.fetch_add(1, std::memory_order_relaxed);
    } else {
      for (const DataSeg& d : b.segs) segs[n++] = {d.gpa, d.len};  // IOVA = GPA
    }
    st = b.op == Op::read ? qp_->read(b.lba, b.blocks, {segs, n}, tag)
                          : qp_->write(b.lba, b.blocks, {segs, n}, tag);
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
  Sub& b = slots_[slot].subs[sub];
  HostSegment segs[kMaxSubSegs + 2];
  std::size_t n = 0;
  int chunk_index = -1;
  if (pool_ != nullptr && !b.segs.empty()) {
    // Confidential: the host sees only the shared pool. Writes are copied in here, reads are
    // copied out in reap_host().
    if (free_pool_.empty() || host_->outstanding() >= host_->capacity()) return false;
    chunk_index = free_pool_.back();
    std::byte* chunk = pool_ + std::size_t(chunk_index) * max_sub_bytes_;
    if (b.op == Op::write) {
      std::size_t off = 0;
      for (const DataSeg& d : b.segs) {
        std::memcpy(chunk + off, pv_.memory_.translate(d.gpa, d.len), d.len);
        off += d.len;
      }
    }
    segs[n++] = {pool_addr_ + std::uint64_t(chunk_index) * max_sub_bytes_,
                 b.blocks * blk::kSectorBytes};
  } else {
    for (const DataSeg& d : b.segs) segs[n++] = {d.gpa, d.len};
  }
  HostOp op = HostOp::read;
  switch (b.op) {
    case Op::read: op = HostOp::read; break;
    case Op::write: op = HostOp::write; break;
    case Op::flush: op = HostOp::flush; break;
    case Op::write_zeroes: op = HostOp::write_zeroes; break;
  }
  const std::uint32_t zero_bytes = b.op == Op::write_zeroes ? b.blocks * blk::kSectorBytes : 0;
  if (!host_->submit(tag_of(slot, sub), op, b.lba * blk::kSectorBytes, {segs, n}, zero_bytes)) {
    return false;
  }
  if (chunk_index >= 0) {
    free_pool_.pop_back();
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
  while (vq_.pop(&head)) {
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
    switch (parse_blk_request(pv_.memory_, limits_, head, ce, chain_, s.req)) {
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
        ++inflight_;
        split(s);
        for (std::uint16_t i = 0; i < s.nsubs; ++i) {
          const bool ok = use_vf() ? submit_vf(head, i) : submit_host(head, i);
          if (!ok) pending_.push_back({head, i});
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
      const auto slot = static_cast<std::uint16_t>(c[i].tag >> 16);
      const auto sub = static_cast<std::uint16_t>(c[i].tag & 0xFFFF);
      Sub& b = slots_[slot].subs[sub];
      const drv::IoStatus st = c[i].status;
      if (b.bounce >= 0) {
        if (st.ok() && b.op == Op::read) {
          const std::byte* chunk = bounce_.data() + std::size_t(b.bounce) * max_sub_bytes_;
          std::size_t off = 0;
          for (const DataSeg& d : b.segs) {
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
      const auto slot = static_cast<std::uint16_t>(c[i].tag >> 16);
      const auto sub = static_cast<std::uint16_t>(c[i].tag & 0xFFFF);
      if (slot >= slots_.size() || sub >= slots_[slot].nsubs) continue;  // not a tag of ours
      counters_.fallback_ios.fetch_add(1, std::memory_order_relaxed);
      Sub& b = slots_[slot].subs[sub];
      if (b.pool >= 0) {
        if (c[i].result == 0 && b.op == Op::read) {
          const std::byte* chunk = pool_ + std::size_t(b.pool) * max_sub_bytes_;
          std::size_t off = 0;
          for (const DataSeg& d : b.segs) {
            std::memcpy(pv_.memory_.translate(d.gpa, d.len), chunk + off, d.len);
            off += d.len;
          }
        }
        free_pool_.push_back(b.pool);
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
    const std::uint64_t one = 1;
    (void)!write(call_fd, &one, sizeof one);
  } else if (pv_.notify_) {
    pv_.notify_(index_);
  }
}

unsigned QueueWorker::run_once() noexcept {
  sync_vf();
  if (!vq_.ready()) return 0;
  const std::uint64_t before = counters_.requests.load(std::memory_order_relaxed);
  if (qp_ != nullptr) reap_vf();
  reap_host();
  submit_pending();
  if (!vq_.broken()) take_requests();
  if (qp_ != nullptr) qp_->commit();
  host_->notify();
  notify_guest();
  return static_cast<unsigned>(counters_.requests.load(std::memory_order_relaxed) - before);
}

void QueueWorker::quiesce() {
  fpga::poll_until(pv_.card_, pv_.config_.command_timeout * 2 + pv_.config_.admin_timeout * 2, [&] {
    run_once();
    return inflight_ == 0 && pending_.empty();
  });
  qp_.reset();
}

std::uint64_t QueueWorker::thread_cpu_ns() const noexcept {
  if (!has_thread_.load()) return 0;
  clockid_t id;
  if (pthread_getcpuclockid(thread_.load(), &id) != 0) return 0;
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

void QueueWorker::run_thread() {
  const std::string name = "keel-pv-q" + std::to_string(index_);
  pthread_setname_np(pthread_self(), name.c_str());
  thread_.store(pthread_self());
  has_thread_.store(true);
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
}

}  // namespace keel::vmm
