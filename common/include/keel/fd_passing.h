// keel/fd_passing.h - bytes with file descriptors over a unix socket (SCM_RIGHTS), for every
// keel protocol that hands memory or eventfds to another process (vfio-user, vhost-user, the
// host storage service).
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel {

/// Sends the bytes of `parts` (gathered in order) with `fds` attached to the first byte,
/// resuming after short sends (without the fds again). Never raises SIGPIPE.
/// Errors: gone (the peer closed: EPIPE, ECONNRESET), io_error.
Status send_with_fds(int socket, std::span<const std::span<const std::byte>> parts,
                     std::span<const int> fds = {});

/// One non-blocking sendmsg of `bytes` with `fds` attached (SCM_RIGHTS; none when empty), for
/// a caller that bounds its own wait for room and resumes a short send without the fds. Never
/// raises SIGPIPE. Returns what sendmsg returns: the bytes sent, or -1 with errno (EAGAIN when
/// the socket is full; EINVAL for more than 253 fds).
long send_once_with_fds(int socket, std::span<const std::byte> bytes, std::span<const int> fds);

/// What one recv_with_fds() call got.
struct Received {
  std::size_t bytes = 0;       ///< Bytes read; 0 with `closed`: the peer closed.
  bool closed = false;         ///< End of stream.
  bool again = false;          ///< Nothing there now (EAGAIN) or interrupted: call again.
  bool fds_truncated = false;  ///< More fds came than `max_fds`: some were dropped.
};

/// One non-blocking recvmsg into `buf`: every fd that arrives is appended to `fds` (owned,
/// close-on-exec), at most `max_fds` per call. Errors: gone (ECONNRESET), io_error.
Result<Received> recv_with_fds(int socket, std::span<std::byte> buf, std::vector<UniqueFd>& fds,
                               std::size_t max_fds);

}  // namespace keel
