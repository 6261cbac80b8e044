// The NBD server: one epoll thread serving every connection, one in-process virtio-blk guest
// driver carrying the requests to the paravisor. This file is the server itself (setup, the
// listener, the loop, timers, stopping); the pieces it drives:
//   nbd_connection    a peer's socket: the parser, the handshake's driving, the reply queue
//   nbd_requests      the requests held: buffers within quota, replies, device timeouts
//   nbd_planner       a request as device IO: RMW, splitting, stages, overlap order
//   nbd_device_queue  virtio-blk requests to and from the device
//   nbd_buffers, nbd_pool, nbd_overlap, nbd_handshake, nbd_stats, nbd_clock
//
// Life of a request: the header is parsed and validated (an invalid one is answered at once, a
// WRITE's payload being read and dropped first); its data buffer is taken from the pool in
// guest memory within the connection's quota (the connection stops reading while its quota or
// the pool is short: nbd_pool.h); a WRITE's payload is received straight into that buffer; the
// request is admitted (it waits while an overlapping request admitted earlier is on the device:
// nbd_overlap.h); it becomes virtio-blk requests of at most max_virtio_bytes, queued until the
// virtqueue has descriptors for them; completions move it through its stages (edge reads of a
// read-modify-write, the data, the FUA flush); then its reply is queued and sent with its data
// straight from the buffer, within a send deadline.
#include <fcntl.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "keel/thread_cpu.h"
#include "keel/unix_listener.h"
#include "keel/vmm/nbd_server.h"
#include "nbd_buffers.h"
#include "nbd_clock.h"
#include "nbd_connection.h"
#include "nbd_device.h"
#include "nbd_device_queue.h"
#include "nbd_layout.h"
#include "nbd_requests.h"
#include "nbd_seam.h"
#include "nbd_stats.h"

namespace keel::vmm {

using nbd_internal::bump;
using nbd_internal::Connection;
using nbd_internal::kChunk;
using nbd_internal::kSector;
using nbd_internal::ns;
using nbd_internal::real_ns;

struct NbdServer::Impl {
  // ---- configuration and the stack ----
  NbdServerConfig cfg;
  std::unique_ptr<NbdDevice> dev;
  GuestMemory& mem;
  std::uint64_t size = 0;  // export bytes
  std::uint16_t tx_flags = 0;
  UnixListener listener;
  int call_fd = -1, wake_fd = -1, ep = -1;

  // ---- the pieces (server thread) ----
  nbd_internal::TimeoutClock clock;
  nbd_internal::Counters counters;
  nbd_internal::Notes notes;
  nbd_internal::DataBuffers buffers;
  nbd_internal::DeviceQueue devq;
  nbd_internal::Requests requests;
  nbd_internal::TurnLists turns;
  std::unique_ptr<nbd_internal::ConnectionContext> ctx;  // made by setup()

  // ---- state of the server thread ----
  std::map<std::uint64_t, std::unique_ptr<Connection>> conns;
  std::uint64_t next_conn_id = 16;        // ids below are the listener, call fd and wake fd
  std::uint64_t stop_deadline = 0;        // real time; set when stopping begins
  std::uint64_t accept_paused_until = 0;  // out of fds: accepting rests a moment
  std::uint64_t next_timer_ns = 0;

  // ---- shared with other threads ----
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::atomic<bool> started{false};
  ThreadCpuMeter cpu;            // the server thread's
  mutable std::mutex thread_mu;  // the thread handle (joins, CPU sampling)

  Impl(const NbdServerConfig& c, std::unique_ptr<NbdDevice> d, GuestMemory& m)
      : cfg(c),
        dev(std::move(d)),
        mem(m),
        size(dev->capacity_sectors() * kSector),
        clock(cfg.clock),
        notes(cfg.log),
        devq(*dev, mem, buffers, counters),
        requests(cfg, size, buffers, devq, clock, counters, notes) {}
  ~Impl() {
    listener.close();
    conns.clear();  // closes their sockets
    // The device (guest driver) detaches (and stops using call_fd) before the fd goes.
    dev.reset();
    if (call_fd >= 0) close(call_fd);
    if (wake_fd >= 0) close(wake_fd);
    if (ep >= 0) close(ep);
  }

  // ================================================================ setup

  Status setup() {
    tx_flags = nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendFua |
               nbd::kFlagSendWriteZeroes | nbd::kFlagCanMultiConn;
    if (cfg.trim != NbdTrim::off) tx_flags |= nbd::kFlagSendTrim;
    if (cfg.read_only) tx_flags |= nbd::kFlagReadOnly;

    const std::uint64_t wz_gpa = dev->alloc(std::uint64_t{cfg.virtqueue_size} * 16, 4096);
    const std::uint64_t pool_gpa = dev->alloc(cfg.buffer_bytes, 2u << 20);
    std::byte* pool_host = mem.translate(pool_gpa, cfg.buffer_bytes);
    if (pool_gpa + cfg.buffer_bytes > guest_memory_bytes(cfg) || pool_host == nullptr ||
        mem.translate(wz_gpa, std::uint64_t{cfg.virtqueue_size} * 16) == nullptr) {
      return make_error(Errc::invalid_argument,
                        "guest memory too small for the NBD server's buffers (need " +
                            std::to_string(guest_memory_bytes(cfg)) +
                            " bytes at GPA 0; see NbdServer::guest_memory_bytes)");
    }
    const auto nchunks = static_cast<std::uint32_t>(cfg.buffer_bytes / kChunk);
    buffers.init(pool_host, pool_gpa, nchunks,
                 nbd_internal::ChunkPool::quota_for(nchunks, cfg.max_connections,
                                                    nbd_internal::max_request_chunks(cfg)));
    devq.init(wz_gpa, cfg.virtqueue_size);

    // The paravisor signals completions on our eventfd (the server thread sleeps in epoll).
    call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (call_fd < 0 || wake_fd < 0 || ep < 0) {
      return make_error(Errc::io_error, std::string("eventfd/epoll: ") + std::strerror(errno));
    }
    ctx = std::make_unique<nbd_internal::ConnectionContext>(nbd_internal::ConnectionContext{
        cfg, size, tx_flags, clock, counters, notes, buffers, requests, turns, stopping, ep});
    dev->set_call_fd(call_fd);
    return listen_on(cfg.socket_path);
  }

  Status listen_on(const std::string& path) {
    UnixListenerConfig lc;
    lc.backlog = 64;
    auto l = UnixListener::listen(path, lc);
    if (!l.ok()) return l.error();
    listener = std::move(l.value());
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = 0;
    epoll_ctl(ep, EPOLL_CTL_ADD, listener.fd(), &e);
    e.data.u64 = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, call_fd, &e);
    e.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd, &e);
    return {};
  }

  // ================================================================ the loop

  void run() {
    while (round(-1)) {
    }
    for (auto& [id, c] : conns) c->close();
    if (requests.planner().running() > 0 || !devq.empty()) {
      notes.note("stopping with " + std::to_string(requests.planner().running()) +
                 " request(s) still on the device after the stop timeout");
    }
  }

  /// One turn of the loop: everything that needs no waiting, then events, waiting at most
  /// `max_wait_ms` (-1: until something happens or a timer is due). Returns false once the
  /// server has stopped.
  bool round(int max_wait_ms) {
    epoll_event ev[32];
    const std::uint64_t now = real_ns();
    if (accept_paused_until != 0 && now >= accept_paused_until && listener.valid()) {
      accept_paused_until = 0;
      epoll_event e{};
      e.events = EPOLLIN;
      e.data.u64 = 0;
      epoll_ctl(ep, EPOLL_CTL_MOD, listener.fd(), &e);
    }
    if (now >= next_timer_ns) {
      check_timers(clock.now());
      next_timer_ns = now + 50'000'000ull;
    }
    if (stopping.load(std::memory_order_acquire)) {
      if (stop_deadline == 0) {
        stop_deadline = now + ns(cfg.stop_timeout);
        begin_stop();
      }
      for (auto& [id, c] : conns) {
        if (c->open() && c->drained()) c->close();
      }
      bool open = false;
      for (auto& [id, c] : conns) open = open || c->open();
      if ((!open && requests.planner().running() == 0 && devq.empty()) || now >= stop_deadline)
        return false;
    }
    // Everything that needs no waiting, until nothing is left (bounded: others need turns).
    // Parsing (resumes, pool grants) and completions queue virtio requests, so the
    // submission comes after them in every round.
    for (int round = 0; round < 8; ++round) {
      run_resumes();
      requests.serve_waiters();
      requests.planner().reap();
      devq.submit();
      flush_dirty();
      if (turns.resume.empty() && turns.dirty.empty()) break;
    }
    reap_dead();
    for (auto& [id, c] : conns) c->update_mask();
    // reap() published used_event; an entry the device used before seeing it raised no
    // notification. Look once more after a full fence (the device fences between pushing an
    // entry and reading used_event): either it notifies or this sees the entry.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const bool more = requests.planner().reap() > 0 || !turns.resume.empty() ||
                      !turns.dirty.empty() || devq.can_submit();
    const bool busy = !conns.empty() || requests.planner().running() > 0 || !devq.empty();
    int timeout = more ? 0 : stopping.load(std::memory_order_relaxed) ? 10 : busy ? 100 : -1;
    if (max_wait_ms >= 0 && (timeout < 0 || timeout > max_wait_ms)) timeout = max_wait_ms;
    const int n = epoll_wait(ep, ev, 32, timeout);
    for (int i = 0; i < n; ++i) {
      const std::uint64_t id = ev[i].data.u64;
      if (id == 0) {
        accept_all();
      } else if (id == 1 || id == 2) {
        std::uint64_t v;
        (void)!read(id == 1 ? call_fd : wake_fd, &v, sizeof v);
      } else {
        auto it = conns.find(id);
        if (it == conns.end() || !it->second->open()) continue;
        it->second->on_events(ev[i].events);
      }
    }
    return true;
  }

  void begin_stop() {
    if (listener.valid()) {
      epoll_ctl(ep, EPOLL_CTL_DEL, listener.fd(), nullptr);
      listener.close();  // and its socket file: new peers are refused at once
    }
    for (auto& [id, c] : conns) {
      if (c->open() && !c->in_transmission()) c->close();
    }
  }

  /// The peers' deadlines, then the device's.
  void check_timers(std::uint64_t now) {
    for (auto& [id, c] : conns) c->check_timers(now);
    requests.check_timeouts(now);
  }

  // ================================================================ connections

  void accept_all() {
    for (;;) {
      const int fd = accept4(listener.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        notes.note(std::string("accept: ") + std::strerror(errno) + "; not accepting for 100 ms");
        // Level-triggered: a listener that keeps failing (EMFILE) would spin. Rest it.
        epoll_event e{};
        e.data.u64 = 0;
        epoll_ctl(ep, EPOLL_CTL_MOD, listener.fd(), &e);
        accept_paused_until = real_ns() + 100'000'000ull;
        return;
      }
      unsigned open = 0;
      for (auto& [id, c] : conns) open += c->open() ? 1u : 0u;
      if (open >= cfg.max_connections || stopping.load(std::memory_order_relaxed)) {
        close(fd);
        bump(counters.turned_away);
        continue;
      }
      add_conn(fd);
    }
  }

  /// Serves a connected socket (non-blocking): sends the greeting.
  void add_conn(int fd) {
    auto c = std::make_unique<Connection>(*ctx, next_conn_id++, fd);
    Connection& ref = *c;
    conns.emplace(ref.id(), std::move(c));
    ref.start();
  }

  /// Frees connections that are closed and that no request points to any more.
  void reap_dead() {
    auto dead = [](const Connection* c) { return c->reclaimable(); };
    auto& resume = turns.resume;
    auto& dirty = turns.dirty;
    resume.erase(std::remove_if(resume.begin(), resume.end(), dead), resume.end());
    dirty.erase(std::remove_if(dirty.begin(), dirty.end(), dead), dirty.end());
    for (auto it = conns.begin(); it != conns.end();) {
      if (it->second->reclaimable()) {
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
  }

  void run_resumes() {
    for (std::size_t i = 0; i < turns.resume.size(); ++i) turns.resume[i]->resume_turn();
    turns.resume.clear();
  }

  void flush_dirty() {
    for (std::size_t i = 0; i < turns.dirty.size(); ++i) turns.dirty[i]->flush_turn();
    turns.dirty.clear();
  }
};

// ================================================================ NbdServer

Result<std::unique_ptr<NbdServer>> NbdServer::create(const NbdServerConfig& config,
                                                     std::unique_ptr<NbdDevice> device,
                                                     GuestMemory& memory) {
  if (Status s = check_nbd_config(config, memory); !s.ok()) return s.error();
  if (device->capacity_sectors() == 0) {
    return make_error(Errc::invalid_argument, "the exported disk has no capacity");
  }
  auto impl = std::make_unique<Impl>(config, std::move(device), memory);
  if (Status s = impl->setup(); !s.ok()) return s.error();
  return std::unique_ptr<NbdServer>(new NbdServer(std::move(impl)));
}

NbdServer::NbdServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NbdServer::~NbdServer() { stop(); }

Status NbdServer::start() {
  if (impl_->started.exchange(true)) return {};
  if (Status s = impl_->dev->start(); !s.ok()) return s;
  try {
    std::lock_guard lock(impl_->thread_mu);
    impl_->thread = std::thread([impl = impl_.get()] {
      pthread_setname_np(pthread_self(), "keel-nbd-srv");  // for top -H and /proc/*/task
      impl->cpu.start();
      impl->run();
      impl->cpu.finish();
    });
  } catch (const std::system_error& e) {
    return make_error(Errc::io_error, std::string("server thread: ") + e.what());
  }
  return {};
}

void NbdServer::stop() {
  impl_->stopping.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  (void)!write(impl_->wake_fd, &one, sizeof one);
  std::lock_guard lock(impl_->thread_mu);
  if (impl_->thread.joinable()) impl_->thread.join();
}

NbdServerStats NbdServer::stats() const { return impl_->counters.snapshot(); }

std::uint64_t NbdServer::thread_cpu_ns() const { return impl_->cpu.ns(); }

std::string NbdServer::last_error() const { return impl_->notes.last(); }

const std::string& NbdServer::socket_path() const noexcept { return impl_->cfg.socket_path; }

std::uint64_t NbdServer::export_bytes() const noexcept { return impl_->size; }

// ================================================================ test seam

Result<std::unique_ptr<NbdServer>> NbdServerTestSeam::create(const NbdServerConfig& config,
                                                             std::unique_ptr<NbdDevice> device,
                                                             GuestMemory& memory) {
  return NbdServer::create(config, std::move(device), memory);
}

void NbdServerTestSeam::adopt(NbdServer& server, int fd) { server.impl_->add_conn(fd); }

void NbdServerTestSeam::step(NbdServer& server) {
  server.impl_->next_timer_ns = 0;
  (void)server.impl_->round(0);
}

std::uint64_t NbdServerTestSeam::free_chunks(const NbdServer& server) {
  return server.impl_->buffers.pool().free_count();
}

std::uint64_t NbdServerTestSeam::total_chunks(const NbdServer& server) {
  return server.impl_->buffers.pool().total();
}

std::size_t NbdServerTestSeam::live_requests(const NbdServer& server) {
  return server.impl_->requests.live();
}

std::size_t NbdServerTestSeam::open_connections(const NbdServer& server) {
  std::size_t n = 0;
  for (const auto& [id, c] : server.impl_->conns) n += c->open() ? 1 : 0;
  return n;
}

std::size_t NbdServerTestSeam::held_ranges(const NbdServer& server) {
  return server.impl_->requests.planner().held_ranges();
}

std::string NbdServerTestSeam::describe(const NbdServer& server) {
  return server.impl_->requests.describe();
}

}  // namespace keel::vmm
