#include "keel/fd_passing.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace keel {

namespace {

// Attaches `fds` to `m` as one SCM_RIGHTS message, in `control` (sized here, 8-byte aligned).
void attach_fds(msghdr& m, std::vector<std::uint64_t>& control, std::span<const int> fds) {
  if (fds.empty()) return;
  control.assign((CMSG_SPACE(sizeof(int) * fds.size()) + 7) / 8, 0);
  m.msg_control = control.data();
  m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
}

}  // namespace

Status send_with_fds(int socket, std::span<const std::span<const std::byte>> parts,
                     std::span<const int> fds) {
  std::vector<iovec> iov;
  std::size_t total = 0;
  for (const auto& p : parts) {
    if (p.empty()) continue;
    iov.push_back({const_cast<std::byte*>(p.data()), p.size()});
    total += p.size();
  }
  std::vector<std::uint64_t> control;
  msghdr m{};
  m.msg_iov = iov.data();
  m.msg_iovlen = iov.size();
  attach_fds(m, control, fds);
  std::size_t sent = 0;
  std::size_t first = 0;  // first iovec with bytes left
  while (sent < total) {
    const ssize_t k = ::sendmsg(socket, &m, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return make_error(Errc::gone, "the peer closed the connection");
      }
      return make_error(Errc::io_error, std::string("sendmsg: ") + std::strerror(errno));
    }
    sent += static_cast<std::size_t>(k);
    // The rest goes without the fds (they travelled with the first byte).
    m.msg_control = nullptr;
    m.msg_controllen = 0;
    std::size_t skip = static_cast<std::size_t>(k);
    while (first < iov.size() && skip > 0) {
      const std::size_t take = std::min(skip, iov[first].iov_len);
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + take;
      iov[first].iov_len -= take;
      skip -= take;
      if (iov[first].iov_len == 0) ++first;
    }
    m.msg_iov = iov.data() + first;
    m.msg_iovlen = iov.size() - first;
  }
  return {};
}

long send_once_with_fds(int socket, std::span<const std::byte> bytes, std::span<const int> fds) {
  constexpr std::size_t kScmMaxFds = 253;  // the kernel's SCM_MAX_FD
  if (fds.size() > kScmMaxFds) {
    errno = EINVAL;
    return -1;
  }
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  std::vector<std::uint64_t> control;
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  attach_fds(m, control, fds);
  return ::sendmsg(socket, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
}

Result<Received> recv_with_fds(int socket, std::span<std::byte> buf, std::vector<UniqueFd>& fds,
                               std::size_t max_fds) {
  std::vector<std::uint64_t> control((CMSG_SPACE(sizeof(int) * std::max<std::size_t>(max_fds, 1)) + 7) / 8);
  iovec iov{buf.data(), buf.size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control.data();
  m.msg_controllen = control.size() * sizeof(std::uint64_t);
  Received r;
  const ssize_t k = ::recvmsg(socket, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (k < 0) {
    if (errno == EINTR || errno == EAGAIN) {
      r.again = true;
      return r;
    }
    if (errno == ECONNRESET) return make_error(Errc::gone, "the peer went away");
    return make_error(Errc::io_error, std::string("recvmsg: ") + std::strerror(errno));
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < n; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
      fds.emplace_back(received);  // owned now: closed with the caller's vector on any error
    }
  }
  r.fds_truncated = (m.msg_flags & MSG_CTRUNC) != 0;
  r.bytes = static_cast<std::size_t>(k);
  r.closed = k == 0 && !buf.empty();
  return r;
}

}  // namespace keel
