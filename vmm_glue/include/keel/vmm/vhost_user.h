// keel/vmm/vhost_user.h - the vhost-user-blk front end: a unix-socket server through which a
// VMM (QEMU's vhost-user-blk-pci, or any client speaking the protocol as QEMU 7.2 does) drives a
// keel paravisor. The protocol's wire format is keel/wire/vhost_user.h.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "keel/result.h"
#include "keel/unique_fd.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/paravisor.h"
#include "keel/wire/vhost_user.h"
#include "keel/wire/virtio.h"

// keel's limits on what a front end may send and what its server offers, beside the wire format
// (keel/wire/vhost_user.h) in its namespace.
namespace keel::vhost_user {

// ---- Limits on what a front end may send (enforced by the parser in vhost_user_socket.cpp and
// the request handlers in vhost_user_messages.cpp / vhost_user_rings.cpp; covered by
// tests/vhost_user/vhost_user_{abuse,peer_fd}_test.cpp and the vhost_user_fuzz target). ----

/// Largest payload keel reads. The biggest request keel knows is SET_CONFIG (12 + 256 bytes);
/// the bound leaves room for requests it does not know (failed, not fatal). A bigger header
/// size is a framing error: the connection ends before any of the payload is read.
inline constexpr std::uint32_t kMaxPayload = 4096;
/// At most this many fds (SCM_RIGHTS) travel with one message (SET_MEM_TABLE: one per region).
/// More, or a control message the kernel had to truncate (MSG_CTRUNC: it discards the fds that
/// did not fit), is a framing error: the connection ends and every fd received is closed. Fds
/// a request does not take are closed when it has been handled.
inline constexpr unsigned kMaxFds = kMaxRegions;
/// Largest ring (SET_VRING_NUM; the split ring's limit). Sizes must be powers of two.
inline constexpr std::uint32_t kMaxRingSize = virtio::kMaxQueueSize;
// Fd types: kick, call and err fds must be eventfds (made O_NONBLOCK; one kick eventfd per
// ring, shared with no other ring fd); memory fds regular files sealed with F_SEAL_SHRINK that
// hold the whole region (GuestMemory::add_region). Anything else fails the request.

/// What keel's server offers: MQ, REPLY_ACK, CONFIG (QEMU's vhost-user-blk requires it),
/// INFLIGHT_SHMFD (requests survive a back-end restart: keel/vmm/vhost_user_inflight.h) and
/// RESET_DEVICE.
inline constexpr std::uint64_t kOfferedProtocolFeatures =
    (1ull << protocol::kMq) | (1ull << protocol::kReplyAck) | (1ull << protocol::kConfig) |
    (1ull << protocol::kInflightShmfd) | (1ull << protocol::kResetDevice);

}  // namespace keel::vhost_user

namespace keel::vmm {

/// Builds the paravisor of the connected front end's guest over `memory`, which holds the
/// front end's memory table (already mapped; the paravisor must not outlive it). The caller
/// decides the VF, the host storage service (whose guest-memory regions should be
/// memory.regions()) and ParavisorConfig (threads = true for a server on its own thread).
///
/// The server destroys the paravisor it holds before it calls the factory again, so a factory
/// may replace what the previous paravisor used (a host service mapping the old table). It is
/// called once from create() with an empty GuestMemory, to learn the device (features, config
/// space, queue count) before any front end connects; that paravisor is destroyed at once.
using ParavisorFactory = std::function<Result<std::unique_ptr<Paravisor>>(GuestMemory& memory)>;
/// The same for any device the server can drive (virtio-net's NetParavisor, say).
using DeviceFactory = std::function<Result<std::unique_ptr<VhostDevice>>(GuestMemory& memory)>;
/// A ParavisorFactory as a DeviceFactory (an empty one stays empty).
DeviceFactory device_factory(ParavisorFactory factory);

/// Every member has a default except the socket path.
struct VhostUserBlkConfig {
  /// Unix socket the server listens on (QEMU: -chardev socket,path=...). Created at create(),
  /// removed by the destructor.
  std::string socket_path;
  /// Once the first byte of a message has arrived, how long the rest of it (and sending the
  /// reply) may take before the connection is dropped as broken.
  std::chrono::milliseconds message_timeout{1000};
  /// An existing socket at socket_path that nobody listens on is removed first. (A path that
  /// is not a socket, or a live server's socket, is never touched.)
  bool replace_stale_socket = true;
};

/// A vhost-user-blk back end over a keel paravisor. One front end at a time; a second one that
/// connects meanwhile is turned away (accepted and closed, with a log line). After a
/// disconnect, everything the front end set up is dropped and the next one is accepted.
///
/// Bad input from the front end never crashes the server or blocks it without bound. A framing
/// error (wrong version bits, a payload over kMaxPayload, a message cut short or not finished
/// within message_timeout, more fds than kMaxFds) ends the connection. A well-framed request
/// that cannot be honoured (unknown request, wrong payload size, ring index out of range, a ring
/// outside the memory table, too many regions, a memory fd not sealed with F_SEAL_SHRINK, a
/// kick/call/err fd that is not an eventfd or a kick eventfd another ring uses, ...) is logged
/// and failed: with a non-zero ack when the front end set need_reply (REPLY_ACK); with an
/// empty reply for GET_CONFIG (as the spec says); otherwise by closing the connection, since
/// the front end has no other way to learn that the request failed.
///
/// Rings follow the spec's states: a ring runs once it is started (SET_VRING_KICK, with an fd
/// or the no-fd flag, which makes the paravisor poll the ring) and enabled (SET_VRING_ENABLE 1;
/// enabled from the start if VHOST_USER_F_PROTOCOL_FEATURES was not negotiated), and stops on
/// GET_VRING_BASE (reply: the ring's last avail index), on disable and on disconnect. Changing
/// a running ring (new kick or call fd, say) stops the paravisor's workers (in-flight requests
/// complete first), applies the change and starts them again. A paravisor is created by the
/// factory on SET_MEM_TABLE and re-created on every new table, and when a ring stops while
/// others keep running (Paravisor has no per-queue stop). A ring the driver breaks
/// (DEVICE_NEEDS_RESET) is signalled once on its SET_VRING_ERR eventfd.
///
/// Inflight tracking (INFLIGHT_SHMFD, once negotiated): GET_INFLIGHT_FD creates a record (a
/// sealed memfd, sent with the reply) for the queue count and size asked; SET_INFLIGHT_FD maps
/// the one the front end holds (QEMU sends it before the rings start, on every start, and after
/// reconnecting to a restarted back end). Every request a ring takes is recorded there until it
/// is used; when a ring starts, what the record still holds is resubmitted, oldest first, before
/// any new avail entry (InflightQueue::start). A bad GET fails with an empty record (mmap_size
/// 0: QEMU then runs without tracking); a bad SET as any request does; a record whose content
/// does not check out is logged and reset, and nothing is resubmitted from it.
///
/// Front-end fds never block keel: kick, call and err fds must be eventfds and are set
/// O_NONBLOCK when received (a full counter then fails a notification with EAGAIN, which
/// means one is already pending). O_NONBLOCK is a flag of the open file description, which the
/// front end shares, so its own descriptor turns non-blocking as well; QEMU's eventfds are
/// non-blocking anyway. A front end that clears the flag again afterwards defeats this for its
/// own rings' call fds (the worker's write could then wait for the front end to read the
/// counter): only a hostile front end does that, and its own rings stall. Guest memory must be
/// sealed against shrinking (see GuestMemory): QEMU's -object memory-backend-memfd,...,share=on
/// (seal=on by default) qualifies; memory-backend-file (a /dev/shm or hugetlbfs path) cannot
/// be sealed and is refused.
///
/// Threading, pick one per server:
///  - start(): the server runs on its own thread until stop(). Use paravisors with
///    threads = true (the server never runs their data path).
///  - run_once(): the caller's thread drives the server, and, for paravisors with
///    threads = false, the data path with run_paravisor_once(). Deterministic with a lockstep
///    card; the tests use this.
/// connected(), stats(), last_error(), counters() and transitions() may be called from any
/// thread.
/// A live front end's connection as one process hands it to the next (servicing, issue 14):
/// the listening socket, the connection, and the vhost-user messages that re-create the
/// session's state in a new server (SET_OWNER, SET_FEATURES, SET_PROTOCOL_FEATURES,
/// SET_MEM_TABLE, SET_INFLIGHT_FD, then per ring NUM, BASE, ADDR, CALL, ERR, KICK, ENABLE), each
/// with its file descriptors. The front end notices nothing: the connection never closes.
struct VhostUserSession {
  struct Message {
    vhost_user::Header hdr{};
    std::vector<std::byte> payload;
    std::vector<UniqueFd> fds;
  };
  UniqueFd listener;
  UniqueFd connection;
  std::vector<Message> messages;
};

/// The session over a unix SOCK_SEQPACKET socket (one record per message, its fds attached),
/// for a hand-over to another process. Errors: io_error, gone (the peer closed).
Status send_session(int channel, const VhostUserSession& s);
/// Errors: io_error, gone, invalid_argument (not a session: bad magic or framing, too many
/// messages or fds, a message larger than vhost-user allows), timeout.
Result<VhostUserSession> recv_session(int channel, std::chrono::milliseconds timeout);

class VhostUserBlkServer {
 public:
  /// Learns the device from a paravisor the factory builds over empty memory, then binds and
  /// listens on config.socket_path. Errors: invalid_argument (empty or too long path, no
  /// factory, the factory's paravisor has no queues), busy (a live server owns the path, or
  /// it exists and is not a socket),
  /// io_error (socket, bind), and whatever the factory returns.
  static Result<std::unique_ptr<VhostUserBlkServer>> create(const VhostUserBlkConfig& config,
                                                            ParavisorFactory factory);
  /// The same server for any virtio device (the name stays from when it served only
  /// virtio-blk): the protocol, memory table, rings and inflight records are the device's
  /// business only through VhostDevice.
  static Result<std::unique_ptr<VhostUserBlkServer>> create_device(const VhostUserBlkConfig& config,
                                                                   DeviceFactory factory);
  /// Stops the thread, drops the connection (the paravisor stops first), removes the socket.
  ~VhostUserBlkServer();
  VhostUserBlkServer(const VhostUserBlkServer&) = delete;
  VhostUserBlkServer& operator=(const VhostUserBlkServer&) = delete;

  /// Servicing, the old process's half: stops the server's thread, stops the paravisor (the
  /// requests in flight complete first, so the used rings are up to date and every ring's
  /// base is where the avail ring stands) and destroys it, and returns the session with
  /// duplicates of every fd. The server then serves nothing; its destructor neither closes the
  /// connection on the front end's side (the new process holds it) nor removes the socket
  /// path. `last_look`, if given, sees the stopped paravisor (a virtio-blk device) before it is
  /// destroyed (the NVMe keepalive saves its VF state there: Paravisor::save). Errors: unavailable
  /// (no front end is connected), io_error (dup).
  Result<VhostUserSession> take_session(const std::function<void(Paravisor&)>& last_look = {});
  /// The new process's half: a server on the handed-over listener and connection, its state
  /// re-created by running the session's messages through the usual checks (a session that
  /// fails them is refused, as the same messages from a front end would be). The paravisor is
  /// built by `factory` and the rings start where they stood. Call start() next. Errors:
  /// invalid_argument (no factory, the session's listener or connection missing, a message
  /// refused), and whatever the factory returns.
  static Result<std::unique_ptr<VhostUserBlkServer>> adopt(const VhostUserBlkConfig& config,
                                                           ParavisorFactory factory,
                                                           VhostUserSession session);
  static Result<std::unique_ptr<VhostUserBlkServer>> adopt_device(const VhostUserBlkConfig& config,
                                                                  DeviceFactory factory,
                                                                  VhostUserSession session);

  /// Runs the server on its own thread. Errors: io_error (thread creation).
  Status start();
  /// Stops and joins the thread (within about one message's handling).
  void stop();

  /// Waits up to `timeout` for a connection, a message or a disconnect and handles one of them.
  /// Returns how many events it handled (0 on timeout, or when the server's own thread runs).
  unsigned run_once(std::chrono::milliseconds timeout);
  /// One pass of the paravisor's data path if rings are running (Paravisor::run_once); 0 when
  /// none run. Only for paravisors with threads = false, from the thread calling run_once().
  unsigned run_paravisor_once();
  /// The current front end's paravisor, or nullptr. Only from the thread driving run_once(),
  /// and only until its next call.
  Paravisor* paravisor() noexcept;
  /// The same for any device.
  VhostDevice* device() noexcept;
  bool connected() const noexcept;

  /// Device identity learned at create().
  std::uint64_t device_features() const noexcept;
  unsigned num_queues() const noexcept;
  const std::string& socket_path() const noexcept;

  struct Stats {
    std::uint64_t connections = 0;      ///< Front ends accepted.
    std::uint64_t turned_away = 0;      ///< Connections refused while one was being served.
    std::uint64_t disconnects = 0;      ///< Connections ended (by the peer or by the server).
    std::uint64_t messages = 0;         ///< Well-framed messages handled.
    std::uint64_t failed_requests = 0;  ///< Requests failed (ack, empty reply or close).
    std::uint64_t protocol_errors = 0;  ///< Connections ended for framing errors.
    std::uint64_t paravisors = 0;       ///< Paravisors created for front ends.
    std::uint64_t ring_errors = 0;      ///< Broken rings signalled on their err fd.
  };
  Stats stats() const;
  /// The last failure the server logged, or "".
  std::string last_error() const;
  /// Counters summed over every paravisor created for front ends (the live one included),
  /// and all of their path transitions in order.
  ParavisorCounters counters() const;
  std::vector<Transition> transitions() const;

 private:
  struct Impl;
  explicit VhostUserBlkServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::vmm
