// The NBD server: one epoll thread serving every connection, one in-process virtio-blk guest
// driver carrying the requests to the paravisor.
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
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "keel/vmm/nbd_server.h"
#include "nbd_device.h"
#include "nbd_handshake.h"
#include "nbd_layout.h"
#include "nbd_overlap.h"
#include "nbd_pool.h"
#include "nbd_seam.h"

namespace keel::vmm {

namespace blk = virtio::blk;
using nbd_internal::chunks_for;
using nbd_internal::kChunk;
using nbd_internal::kSector;
using nbd_internal::max_request_chunks;

namespace {

/// Sectors one virtio-blk WRITE_ZEROES may carry (the device's max_write_zeroes_sectors).
constexpr std::uint32_t kMaxZeroSectors = 1u << 16;
// The parsers' limits are the nbd::kMax* constants in nbd_server.h (documented there, with
// what a peer gets past each); every check below names its constant.
using nbd::kMaxOptionBytes;
using nbd::kMaxOptions;
using nbd::kMaxQueuedOptionReplies;
using nbd::kMaxSkipOptionBytes;
/// Receive buffer of a connection (headers and small payloads are copied out of it).
constexpr std::size_t kInBufBytes = 256u << 10;
/// Payload left at which the server receives straight into the request buffer.
constexpr std::uint64_t kDirectRecvBytes = 16u << 10;

/// Real time: the loop's pacing, the stop budget. Timeouts use Impl::clock_ns().
std::uint64_t now_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t ns(std::chrono::milliseconds ms) noexcept {
  return static_cast<std::uint64_t>(ms.count()) * 1'000'000ull;
}

std::uint32_t load_be32(const std::byte* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}

template <typename M>
void append(std::string& out, const M& m) {
  const M w = nbd::to_wire(m);
  out.append(reinterpret_cast<const char*>(&w), sizeof w);
}

}  // namespace

struct NbdServer::Impl {
  struct Conn;

  enum class Stage : std::uint8_t { edges, main, flush, done };

  /// One NBD request the server is working on.
  struct Req {
    Conn* conn = nullptr;
    nbd::Request h{};                   // host order
    std::uint64_t a0 = 0, a1 = 0;       // covering sector-aligned byte range of the buffer
    std::uint32_t shift = 0;            // h.offset - a0
    std::vector<std::uint32_t> chunks;  // the data buffer: pool chunks, in order
    std::int64_t scratch = -1;          // chunk holding the edge sectors of an RMW
    bool head_edge = false, tail_edge = false;
    Stage stage = Stage::main;
    unsigned ops_left = 0;
    std::uint32_t error = 0;
    bool rmw = false;  // unaligned write / write-zeroes: read-modify-write of edge sectors
    bool fua = false;
    bool admitted = false;  // started on the device (admit() may have queued it first)
    bool queued = false;    // in admit_q
    bool device_done = false;
    bool replied = false;  // reply queued (possibly early, for a device timeout)
    std::uint64_t deadline_ns = 0;
    nbd_internal::HeldRange range;  // held from admit() to finish()
    std::list<Req>::iterator self;
  };

  enum class VKind : std::uint8_t { read, write, flush, zeroes };
  /// One virtio-blk request of an NBD request.
  struct VOp {
    Req* req = nullptr;
    VKind kind = VKind::read;
    bool scratch = false;     // data in the scratch chunk instead of the buffer
    std::uint32_t pos = 0;    // byte position in the buffer (or scratch chunk)
    std::uint32_t bytes = 0;  // data bytes (read/write) or zeroed bytes
    std::uint64_t sector = 0;
    int wz_slot = -1;
  };

  /// One reply (or handshake message) waiting to be sent.
  struct Out {
    std::array<std::byte, 16> hdr{};
    std::uint8_t hdr_len = 0;
    std::string blob;     // handshake messages
    Req* data = nullptr;  // a READ whose data follows the header
    std::uint64_t total = 0;
    std::uint64_t sent = 0;
    bool counts = false;         // a transmission reply (frees a queue-depth slot when sent)
    std::uint64_t deadline = 0;  // queued + io_timeout: it must be sent in full by then
  };

  enum class St : std::uint8_t {
    client_flags,
    opt_header,
    opt_data,
    opt_skip,
    req_header,
    payload,
    skip,
  };

  struct Conn {
    std::uint64_t id = 0;
    int fd = -1;
    St st = St::client_flags;
    bool transmission = false;
    bool no_zeroes = false;
    bool disc = false;             // NBD_CMD_DISC seen: finish, then close
    bool close_after_out = false;  // NBD_OPT_ABORT: close once the ACK is out
    bool waiting_pool = false;
    bool in_resume = false, in_dirty = false;
    std::vector<std::byte> in;
    std::size_t in_head = 0, in_tail = 0;
    nbd::OptionHeader opt{};
    std::string optbuf;
    std::uint64_t left = 0;   // option data / payload / skip bytes still to come
    std::uint64_t pos = 0;    // payload: next buffer position
    nbd::Request skip_req{};  // the request whose payload is being skipped
    std::uint32_t skip_error = 0;
    Req* cur = nullptr;  // receiving its payload or waiting for buffers
    std::deque<Out> out;
    unsigned active = 0;  // requests accepted whose reply is not sent yet
    unsigned refs = 0;    // Req objects pointing here
    unsigned options_seen = 0;
    nbd_internal::PoolAccount pool;  // chunks this connection holds (quota)
    std::uint64_t handshake_deadline = 0;
    std::uint64_t msg_start = 0;      // first byte of an incomplete message
    std::uint64_t send_stall = 0;     // since when output waits for the peer (EPOLLOUT)
    std::uint64_t send_deadline = 0;  // the reply at the head of `out` must be sent by then
    std::uint64_t idle_since = 0;     // first timer check that saw it idle (0: busy)
    std::uint32_t mask = 0;           // epoll interest registered
  };

  // ---- configuration and the stack ----
  NbdServerConfig cfg;
  std::unique_ptr<NbdDevice> dev;
  GuestMemory& mem;
  std::uint64_t size = 0;  // export bytes
  std::uint16_t tx_flags = 0;
  int listen_fd = -1, call_fd = -1, wake_fd = -1, ep = -1;
  std::string bound_path;

  // ---- guest memory layout ----
  std::uint64_t wz_gpa = 0;
  std::uint64_t pool_gpa = 0;
  std::byte* pool_host = nullptr;
  nbd_internal::ChunkPool pool;
  std::vector<int> free_wz;

  // ---- state of the server thread ----
  std::map<std::uint64_t, std::unique_ptr<Conn>> conns;
  std::uint64_t next_conn_id = 16;  // ids below are the listener, call fd and wake fd
  std::list<Req> reqs, spare_reqs;
  std::deque<VOp> pending;    // waiting for descriptors
  std::vector<VOp> inflight;  // by virtio request id (descriptor head)
  std::vector<bool> inflight_valid;
  std::deque<Req*> admit_q;  // admitted, waiting for an overlapping request to finish
  nbd_internal::RangeOrder order;
  std::deque<Conn*> pool_waiters;
  std::vector<Conn*> resume, dirty;
  unsigned running = 0;  // admitted requests whose device work is not done
  bool pumping = false, pump_again = false;
  std::uint64_t stop_deadline = 0;        // real time; set when stopping begins
  std::uint64_t accept_paused_until = 0;  // out of fds: accepting rests a moment
  std::uint64_t next_timer_ns = 0;

  // ---- shared with other threads ----
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::atomic<bool> started{false};
  std::atomic<std::uint64_t> final_cpu_ns{0};
  std::atomic<bool> thread_done{false};
  mutable std::mutex mu;         // last_err
  mutable std::mutex thread_mu;  // the thread handle (joins, CPU sampling)
  std::string last_err;
  struct AtomicStats {
    std::atomic<std::uint64_t> connections{0}, turned_away{0}, transmissions{0}, disconnects{0},
        protocol_errors{0}, options{0}, requests{0}, reads{0}, writes{0}, flushes{0}, trims{0},
        write_zeroes{0}, bytes_read{0}, bytes_written{0}, error_replies{0}, unaligned{0},
        device_timeouts{0}, send_timeouts{0}, idle_timeouts{0}, quota_waits{0}, overlap_waits{0},
        virtio_requests{0}, virtio_errors{0};
  } st;

  Impl(const NbdServerConfig& c, std::unique_ptr<NbdDevice> d, GuestMemory& m)
      : cfg(c), dev(std::move(d)), mem(m) {}
  ~Impl() {
    if (listen_fd >= 0) close(listen_fd);
    if (!bound_path.empty()) unlink(bound_path.c_str());
    for (auto& [id, c] : conns) {
      if (c->fd >= 0) close(c->fd);
    }
    // The device (guest driver) detaches (and stops using call_fd) before the fd goes.
    dev.reset();
    if (call_fd >= 0) close(call_fd);
    if (wake_fd >= 0) close(wake_fd);
    if (ep >= 0) close(ep);
  }

  /// Now on the clock of the timeouts (cfg.clock, or CLOCK_MONOTONIC). Never 0, which marks a
  /// time that is not set (msg_start, send_stall, deadline_ns).
  std::uint64_t clock_ns() const {
    if (!cfg.clock) return now_ns();
    const std::int64_t t = cfg.clock().count();
    return t > 0 ? static_cast<std::uint64_t>(t) : 1;
  }

  static void bump(std::atomic<std::uint64_t>& a, std::uint64_t n = 1) {
    a.fetch_add(n, std::memory_order_relaxed);
  }

  void note(const std::string& what) {
    {
      std::lock_guard lock(mu);
      last_err = what;
    }
    if (cfg.log) std::fprintf(stderr, "nbd: %s\n", what.c_str());
  }

  // ================================================================ setup

  Status setup() {
    size = dev->capacity_sectors() * kSector;
    tx_flags = nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendFua |
               nbd::kFlagSendWriteZeroes | nbd::kFlagCanMultiConn;
    if (cfg.trim != NbdTrim::off) tx_flags |= nbd::kFlagSendTrim;
    if (cfg.read_only) tx_flags |= nbd::kFlagReadOnly;

    wz_gpa = dev->alloc(std::uint64_t{cfg.virtqueue_size} * 16, 4096);
    pool_gpa = dev->alloc(cfg.buffer_bytes, 2u << 20);
    pool_host = mem.translate(pool_gpa, cfg.buffer_bytes);
    if (pool_gpa + cfg.buffer_bytes > guest_memory_bytes(cfg) || pool_host == nullptr ||
        mem.translate(wz_gpa, std::uint64_t{cfg.virtqueue_size} * 16) == nullptr) {
      return make_error(Errc::invalid_argument,
                        "guest memory too small for the NBD server's buffers (need " +
                            std::to_string(guest_memory_bytes(cfg)) +
                            " bytes at GPA 0; see NbdServer::guest_memory_bytes)");
    }
    const auto nchunks = static_cast<std::uint32_t>(cfg.buffer_bytes / kChunk);
    pool.init(nchunks, nbd_internal::ChunkPool::quota_for(nchunks, cfg.max_connections,
                                                          max_request_chunks(cfg)));
    for (int i = cfg.virtqueue_size; i-- > 0;) free_wz.push_back(i);
    inflight.assign(cfg.virtqueue_size, VOp{});
    inflight_valid.assign(cfg.virtqueue_size, false);

    // The paravisor signals completions on our eventfd (the server thread sleeps in epoll).
    call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (call_fd < 0 || wake_fd < 0 || ep < 0) {
      return make_error(Errc::io_error, std::string("eventfd/epoll: ") + std::strerror(errno));
    }
    dev->set_call_fd(call_fd);
    return listen_on(cfg.socket_path);
  }

  Status listen_on(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path) {
      return make_error(Errc::invalid_argument,
                        "socket path '" + path + "' is empty or longer than " +
                            std::to_string(sizeof addr.sun_path - 1) + " bytes");
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    struct stat sb {};
    if (lstat(path.c_str(), &sb) == 0) {
      if (!S_ISSOCK(sb.st_mode)) {
        return make_error(Errc::invalid_argument,
                          "'" + path + "' exists and is not a socket; not replacing it");
      }
      unlink(path.c_str());
    }
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) {
      return make_error(Errc::io_error, std::string("socket: ") + std::strerror(errno));
    }
    if (bind(listen_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      return make_error(Errc::io_error, "bind " + path + ": " + std::strerror(errno));
    }
    bound_path = path;
    if (listen(listen_fd, 64) != 0) {
      return make_error(Errc::io_error, "listen " + path + ": " + std::strerror(errno));
    }
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = 0;
    epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &e);
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
    for (auto& [id, c] : conns) {
      if (c->fd >= 0) close_conn(*c, nullptr);
    }
    if (running > 0 || !pending.empty()) {
      note("stopping with " + std::to_string(running) +
           " request(s) still on the device after the stop timeout");
    }
  }

  /// One turn of the loop: everything that needs no waiting, then events, waiting at most
  /// `max_wait_ms` (-1: until something happens or a timer is due). Returns false once the
  /// server has stopped.
  bool round(int max_wait_ms) {
    epoll_event ev[32];
    const std::uint64_t now = now_ns();
    if (accept_paused_until != 0 && now >= accept_paused_until && listen_fd >= 0) {
      accept_paused_until = 0;
      epoll_event e{};
      e.events = EPOLLIN;
      e.data.u64 = 0;
      epoll_ctl(ep, EPOLL_CTL_MOD, listen_fd, &e);
    }
    if (now >= next_timer_ns) {
      check_timers(clock_ns());
      next_timer_ns = now + 50'000'000ull;
    }
    if (stopping.load(std::memory_order_acquire)) {
      if (stop_deadline == 0) {
        stop_deadline = now + ns(cfg.stop_timeout);
        begin_stop();
      }
      for (auto& [id, c] : conns) {
        if (c->fd >= 0 && c->active == 0 && c->out.empty()) close_conn(*c, nullptr);
      }
      bool open = false;
      for (auto& [id, c] : conns) open = open || c->fd >= 0;
      if ((!open && running == 0 && pending.empty()) || now >= stop_deadline) return false;
    }
    // Everything that needs no waiting, until nothing is left (bounded: others need turns).
    // Parsing (resumes, pool grants) and completions queue virtio requests, so the
    // submission comes after them in every round.
    for (int round = 0; round < 8; ++round) {
      run_resumes();
      serve_pool_waiters();
      reap();
      submit_pending();
      flush_dirty();
      if (resume.empty() && dirty.empty()) break;
    }
    reap_dead();
    update_masks();
    // reap() published used_event; an entry the device used before seeing it raised no
    // notification. Look once more after a full fence (the device fences between pushing an
    // entry and reading used_event): either it notifies or this sees the entry.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const bool more = reap() > 0 || !resume.empty() || !dirty.empty() || can_submit();
    const bool busy = !conns.empty() || running > 0 || !pending.empty();
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
        if (it == conns.end() || it->second->fd < 0) continue;
        Conn& c = *it->second;
        const std::uint32_t e = ev[i].events;
        if ((e & EPOLLOUT) != 0) flush_out(c);
        if (c.fd < 0) continue;
        if ((e & EPOLLIN) != 0 || ((e & (EPOLLHUP | EPOLLERR)) != 0 && want_read(c))) {
          process(c);
        } else if ((e & (EPOLLHUP | EPOLLERR)) != 0) {
          close_conn(c, nullptr);  // the peer is gone; nobody will read the replies
        }
      }
    }
    return true;
  }

  void begin_stop() {
    if (listen_fd >= 0) {
      epoll_ctl(ep, EPOLL_CTL_DEL, listen_fd, nullptr);
      close(listen_fd);
      listen_fd = -1;
    }
    if (!bound_path.empty()) {
      unlink(bound_path.c_str());
      bound_path.clear();
    }
    for (auto& [id, c] : conns) {
      if (c->fd >= 0 && !c->transmission) close_conn(*c, nullptr);
    }
  }

  void check_timers(std::uint64_t now) {
    for (auto& [id, cp] : conns) {
      Conn& c = *cp;
      if (c.fd < 0) continue;
      if (!c.transmission && now > c.handshake_deadline) {
        drop(c, "handshake not finished within " + std::to_string(cfg.handshake_timeout.count()) +
                    " ms");
      } else if (c.msg_start != 0 && want_read(c) && now - c.msg_start > ns(cfg.io_timeout)) {
        drop(c, "request incomplete after " + std::to_string(cfg.io_timeout.count()) + " ms");
      } else if (!c.out.empty() && c.send_deadline != 0 && now > c.send_deadline) {
        // Total time for the reply at the head, however much of it the peer took: a slow
        // reader cannot hold its buffers (or the pool) for longer than this.
        bump(st.send_timeouts);
        drop(c, "peer did not take a reply in full within " +
                    std::to_string(cfg.io_timeout.count()) + " ms");
      } else if (is_idle(c) && cfg.idle_timeout.count() > 0) {
        if (c.idle_since == 0) {
          c.idle_since = now;
        } else if (now - c.idle_since > ns(cfg.idle_timeout)) {
          bump(st.idle_timeouts);
          note("connection " + std::to_string(c.id) + ": idle for " +
               std::to_string(cfg.idle_timeout.count()) + " ms; closing");
          close_conn(c, nullptr);
        }
      } else {
        c.idle_since = 0;
      }
    }
    // Device timeouts. Replying (or releasing) changes `reqs`: step past each entry first, and
    // start nothing inside the loop (a start can finish and release other entries at once).
    bool cancelled = false;
    for (auto it = reqs.begin(); it != reqs.end();) {
      Req& r = *it++;
      if (r.deadline_ns == 0 || r.device_done || r.replied || now <= r.deadline_ns) continue;
      bump(st.device_timeouts);
      if (!r.admitted) {
        // Still waiting for an overlapping request: it never reaches the device.
        note(std::string(nbd::command_name(r.h.type)) + " at " + std::to_string(r.h.offset) +
             " (+" + std::to_string(r.h.length) + ") waited " +
             std::to_string(cfg.io_timeout.count()) +
             " ms for an overlapping request: replying EIO, not started");
        cancel_queued(r);
        cancelled = true;
        continue;
      }
      // On the device: answered now, but its buffers and its range stay held until the device
      // completes it (finish()), so nothing overlapping can start before its write has landed.
      note(std::string(nbd::command_name(r.h.type)) + " at " + std::to_string(r.h.offset) + " (+" +
           std::to_string(r.h.length) + ") not done by the device after " +
           std::to_string(cfg.io_timeout.count()) + " ms: replying EIO");
      reply(r, nbd::kEio);
    }
    if (cancelled) pump_admissions();
  }

  /// In transmission with nothing in flight, queued or half received.
  bool is_idle(const Conn& c) const {
    return c.transmission && c.active == 0 && c.out.empty() && c.cur == nullptr &&
           c.msg_start == 0 && avail(c) == 0 && c.st == St::req_header;
  }

  // ================================================================ connections

  void accept_all() {
    for (;;) {
      const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        note(std::string("accept: ") + std::strerror(errno) + "; not accepting for 100 ms");
        // Level-triggered: a listener that keeps failing (EMFILE) would spin. Rest it.
        epoll_event e{};
        e.data.u64 = 0;
        epoll_ctl(ep, EPOLL_CTL_MOD, listen_fd, &e);
        accept_paused_until = now_ns() + 100'000'000ull;
        return;
      }
      unsigned open = 0;
      for (auto& [id, c] : conns) open += c->fd >= 0 ? 1u : 0u;
      if (open >= cfg.max_connections || stopping.load(std::memory_order_relaxed)) {
        close(fd);
        bump(st.turned_away);
        continue;
      }
      add_conn(fd);
    }
  }

  /// Serves a connected socket (non-blocking): sends the greeting.
  void add_conn(int fd) {
    auto c = std::make_unique<Conn>();
    c->id = next_conn_id++;
    c->fd = fd;
    c->in.resize(kInBufBytes);
    c->handshake_deadline = clock_ns() + ns(cfg.handshake_timeout);
    Conn& ref = *c;
    conns.emplace(c->id, std::move(c));
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = ref.id;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    ref.mask = EPOLLIN;
    bump(st.connections);
    std::string g;
    append(g,
           nbd::Greeting{nbd::kInitPasswd, nbd::kOptMagic,
                         static_cast<std::uint16_t>(nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes)});
    queue_blob(ref, std::move(g));
  }

  /// A protocol violation or a timeout: the peer is dropped.
  void drop(Conn& c, const std::string& why) {
    bump(st.protocol_errors);
    note("connection " + std::to_string(c.id) + ": " + why + "; disconnecting");
    close_conn(c, nullptr);
  }

  void close_conn(Conn& c, const char* why) {
    if (c.fd < 0) return;
    if (why != nullptr && cfg.log) {
      std::fprintf(stderr, "nbd: connection %" PRIu64 ": %s\n", c.id, why);
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    c.fd = -1;
    bump(st.disconnects);
    // Replies nobody will read: release what they hold.
    while (!c.out.empty()) {
      Req* r = c.out.front().data;
      c.out.pop_front();
      if (r != nullptr) release(*r);
    }
    if (c.cur != nullptr) {  // receiving a payload or waiting for buffers: never admitted
      Req* r = c.cur;
      c.cur = nullptr;
      release(*r);
    }
    if (c.waiting_pool) {
      c.waiting_pool = false;
      pool_waiters.erase(std::remove(pool_waiters.begin(), pool_waiters.end(), &c),
                         pool_waiters.end());
    }
    c.active = 0;
  }

  void reap_dead() {
    auto dead = [](const Conn* c) { return c->fd < 0 && c->refs == 0; };
    resume.erase(std::remove_if(resume.begin(), resume.end(), dead), resume.end());
    dirty.erase(std::remove_if(dirty.begin(), dirty.end(), dead), dirty.end());
    for (auto it = conns.begin(); it != conns.end();) {
      if (it->second->fd < 0 && it->second->refs == 0) {
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
  }

  bool want_read(const Conn& c) const {
    if (c.fd < 0 || c.close_after_out || c.waiting_pool) return false;
    if (c.st == St::opt_header && c.out.size() > kMaxQueuedOptionReplies) return false;
    if (stopping.load(std::memory_order_relaxed) && c.st == St::req_header) return false;
    if (c.st == St::req_header) return !c.disc && c.active < cfg.queue_depth;
    return true;
  }

  void update_masks() {
    for (auto& [id, cp] : conns) {
      Conn& c = *cp;
      if (c.fd < 0) continue;
      if (c.msg_start != 0 && !want_read(c)) c.msg_start = clock_ns();  // not the peer's wait
      const std::uint32_t want =
          (want_read(c) ? EPOLLIN : 0u) | (c.send_stall != 0 ? EPOLLOUT : 0u);
      if (want != c.mask) {
        epoll_event e{};
        e.events = want;
        e.data.u64 = c.id;
        epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &e);
        c.mask = want;
      }
    }
  }

  void mark_resume(Conn& c) {
    if (c.fd >= 0 && !c.in_resume) {
      c.in_resume = true;
      resume.push_back(&c);
    }
  }
  void run_resumes() {
    for (std::size_t i = 0; i < resume.size(); ++i) {
      Conn* c = resume[i];
      c->in_resume = false;
      if (c->fd >= 0) process(*c);
    }
    resume.clear();
  }

  // ---- input ----

  std::size_t avail(const Conn& c) const { return c.in_tail - c.in_head; }

  /// Parses what is buffered and reads more from the socket while the connection may take
  /// more (non-blocking: stops at EAGAIN).
  void process(Conn& c) {
    for (int rounds = 0; rounds < 64 && c.fd >= 0; ++rounds) {
      if (!parse(c)) return;  // waiting for something other than input
      if (c.fd < 0 || !want_read(c)) return;
      // Need more input.
      if (c.st == St::payload && avail(c) == 0 && c.left >= kDirectRecvBytes) {
        if (!recv_direct(c)) return;
        continue;
      }
      if (c.in_head == c.in_tail) {
        c.in_head = c.in_tail = 0;
      } else if (c.in_head > 0 && (c.in_tail == c.in.size() || c.in_head > c.in.size() / 2)) {
        std::memmove(c.in.data(), c.in.data() + c.in_head, avail(c));
        c.in_tail -= c.in_head;
        c.in_head = 0;
      }
      const ssize_t n = recv(c.fd, c.in.data() + c.in_tail, c.in.size() - c.in_tail, 0);
      if (n > 0) {
        c.in_tail += static_cast<std::size_t>(n);
        if (c.msg_start == 0 && (c.st != St::req_header || avail(c) > 0)) c.msg_start = clock_ns();
        continue;
      }
      if (n == 0) {
        peer_closed(c);
        return;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        close_conn(c, ("receive failed: " + std::string(std::strerror(errno))).c_str());
      }
      return;
    }
    mark_resume(c);  // more to do; give the others a turn first
  }

  void peer_closed(Conn& c) {
    const St idle = c.transmission ? St::req_header : St::opt_header;
    const bool mid = c.st != idle || avail(c) > 0 || c.st == St::client_flags;
    if (mid && !c.close_after_out) {
      bump(st.protocol_errors);
      note("connection " + std::to_string(c.id) + ": peer closed " +
           (c.transmission ? "in the middle of a request" : "during the handshake"));
    }
    close_conn(c, nullptr);
  }

  bool recv_direct(Conn& c) {
    Req& r = *c.cur;
    iovec iov[64];
    const int n = buffer_iov(r, c.pos, c.left, iov, 64);
    const ssize_t got = readv(c.fd, iov, n);
    if (got > 0) {
      c.pos += static_cast<std::uint64_t>(got);
      c.left -= static_cast<std::uint64_t>(got);
      if (c.msg_start == 0) c.msg_start = clock_ns();
      return true;
    }
    if (got == 0) {
      peer_closed(c);
      return false;
    }
    if (errno == EINTR) return true;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      close_conn(c, ("receive failed: " + std::string(std::strerror(errno))).c_str());
    }
    return false;
  }

  /// iovecs covering buffer bytes [pos, pos + len) of r.
  int buffer_iov(const Req& r, std::uint64_t pos, std::uint64_t len, iovec* iov, int max) const {
    int n = 0;
    while (len > 0 && n < max) {
      const std::uint64_t ci = pos / kChunk, off = pos % kChunk;
      const std::uint64_t take = std::min<std::uint64_t>(len, kChunk - off);
      iov[n++] = {pool_host + std::uint64_t{r.chunks[ci]} * kChunk + off, take};
      pos += take;
      len -= take;
    }
    return n;
  }

  std::byte* chunk_host(std::uint32_t chunk) const {
    return pool_host + std::uint64_t{chunk} * kChunk;
  }

  void copy_into_buffer(Req& r, std::uint64_t pos, const std::byte* src, std::uint64_t len) {
    while (len > 0) {
      const std::uint64_t ci = pos / kChunk, off = pos % kChunk;
      const std::uint64_t take = std::min<std::uint64_t>(len, kChunk - off);
      std::memcpy(chunk_host(r.chunks[ci]) + off, src, take);
      pos += take;
      src += take;
      len -= take;
    }
  }

  /// Runs the state machine over buffered input. Returns true when it needs more input,
  /// false when it stopped for another reason (connection closed, waiting for buffers,
  /// queue depth reached).
  bool parse(Conn& c) {
    for (;;) {
      // A connection waiting for buffers holds its request in c.cur: nothing more is parsed
      // until it has them (process() runs for other reasons too, e.g. a reply went out).
      if (c.fd < 0 || c.close_after_out || c.waiting_pool) return false;
      switch (c.st) {
        case St::client_flags: {
          if (avail(c) < 4) return true;
          const std::uint32_t flags = load_be32(c.in.data() + c.in_head);
          c.in_head += 4;
          if ((flags & ~(nbd::kFlagCFixedNewstyle | nbd::kFlagCNoZeroes)) != 0) {
            drop(c, "unknown client flags 0x" + hex(flags));
            return false;
          }
          c.no_zeroes = (flags & nbd::kFlagCNoZeroes) != 0;
          c.st = St::opt_header;
          break;
        }
        case St::opt_header: {
          if (c.out.size() > kMaxQueuedOptionReplies) return false;  // peer must read first
          if (avail(c) < sizeof(nbd::OptionHeader)) return true;
          nbd::OptionHeader h;
          std::memcpy(&h, c.in.data() + c.in_head, sizeof h);
          c.in_head += sizeof h;
          h = nbd::from_wire(h);
          if (h.magic != nbd::kOptMagic) {
            drop(c, "bad option magic 0x" + hex(h.magic));
            return false;
          }
          if (++c.options_seen > kMaxOptions) {
            drop(c, "more than " + std::to_string(kMaxOptions) + " options in one handshake");
            return false;
          }
          c.opt = h;
          c.optbuf.clear();
          if (h.length > kMaxSkipOptionBytes) {
            drop(c, std::string(nbd::option_name(h.option)) + " with " + std::to_string(h.length) +
                        " bytes of data");
            return false;
          }
          c.left = h.length;
          c.st = h.length > kMaxOptionBytes ? St::opt_skip : St::opt_data;
          if (c.left == 0) finish_option(c);
          break;
        }
        case St::opt_data:
        case St::opt_skip: {
          const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(avail(c), c.left));
          if (c.st == St::opt_data) {
            c.optbuf.append(reinterpret_cast<const char*>(c.in.data() + c.in_head), take);
          }
          c.in_head += take;
          c.left -= take;
          if (c.left > 0) return true;
          finish_option(c);
          break;
        }
        case St::req_header: {
          if (c.disc || c.active >= cfg.queue_depth || stopping.load(std::memory_order_relaxed)) {
            return false;
          }
          if (avail(c) < sizeof(nbd::Request)) {
            if (avail(c) == 0) c.msg_start = 0;
            return true;
          }
          nbd::Request h;
          std::memcpy(&h, c.in.data() + c.in_head, sizeof h);
          c.in_head += sizeof h;
          if (!on_request(c, nbd::from_wire(h))) return false;
          break;
        }
        case St::payload: {
          const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(avail(c), c.left));
          if (take > 0) {
            copy_into_buffer(*c.cur, c.pos, c.in.data() + c.in_head, take);
            c.in_head += take;
            c.pos += take;
            c.left -= take;
          }
          if (c.left > 0) return true;
          Req* r = c.cur;
          c.cur = nullptr;
          c.st = St::req_header;
          c.msg_start = avail(c) > 0 ? clock_ns() : 0;
          admit(*r);
          break;
        }
        case St::skip: {
          const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(avail(c), c.left));
          c.in_head += take;
          c.left -= take;
          if (c.left > 0) return true;
          c.st = St::req_header;
          c.msg_start = avail(c) > 0 ? clock_ns() : 0;
          reply_now(c, c.skip_req, c.skip_error);
          break;
        }
      }
    }
  }

  static std::string hex(std::uint64_t v) {
    char b[24];
    std::snprintf(b, sizeof b, "%" PRIx64, v);
    return b;
  }

  // ---- handshake ----

  /// An option's data is in (or skipped): answer it (nbd_handshake.cpp) and act on it.
  void finish_option(Conn& c) {
    bump(st.options);
    c.st = St::opt_header;
    c.msg_start = 0;
    const nbd_internal::HandshakeExport e{cfg.export_name, cfg.description,       size,
                                          tx_flags,        cfg.max_request_bytes, c.no_zeroes};
    nbd_internal::OptionAnswer a =
        nbd_internal::answer_option(e, c.opt.option, c.opt.length, c.optbuf);
    switch (a.next) {
      case nbd_internal::OptionNext::drop: drop(c, a.why); return;
      case nbd_internal::OptionNext::negotiate: break;
      case nbd_internal::OptionNext::transmission: enter_transmission(c); break;
      case nbd_internal::OptionNext::close_after_replies: c.close_after_out = true; break;
    }
    if (!a.out.empty()) queue_blob(c, std::move(a.out));
  }

  void enter_transmission(Conn& c) {
    c.transmission = true;
    c.st = St::req_header;
    c.handshake_deadline = 0;
    bump(st.transmissions);
  }

  // ---- transmission ----

  /// Validates a request header. Returns the NBD error to answer with, or 0.
  std::uint32_t validate(const nbd::Request& h) const {
    std::uint16_t allowed = nbd::kCmdFlagFua;  // SEND_FUA: accepted on every command
    switch (h.type) {
      case nbd::kCmdRead:
      case nbd::kCmdWrite:
      case nbd::kCmdFlush: break;
      case nbd::kCmdTrim:
        if (cfg.trim == NbdTrim::off) return nbd::kEinval;
        break;
      case nbd::kCmdWriteZeroes: allowed |= nbd::kCmdFlagNoHole; break;
      default: return nbd::kEinval;  // CACHE, BLOCK_STATUS and unknown commands
    }
    if ((h.flags & ~allowed) != 0) return nbd::kEinval;
    const bool writes =
        h.type == nbd::kCmdWrite || h.type == nbd::kCmdWriteZeroes || h.type == nbd::kCmdTrim;
    if (writes && cfg.read_only) return nbd::kEperm;
    if (h.type == nbd::kCmdFlush) return 0;
    if (h.length == 0) return nbd::kEinval;
    if ((h.type == nbd::kCmdRead || h.type == nbd::kCmdWrite) && h.length > cfg.max_request_bytes) {
      return nbd::kEinval;
    }
    if (h.offset > size || h.length > size - h.offset) {
      return h.type == nbd::kCmdWrite || h.type == nbd::kCmdWriteZeroes ? nbd::kEnospc
                                                                        : nbd::kEinval;
    }
    return 0;
  }

  /// A complete request header. Returns false to stop parsing (connection dropped, waiting
  /// for buffers).
  bool on_request(Conn& c, const nbd::Request& h) {
    if (h.magic != nbd::kRequestMagic) {
      drop(c, "bad request magic 0x" + hex(h.magic));
      return false;
    }
    c.idle_since = 0;
    if (h.type == nbd::kCmdDisc) {
      c.disc = true;
      c.msg_start = 0;
      if (c.active == 0 && c.out.empty()) close_conn(c, nullptr);
      return false;
    }
    if (const std::uint32_t err = validate(h); err != 0) {
      if (h.type == nbd::kCmdWrite && h.length > 0) {
        c.st = St::skip;
        c.left = h.length;
        c.skip_req = h;
        c.skip_error = err;
        return true;
      }
      c.msg_start = avail(c) > 0 ? clock_ns() : 0;
      reply_now(c, h, err);
      return true;
    }
    Req& r = new_req(c, h);
    plan(r);
    if (needed_chunks(r) > 0) {
      // In line for buffers; granted at once when the quota and the pool allow (then
      // start_receiving() has run and parsing goes on).
      c.cur = &r;
      c.waiting_pool = true;
      pool_waiters.push_back(&c);
      serve_pool_waiters();
      if (c.waiting_pool) {
        c.msg_start = 0;
        if (!pool.within_quota(c.pool, needed_chunks(r))) bump(st.quota_waits);
        return false;
      }
      return true;
    }
    start_receiving(c, r);
    return true;
  }

  /// After the request's buffers exist: a WRITE receives its payload, the rest is admitted.
  void start_receiving(Conn& c, Req& r) {
    if (r.h.type == nbd::kCmdWrite) {
      c.cur = &r;
      c.st = St::payload;
      c.pos = r.shift;
      c.left = r.h.length;
      c.msg_start = clock_ns();
    } else {
      c.msg_start = avail(c) > 0 ? clock_ns() : 0;
      admit(r);
    }
  }

  Req& new_req(Conn& c, const nbd::Request& h) {
    if (spare_reqs.empty()) spare_reqs.emplace_back();
    reqs.splice(reqs.end(), spare_reqs, spare_reqs.begin());
    Req& r = reqs.back();
    r.self = std::prev(reqs.end());
    r.conn = &c;
    r.h = h;
    r.a0 = r.a1 = 0;
    r.shift = 0;
    r.chunks.clear();
    r.scratch = -1;
    r.head_edge = r.tail_edge = false;
    r.stage = Stage::main;
    r.ops_left = 0;
    r.error = 0;
    r.rmw = false;
    r.fua = (h.flags & nbd::kCmdFlagFua) != 0;
    r.admitted = r.queued = r.device_done = r.replied = false;
    r.deadline_ns = 0;
    r.range = {};
    ++c.refs;
    ++c.active;
    return r;
  }

  /// Decides the covering range, edges and RMW of a request, and the range it holds.
  void plan(Req& r) {
    const std::uint64_t off = r.h.offset, end = r.h.offset + r.h.length;
    r.a0 = off / kSector * kSector;
    r.a1 = (end + kSector - 1) / kSector * kSector;
    r.shift = static_cast<std::uint32_t>(off - r.a0);
    const bool unaligned = off % kSector != 0 || end % kSector != 0;
    if (r.h.type == nbd::kCmdRead) {
      if (unaligned) bump(st.unaligned);
    } else if ((r.h.type == nbd::kCmdWrite || r.h.type == nbd::kCmdWriteZeroes) && unaligned) {
      bump(st.unaligned);
      r.rmw = true;
      r.head_edge = off % kSector != 0;
      // The sector holding the end, unless it is the head's sector (already read).
      r.tail_edge = end % kSector != 0 && !(r.head_edge && r.a1 - r.a0 == kSector);
    }
    // Trim in `ignore` mode and flush touch no sectors: they hold no range.
    const bool touches = r.h.type == nbd::kCmdRead || r.h.type == nbd::kCmdWrite ||
                         r.h.type == nbd::kCmdWriteZeroes ||
                         (r.h.type == nbd::kCmdTrim && cfg.trim == NbdTrim::zero);
    if (touches) {
      r.range.begin = r.a0;
      r.range.end = r.a1;
      r.range.writes = r.h.type != nbd::kCmdRead;
    }
  }

  std::uint64_t needed_chunks(const Req& r) const {
    std::uint64_t n = 0;
    if (r.h.type == nbd::kCmdRead || r.h.type == nbd::kCmdWrite) n = chunks_for(r.a1 - r.a0);
    if (r.rmw) ++n;  // scratch for the edge sectors
    return n;
  }

  /// Takes the request's chunks for its connection (the caller checked quota and pool).
  void take_chunks(Req& r) {
    const std::uint64_t n = needed_chunks(r);
    const std::uint64_t data = r.rmw ? n - 1 : n;
    for (std::uint64_t i = 0; i < data; ++i) r.chunks.push_back(pool.take(r.conn->pool));
    if (r.rmw) r.scratch = pool.take(r.conn->pool);
  }

  /// Grants buffers to waiting connections, in order. A connection past its quota waits for
  /// its own requests to give chunks back and holds nobody else up; the first one within its
  /// quota that the pool cannot serve yet stops the round (first come, first served).
  void serve_pool_waiters() {
    for (std::size_t i = 0; i < pool_waiters.size();) {
      Conn& c = *pool_waiters[i];
      Req& r = *c.cur;
      const std::uint64_t n = needed_chunks(r);
      if (!pool.within_quota(c.pool, n)) {
        ++i;
        continue;
      }
      if (pool.free_count() < n) return;
      pool_waiters.erase(pool_waiters.begin() + static_cast<std::ptrdiff_t>(i));
      c.waiting_pool = false;
      c.cur = nullptr;
      take_chunks(r);
      start_receiving(c, r);  // may start device work; never closes a connection
      mark_resume(c);
    }
  }

  // ---- admission and device work ----

  /// The request is complete (payload received): it holds its range from now on, and starts
  /// once nothing admitted before it overlaps it (nbd_overlap.h).
  void admit(Req& r) {
    r.deadline_ns = clock_ns() + ns(cfg.io_timeout);
    order.hold(r.range);
    if (!order.may_start(r.range)) {
      bump(st.overlap_waits);
      r.queued = true;
      admit_q.push_back(&r);
      return;
    }
    start(r);
  }

  /// Starts every waiting request that no longer overlaps an earlier one.
  void pump_admissions() {
    if (pumping) {  // finish() inside start() below: the outer loop goes round again
      pump_again = true;
      return;
    }
    pumping = true;
    do {
      pump_again = false;
      for (std::size_t i = 0; i < admit_q.size();) {
        Req& r = *admit_q[i];
        if (!order.may_start(r.range)) {
          ++i;
          continue;
        }
        admit_q.erase(admit_q.begin() + static_cast<std::ptrdiff_t>(i));
        r.queued = false;
        start(r);
      }
    } while (pump_again);
    pumping = false;
  }

  /// A request that timed out before it could start: answered EIO, never run.
  void cancel_queued(Req& r) {
    if (r.queued) {
      admit_q.erase(std::find(admit_q.begin(), admit_q.end(), &r));
      r.queued = false;
    }
    order.release(r.range);
    r.device_done = true;
    if (r.conn != nullptr && r.conn->fd >= 0) {
      reply(r, nbd::kEio);  // releases it (device_done, no data)
    } else {
      r.replied = true;
      release(r);
    }
  }

  void start(Req& r) {
    r.admitted = true;
    ++running;
    switch (r.h.type) {
      case nbd::kCmdRead: bump(st.reads); break;
      case nbd::kCmdWrite: bump(st.writes); break;
      case nbd::kCmdFlush: bump(st.flushes); break;
      case nbd::kCmdTrim: bump(st.trims); break;
      case nbd::kCmdWriteZeroes: bump(st.write_zeroes); break;
      default: break;
    }
    if (r.replied) {  // timed out while waiting for its turn
      r.error = nbd::kEio;
      finish(r);
      return;
    }
    if (r.rmw && (r.head_edge || r.tail_edge)) {
      r.stage = Stage::edges;
      if (r.head_edge) push_op(r, VKind::read, true, 0, kSector, r.a0 / kSector);
      if (r.tail_edge) push_op(r, VKind::read, true, kSector, kSector, r.a1 / kSector - 1);
      return;
    }
    r.stage = Stage::main;
    main_ops(r);
    if (r.ops_left == 0) advance(r);
  }

  void push_op(Req& r, VKind kind, bool scratch, std::uint32_t pos, std::uint32_t bytes,
               std::uint64_t sector) {
    VOp op;
    op.req = &r;
    op.kind = kind;
    op.scratch = scratch;
    op.pos = pos;
    op.bytes = bytes;
    op.sector = sector;
    pending.push_back(op);
    ++r.ops_left;
  }

  void push_data_ops(Req& r, VKind kind, std::uint64_t from, std::uint64_t to) {
    for (std::uint64_t p = from; p < to; p += cfg.max_virtio_bytes) {
      const auto bytes =
          static_cast<std::uint32_t>(std::min<std::uint64_t>(to - p, cfg.max_virtio_bytes));
      push_op(r, kind, false, static_cast<std::uint32_t>(p), bytes, (r.a0 + p) / kSector);
    }
  }

  void push_zero_ops(Req& r, std::uint64_t from, std::uint64_t to) {  // byte offsets, aligned
    for (std::uint64_t p = from; p < to;) {
      const std::uint64_t bytes =
          std::min<std::uint64_t>(to - p, std::uint64_t{kMaxZeroSectors} * kSector);
      push_op(r, VKind::zeroes, false, 0, static_cast<std::uint32_t>(bytes), p / kSector);
      p += bytes;
    }
  }

  void main_ops(Req& r) {
    const std::uint64_t off = r.h.offset, end = r.h.offset + r.h.length;
    switch (r.h.type) {
      case nbd::kCmdRead: push_data_ops(r, VKind::read, 0, r.a1 - r.a0); break;
      case nbd::kCmdWrite:
        if (r.rmw) patch_write(r);
        push_data_ops(r, VKind::write, 0, r.a1 - r.a0);
        break;
      case nbd::kCmdFlush: push_op(r, VKind::flush, false, 0, 0, 0); break;
      case nbd::kCmdTrim:
        if (cfg.trim == NbdTrim::zero) {
          // Trim is advisory: only whole sectors inside the range are zeroed.
          const std::uint64_t from = (off + kSector - 1) / kSector * kSector;
          const std::uint64_t to = end / kSector * kSector;
          if (from < to) push_zero_ops(r, from, to);
        }
        break;
      case nbd::kCmdWriteZeroes:
        if (!r.rmw) {
          push_zero_ops(r, off, end);
        } else {
          patch_zeroes(r);
          if (r.head_edge) push_op(r, VKind::write, true, 0, kSector, r.a0 / kSector);
          if (r.tail_edge) push_op(r, VKind::write, true, kSector, kSector, r.a1 / kSector - 1);
          const std::uint64_t from = (off + kSector - 1) / kSector * kSector;
          const std::uint64_t to = end / kSector * kSector;
          if (from < to) push_zero_ops(r, from, to);
        }
        break;
      default: break;
    }
  }

  /// Scratch position of the sector that starts at buffer position `sector_pos`.
  std::uint32_t scratch_pos_of(const Req& r, std::uint64_t sector_pos) const {
    return sector_pos == 0 && r.head_edge ? 0 : kSector;
  }

  /// RMW write: the bytes of the edge sectors around the payload come from what was read.
  void patch_write(Req& r) {
    const std::byte* s = chunk_host(static_cast<std::uint32_t>(r.scratch));
    if (r.head_edge) copy_into_buffer(r, 0, s, r.shift);
    const std::uint64_t end_pos = r.shift + std::uint64_t{r.h.length};
    const std::uint64_t total = r.a1 - r.a0;
    if (end_pos < total) {
      const std::uint64_t sector_pos = total - kSector;
      const std::byte* src = s + scratch_pos_of(r, sector_pos) + (end_pos - sector_pos);
      copy_into_buffer(r, end_pos, src, total - end_pos);
    }
  }

  /// RMW write-zeroes: zero the covered part of the edge sectors read into the scratch.
  void patch_zeroes(Req& r) {
    std::byte* s = chunk_host(static_cast<std::uint32_t>(r.scratch));
    const std::uint64_t off = r.h.offset, end = r.h.offset + r.h.length;
    if (r.head_edge) {
      const std::uint64_t stop = std::min<std::uint64_t>(end, r.a0 + kSector);
      std::memset(s + (off - r.a0), 0, stop - off);
    }
    if (r.tail_edge) {
      const std::uint64_t sector = r.a1 - kSector;
      const std::uint64_t from = std::max(off, sector);
      std::memset(s + kSector + (from - sector), 0, end - from);
    }
  }

  void advance(Req& r) {
    for (;;) {
      if (r.error != 0) {
        finish(r);
        return;
      }
      switch (r.stage) {
        case Stage::edges:
          r.stage = Stage::main;
          main_ops(r);
          break;
        case Stage::main:
          if (r.fua && r.h.type != nbd::kCmdRead && r.h.type != nbd::kCmdFlush &&
              !(r.h.type == nbd::kCmdTrim && cfg.trim == NbdTrim::ignore)) {
            r.stage = Stage::flush;
            push_op(r, VKind::flush, false, 0, 0, 0);
          } else {
            r.stage = Stage::done;
          }
          break;
        case Stage::flush: r.stage = Stage::done; break;
        case Stage::done: finish(r); return;
      }
      if (r.ops_left > 0) return;
    }
  }

  /// The device is done with the request (or it never needed the device): its range goes, and
  /// so do its buffers once its reply is out.
  void finish(Req& r) {
    r.device_done = true;
    --running;
    order.release(r.range);
    if (r.replied || r.conn->fd < 0) {
      release(r);
    } else {
      reply(r, r.error);
    }
    pump_admissions();
  }

  /// The first queued virtio request fits the virtqueue now.
  bool can_submit() const {
    if (pending.empty()) return false;
    const VOp& op = pending.front();
    const std::uint64_t segs = op.kind == VKind::flush ? 0
                               : op.kind == VKind::zeroes || op.scratch
                                   ? 1
                                   : chunks_for(op.pos % kChunk + op.bytes);
    return dev->free_descriptors() >= segs + 2;
  }

  void submit_pending() {
    bool any = false;
    while (!pending.empty()) {
      VOp& op = pending.front();
      Req& r = *op.req;
      DataSeg segs[72];
      std::size_t n = 0;
      std::uint32_t type = blk::kIn;
      switch (op.kind) {
        case VKind::read:
        case VKind::write:
          type = op.kind == VKind::read ? blk::kIn : blk::kOut;
          if (op.scratch) {
            segs[n++] = {pool_gpa + std::uint64_t(r.scratch) * kChunk + op.pos, op.bytes};
          } else {
            for (std::uint64_t p = op.pos, left = op.bytes; left > 0;) {
              const std::uint64_t ci = p / kChunk, off = p % kChunk;
              const std::uint64_t take = std::min<std::uint64_t>(left, kChunk - off);
              segs[n++] = {pool_gpa + std::uint64_t{r.chunks[ci]} * kChunk + off,
                           static_cast<std::uint32_t>(take)};
              p += take;
              left -= take;
            }
          }
          break;
        case VKind::flush: type = blk::kFlush; break;
        case VKind::zeroes: {
          type = blk::kWriteZeroes;
          if (free_wz.empty()) break;  // cannot happen: a slot per descriptor
          op.wz_slot = free_wz.back();
          const blk::DiscardWriteZeroes wz{op.sector, op.bytes / kSector, 0};
          const std::uint64_t gpa = wz_gpa + std::uint64_t(op.wz_slot) * 16;
          std::memcpy(mem.translate(gpa, 16), &wz, sizeof wz);
          segs[n++] = {gpa, 16};
          break;
        }
      }
      if (op.kind == VKind::zeroes && op.wz_slot < 0) break;
      if (dev->free_descriptors() < n + 2) break;
      auto id = dev->submit(type, op.kind == VKind::zeroes ? 0 : op.sector, {segs, n});
      if (!id.ok()) break;
      if (op.wz_slot >= 0) free_wz.pop_back();
      inflight[*id] = op;
      inflight_valid[*id] = true;
      pending.pop_front();
      any = true;
    }
    if (any) dev->kick();
  }

  /// Takes every used entry; returns how many.
  unsigned reap() {
    GuestCompletion done[64];
    unsigned total = 0;
    for (;;) {
      const unsigned n = dev->reap(done);
      total += n;
      for (unsigned i = 0; i < n; ++i) {
        const std::uint16_t id = done[i].id;
        if (id >= inflight.size() || !inflight_valid[id]) continue;
        inflight_valid[id] = false;
        const VOp op = inflight[id];
        if (op.wz_slot >= 0) free_wz.push_back(op.wz_slot);
        bump(st.virtio_requests);
        Req& r = *op.req;
        if (done[i].status != blk::kStatusOk) {
          bump(st.virtio_errors);
          if (r.error == 0) {
            r.error = nbd::kEio;
            note(std::string(nbd::command_name(r.h.type)) + " at " + std::to_string(r.h.offset) +
                 " (+" + std::to_string(r.h.length) +
                 "): the device completed a virtio-blk request with status " +
                 std::to_string(done[i].status) + ": replying EIO");
          }
        }
        if (--r.ops_left == 0) advance(r);
      }
      if (n < 64) return total;
    }
  }

  // ---- replies ----

  /// Replies to a request that never got a Req (invalid, or a skipped payload).
  void reply_now(Conn& c, const nbd::Request& h, std::uint32_t error) {
    Out o;
    const nbd::SimpleReply m =
        nbd::to_wire(nbd::SimpleReply{nbd::kSimpleReplyMagic, error, h.handle});
    std::memcpy(o.hdr.data(), &m, sizeof m);
    o.hdr_len = sizeof m;
    o.total = sizeof m;
    o.counts = true;  // unsent replies hold queue-depth slots: a peer that never reads stalls
    ++c.active;
    bump(st.requests);
    if (error != 0) bump(st.error_replies);
    queue_out(c, std::move(o));
  }

  void reply(Req& r, std::uint32_t error) {
    Conn& c = *r.conn;
    r.replied = true;
    if (c.fd < 0) return;
    Out o;
    const nbd::SimpleReply m =
        nbd::to_wire(nbd::SimpleReply{nbd::kSimpleReplyMagic, error, r.h.handle});
    std::memcpy(o.hdr.data(), &m, sizeof m);
    o.hdr_len = sizeof m;
    o.total = sizeof m;
    o.counts = true;
    bump(st.requests);
    if (error != 0) {
      bump(st.error_replies);
    } else if (r.h.type == nbd::kCmdRead) {
      bump(st.bytes_read, r.h.length);
    } else if (r.h.type == nbd::kCmdWrite) {
      bump(st.bytes_written, r.h.length);
    }
    if (error == 0 && r.h.type == nbd::kCmdRead) {
      o.data = &r;  // released once sent
      o.total += r.h.length;
    } else if (r.device_done) {
      release(r);
    }
    queue_out(c, std::move(o));
  }

  void release(Req& r) {
    Conn* c = r.conn;
    for (std::uint32_t ch : r.chunks) pool.give(c->pool, ch);
    r.chunks.clear();
    if (r.scratch >= 0) pool.give(c->pool, static_cast<std::uint32_t>(r.scratch));
    r.scratch = -1;
    r.conn = nullptr;
    spare_reqs.splice(spare_reqs.end(), reqs, r.self);
    if (c != nullptr && c->refs > 0) --c->refs;
  }

  void queue_blob(Conn& c, std::string blob) {
    Out o;
    o.total = blob.size();
    o.blob = std::move(blob);
    queue_out(c, std::move(o));
  }

  void queue_out(Conn& c, Out o) {
    // Each reply's deadline runs from when it is queued, not from when it reaches the head:
    // a peer reading one reply per io_timeout would otherwise hold its buffers for
    // queue_depth x io_timeout.
    o.deadline = clock_ns() + ns(cfg.io_timeout);
    if (c.out.empty()) c.send_deadline = o.deadline;
    c.out.push_back(std::move(o));
    if (!c.in_dirty) {
      c.in_dirty = true;
      dirty.push_back(&c);
    }
  }

  void flush_dirty() {
    for (std::size_t i = 0; i < dirty.size(); ++i) {
      Conn* c = dirty[i];
      c->in_dirty = false;
      if (c->fd >= 0) flush_out(*c);
    }
    dirty.clear();
  }

  void flush_out(Conn& c) {
    while (c.fd >= 0 && !c.out.empty()) {
      iovec iov[64];
      int n = 0;
      for (const Out& o : c.out) {
        if (n >= 60) break;
        std::uint64_t skip = o.sent;
        const std::uint64_t head = o.blob.empty() ? o.hdr_len : o.blob.size();
        const std::byte* hp =
            o.blob.empty() ? o.hdr.data() : reinterpret_cast<const std::byte*>(o.blob.data());
        if (skip < head) {
          iov[n++] = {const_cast<std::byte*>(hp) + skip, head - skip};
          skip = 0;
        } else {
          skip -= head;
        }
        if (o.data != nullptr) {
          n += buffer_iov(*o.data, o.data->shift + skip, o.data->h.length - skip, iov + n, 64 - n);
          if (n >= 64) break;  // this reply's data may not be all in: nothing may follow it
        }
      }
      msghdr mh{};
      mh.msg_iov = iov;
      mh.msg_iovlen = static_cast<std::size_t>(n);
      const ssize_t sent = sendmsg(c.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          if (c.send_stall == 0) c.send_stall = clock_ns();
          return;
        }
        close_conn(c, ("send failed: " + std::string(std::strerror(errno))).c_str());
        return;
      }
      c.send_stall = 0;
      auto left = static_cast<std::uint64_t>(sent);
      while (left > 0 || (!c.out.empty() && c.out.front().sent == c.out.front().total)) {
        Out& o = c.out.front();
        const std::uint64_t take = std::min(left, o.total - o.sent);
        o.sent += take;
        left -= take;
        if (o.sent < o.total) break;
        Req* r = o.data;
        const bool counts = o.counts;
        c.out.pop_front();
        // The next reply's own deadline (from when it was queued) applies now.
        c.send_deadline = c.out.empty() ? 0 : c.out.front().deadline;
        if (r != nullptr) release(*r);
        if (counts && c.active > 0) --c.active;
        mark_resume(c);
      }
    }
    if (c.fd >= 0 && c.out.empty()) {
      if (c.close_after_out) {
        close_conn(c, nullptr);
      } else if (c.disc && c.active == 0) {
        close_conn(c, nullptr);
      }
    }
  }

  NbdServerStats snapshot() const {
    NbdServerStats s;
    auto ld = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    s.connections = ld(st.connections);
    s.turned_away = ld(st.turned_away);
    s.transmissions = ld(st.transmissions);
    s.disconnects = ld(st.disconnects);
    s.protocol_errors = ld(st.protocol_errors);
    s.options = ld(st.options);
    s.requests = ld(st.requests);
    s.reads = ld(st.reads);
    s.writes = ld(st.writes);
    s.flushes = ld(st.flushes);
    s.trims = ld(st.trims);
    s.write_zeroes = ld(st.write_zeroes);
    s.bytes_read = ld(st.bytes_read);
    s.bytes_written = ld(st.bytes_written);
    s.error_replies = ld(st.error_replies);
    s.unaligned = ld(st.unaligned);
    s.device_timeouts = ld(st.device_timeouts);
    s.send_timeouts = ld(st.send_timeouts);
    s.idle_timeouts = ld(st.idle_timeouts);
    s.quota_waits = ld(st.quota_waits);
    s.overlap_waits = ld(st.overlap_waits);
    s.virtio_requests = ld(st.virtio_requests);
    s.virtio_errors = ld(st.virtio_errors);
    return s;
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
      impl->run();
      timespec ts{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
      impl->final_cpu_ns.store(static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull +
                               static_cast<std::uint64_t>(ts.tv_nsec));
      impl->thread_done.store(true, std::memory_order_release);
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

NbdServerStats NbdServer::stats() const { return impl_->snapshot(); }

std::uint64_t NbdServer::thread_cpu_ns() const {
  std::lock_guard lock(impl_->thread_mu);
  if (impl_->thread_done.load(std::memory_order_acquire) || !impl_->thread.joinable()) {
    return impl_->final_cpu_ns.load();
  }
  clockid_t id;
  if (pthread_getcpuclockid(impl_->thread.native_handle(), &id) != 0) return 0;
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::string NbdServer::last_error() const {
  std::lock_guard lock(impl_->mu);
  return impl_->last_err;
}

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
  return server.impl_->pool.free_count();
}

std::uint64_t NbdServerTestSeam::total_chunks(const NbdServer& server) {
  return server.impl_->pool.total();
}

std::size_t NbdServerTestSeam::live_requests(const NbdServer& server) {
  return server.impl_->reqs.size();
}

std::size_t NbdServerTestSeam::open_connections(const NbdServer& server) {
  std::size_t n = 0;
  for (const auto& [id, c] : server.impl_->conns) n += c->fd >= 0 ? 1 : 0;
  return n;
}

std::size_t NbdServerTestSeam::held_ranges(const NbdServer& server) {
  return server.impl_->order.size();
}

std::string NbdServerTestSeam::describe(const NbdServer& server) {
  std::string s;
  for (const NbdServer::Impl::Req& r : server.impl_->reqs) {
    s += std::string(nbd::command_name(r.h.type)) + " at " + std::to_string(r.h.offset) + " +" +
         std::to_string(r.h.length) + " stage " + std::to_string(static_cast<int>(r.stage)) +
         " ops " + std::to_string(r.ops_left) + (r.admitted ? " admitted" : "") +
         (r.queued ? " queued" : "") + (r.device_done ? " done" : "") +
         (r.replied ? " replied" : "") + (r.range.linked ? " holds-range" : "") +
         (r.conn == nullptr ? " no-conn"
          : r.conn->fd < 0  ? " conn-closed"
                            : "") +
         "\n";
  }
  return s;
}

}  // namespace keel::vmm
