// The NBD server: `queues` workers, each an epoll thread with its own virtqueue of the
// in-process virtio-blk guest driver (so its own paravisor worker and VF queue pair), its own
// data buffers and its own connections; worker 0 also accepts and hands each connection to the
// worker with the fewest. What they share: the counters, the notes, the connection slots and
// the order of overlapping requests (nbd_overlap.h, one list under a mutex, so overlapping
// requests stay ordered across connections whichever workers serve them). This file is the
// server itself (setup, the listener, the loop, timers, stopping); the pieces it drives:
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
#include <set>
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
#include "nbd_overlap.h"
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

/// What the workers share.
struct Shared {
  NbdServerConfig cfg;
  std::uint64_t size = 0;  // export bytes
  nbd_internal::Counters counters;
  nbd_internal::Notes notes;
  nbd_internal::RangeOrder order;
  std::atomic<bool> stopping{false};
  /// Connections holding a slot (max_connections of them at most), on every worker.
  std::atomic<unsigned> slots{0};

  Shared(const NbdServerConfig& c, std::uint64_t bytes) : cfg(c), size(bytes), notes(c.log) {}
};

/// One worker: a thread, an epoll, a virtqueue (its device), data buffers, the requests and the
/// connections it serves.
struct Worker {
  Shared& sh;
  NbdServerConfig cfg;  // the server's, with max_connections this worker's share (quotas)
  unsigned index = 0;
  std::unique_ptr<NbdDevice> dev;
  GuestMemory& mem;
  std::uint16_t tx_flags = 0;
  int call_fd = -1, wake_fd = -1, ep = -1;
  UnixListener listener;                                // worker 0's
  std::vector<std::unique_ptr<Worker>>* all = nullptr;  // worker 0 hands connections out

  // ---- the pieces (the worker's thread) ----
  nbd_internal::TimeoutClock clock;
  nbd_internal::DataBuffers buffers;
  nbd_internal::DeviceQueue devq;
  nbd_internal::Requests requests;
  nbd_internal::TurnLists turns;
  std::unique_ptr<nbd_internal::ConnectionContext> ctx;  // made by setup()

  // ---- state of the worker's thread ----
  std::map<std::uint64_t, std::unique_ptr<Connection>> conns;
  std::set<std::uint64_t> slotted;        // connections holding a slot of sh.slots
  std::uint64_t next_conn_id = 16;        // ids below are the listener, call fd and wake fd
  std::uint64_t stop_deadline = 0;        // real time; set when stopping begins
  std::uint64_t accept_paused_until = 0;  // out of fds: accepting rests a moment
  std::uint64_t next_timer_ns = 0;

  // ---- shared with other threads ----
  std::atomic<unsigned> load{0};  // connections holding a slot here, and handed-in sockets
  std::mutex inbox_mu;
  std::vector<int> inbox;  // sockets worker 0 handed over, holding a slot each
  std::thread thread;
  ThreadCpuMeter cpu;            // the worker thread's
  mutable std::mutex thread_mu;  // the thread handle (joins, CPU sampling)

  Worker(Shared& s, unsigned i, std::unique_ptr<NbdDevice> d, GuestMemory& m)
      : sh(s),
        cfg(s.cfg),
        index(i),
        dev(std::move(d)),
        mem(m),
        clock(cfg.clock),
        devq(*dev, mem, buffers, sh.counters),
        requests(cfg, sh.size, buffers, devq, clock, sh.counters, sh.notes, sh.order) {
    const unsigned n = std::max(1u, s.cfg.queues);
    cfg.max_connections = std::max(1u, (s.cfg.max_connections + n - 1) / n);
  }
  ~Worker() {
    listener.close();
    conns.clear();  // closes their sockets
    for (int fd : inbox) close(fd);
    dev.reset();
    if (call_fd >= 0) close(call_fd);
    if (wake_fd >= 0) close(wake_fd);
    if (ep >= 0) close(ep);
  }

  // ================================================================ setup

  /// This worker's share of the data buffers: buffer_bytes split evenly, but never less than
  /// one largest request.
  static std::uint64_t pool_bytes(const NbdServerConfig& c) {
    const std::uint64_t n = std::max(1u, c.queues);
    const std::uint64_t min_bytes = nbd_internal::max_request_chunks(c) * kChunk;
    return std::max(c.buffer_bytes / n / kChunk * kChunk, min_bytes);
  }

  std::uint64_t wz_gpa = 0;
  void alloc_wz() { wz_gpa = dev->alloc(std::uint64_t{cfg.virtqueue_size} * 16, 4096); }

  Status setup(std::uint16_t flags) {
    tx_flags = flags;
    const std::uint64_t bytes = pool_bytes(cfg);
    const std::uint64_t pool_gpa = dev->alloc(bytes, 2u << 20);
    std::byte* pool_host = mem.translate(pool_gpa, bytes);
    if (pool_gpa + bytes > NbdServer::guest_memory_bytes(sh.cfg) || pool_host == nullptr ||
        mem.translate(wz_gpa, std::uint64_t{cfg.virtqueue_size} * 16) == nullptr) {
      return make_error(Errc::invalid_argument,
                        "guest memory too small for the NBD server's buffers (need " +
                            std::to_string(NbdServer::guest_memory_bytes(sh.cfg)) +
                            " bytes at GPA 0; see NbdServer::guest_memory_bytes)");
    }
    const auto nchunks = static_cast<std::uint32_t>(bytes / kChunk);
    buffers.init(pool_host, pool_gpa, nchunks,
                 nbd_internal::ChunkPool::quota_for(nchunks, cfg.max_connections,
                                                    nbd_internal::max_request_chunks(cfg)));
    devq.init(wz_gpa, cfg.virtqueue_size);

    // The paravisor signals completions on our eventfd (the worker sleeps in epoll).
    call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (call_fd < 0 || wake_fd < 0 || ep < 0) {
      return make_error(Errc::io_error, std::string("eventfd/epoll: ") + std::strerror(errno));
    }
    ctx = std::make_unique<nbd_internal::ConnectionContext>(
        nbd_internal::ConnectionContext{cfg, sh.size, tx_flags, clock, sh.counters, sh.notes,
                                        buffers, requests, turns, sh.stopping, ep});
    dev->set_call_fd(call_fd);
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, call_fd, &e);
    e.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd, &e);
    return {};
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
    return {};
  }

  void wake() {
    const std::uint64_t one = 1;
    (void)!write(wake_fd, &one, sizeof one);
  }

  // ================================================================ the loop

  void run() {
    while (round(-1)) {
    }
    for (auto& [id, c] : conns) c->close();
    release_slots();
    if (requests.planner().running() > 0 || !devq.empty()) {
      sh.notes.note("stopping with " + std::to_string(requests.planner().running()) +
                    " request(s) still on the device after the stop timeout");
    }
  }

  /// One turn of the loop: everything that needs no waiting, then events, waiting at most
  /// `max_wait_ms` (-1: until something happens or a timer is due). Returns false once the
  /// worker has stopped.
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
    take_inbox();
    if (sh.stopping.load(std::memory_order_acquire)) {
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
    // A request waiting for another worker's overlapping request learns of its end only here.
    if (requests.planner().waiting()) requests.planner().pump_admissions();
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
    int timeout = more ? 0 : sh.stopping.load(std::memory_order_relaxed) ? 10 : busy ? 100 : -1;
    // Waiting on another worker's request: look again soon (such waits are rare: the same
    // sectors written from two connections at once).
    if (requests.planner().waiting() && (timeout < 0 || timeout > 1)) timeout = 1;
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
    release_slots();
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

  /// Worker 0: accepts every waiting peer and hands it to the worker serving the fewest.
  /// Past max_connections a peer is closed at once (refused, logged), never kept waiting.
  void accept_all() {
    for (;;) {
      const int fd = accept4(listener.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        sh.notes.note(std::string("accept: ") + std::strerror(errno) +
                      "; not accepting for 100 ms");
        // Level-triggered: a listener that keeps failing (EMFILE) would spin. Rest it.
        epoll_event e{};
        e.data.u64 = 0;
        epoll_ctl(ep, EPOLL_CTL_MOD, listener.fd(), &e);
        accept_paused_until = real_ns() + 100'000'000ull;
        return;
      }
      release_slots();  // a peer that just left frees its slot first
      if (sh.stopping.load(std::memory_order_relaxed)) {
        bump(sh.counters.turned_away);
        close(fd);
        continue;
      }
      const unsigned held = sh.slots.load(std::memory_order_relaxed);
      if (held >= sh.cfg.max_connections) {
        // Counted and said before the peer can see it closed.
        bump(sh.counters.turned_away);
        sh.notes.note("connection refused: " + std::to_string(held) + " of " +
                      std::to_string(sh.cfg.max_connections) +
                      " connections open (the limit: max_connections, keel-nbd --connections)");
        close(fd);
        continue;
      }
      Worker* best = this;
      for (auto& w : *all) {
        if (w->load.load(std::memory_order_relaxed) < best->load.load(std::memory_order_relaxed))
          best = w.get();
      }
      if (best == this) {
        add_conn(fd);
      } else {
        sh.slots.fetch_add(1, std::memory_order_relaxed);
        best->load.fetch_add(1, std::memory_order_relaxed);
        {
          std::lock_guard lock(best->inbox_mu);
          best->inbox.push_back(fd);
        }
        best->wake();
      }
    }
  }

  /// Serves the sockets worker 0 handed over (their slots are taken already).
  void take_inbox() {
    std::vector<int> fds;
    {
      std::lock_guard lock(inbox_mu);
      if (inbox.empty()) return;
      fds.swap(inbox);
    }
    for (int fd : fds) serve(fd);
  }

  /// Serves a connected socket (non-blocking), taking a connection slot: sends the greeting.
  void add_conn(int fd) {
    sh.slots.fetch_add(1, std::memory_order_relaxed);
    load.fetch_add(1, std::memory_order_relaxed);
    serve(fd);
  }

  void serve(int fd) {
    auto c = std::make_unique<Connection>(*ctx, next_conn_id++, fd);
    Connection& ref = *c;
    conns.emplace(ref.id(), std::move(c));
    slotted.insert(ref.id());
    ref.start();
  }

  /// Gives back the slots of connections that closed.
  void release_slots() {
    for (auto it = slotted.begin(); it != slotted.end();) {
      auto c = conns.find(*it);
      if (c == conns.end() || !c->second->open()) {
        it = slotted.erase(it);
        load.fetch_sub(1, std::memory_order_relaxed);
        sh.slots.fetch_sub(1, std::memory_order_relaxed);
      } else {
        ++it;
      }
    }
  }

  /// Frees connections that are closed and that no request points to any more.
  void reap_dead() {
    release_slots();
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

struct NbdServer::Impl {
  Shared sh;
  std::vector<std::unique_ptr<Worker>> workers;  // declared after sh: destroyed before it
  std::atomic<bool> started{false};

  Impl(const NbdServerConfig& c, std::vector<std::unique_ptr<NbdDevice>> devs, GuestMemory& m)
      : sh(c, devs.front()->capacity_sectors() * kSector) {
    for (unsigned i = 0; i < devs.size(); ++i) {
      workers.push_back(std::make_unique<Worker>(sh, i, std::move(devs[i]), m));
      workers.back()->all = &workers;
    }
  }
  ~Impl() {
    // Every worker's connections go, then the devices (the guest driver detaches before the
    // call fds it signals close), then the rest of each worker.
    for (auto& w : workers) w->conns.clear();
    for (auto& w : workers) w->dev.reset();
    workers.clear();
  }

  Status setup() {
    // CAN_MULTI_CONN: a flush on any connection makes durable every write completed (replied)
    // on any connection before it. Why that holds with the workers and their own queues:
    //  - the server keeps no write cache: a WRITE is replied only once every virtio-blk request
    //    it became has completed on the device, so "completed on a connection" means "completed
    //    by the paravisor", on whatever queue;
    //  - a FLUSH (and FUA's flush) is a virtio-blk flush on its worker's queue, started after
    //    the FLUSH was received, so after those completions; the paravisor makes it an NVMe Flush
    //    on the VF's namespace (the VF path), which covers every write the controller completed
    //    before it on any of its queues (NVMe's flush is per namespace, not per queue), or a
    //    flush of the host storage service (the fallback path), an fdatasync of the one image
    //    every queue's host channel writes to, which covers every write completed on that file;
    //  - every queue's writes end on the same storage (the one VF namespace / its image), so
    //    there is no per-connection or per-worker state a flush could miss. (Which path one
    //    queue's request takes is the paravisor's business, as it is with a single queue.)
    std::uint16_t tx_flags = nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendFua |
                             nbd::kFlagSendWriteZeroes | nbd::kFlagCanMultiConn;
    if (sh.cfg.trim != NbdTrim::off) tx_flags |= nbd::kFlagSendTrim;
    if (sh.cfg.read_only) tx_flags |= nbd::kFlagReadOnly;
    // Every worker's small areas first, then the pools (2 MiB aligned, back to back).
    for (auto& w : workers) w->alloc_wz();
    for (auto& w : workers) {
      if (Status s = w->setup(tx_flags); !s.ok()) return s;
    }
    return workers.front()->listen_on(sh.cfg.socket_path);
  }

  Worker& first() { return *workers.front(); }
  const Worker& first() const { return *workers.front(); }
};

// ================================================================ NbdServer

Result<std::unique_ptr<NbdServer>> NbdServer::create(
    const NbdServerConfig& config, std::vector<std::unique_ptr<NbdDevice>> devices,
    GuestMemory& memory) {
  if (Status s = check_nbd_config(config, memory); !s.ok()) return s.error();
  if (devices.size() != std::max(1u, config.queues)) {
    return make_error(Errc::invalid_argument, "the NBD server needs one device queue per worker");
  }
  if (devices.front()->capacity_sectors() == 0) {
    return make_error(Errc::invalid_argument, "the exported disk has no capacity");
  }
  auto impl = std::make_unique<Impl>(config, std::move(devices), memory);
  if (Status s = impl->setup(); !s.ok()) return s.error();
  return std::unique_ptr<NbdServer>(new NbdServer(std::move(impl)));
}

NbdServer::NbdServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NbdServer::~NbdServer() { stop(); }

Status NbdServer::start() {
  if (impl_->started.exchange(true)) return {};
  // The paravisor (every queue's worker) starts once, through the first device.
  if (Status s = impl_->first().dev->start(); !s.ok()) return s;
  for (auto& w : impl_->workers) {
    try {
      std::lock_guard lock(w->thread_mu);
      w->thread = std::thread([w = w.get()] {
        const std::string name = "keel-nbd-srv" + std::to_string(w->index);
        pthread_setname_np(pthread_self(), name.c_str());  // for top -H and /proc/*/task
        w->cpu.start();
        w->run();
        w->cpu.finish();
      });
    } catch (const std::system_error& e) {
      stop();
      return make_error(Errc::io_error, std::string("server thread: ") + e.what());
    }
  }
  return {};
}

void NbdServer::stop() {
  impl_->sh.stopping.store(true, std::memory_order_release);
  for (auto& w : impl_->workers) w->wake();
  for (auto& w : impl_->workers) {
    std::lock_guard lock(w->thread_mu);
    if (w->thread.joinable()) w->thread.join();
  }
}

NbdServerStats NbdServer::stats() const { return impl_->sh.counters.snapshot(); }

std::uint64_t NbdServer::thread_cpu_ns() const {
  std::uint64_t n = 0;
  for (const auto& w : impl_->workers) n += w->cpu.ns();
  return n;
}

std::string NbdServer::last_error() const { return impl_->sh.notes.last(); }

const std::string& NbdServer::socket_path() const noexcept { return impl_->sh.cfg.socket_path; }

std::uint64_t NbdServer::export_bytes() const noexcept { return impl_->sh.size; }

// ================================================================ test seam

Result<std::unique_ptr<NbdServer>> NbdServerTestSeam::create(const NbdServerConfig& config,
                                                             std::unique_ptr<NbdDevice> device,
                                                             GuestMemory& memory) {
  std::vector<std::unique_ptr<NbdDevice>> devices;
  devices.push_back(std::move(device));
  return NbdServer::create(config, std::move(devices), memory);
}

void NbdServerTestSeam::adopt(NbdServer& server, int fd) { server.impl_->first().add_conn(fd); }

void NbdServerTestSeam::step(NbdServer& server) {
  server.impl_->first().next_timer_ns = 0;
  (void)server.impl_->first().round(0);
}

std::uint64_t NbdServerTestSeam::free_chunks(const NbdServer& server) {
  return server.impl_->first().buffers.pool().free_count();
}

std::uint64_t NbdServerTestSeam::total_chunks(const NbdServer& server) {
  return server.impl_->first().buffers.pool().total();
}

std::size_t NbdServerTestSeam::live_requests(const NbdServer& server) {
  return server.impl_->first().requests.live();
}

std::size_t NbdServerTestSeam::open_connections(const NbdServer& server) {
  std::size_t n = 0;
  for (const auto& w : server.impl_->workers) {
    for (const auto& [id, c] : w->conns) n += c->open() ? 1 : 0;
  }
  return n;
}

std::size_t NbdServerTestSeam::held_ranges(const NbdServer& server) {
  return server.impl_->sh.order.size();
}

std::string NbdServerTestSeam::describe(const NbdServer& server) {
  return server.impl_->first().requests.describe();
}

}  // namespace keel::vmm
