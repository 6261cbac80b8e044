// keel/vmm/nbd_server.h - an NBD export of one keel guest disk, so that tools that speak NBD
// (fio's nbd engine, qemu-img, nbd-client) drive keel unchanged.
//
// The server plays the guest: every NBD request becomes virtio-blk requests of the in-process
// GuestDriver, which the paravisor carries on the VF or on the host fallback path, exactly as a
// guest kernel's requests would be. Data moves between the socket and buffers the server owns
// in guest memory (one copy each way, the socket's own).
//
// Protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md), fixed newstyle
// negotiation only, over a unix socket:
//   handshake   NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES; client flags C_FIXED_NEWSTYLE,
//               C_NO_ZEROES (anything else: the connection is dropped, as the spec requires)
//   options     EXPORT_NAME, GO, INFO (INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE
//               - block sizes are always sent: 512 / 4096 / max_request_bytes), LIST, ABORT;
//               anything else (STARTTLS and STRUCTURED_REPLY included) -> NBD_REP_ERR_UNSUP
//   commands    READ, WRITE (+FUA), FLUSH, TRIM (+FUA), WRITE_ZEROES (+FUA, NO_HOLE), DISC;
//               simple replies, in completion order (the handle says which request)
//
// Requests need not be sector aligned (the spec's default minimum block size is 1): an unaligned
// read reads the covering sectors; an unaligned write or write-zeroes is a read-modify-write of
// its edge sectors. Overlapping requests are ordered: a request that overlaps one admitted
// before it, where one of the two writes, starts only when that one is done on the device
// (reads pass reads), so concurrent requests never lose each other's bytes and an RMW's edge
// sectors cannot change between its read and its write.
//
// Workers (NbdServerConfig::queues): each is a thread with its own epoll, its own virtqueue of
// the paravisor (so its own paravisor worker and VF queue pair) and its own share of the data
// buffers; connections are spread over them (the worker serving the fewest takes the next), so
// with queues >= connections every connection is served in parallel on its own queue.
// Overlapping requests are ordered across workers too (one order, under a lock). Flushes: a
// FLUSH on any connection covers every write completed on any connection (NBD_FLAG_CAN_MULTI_CONN
// is advertised; why it holds: nbd_server.cpp, NbdServer::Impl::setup).
// Connections past max_connections are accepted and closed at once (never kept waiting), with a
// log line saying the limit; they count in NbdServerStats::turned_away.
//
// Buffers: each worker has max(buffer_bytes / queues, one largest request) of data buffers; one
// connection holds at most max(its worker's buffers / its worker's share of max_connections, one
// largest request) at once; a request past that waits on its own connection only (see
// vmm_glue/nbd/nbd_pool.h).
//
// Bad peers, per the spec's SHOULDs:
//   bad request magic, unknown client flags, bad option magic    -> the connection is dropped
//   read/trim past the end, zero length, unknown command or flag -> EINVAL reply
//   write/write-zeroes past the end                              -> ENOSPC reply
//   read/write longer than max_request_bytes                     -> EINVAL reply (a write's
//                                                                   payload is read and dropped)
//   any write on a read-only export                              -> EPERM reply
//   a request or option not fully received within io_timeout, a handshake not finished within
//   handshake_timeout, a reply not taken in full by the peer within io_timeout of reaching the
//   head of its connection's queue (partial progress does not restart it)
//                                                                -> the connection drops
//   nothing in flight and nothing received for idle_timeout in transmission -> closed (idle)
//   a device request not completed within io_timeout -> EIO reply; its buffer and its range stay
//   held until the device does complete, so overlapping requests wait for it and a late write
//   can never land over a newer one
//   more options than kMaxOptions in one handshake                -> the connection drops
//   (every limit: the nbd::kMax* constants below, next to the wire format they bound)
// Other connections and the requests already in flight are unaffected.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "keel/clock.h"
#include "keel/result.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/paravisor.h"
#include "keel/wire/nbd.h"

// keel's NBD server's limits, beside the wire format (keel/wire/nbd.h) in its namespace.
namespace keel::nbd {

// ---- Limits of keel's NBD server: what a peer can make it hold (docs/security.md) ----
/// Option data the server buffers; a longer option is read, dropped and refused with
/// NBD_REP_ERR_TOO_BIG.
inline constexpr std::uint32_t kMaxOptionBytes = 64u << 10;
/// Option data past which the peer is dropped at once (nothing legitimate is that long).
inline constexpr std::uint32_t kMaxSkipOptionBytes = 16u << 20;
/// Options one handshake may send; the next one drops the connection.
inline constexpr unsigned kMaxOptions = 1024;
/// Options whose replies a peer has not taken yet; past it the server reads no further option
/// until the peer takes some (a peer that never does is dropped at its send deadline).
inline constexpr unsigned kMaxQueuedOptionReplies = 64;
/// Upper bound of NbdServerConfig::queue_depth (requests in flight per connection; the server
/// reads no further request from a connection at its depth).
inline constexpr unsigned kMaxQueueDepth = 4096;
/// Upper bound of NbdServerConfig::max_connections (further peers are accepted and closed).
inline constexpr unsigned kMaxConnections = 1024;
/// Upper bound of NbdServerConfig::queues (workers, each with its own virtqueue).
inline constexpr unsigned kMaxQueues = 64;

}  // namespace keel::nbd

namespace keel::vmm {

/// What NBD_CMD_TRIM does.
enum class NbdTrim : std::uint8_t {
  zero,    ///< advertised; trimmed sectors are written with zeroes (reads return zeroes)
  ignore,  ///< advertised; acknowledged and otherwise ignored (allowed: trim is advisory)
  off,     ///< not advertised; a TRIM gets EINVAL
};

/// Every member has a default except socket_path.
struct NbdServerConfig {
  std::string socket_path;  ///< Unix socket to listen on (an existing socket file is replaced).
  std::string export_name = "keel";  ///< The default export ("") is accepted as well.
  std::string description = "keel guest disk";
  /// NBD requests one connection may have in flight; the server reads no further request
  /// from that connection until one completes.
  unsigned queue_depth = 64;
  /// Largest READ/WRITE payload (the spec's 32 MiB at most; a power of two >= 4096).
  std::uint32_t max_request_bytes = nbd::kMaxPayload;
  /// Data buffers in guest memory (>= max_request_bytes + 256 KiB), split between the workers
  /// (each gets at least one largest request's worth).
  std::uint64_t buffer_bytes = 64ull << 20;
  /// Workers: threads serving connections, each with its own virtqueue (queue i of the
  /// paravisor, which must have been created with at least this many). 1..kMaxQueues.
  unsigned queues = 1;
  /// Entries of the server's virtqueue (the guest driver's queue; a power of two).
  std::uint16_t virtqueue_size = 256;
  /// Largest virtio-blk request the server builds (a multiple of 128 KiB); longer NBD requests
  /// are split.
  std::uint32_t max_virtio_bytes = 1u << 20;
  NbdTrim trim = NbdTrim::zero;
  bool read_only = false;
  /// Connections at once; further ones are accepted and closed at once (and logged).
  unsigned max_connections = 16;
  /// Whole handshake, from accept to the end of GO / EXPORT_NAME.
  std::chrono::milliseconds handshake_timeout{10000};
  /// Receiving one request or option in full; sending one reply in full once it heads the
  /// connection's queue; the device finishing one request (then EIO).
  std::chrono::milliseconds io_timeout{30000};
  /// A connection in transmission with nothing in flight, nothing queued and nothing received
  /// for this long is closed (so idle peers cannot hold every connection slot). 0: never.
  std::chrono::milliseconds idle_timeout{600000};
  /// How long stop() lets in-flight requests finish and their replies drain (real time).
  std::chrono::milliseconds stop_timeout{5000};
  /// The clock handshake_timeout, io_timeout and idle_timeout are measured on (peers' and the
  /// device's). Null: the host's monotonic clock. Read on the server thread only; the server
  /// looks at its timers every 50 ms of real time while it has connections. Tests move a
  /// ManualClock to make the timeouts happen on cue (shared: the server may outlive the test's
  /// scope until it is stopped).
  std::shared_ptr<const Clock> clock;
  /// Log dropped connections and failed device requests to stderr.
  bool log = true;
};

struct NbdServerStats {
  std::uint64_t connections = 0;      ///< Accepted and served.
  std::uint64_t turned_away = 0;      ///< Closed at once (max_connections).
  std::uint64_t transmissions = 0;    ///< Connections that reached the transmission phase.
  std::uint64_t disconnects = 0;      ///< Connections closed (for any reason).
  std::uint64_t protocol_errors = 0;  ///< Connections dropped for a protocol violation or timeout.
  std::uint64_t options = 0;          ///< Options handled.
  std::uint64_t requests = 0;         ///< Transmission requests replied to.
  std::uint64_t reads = 0, writes = 0, flushes = 0, trims = 0, write_zeroes = 0;
  std::uint64_t bytes_read = 0, bytes_written = 0;
  std::uint64_t error_replies = 0;    ///< Replies with a non-zero error.
  std::uint64_t unaligned = 0;        ///< Requests that needed a covering read or RMW.
  std::uint64_t device_timeouts = 0;  ///< Device requests past io_timeout (replied EIO).
  std::uint64_t send_timeouts = 0;    ///< Connections dropped: a reply not sent in io_timeout.
  std::uint64_t idle_timeouts = 0;    ///< Connections closed after idle_timeout.
  std::uint64_t quota_waits = 0;      ///< Requests that waited for their connection's quota.
  std::uint64_t overlap_waits = 0;    ///< Requests that waited for an overlapping one.
  std::uint64_t virtio_requests = 0;  ///< virtio-blk requests completed.
  std::uint64_t virtio_errors = 0;    ///< ... with a non-OK status.
};

class NbdDevice;  // vmm_glue/nbd/nbd_device.h: the virtio-blk device the server drives

/// An NBD server on a unix socket, exporting the virtio-blk disk of one paravisor. `queues`
/// worker threads (epoll) serve the connections, each worker on its own virtqueue.
///
/// Threading: stats(), thread_cpu_ns() and last_error() may be called from any thread.
class NbdServer {
 public:
  /// Guest RAM the server lays out (rings, write-zeroes payloads, data buffers). The guest
  /// memory given to create() must have at least this much at GPA 0.
  static std::uint64_t guest_memory_bytes(const NbdServerConfig& config) noexcept;

  /// Attaches a guest driver to `pv` (which must not be started yet and must have been created
  /// with threads = true over `memory`) and listens on the socket. The paravisor must outlive
  /// the server. Errors: invalid_argument (config, memory too small), io_error (socket, bind,
  /// eventfd), and errors from the device while the driver attaches.
  static Result<std::unique_ptr<NbdServer>> create(const NbdServerConfig& config, Paravisor& pv,
                                                   GuestMemory& memory);
  /// stop(), then detaches from the paravisor. Call Paravisor::stop() before this: the
  /// paravisor's workers must not run while the guest driver goes away.
  ~NbdServer();
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  /// Starts the paravisor's workers and the server thread. Errors: from the paravisor, io_error.
  Status start();
  /// Stops accepting, lets in-flight requests finish and their replies drain (bounded by
  /// stop_timeout), closes every connection and joins the thread. Idempotent.
  void stop();

  NbdServerStats stats() const;
  /// CPU time of the server's worker threads so far (user + system), in nanoseconds.
  std::uint64_t thread_cpu_ns() const;
  /// The last problem the server noticed (a dropped peer, a failed device request), or "".
  std::string last_error() const;
  const std::string& socket_path() const noexcept;
  /// Export size in bytes.
  std::uint64_t export_bytes() const noexcept;

  struct Impl;

 private:
  friend struct NbdServerTestSeam;  // vmm_glue/nbd/nbd_seam.h (the fuzz target's way in)
  /// The server over any devices, one per worker (production: the queues of the paravisor's
  /// guest driver).
  static Result<std::unique_ptr<NbdServer>> create(const NbdServerConfig& config,
                                                   std::vector<std::unique_ptr<NbdDevice>> devices,
                                                   GuestMemory& memory);
  explicit NbdServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::vmm
