// nbd_connection.h - one NBD peer: its socket, the parser of what it sends (client flags and
// options of the handshake, then request headers and WRITE payloads), and the queue of what it
// is sent (the greeting, option replies, simple replies with a READ's data straight from the
// request's buffer). Every wait the peer can cause is bounded here (handshake, a half-received
// message, a reply not taken, idleness; keel/vmm/nbd_server.h, "Bad peers").
//
// A connection hands each valid request to its RequestSink (the request table) and is told back
// when the request has its buffers; it never sees the device.
//
// Threading: used by the server thread only.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "keel/vmm/nbd_server.h"
#include "nbd_buffers.h"
#include "nbd_clock.h"
#include "nbd_pool.h"
#include "nbd_request.h"
#include "nbd_stats.h"

namespace keel::vmm::nbd_internal {

/// What a connection asks of the requests side.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  /// The NBD error a request header gets, or 0 (nbd_planner.h: check_request).
  virtual std::uint32_t check(const nbd::Request& h) const = 0;
  /// A valid request (not DISC). The sink makes its Req and either gives it its buffers at once
  /// (Connection::start_receiving runs) or makes `c` wait (Connection::wait_for_buffers).
  /// Returns false while `c` waits: nothing more is parsed.
  virtual bool request(Connection& c, const nbd::Request& h) = 0;
  /// `r` is complete (payload received): it may go to the device.
  virtual void admit(Req& r) = 0;
  /// The connection is done with `r`: its reply went out or was dropped, or its payload never
  /// came.
  virtual void release(Req& r) = 0;
  /// `c` closed while waiting for buffers.
  virtual void forget_waiter(Connection& c) = 0;
};

/// Connections with work left in this turn of the server loop.
struct TurnLists {
  std::vector<Connection*> resume;  ///< More input to parse (the others had a turn first).
  std::vector<Connection*> dirty;   ///< Output queued.
};

/// What every connection shares; the server owns it.
struct ConnectionContext {
  const NbdServerConfig& cfg;
  std::uint64_t export_bytes;
  std::uint16_t tx_flags;  ///< Transmission flags.
  const TimeoutClock& clock;
  Counters& counters;
  Notes& notes;
  DataBuffers& buffers;  ///< Payloads are received into, READ data sent from, request buffers.
  RequestSink& requests;
  TurnLists& turns;
  const std::atomic<bool>& stopping;
  int ep;  ///< The server's epoll; a connection keeps its own registration up to date.
};

class Connection {
 public:
  /// Serves `fd` (connected, non-blocking; the connection owns it) as connection `id`.
  Connection(ConnectionContext& ctx, std::uint64_t id, int fd);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// Registers with epoll and queues the greeting.
  void start();

  std::uint64_t id() const noexcept { return id_; }
  bool open() const noexcept { return fd_ >= 0; }
  bool in_transmission() const noexcept { return transmission_; }
  /// Every request accepted has had its reply sent.
  bool drained() const noexcept { return active_ == 0 && out_.empty(); }
  /// Closed, and no request points here any more: the server may free it.
  bool reclaimable() const noexcept { return fd_ < 0 && refs_ == 0; }

  // ---- driven by the server loop ----
  /// What epoll reported for the socket.
  void on_events(std::uint32_t events);
  /// Parses what is buffered and reads more while the connection may take more (non-blocking).
  void process();
  /// Sends what is queued, as far as the socket takes it.
  void flush_out();
  /// Its turn in TurnLists::resume / TurnLists::dirty.
  void resume_turn();
  void flush_turn();
  /// Drops or closes it when one of its deadlines has passed (`now`: TimeoutClock).
  void check_timers(std::uint64_t now);
  /// Registers for what it waits for (input, output) now.
  void update_mask();
  /// Closes the socket; replies not sent and a request not received are released.
  void close() { close(nullptr); }
  /// Gives it another turn to parse in this round of the loop (TurnLists::resume).
  void mark_resume();

  // ---- for the request table ----
  PoolAccount& pool_account() noexcept { return pool_; }
  /// A Req now points here (and holds a queue-depth slot until its reply is sent).
  void attach() noexcept {
    ++refs_;
    ++active_;
  }
  /// A Req no longer points here.
  void detach() noexcept {
    if (refs_ > 0) --refs_;
  }
  /// `r` waits for its buffers: nothing more is parsed until end_buffer_wait().
  void wait_for_buffers(Req& r) noexcept {
    cur_ = &r;
    waiting_pool_ = true;
  }
  /// The request waiting for buffers, or nullptr.
  Req* buffer_waiter() const noexcept { return waiting_pool_ ? cur_ : nullptr; }
  void end_buffer_wait() noexcept {
    waiting_pool_ = false;
    cur_ = nullptr;
  }
  /// `r` has its buffers: a WRITE receives its payload, the rest is complete (admitted).
  void start_receiving(Req& r);
  /// Queues a simple reply to request `handle`; `data`: a READ whose data follows it (released
  /// once sent).
  void queue_reply(std::uint64_t handle, std::uint32_t error, Req* data);

 private:
  enum class St : std::uint8_t {
    client_flags,
    opt_header,
    opt_data,
    opt_skip,
    req_header,
    payload,
    skip,
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

  void close(const char* why);
  void drop(const std::string& why);
  void peer_closed();
  bool want_read() const;
  bool is_idle() const;
  std::size_t avail() const noexcept { return in_tail_ - in_head_; }
  bool recv_direct();
  bool parse();
  void finish_option();
  void enter_transmission();
  bool on_request(const nbd::Request& h);
  void reply_now(const nbd::Request& h, std::uint32_t error);
  void queue_blob(std::string blob);
  void queue_out(Out o);

  ConnectionContext& ctx_;
  const std::uint64_t id_;
  int fd_;
  St st_ = St::client_flags;
  bool transmission_ = false;
  bool no_zeroes_ = false;
  bool disc_ = false;             // NBD_CMD_DISC seen: finish, then close
  bool close_after_out_ = false;  // NBD_OPT_ABORT: close once the ACK is out
  bool waiting_pool_ = false;
  bool in_resume_ = false, in_dirty_ = false;
  std::vector<std::byte> in_;
  std::size_t in_head_ = 0, in_tail_ = 0;
  nbd::OptionHeader opt_{};
  std::string optbuf_;
  std::uint64_t left_ = 0;   // option data / payload / skip bytes still to come
  std::uint64_t pos_ = 0;    // payload: next buffer position
  nbd::Request skip_req_{};  // the request whose payload is being skipped
  std::uint32_t skip_error_ = 0;
  Req* cur_ = nullptr;  // receiving its payload or waiting for buffers
  std::deque<Out> out_;
  unsigned active_ = 0;  // requests accepted whose reply is not sent yet
  unsigned refs_ = 0;    // Req objects pointing here
  unsigned options_seen_ = 0;
  PoolAccount pool_;  // chunks this connection holds (quota)
  std::uint64_t handshake_deadline_ = 0;
  std::uint64_t msg_start_ = 0;      // first byte of an incomplete message
  std::uint64_t send_stall_ = 0;     // since when output waits for the peer (EPOLLOUT)
  std::uint64_t send_deadline_ = 0;  // the reply at the head of out_ must be sent by then
  std::uint64_t idle_since_ = 0;     // first timer check that saw it idle (0: busy)
  std::uint32_t mask_ = 0;           // epoll interest registered
};

}  // namespace keel::vmm::nbd_internal
