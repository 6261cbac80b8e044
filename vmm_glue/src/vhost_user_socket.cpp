// The vhost-user server's socket: listening, accepting, and message reads and replies that
// never wait without a bound (poll with the message timeout, partial reads and writes resumed).
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "keel/fd_passing.h"
#include "vhost_user_impl.h"

namespace keel::vmm {

namespace vu = vhost_user;

namespace {

enum class Io { ok, closed, truncated, timeout, error, too_many_fds };

const char* describe(Io io) {
  switch (io) {
    case Io::ok: return "ok";
    case Io::closed: return "the peer closed the connection";
    case Io::truncated: return "the peer closed the connection mid-message";
    case Io::timeout: return "timed out";
    case Io::error: return "socket error";
    case Io::too_many_fds: return "too many file descriptors attached";
  }
  return "?";
}

int ms_left(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return static_cast<int>(std::clamp<long long>(left.count(), 0, 60'000));
}

// Waits until `fd` is ready for `events` or the deadline passes.
Io wait_for(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, ms_left(deadline));
    if (r > 0) return Io::ok;
    if (r == 0) return Io::timeout;
    if (errno != EINTR) return Io::error;
  }
}

// Reads exactly `n` bytes, keeping every fd that arrives with them.
Io recv_exact(int fd, std::byte* buf, std::size_t n, std::vector<UniqueFd>& fds,
              std::chrono::steady_clock::time_point deadline) {
  std::size_t got = 0;
  while (got < n) {
    if (Io w = wait_for(fd, POLLIN, deadline); w != Io::ok) return w;
    auto r = recv_with_fds(fd, std::span(buf + got, n - got), fds, vu::kMaxFds);
    if (!r) return Io::error;
    if (r->again) continue;
    if (r->fds_truncated || fds.size() > vu::kMaxFds) return Io::too_many_fds;
    if (r->closed) return got == 0 ? Io::closed : Io::truncated;
    got += r->bytes;
  }
  return Io::ok;
}

}  // namespace

Status VhostUserBlkServer::Impl::listen() {
  UnixListenerConfig lc;
  lc.backlog = 4;
  lc.replace_stale_socket = config.replace_stale_socket;
  auto l = UnixListener::listen(config.socket_path, lc);
  if (!l.ok()) return l.error();
  listener = std::move(l.value());
  return {};
}

void VhostUserBlkServer::Impl::unlink_socket() noexcept { listener.close(); }

void VhostUserBlkServer::Impl::accept_one() {
  UniqueFd fd = listener.accept();
  if (!fd.valid()) return;  // the peer went away again (or EAGAIN): nothing to do
  if (conn_fd.valid()) {
    kVhostLog.warn("%s: turned a second front end away (one is connected)",
                   config.socket_path.c_str());
    std::lock_guard lock(mu);
    ++stats.turned_away;
    return;  // closing it tells the peer at once, instead of leaving it waiting for replies
  }
  conn_fd = std::move(fd);
  connected.store(true);
  reset_connection_state();
  kVhostLog.info("%s: front end connected", config.socket_path.c_str());
  std::lock_guard lock(mu);
  ++stats.connections;
}

VhostUserBlkServer::Impl::ReadResult VhostUserBlkServer::Impl::read_message(detail::Message& m,
                                                                            std::string& why) {
  m.fds.clear();
  const auto deadline = Clock::now() + config.message_timeout;
  const int fd = conn_fd.get();
  Io io = recv_exact(fd, reinterpret_cast<std::byte*>(&m.hdr), sizeof m.hdr, m.fds, deadline);
  // A clean close between messages is an ordinary disconnect; anything else breaks framing.
  if (io == Io::closed) {
    why = "the front end closed the connection";
    return ReadResult::closed;
  }
  if (io != Io::ok) {
    why = std::string("reading a message header: ") + describe(io);
    return ReadResult::broken;
  }
  if ((m.hdr.flags & vu::kVersionMask) != vu::kVersion || (m.hdr.flags & vu::kFlagReply) != 0) {
    char flags[16];
    std::snprintf(flags, sizeof flags, "0x%x", m.hdr.flags);
    why = vu::request_name(m.hdr.request) + ": header flags " + flags +
          " (a request needs version 1 and no reply bit)";
    return ReadResult::broken;
  }
  if (m.hdr.size > vu::kMaxPayload) {
    why = vu::request_name(m.hdr.request) + ": payload of " + std::to_string(m.hdr.size) +
          " bytes, more than the " + std::to_string(vu::kMaxPayload) + " keel accepts";
    return ReadResult::broken;
  }
  io = recv_exact(fd, m.payload.data(), m.hdr.size, m.fds, deadline);
  if (io == Io::closed) io = Io::truncated;  // the header came, the payload did not
  if (io != Io::ok) {
    why = vu::request_name(m.hdr.request) + ": truncated message (" + std::to_string(m.hdr.size) +
          "-byte payload): " + describe(io);
    return ReadResult::broken;
  }
  return ReadResult::message;
}

bool VhostUserBlkServer::Impl::reply(std::uint32_t request, const void* payload, std::size_t bytes,
                                     std::span<const int> fds) {
  if (!conn_fd.valid()) return false;
  std::array<std::byte, sizeof(vu::Header) + vu::kMaxPayload> buf;
  const vu::Header h{request, vu::kVersion | vu::kFlagReply, static_cast<std::uint32_t>(bytes)};
  std::memcpy(buf.data(), &h, sizeof h);
  if (bytes > 0) std::memcpy(buf.data() + sizeof h, payload, bytes);
  const std::size_t total = sizeof h + bytes;
  const auto deadline = Clock::now() + config.message_timeout;
  std::size_t sent = 0;
  while (sent < total) {
    Io io = wait_for(conn_fd.get(), POLLOUT, deadline);
    if (io == Io::ok) {
      const ssize_t k =
          sent == 0 && !fds.empty()
              ? send_once_with_fds(conn_fd.get(), std::span(buf).first(total), fds)
              : ::send(conn_fd.get(), buf.data() + sent, total - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (k > 0) {
        sent += static_cast<std::size_t>(k);
        continue;
      }
      if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      io = Io::error;
    }
    log_failure(vu::request_name(request) + ": sending the reply: " + describe(io));
    close_requested = true;
    return false;
  }
  return true;
}

}  // namespace keel::vmm
