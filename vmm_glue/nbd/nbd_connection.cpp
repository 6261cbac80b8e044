// One NBD peer: socket IO, the parser, the handshake's driving and the reply queue
// (nbd_connection.h).
#include "nbd_connection.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "keel/log.h"
#include "nbd_handshake.h"

namespace keel::vmm::nbd_internal {

namespace {

constexpr log::Logger kLog{"nbd"};

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

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%" PRIx64, v);
  return b;
}

}  // namespace

Connection::Connection(ConnectionContext& ctx, std::uint64_t id, int fd)
    : ctx_(ctx), id_(id), fd_(fd) {
  in_.resize(kInBufBytes);
  handshake_deadline_ = ctx_.clock.now() + ns(ctx_.cfg.handshake_timeout);
}

Connection::~Connection() {
  if (fd_ >= 0) ::close(fd_);
}

void Connection::start() {
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.u64 = id_;
  epoll_ctl(ctx_.ep, EPOLL_CTL_ADD, fd_, &e);
  mask_ = EPOLLIN;
  bump(ctx_.counters.connections);
  std::string g;
  append(g,
         nbd::Greeting{nbd::kInitPasswd, nbd::kOptMagic,
                       static_cast<std::uint16_t>(nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes)});
  queue_blob(std::move(g));
}

// ================================================================ the loop's side

void Connection::on_events(std::uint32_t events) {
  if ((events & EPOLLOUT) != 0) flush_out();
  if (fd_ < 0) return;
  if ((events & EPOLLIN) != 0 || ((events & (EPOLLHUP | EPOLLERR)) != 0 && want_read())) {
    process();
  } else if ((events & (EPOLLHUP | EPOLLERR)) != 0) {
    close(nullptr);  // the peer is gone; nobody will read the replies
  }
}

void Connection::check_timers(std::uint64_t now) {
  const NbdServerConfig& cfg = ctx_.cfg;
  if (fd_ < 0) return;
  if (!transmission_ && now > handshake_deadline_) {
    drop("handshake not finished within " + std::to_string(cfg.handshake_timeout.count()) + " ms");
  } else if (msg_start_ != 0 && want_read() && now - msg_start_ > ns(cfg.io_timeout)) {
    drop("request incomplete after " + std::to_string(cfg.io_timeout.count()) + " ms");
  } else if (!out_.empty() && send_deadline_ != 0 && now > send_deadline_) {
    // Total time for the reply at the head, however much of it the peer took: a slow
    // reader cannot hold its buffers (or the pool) for longer than this.
    bump(ctx_.counters.send_timeouts);
    drop("peer did not take a reply in full within " + std::to_string(cfg.io_timeout.count()) +
         " ms");
  } else if (is_idle() && cfg.idle_timeout.count() > 0) {
    if (idle_since_ == 0) {
      idle_since_ = now;
    } else if (now - idle_since_ > ns(cfg.idle_timeout)) {
      bump(ctx_.counters.idle_timeouts);
      ctx_.notes.note("connection " + std::to_string(id_) + ": idle for " +
                      std::to_string(cfg.idle_timeout.count()) + " ms; closing");
      close(nullptr);
    }
  } else {
    idle_since_ = 0;
  }
}

/// In transmission with nothing in flight, queued or half received.
bool Connection::is_idle() const {
  return transmission_ && active_ == 0 && out_.empty() && cur_ == nullptr && msg_start_ == 0 &&
         avail() == 0 && st_ == St::req_header;
}

bool Connection::want_read() const {
  if (fd_ < 0 || close_after_out_ || waiting_pool_) return false;
  if (st_ == St::opt_header && out_.size() > kMaxQueuedOptionReplies) return false;
  const bool stopping = ctx_.stopping.load(std::memory_order_relaxed);
  if (stopping && st_ == St::req_header) return false;
  if (st_ == St::req_header) return !disc_ && active_ < ctx_.cfg.queue_depth;
  return true;
}

void Connection::update_mask() {
  if (fd_ < 0) return;
  if (msg_start_ != 0 && !want_read()) msg_start_ = ctx_.clock.now();  // not the peer's wait
  const std::uint32_t want = (want_read() ? EPOLLIN : 0u) | (send_stall_ != 0 ? EPOLLOUT : 0u);
  if (want != mask_) {
    epoll_event e{};
    e.events = want;
    e.data.u64 = id_;
    epoll_ctl(ctx_.ep, EPOLL_CTL_MOD, fd_, &e);
    mask_ = want;
  }
}

void Connection::mark_resume() {
  if (fd_ >= 0 && !in_resume_) {
    in_resume_ = true;
    ctx_.turns.resume.push_back(this);
  }
}

void Connection::resume_turn() {
  in_resume_ = false;
  if (fd_ >= 0) process();
}

void Connection::flush_turn() {
  in_dirty_ = false;
  if (fd_ >= 0) flush_out();
}

/// A protocol violation or a timeout: the peer is dropped.
void Connection::drop(const std::string& why) {
  bump(ctx_.counters.protocol_errors);
  ctx_.notes.note("connection " + std::to_string(id_) + ": " + why + "; disconnecting");
  close(nullptr);
}

void Connection::close(const char* why) {
  if (fd_ < 0) return;
  if (why != nullptr && ctx_.notes.log()) {
    kLog.info("connection %" PRIu64 ": %s", id_, why);
  }
  epoll_ctl(ctx_.ep, EPOLL_CTL_DEL, fd_, nullptr);
  ::close(fd_);
  fd_ = -1;
  bump(ctx_.counters.disconnects);
  // Replies nobody will read: release what they hold.
  while (!out_.empty()) {
    Req* r = out_.front().data;
    out_.pop_front();
    if (r != nullptr) ctx_.requests.release(*r);
  }
  if (cur_ != nullptr) {  // receiving a payload or waiting for buffers: never admitted
    Req* r = cur_;
    cur_ = nullptr;
    ctx_.requests.release(*r);
  }
  if (waiting_pool_) {
    waiting_pool_ = false;
    ctx_.requests.forget_waiter(*this);
  }
  active_ = 0;
}

// ================================================================ input

void Connection::process() {
  for (int rounds = 0; rounds < 64 && fd_ >= 0; ++rounds) {
    if (!parse()) return;  // waiting for something other than input
    if (fd_ < 0 || !want_read()) return;
    // Need more input.
    if (st_ == St::payload && avail() == 0 && left_ >= kDirectRecvBytes) {
      if (!recv_direct()) return;
      continue;
    }
    if (in_head_ == in_tail_) {
      in_head_ = in_tail_ = 0;
    } else if (in_head_ > 0 && (in_tail_ == in_.size() || in_head_ > in_.size() / 2)) {
      std::memmove(in_.data(), in_.data() + in_head_, avail());
      in_tail_ -= in_head_;
      in_head_ = 0;
    }
    const ssize_t n = recv(fd_, in_.data() + in_tail_, in_.size() - in_tail_, 0);
    if (n > 0) {
      in_tail_ += static_cast<std::size_t>(n);
      if (msg_start_ == 0 && (st_ != St::req_header || avail() > 0)) {
        msg_start_ = ctx_.clock.now();
      }
      continue;
    }
    if (n == 0) {
      peer_closed();
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      close(("receive failed: " + std::string(std::strerror(errno))).c_str());
    }
    return;
  }
  mark_resume();  // more to do; give the others a turn first
}

void Connection::peer_closed() {
  const St idle = transmission_ ? St::req_header : St::opt_header;
  const bool mid = st_ != idle || avail() > 0 || st_ == St::client_flags;
  if (mid && !close_after_out_) {
    bump(ctx_.counters.protocol_errors);
    ctx_.notes.note("connection " + std::to_string(id_) + ": peer closed " +
                    (transmission_ ? "in the middle of a request" : "during the handshake"));
  }
  close(nullptr);
}

bool Connection::recv_direct() {
  iovec iov[64];
  const int n = ctx_.buffers.iov(cur_->buf, pos_, left_, iov, 64);
  const ssize_t got = readv(fd_, iov, n);
  if (got > 0) {
    pos_ += static_cast<std::uint64_t>(got);
    left_ -= static_cast<std::uint64_t>(got);
    if (msg_start_ == 0) msg_start_ = ctx_.clock.now();
    return true;
  }
  if (got == 0) {
    peer_closed();
    return false;
  }
  if (errno == EINTR) return true;
  if (errno != EAGAIN && errno != EWOULDBLOCK) {
    close(("receive failed: " + std::string(std::strerror(errno))).c_str());
  }
  return false;
}

/// Runs the state machine over buffered input. Returns true when it needs more input, false
/// when it stopped for another reason (connection closed, waiting for buffers, queue depth
/// reached).
bool Connection::parse() {
  for (;;) {
    // A connection waiting for buffers holds its request in cur_: nothing more is parsed until
    // it has them (process() runs for other reasons too, e.g. a reply went out).
    if (fd_ < 0 || close_after_out_ || waiting_pool_) return false;
    switch (st_) {
      case St::client_flags: {
        if (avail() < 4) return true;
        const std::uint32_t flags = load_be32(in_.data() + in_head_);
        in_head_ += 4;
        if ((flags & ~(nbd::kFlagCFixedNewstyle | nbd::kFlagCNoZeroes)) != 0) {
          drop("unknown client flags 0x" + hex(flags));
          return false;
        }
        no_zeroes_ = (flags & nbd::kFlagCNoZeroes) != 0;
        st_ = St::opt_header;
        break;
      }
      case St::opt_header: {
        if (out_.size() > kMaxQueuedOptionReplies) return false;  // peer must read first
        if (avail() < sizeof(nbd::OptionHeader)) return true;
        nbd::OptionHeader h;
        std::memcpy(&h, in_.data() + in_head_, sizeof h);
        in_head_ += sizeof h;
        h = nbd::from_wire(h);
        if (h.magic != nbd::kOptMagic) {
          drop("bad option magic 0x" + hex(h.magic));
          return false;
        }
        if (++options_seen_ > kMaxOptions) {
          drop("more than " + std::to_string(kMaxOptions) + " options in one handshake");
          return false;
        }
        opt_ = h;
        optbuf_.clear();
        if (h.length > kMaxSkipOptionBytes) {
          drop(std::string(nbd::option_name(h.option)) + " with " + std::to_string(h.length) +
               " bytes of data");
          return false;
        }
        left_ = h.length;
        st_ = h.length > kMaxOptionBytes ? St::opt_skip : St::opt_data;
        if (left_ == 0) finish_option();
        break;
      }
      case St::opt_data:
      case St::opt_skip: {
        const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(avail(), left_));
        if (st_ == St::opt_data) {
          optbuf_.append(reinterpret_cast<const char*>(in_.data() + in_head_), take);
        }
        in_head_ += take;
        left_ -= take;
        if (left_ > 0) return true;
        finish_option();
        break;
      }
      case St::req_header: {
        if (disc_ || active_ >= ctx_.cfg.queue_depth ||
            ctx_.stopping.load(std::memory_order_relaxed)) {
          return false;
        }
        if (avail() < sizeof(nbd::Request)) {
          if (avail() == 0) msg_start_ = 0;
          return true;
        }
        nbd::Request h;
        std::memcpy(&h, in_.data() + in_head_, sizeof h);
        in_head_ += sizeof h;
        if (!on_request(nbd::from_wire(h))) return false;
        break;
      }
      case St::payload: {
        const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(avail(), left_));
        if (take > 0) {
          ctx_.buffers.copy_in(cur_->buf, pos_, in_.data() + in_head_, take);
          in_head_ += take;
          pos_ += take;
          left_ -= take;
        }
        if (left_ > 0) return true;
        Req* r = cur_;
        cur_ = nullptr;
        st_ = St::req_header;
        msg_start_ = avail() > 0 ? ctx_.clock.now() : 0;
        ctx_.requests.admit(*r);
        break;
      }
      case St::skip: {
        const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(avail(), left_));
        in_head_ += take;
        left_ -= take;
        if (left_ > 0) return true;
        st_ = St::req_header;
        msg_start_ = avail() > 0 ? ctx_.clock.now() : 0;
        reply_now(skip_req_, skip_error_);
        break;
      }
    }
  }
}

// ================================================================ handshake

/// An option's data is in (or skipped): answer it (nbd_handshake.cpp) and act on it.
void Connection::finish_option() {
  bump(ctx_.counters.options);
  st_ = St::opt_header;
  msg_start_ = 0;
  const HandshakeExport e{ctx_.cfg.export_name, ctx_.cfg.description,       ctx_.export_bytes,
                          ctx_.tx_flags,        ctx_.cfg.max_request_bytes, no_zeroes_};
  OptionAnswer a = answer_option(e, opt_.option, opt_.length, optbuf_);
  switch (a.next) {
    case OptionNext::drop: drop(a.why); return;
    case OptionNext::negotiate: break;
    case OptionNext::transmission: enter_transmission(); break;
    case OptionNext::close_after_replies: close_after_out_ = true; break;
  }
  if (!a.out.empty()) queue_blob(std::move(a.out));
}

void Connection::enter_transmission() {
  transmission_ = true;
  st_ = St::req_header;
  handshake_deadline_ = 0;
  bump(ctx_.counters.transmissions);
}

// ================================================================ transmission

/// A complete request header. Returns false to stop parsing (connection dropped, waiting for
/// buffers).
bool Connection::on_request(const nbd::Request& h) {
  if (h.magic != nbd::kRequestMagic) {
    drop("bad request magic 0x" + hex(h.magic));
    return false;
  }
  idle_since_ = 0;
  if (h.type == nbd::kCmdDisc) {
    disc_ = true;
    msg_start_ = 0;
    if (active_ == 0 && out_.empty()) close(nullptr);
    return false;
  }
  if (const std::uint32_t err = ctx_.requests.check(h); err != 0) {
    if (h.type == nbd::kCmdWrite && h.length > 0) {
      st_ = St::skip;
      left_ = h.length;
      skip_req_ = h;
      skip_error_ = err;
      return true;
    }
    msg_start_ = avail() > 0 ? ctx_.clock.now() : 0;
    reply_now(h, err);
    return true;
  }
  if (!ctx_.requests.request(*this, h)) {
    msg_start_ = 0;  // waiting for buffers is not the peer's wait
    return false;
  }
  return true;
}

void Connection::start_receiving(Req& r) {
  if (r.h.type == nbd::kCmdWrite) {
    cur_ = &r;
    st_ = St::payload;
    pos_ = r.shift;
    left_ = r.h.length;
    msg_start_ = ctx_.clock.now();
  } else {
    msg_start_ = avail() > 0 ? ctx_.clock.now() : 0;
    ctx_.requests.admit(r);
  }
}

// ================================================================ output

/// Replies to a request that never got a Req (invalid, or a skipped payload).
void Connection::reply_now(const nbd::Request& h, std::uint32_t error) {
  ++active_;  // unsent replies hold queue-depth slots: a peer that never reads stalls
  bump(ctx_.counters.requests);
  if (error != 0) bump(ctx_.counters.error_replies);
  queue_reply(h.handle, error, nullptr);
}

void Connection::queue_reply(std::uint64_t handle, std::uint32_t error, Req* data) {
  Out o;
  const nbd::SimpleReply m = nbd::to_wire(nbd::SimpleReply{nbd::kSimpleReplyMagic, error, handle});
  std::memcpy(o.hdr.data(), &m, sizeof m);
  o.hdr_len = sizeof m;
  o.total = sizeof m;
  o.counts = true;
  if (data != nullptr) {
    o.data = data;
    o.total += data->h.length;
  }
  queue_out(std::move(o));
}

void Connection::queue_blob(std::string blob) {
  Out o;
  o.total = blob.size();
  o.blob = std::move(blob);
  queue_out(std::move(o));
}

void Connection::queue_out(Out o) {
  // Each reply's deadline runs from when it is queued, not from when it reaches the head: a
  // peer reading one reply per io_timeout would otherwise hold its buffers for
  // queue_depth x io_timeout.
  o.deadline = ctx_.clock.now() + ns(ctx_.cfg.io_timeout);
  if (out_.empty()) send_deadline_ = o.deadline;
  out_.push_back(std::move(o));
  if (!in_dirty_) {
    in_dirty_ = true;
    ctx_.turns.dirty.push_back(this);
  }
}

void Connection::flush_out() {
  while (fd_ >= 0 && !out_.empty()) {
    iovec iov[64];
    int n = 0;
    for (const Out& o : out_) {
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
        n += ctx_.buffers.iov(o.data->buf, o.data->shift + skip, o.data->h.length - skip, iov + n,
                              64 - n);
        if (n >= 64) break;  // this reply's data may not be all in: nothing may follow it
      }
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = static_cast<std::size_t>(n);
    const ssize_t sent = sendmsg(fd_, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (send_stall_ == 0) send_stall_ = ctx_.clock.now();
        return;
      }
      close(("send failed: " + std::string(std::strerror(errno))).c_str());
      return;
    }
    send_stall_ = 0;
    auto left = static_cast<std::uint64_t>(sent);
    while (left > 0 || (!out_.empty() && out_.front().sent == out_.front().total)) {
      Out& o = out_.front();
      const std::uint64_t take = std::min(left, o.total - o.sent);
      o.sent += take;
      left -= take;
      if (o.sent < o.total) break;
      Req* r = o.data;
      const bool counts = o.counts;
      out_.pop_front();
      // The next reply's own deadline (from when it was queued) applies now.
      send_deadline_ = out_.empty() ? 0 : out_.front().deadline;
      if (r != nullptr) ctx_.requests.release(*r);
      if (counts && active_ > 0) --active_;
      mark_resume();
    }
  }
  if (fd_ >= 0 && out_.empty()) {
    if (close_after_out_) {
      close(nullptr);
    } else if (disc_ && active_ == 0) {
      close(nullptr);
    }
  }
}

}  // namespace keel::vmm::nbd_internal
