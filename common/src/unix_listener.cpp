#include "keel/unix_listener.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <utility>

namespace keel {

Result<UnixListener> UnixListener::listen(const std::string& path,
                                          const UnixListenerConfig& config) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return make_error(Errc::invalid_argument,
                      "socket path '" + path + "' is empty or longer than " +
                          std::to_string(sizeof addr.sun_path - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const auto* sa = reinterpret_cast<const sockaddr*>(&addr);  // the sockets API's generic type
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return make_error(Errc::busy, "'" + path +
                                        "' already exists and is not a socket; remove it or "
                                        "choose another socket path");
    }
    if (!config.replace_stale_socket) {
      return make_error(Errc::busy, "'" + path +
                                        "' already exists; remove it or choose another socket "
                                        "path");
    }
    // A socket file: stale unless a server still answers on it.
    UniqueFd probe(::socket(AF_UNIX, config.type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (probe.valid() && (::connect(probe.get(), sa, sizeof addr) == 0 || errno == EAGAIN)) {
      return make_error(Errc::busy, "another server is listening on '" + path + "'");
    }
    ::unlink(path.c_str());
  }
  UnixListener l;
  l.fd_.reset(::socket(AF_UNIX, config.type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!l.fd_.valid()) {
    return make_error(Errc::io_error, std::string("socket: ") + std::strerror(errno));
  }
  if (::bind(l.fd_.get(), sa, sizeof addr) != 0) {
    return make_error(Errc::io_error, "bind to '" + path + "': " + std::strerror(errno));
  }
  l.path_ = path;
  if (::listen(l.fd_.get(), config.backlog) != 0) {
    return make_error(Errc::io_error, "listen on '" + path + "': " + std::strerror(errno));
  }
  return l;
}

UnixListener UnixListener::adopt(UniqueFd fd, std::string path) noexcept {
  UnixListener l;
  l.fd_ = std::move(fd);
  l.path_ = std::move(path);
  return l;
}

void UnixListener::release() noexcept {
  path_.clear();
  fd_.reset();
}

UnixListener::UnixListener(UnixListener&& other) noexcept
    : fd_(std::move(other.fd_)), path_(std::exchange(other.path_, {})) {}

UnixListener& UnixListener::operator=(UnixListener&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::move(other.fd_);
    path_ = std::exchange(other.path_, {});
  }
  return *this;
}

UnixListener::~UnixListener() { close(); }

UniqueFd UnixListener::accept() const noexcept {
  return UniqueFd(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
}

void UnixListener::close() noexcept {
  fd_.reset();
  if (!path_.empty()) ::unlink(path_.c_str());
  path_.clear();
}

Result<UniqueFd> connect_unix(const std::string& path, int type) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return make_error(Errc::invalid_argument, "socket path '" + path + "' is empty or too long");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return make_error(Errc::io_error, std::string("socket: ") + std::strerror(errno));
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    return make_error(Errc::unavailable,
                      "nothing listens at '" + path + "': " + std::strerror(errno));
  }
  return fd;
}

}  // namespace keel
