// The service thread: adopt channels, drain their SQs into io_uring, post completions, sleep
// in epoll when there is nothing to do, and stop without losing or duplicating a completion.
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <new>
#include <string>

#include "service_impl.h"

namespace keel::vmm {
namespace {

constexpr std::uint32_t kBatch = 32;  // SQ entries taken from one channel per pass (fairness)

void kick(int fd) noexcept {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(fd, &one, sizeof one);
}

void clear_eventfd(int fd) noexcept {
  std::uint64_t value = 0;
  [[maybe_unused]] const ssize_t n = ::read(fd, &value, sizeof value);
}

}  // namespace

void HostStorageService::Impl::run() noexcept {
  cpu.start();
  thread_tid.store(static_cast<int>(gettid()), std::memory_order_release);
  while (!stop.load(std::memory_order_acquire)) {
    bool progress = false;
    if (has_pending.load(std::memory_order_acquire)) progress |= adopt_channels();
    progress |= reap();
    for (auto& ch : channels) progress |= drain(*ch);
    submit_prepared();
    publish_all();
    if (!progress) sleep_until_work();
  }
  shut_down();
  cpu.finish();
}

bool HostStorageService::Impl::adopt_channels() noexcept {
  std::vector<std::unique_ptr<detail::ServiceChannel>> fresh;
  bool new_regions = false;
  {
    std::lock_guard lock(pending_mutex);
    fresh.swap(pending);
    // Shared regions first: a channel adopted in this pass may already name them. `regions`
    // grows only here, on the control path (a region is added once per paravisor).
    for (const detail::MappedRegion& r : pending_regions) {
      try {
        regions.push_back(r);
      } catch (const std::bad_alloc&) {
        munmap(r.map, r.map_bytes);
        last_error_text = "out of memory adopting a shared region; its requests get -EFAULT";
      }
    }
    new_regions = !pending_regions.empty();
    pending_regions.clear();
    regions_adopted = regions_added;
    has_pending.store(false, std::memory_order_relaxed);
  }
  if (new_regions) regions_cv.notify_all();
  for (auto& ch : fresh) {
    ch->id = static_cast<unsigned>(channels.size());
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 2 + std::uint64_t{ch->id};
    if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, ch->submit_fd.get(), &ev) != 0) {
      mark_broken(*ch, (std::string("epoll_ctl failed: ") + std::strerror(errno)).c_str());
    }
    channels.push_back(std::move(ch));
  }
  return !fresh.empty();
}

bool HostStorageService::Impl::drain(detail::ServiceChannel& ch) noexcept {
  if (ch.broken || stopping) return false;
  detail::RingHeader& h = *ch.header;
  const std::uint32_t tail = h.sq_tail.load(std::memory_order_acquire);
  const std::uint32_t queued = tail - ch.sq_head;
  if (queued == 0) return false;
  if (queued > ch.entries) {
    mark_broken(ch, "SQ tail is more than `entries` ahead of the head");
    return false;
  }
  // Loaded after sq_tail: the client frees CQ slots before it submits into them.
  const std::uint32_t used = ch.cq_tail - h.cq_head.load(std::memory_order_acquire);
  if (used > ch.entries) {
    mark_broken(ch, "CQ head is ahead of the tail");
    return false;
  }
  const std::uint32_t room = ch.entries - used;
  const std::uint32_t credit = room > ch.held ? room - ch.held : 0;
  const auto idle_slots = static_cast<std::uint32_t>(free_slots.size());
  const std::uint32_t n = std::min({queued, credit, idle_slots, kBatch});
  for (std::uint32_t i = 0; i < n; ++i) {
    // Copy the entry out of shared memory before looking at it: the client cannot change what
    // the service validated. Only the segments the entry claims are copied.
    const detail::RingSqe& shared = ch.sq[ch.sq_head & ch.mask];
    detail::RingSqe entry;
    std::memcpy(&entry, &shared, offsetof(detail::RingSqe, segments));
    const std::uint32_t segs = std::min(entry.segment_count, detail::kMaxSegments);
    std::memcpy(entry.segments, shared.segments, segs * sizeof(detail::WireSegment));
    ++ch.sq_head;
    take(ch, entry);
  }
  if (n > 0) h.sq_head.store(ch.sq_head, std::memory_order_release);
  return n > 0;
}

bool HostStorageService::Impl::can_take(const detail::ServiceChannel& ch) const noexcept {
  if (ch.broken || free_slots.empty()) return false;
  const detail::RingHeader& h = *ch.header;
  const std::uint32_t queued = h.sq_tail.load(std::memory_order_seq_cst) - ch.sq_head;
  if (queued == 0) return false;
  if (queued > ch.entries) return true;  // drain() will drop the channel
  const std::uint32_t used = ch.cq_tail - h.cq_head.load(std::memory_order_acquire);
  return used > ch.entries || used + ch.held < ch.entries;
}

void HostStorageService::Impl::publish(detail::ServiceChannel& ch) noexcept {
  if (!ch.dirty) return;
  ch.dirty = false;
  detail::RingHeader& h = *ch.header;
  // Waker side of the protocol (ring_layout.h): seq_cst tail store, then seq_cst flag load.
  h.cq_tail.store(ch.cq_tail, std::memory_order_seq_cst);
  if (h.client_needs_wakeup.load(std::memory_order_seq_cst) != 0 &&
      h.client_needs_wakeup.exchange(0, std::memory_order_acq_rel) != 0) {
    kick(ch.complete_fd.get());
    bump(counters.client_kicks);
  }
}

void HostStorageService::Impl::publish_all() noexcept {
  for (auto& ch : channels) publish(*ch);
}

void HostStorageService::Impl::sleep_until_work() noexcept {
  // Sleeper side of the protocol (ring_layout.h): seq_cst flag stores, then seq_cst re-check
  // (can_take() loads sq_tail with seq_cst).
  for (auto& ch : channels) ch->header->service_needs_wakeup.store(1, std::memory_order_seq_cst);
  bool work = stop.load(std::memory_order_relaxed) || has_pending.load(std::memory_order_relaxed) ||
              io_uring_cq_ready(&ring) > 0 || wake_pending;
  for (auto& ch : channels) work = work || can_take(*ch);
  if (!work) {
    bump(counters.sleeps);
    epoll_event events[16];
    const int n = epoll_wait(epoll_fd.get(), events, 16, static_cast<int>(config.idle_timeout_ms));
    for (int i = 0; i < n; ++i) {
      const std::uint64_t key = events[i].data.u64;
      if (key == 0) clear_eventfd(control_fd.get());
      if (key == 1) clear_eventfd(uring_event_fd.get());
      if (key >= 2 && key - 2 < channels.size()) clear_eventfd(channels[key - 2]->submit_fd.get());
    }
  }
  for (auto& ch : channels) ch->header->service_needs_wakeup.store(0, std::memory_order_relaxed);
}

void HostStorageService::Impl::mark_broken(detail::ServiceChannel& ch, const char* why) noexcept {
  if (ch.broken) return;
  ch.broken = true;
  bump(counters.broken_channels);
  note_error("host channel " + std::to_string(ch.id) + ": " + why +
             "; the channel is no longer served (its client is corrupt or not a keel client)");
}

void HostStorageService::Impl::shut_down() noexcept {
  stopping = true;
  {
    std::lock_guard lock(pending_mutex);
    closed = true;
  }
  adopt_channels();  // channels opened while stopping get their stop too
  reap();
  wake_deferred();  // requests waiting for their blocks never reached the kernel: -ECANCELED
  // Every request in the kernel is asked to stop, and its completion awaited: it reports what
  // the kernel says (-ECANCELED only if the kernel cancelled it or it came back interrupted).
  // The budget is counted on the configured clock; the kernel is waited for in slices of at
  // most 100 ms of real time, so a test clock that moves ends the wait within one slice.
  const Clock& clk = *config.clock;
  const std::uint64_t deadline =
      clk.deadline_after(std::chrono::milliseconds(config.stop_timeout_ms));
  while (free_slots.size() < slots.size()) {
    if (cancel_at_stop) (void)cancel_in_flight();  // again for those the ring had no room for
    const std::uint64_t now = clk.now_ns();
    if (now >= deadline) break;
    const auto ns = static_cast<long long>(std::min<std::uint64_t>(deadline - now, 100'000'000));
    __kernel_timespec ts{0, ns};
    io_uring_cqe* cqe = nullptr;
    io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
    reap();
  }
  // Whatever has not come back is still in the kernel (a hung device, IO the kernel cannot
  // interrupt): it is not reported cancelled, and the memory it names is never unmapped.
  for (std::uint32_t i = 0; i < slots.size(); ++i) {
    if (!slots[i].busy) continue;
    finish(i, -ETIMEDOUT);
    bump(counters.stuck_at_stop);
    ++stuck_at_stop;
  }
  if (stuck_at_stop > 0) {
    leak_mappings = true;
    note_error(std::to_string(stuck_at_stop) + " request(s) were still in the kernel " +
               std::to_string(config.stop_timeout_ms) +
               " ms (stop_timeout_ms) after they were cancelled: completed -ETIMEDOUT; the "
               "memory they name is left mapped for the life of the process");
  }
  publish_all();
  for (auto& ch : channels) {
    ch->header->sq_head.store(ch->sq_head, std::memory_order_release);
    ch->header->service_state.store(detail::kServiceStopped, std::memory_order_release);
  }
  // Wake every client, asleep or not: each must see the stop (and cancel what it queued).
  for (auto& ch : channels) kick(ch->complete_fd.get());
}

}  // namespace keel::vmm
