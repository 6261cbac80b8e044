// keel/unix_listener.h - a listening unix stream socket at a path, for keel's servers
// (vhost-user, NBD, later vfio-user). One place decides what happens to a path that already
// exists, so every server behaves the same.
#pragma once

#include <sys/socket.h>

#include <string>

#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel {

struct UnixListenerConfig {
  /// listen(2) backlog.
  int backlog = 16;
  /// A socket file left at the path by a server that is gone is replaced. A path with a live
  /// server on it, or a path that is not a socket, is never touched.
  bool replace_stale_socket = true;
  /// SOCK_STREAM, or SOCK_SEQPACKET for a protocol of records (keel-hostd).
  int type = SOCK_STREAM;
};

/// Binds and listens (non-blocking, close-on-exec) at a path; removes the socket file when
/// destroyed (only if it created it).
class UnixListener {
 public:
  /// Errors: invalid_argument (path empty or longer than sun_path), busy (the path exists and
  /// is not a socket, or a server answers on it, or it is stale and replacing is off),
  /// io_error (socket, bind or listen failed; with the errno text).
  static Result<UnixListener> listen(const std::string& path, const UnixListenerConfig& config = {});

  UnixListener() = default;
  UnixListener(UnixListener&& other) noexcept;
  UnixListener& operator=(UnixListener&& other) noexcept;
  ~UnixListener();

  int fd() const noexcept { return fd_.get(); }
  bool valid() const noexcept { return fd_.valid(); }
  const std::string& path() const noexcept { return path_; }
  /// Accepts one pending connection (non-blocking, close-on-exec); an invalid fd when none is
  /// pending or the peer went away again.
  UniqueFd accept() const noexcept;
  /// Closes the socket and removes its file now.
  void close() noexcept;

  /// A listening socket handed over by another process (servicing), at `path`: removed when
  /// this one is destroyed, as if it had bound it.
  static UnixListener adopt(UniqueFd fd, std::string path) noexcept;
  /// Gives the socket up without removing its file (another process serves on it now).
  void release() noexcept;

 private:
  UniqueFd fd_;
  std::string path_;  ///< Empty when there is no file of ours to remove.
};

/// The client side: a socket of `type` connected to the server at `path` (close-on-exec,
/// blocking). Errors: invalid_argument (path empty or too long), unavailable (nothing listens
/// there; the message names the path and the errno), io_error (socket).
Result<UniqueFd> connect_unix(const std::string& path, int type = SOCK_STREAM);

}  // namespace keel
