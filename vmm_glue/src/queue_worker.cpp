// The loop of a queue worker: guest requests taken from the virtqueue, cut into sub-requests,
// sent down the VF path or the host path (the paravisor's failover decides), completed back to
// the guest; the worker thread's spin-then-sleep; and the quiesce of a stop.
#include "queue_worker.h"

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "keel/clock.h"
#include "keel/log.h"

namespace keel::vmm {

namespace drv = drivers::nvme;
namespace blk = virtio::blk;

namespace {

constexpr log::Logger kLog{"paravisor"};

}  // namespace

QueueWorker::QueueWorker(const worker::WorkerConfig& config, const worker::WorkerPorts& ports,
                         std::unique_ptr<HostServiceClient> host)
    : config_(config),
      ports_(ports),
      vf_(config_, ports_, requests_, counters_),
      host_(config_, ports_.memory, std::move(host), requests_, counters_) {}

QueueWorker::~QueueWorker() = default;

Status QueueWorker::setup(const Virtqueue::Layout& layout, bool event_idx,
                          std::uint16_t last_avail) {
  if (layout.size > config_.max_queue_size) {
    return make_error(Errc::invalid_argument, "virtqueue size " + std::to_string(layout.size) +
                                                  " above the device's " +
                                                  std::to_string(config_.max_queue_size));
  }
  if (Status st = vq_.setup(ports_.memory, layout, event_idx, last_avail); !st.ok()) return st;
  resubmit_ = nullptr;
  resubmit_next_ = 0;
  if (layout.inflight != nullptr) {
    const InflightQueue::Start start =
        layout.inflight->start(vq_.size(), vq_.used_idx(), last_avail);
    if (!start.rejected.empty()) {
      kLog.warn("queue %u: inflight record not used (nothing resubmitted): %s", config_.index,
                start.rejected.c_str());
    }
    vq_.track_inflight(start.tracking ? layout.inflight : nullptr, start.last_avail);
    if (start.tracking && !layout.inflight->resubmit().empty()) {
      resubmit_ = &layout.inflight->resubmit();
      kLog.info(
          "queue %u: resubmitting %zu requests a previous back end had taken (avail "
          "ring goes on at %u, base %u)",
          config_.index, resubmit_->size(), start.last_avail, last_avail);
    }
  }
  limits_.capacity_sectors = config_.capacity_sectors;
  limits_.seg_max = config_.seg_max;
  limits_.size_max = config_.size_max;
  limits_.max_request_bytes = config_.max_request_bytes;
  limits_.max_pieces = config_.seg_max + 16;
  limits_.block_bytes = config_.block_bytes;
  limits_.serial = config_.serial.c_str();
  split_params_.max_sub_bytes = worker::kMaxSubBytes;
  split_params_.block_bytes = config_.block_bytes;
  split_params_.max_zero_bytes = 65536u * 512;
  sub_cap_ = max_subs_per_request(limits_, split_params_);
  split_scratch_.assign(sub_cap_, SubRequest{});
  // Every per-queue structure starts afresh: nothing of a previous setup may complete (its
  // late completions carry an old epoch), and nothing grows on the data path.
  ++requests_.epoch;
  requests_.slots.assign(layout.size, worker::Slot{});
  for (worker::Slot& s : requests_.slots) {
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
  host_.setup();
  vf_.setup();
  return {};
}

void QueueWorker::sync_vf() noexcept {
  const worker::VfPath::Look look = vf_.look();
  if (vf_.must_reap()) {
    reap_vf();  // outstanding commands fail (the controller was reset) and move to the host
  }
  vf_.settle(look, vq_.ready(), vq_.size());
}

bool QueueWorker::submit(std::uint16_t slot, std::uint16_t sub) noexcept {
  if (!vf_.usable()) return submit_host(slot, sub);
  switch (vf_.submit(slot, sub)) {
    case worker::Submitted::yes: return true;
    case worker::Submitted::later: return false;
    case worker::Submitted::failed: finish(slot, sub, false); return true;
  }
  return false;
}

bool QueueWorker::submit_host(std::uint16_t slot, std::uint16_t sub) noexcept {
  switch (host_.submit(slot, sub)) {
    case worker::Submitted::yes: return true;
    case worker::Submitted::later: return false;
    case worker::Submitted::failed: finish(slot, sub, false); return true;
  }
  return false;
}

bool QueueWorker::split(worker::Slot& s) noexcept {
  const SplitResult r = split_blk_request(s.req, split_params_, split_scratch_);
  s.nsubs = r.count;
  s.left = r.count;
  if (r.count == 0) {
    s.req.why = r.why;
    return false;
  }
  for (unsigned i = 0; i < r.count; ++i) {
    worker::Sub& b = s.subs[i];
    b = worker::Sub{};
    b.r = split_scratch_[i];
  }
  return true;
}

void QueueWorker::submit_pending() noexcept {
  if (pending_.empty()) return;
  retry_.clear();
  for (const worker::Pending& p : pending_) {
    if (!submit(p.slot, p.sub)) retry_.push_back(p);
  }
  pending_.swap(retry_);
}

void QueueWorker::take_requests() noexcept {
  // What a previous back end took and never completed goes first, oldest first, once.
  const std::vector<std::uint16_t>* again = resubmit_;
  while (again != nullptr && resubmit_next_ < again->size()) {
    const std::uint16_t head = (*again)[resubmit_next_++];
    if (!take(head, vq_.last_avail(), true)) return;
  }
  std::uint16_t head;
  for (;;) {
    const std::uint16_t pos = vq_.last_avail();
    if (!vq_.pop(&head)) break;
    if (!take(head, pos, false)) return;
  }
}

bool QueueWorker::take(std::uint16_t head, std::uint16_t pos, bool resubmitted) noexcept {
  const ChainError ce = vq_.read_chain(head, chain_);
  if (ce == ChainError::bad_index || head >= requests_.slots.size()) {  // a head beyond the queue
    counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
    vq_.mark_broken();
    return false;
  }
  worker::Slot& s = requests_.slots[head];
  if (s.busy) {  // the driver made a chain available twice
    counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
    vq_.mark_broken();
    return false;
  }
  ParseOutcome outcome = parse_blk_request(ports_.memory, limits_, head, ce, chain_, s.req);
  if (outcome == ParseOutcome::submit && !split(s)) {
    s.req.status = blk::kStatusIoErr;  // too fragmented to cut into sub-requests
    outcome = ParseOutcome::complete;
  }
  switch (outcome) {
    case ParseOutcome::broken:
      counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
      vq_.mark_broken();
      return false;
    case ParseOutcome::complete:
      if (s.req.status != blk::kStatusOk) {
        counters_.bad_requests.fetch_add(1, std::memory_order_relaxed);
        counters_.errors.fetch_add(1, std::memory_order_relaxed);
      }
      (void)write_blk_status(ports_.memory, s.req, s.req.status);
      vq_.push_used(head, s.req.written);
      counters_.requests.fetch_add(1, std::memory_order_relaxed);
      pushed_ = true;
      return true;
    case ParseOutcome::submit:
      s.busy = true;
      s.avail_pos = pos;
      s.resubmitted = resubmitted;
      ++inflight_;
      // Recorded before the device sees it (a resubmitted head still is, with its counter).
      if (!resubmitted) vq_.mark_taken(head);
      for (unsigned i = 0; i < s.nsubs; ++i) {
        const auto sub = static_cast<std::uint16_t>(i);
        if (!submit(head, sub)) pending_.push_back({head, sub});
      }
      return true;
  }
  return true;
}

void QueueWorker::reap_vf() noexcept {
  worker::VfPath::Done d[64];
  for (;;) {
    const worker::VfPath::Reaped r = vf_.reap(d);
    for (unsigned i = 0; i < r.count; ++i) {
      const auto [slot, sub, st] = d[i];
      if (st.ok() || st.code == drv::IoErrc::nvme) {
        counters_.vf_ios.fetch_add(1, std::memory_order_relaxed);
        finish(slot, sub, st.ok());
        continue;
      }
      // The VF could not finish it (gone, timed out, reset): re-issue on the fallback, once.
      worker::Sub& b = requests_.slots[slot].subs[sub];
      if (b.reissued) {
        finish(slot, sub, false);
        continue;
      }
      b.reissued = true;
      b.on_vf = false;
      counters_.reissued.fetch_add(1, std::memory_order_relaxed);
      ports_.link.vf_failed(std::string("VF command ") + (st.code == drv::IoErrc::timeout
                                                              ? "timed out"
                                                              : "lost (device gone or reset)"));
      vf_.start_draining();
      if (!submit_host(slot, sub)) pending_.push_back({slot, sub});
    }
    if (r.polled < std::size(d)) break;
  }
}

void QueueWorker::reap_host() noexcept {
  worker::HostPath::Done d[64];
  for (;;) {
    const worker::HostPath::Reaped r = host_.reap(d);
    for (unsigned i = 0; i < r.count; ++i) finish(d[i].slot, d[i].sub, d[i].ok);
    if (r.polled < std::size(d)) break;
  }
}

void QueueWorker::finish(std::uint16_t slot, std::uint16_t sub, bool ok) noexcept {
  worker::Slot& s = requests_.slots[slot];
  worker::Sub& b = s.subs[sub];
  if (!s.busy || b.done) return;  // never complete twice
  b.done = true;
  b.ok = ok;
  if (--s.left == 0) complete(s);
}

void QueueWorker::complete(worker::Slot& s) noexcept {
  bool ok = true;
  for (unsigned i = 0; i < s.nsubs; ++i) ok = ok && s.subs[i].ok;
  (void)write_blk_status(ports_.memory, s.req, ok ? blk::kStatusOk : blk::kStatusIoErr);
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
  } else {
    ports_.link.notify(config_.index);
  }
}

unsigned QueueWorker::pass(bool take) noexcept {
  sync_vf();
  if (!vq_.ready()) return 0;
  const std::uint64_t before = counters_.requests.load(std::memory_order_relaxed);
  if (vf_.queue() != nullptr) reap_vf();
  reap_host();
  submit_pending();
  if (take && !vq_.broken()) take_requests();
  if (vf_.queue() != nullptr) vf_.queue()->commit();
  host_.client().notify();
  notify_guest();
  return static_cast<unsigned>(counters_.requests.load(std::memory_order_relaxed) - before);
}

void QueueWorker::quiesce(bool keep_vf) {
  quiescing_ = true;  // the data path runs on the control thread until the end of quiesce()
  // Only what was taken: a busy guest must not hold the pause (and the control plane) open.
  fpga::poll_until(ports_.clock, ports_.stepper, config_.quiesce_timeout, [&] {
    pass(false);
    return inflight_ == 0 && pending_.empty();
  });
  if (vf_.queue() != nullptr && vf_.queue()->outstanding() > 0) {
    // The device has not finished commands within the bound: it may still DMA into bounce
    // chunks or guest pages. Disable the controller (CC.EN=0 stops its DMA) before those
    // chunks are reused and before the requests are given back or failed. The other workers'
    // queue pairs fail their commands and re-issue them on the host path (failover).
    (void)ports_.link.with_controller(false, [](drivers::nvme::Controller& c) { (void)c.reset(); });
  }
  if (inflight_ != 0 || !pending_.empty()) give_back_unfinished();
  quiescing_ = false;
  if (keep_vf && vf_.queue() != nullptr && vf_.queue()->outstanding() == 0) return;
  vf_.drop();  // deletes its queues: no VF command still uses a bounce chunk
}

void QueueWorker::give_back_unfinished() noexcept {
  // Age 1 is the request taken last. The newest requests that are all unfinished go back to
  // the ring: last_avail moves back over them, so GET_VRING_BASE does not report them consumed
  // and the front end makes them available again. An older unfinished request (a completed one
  // was taken after it) cannot be given back without replaying the completed one: it fails.
  const std::uint16_t last = vq_.last_avail();
  auto busy_at_age = [&](unsigned age) {
    for (const worker::Slot& s : requests_.slots) {
      if (s.busy && !s.resubmitted && static_cast<std::uint16_t>(last - s.avail_pos) == age) {
        return true;
      }
    }
    return false;
  };
  unsigned back = 0;
  while (back < requests_.slots.size() && busy_at_age(back + 1)) ++back;
  unsigned failed = 0;
  unsigned kept = 0;
  for (worker::Slot& s : requests_.slots) {
    if (!s.busy) continue;
    const unsigned age = static_cast<std::uint16_t>(last - s.avail_pos);
    for (unsigned i = 0; i < s.nsubs; ++i) {
      if (!s.subs[i].done) {
        s.subs[i].done = true;
        s.subs[i].ok = false;
      }
    }
    if (s.resubmitted) {
      // Taken by a previous back end: not in the avail ring's tail. It stays inflight in the
      // record, which resubmits it when the ring starts again.
      s.busy = false;
      --inflight_;
      ++kept;
      counters_.given_back.fetch_add(1, std::memory_order_relaxed);
    } else if (age >= 1 && age <= back) {
      vq_.mark_given_back(s.req.head);
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
  ++requests_
        .epoch;  // their IO may still complete: those completions are ignored (chunks released)
  notify_guest();
  kLog.warn(
      "queue %u: stopping with requests unfinished after the bound: %u given back to the "
      "ring, %u failed (a completed request followed them), %u resubmitted ones left in the "
      "inflight record",
      config_.index, back, failed, kept);
}

bool QueueWorker::has_work_off_host() const noexcept {
  const drivers::nvme::QueuePair* qp = vf_.queue();
  return !pending_.empty() || (qp != nullptr && qp->outstanding() > 0);
}

void QueueWorker::run_thread() {
  const std::string name = "keel-pv-q" + std::to_string(config_.index);
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
  watch(host_.client().completion_fd());
  const int stop_fd = ports_.link.stop_fd();
  if (stop_fd >= 0) watch(stop_fd);
  unsigned spins = 0;
  std::uint64_t spin_start_ns = 0;
  // How long a worker polls for VF completions before it sleeps on the queue's MSI-X.
  constexpr std::uint64_t kVfSpinNs = 10'000;
  // Whether polling pays: how long the VF's completions have lately taken to come once the
  // worker ran out of work with commands on the VF (moving average, weight 1/8, polled or
  // slept for). Above the budget (a guest whose IOs come one at a time to a card that has to be
  // woken, a loaded host) a poll mostly runs out and the worker sleeps anyway, so it sleeps at
  // once; one idle period in 16 still polls, to see whether completions came back within it.
  std::uint64_t vf_wait_avg_ns = 0;
  std::uint64_t vf_idle_since_ns = 0;  // 0: not waiting for the VF
  unsigned idle_periods = 0;
  bool poll_this_period = true;
  const drivers::nvme::QueuePair* watched_qp = nullptr;
  int watched_fd = -1;
  while (ports_.link.running()) {
    if (config_.index == 0) ports_.link.tick();
    const unsigned n = run_once();
    // The queue pair's MSI-X fd, looked up again only when the queue pair changes.
    drivers::nvme::QueuePair* qp = vf_.queue();
    if (qp != watched_qp) {
      watched_qp = qp;
      watched_fd = qp != nullptr ? qp->interrupt_fd() : -1;
    }
    const int qfd = watched_fd;
    if (qfd != vf_fd) {
      if (vf_fd >= 0) (void)epoll_ctl(ep, EPOLL_CTL_DEL, vf_fd, nullptr);
      vf_fd = qfd;
      if (vf_fd >= 0) {
        watch(vf_fd);
        qp->arm_interrupt(false);  // polling: no interrupts until we sleep
      }
    }
    if (n > 0 && vf_idle_since_ns != 0) {
      const auto waited = static_cast<std::int64_t>(steady_clock().now_ns() - vf_idle_since_ns);
      vf_wait_avg_ns =
          static_cast<std::uint64_t>(static_cast<std::int64_t>(vf_wait_avg_ns) +
                                     (waited - static_cast<std::int64_t>(vf_wait_avg_ns)) / 8);
      vf_idle_since_ns = 0;
    }
    if (n > 0 || !pending_.empty()) {
      spins = 0;
      continue;
    }
    // With commands on the VF, completions are microseconds away: poll a while longer
    // before paying for a sleep and an interrupt, but for a bounded time, not a count of
    // turns: a card that takes longer (one woken from its own sleep, one starved of a CPU)
    // would have a poller burn tens of microseconds of CPU per IO for nothing.
    const bool vf_busy = qp != nullptr && qp->outstanding() > 0;
    // (The host's clock, not the card's: a lockstep card's time stands still while nothing
    // steps it.)
    if (spins == 0) {
      spin_start_ns = steady_clock().now_ns();
      if (vf_busy) {
        vf_idle_since_ns = spin_start_ns;
        poll_this_period = vf_wait_avg_ns <= kVfSpinNs || ++idle_periods % 16 == 0;
      }
    }
    ++spins;
    if (!vf_busy ? spins < 64
                 : (poll_this_period &&
                    (spins % 16 != 0 || steady_clock().now_ns() - spin_start_ns < kVfSpinNs))) {
      __builtin_ia32_pause();
      continue;
    }
    spins = 0;
    bool ready = false;
    if (vq_.ready() && kick_fd >= 0) ready = vq_.enable_kicks();
    if (host_.client().outstanding() > 0 && !host_.client().prepare_wait()) ready = true;
    if (qp != nullptr && qp->outstanding() > 0) {
      qp->check_deadlines();  // a lost VF is noticed before the sleep, not after it
      qp->arm_interrupt(true);
      // A completion that landed before the vector was armed raised no interrupt: look.
      ready = ready || run_once() > 0;
    }
    if (!ready) {
      // Bounded: the probe timer (worker 0) and stop() need turns.
      const auto ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(config_.max_sleep).count();
      epoll_event ev[4];
      const int k = epoll_wait(ep, ev, 4, static_cast<int>(std::max<long long>(ms, 1)));
      for (int i = 0; i < k; ++i) {
        if (ev[i].data.fd == stop_fd) continue;  // left signalled for the other workers
        std::uint64_t v;
        (void)!read(ev[i].data.fd, &v, sizeof v);
      }
      host_.client().end_wait();
    }
    if (vq_.ready()) vq_.disable_kicks();
    if (vf_.queue() != nullptr) vf_.queue()->arm_interrupt(false);
  }
  close(ep);
  cpu_.finish();
  exited_.store(true, std::memory_order_release);
}

}  // namespace keel::vmm
