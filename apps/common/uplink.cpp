// --uplink SPEC: opens the fd (see uplink.h).
#include "uplink.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace keel::apps {
namespace {

Error sys_error(const std::string& what) {
  return make_error(Errc::io_error, "uplink: " + what + ": " + std::strerror(errno));
}

Result<sockaddr_un> unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) {
    return make_error(Errc::invalid_argument,
                      "uplink: socket path '" + path + "' empty or too long");
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

int dial(int fd, const sockaddr_un& a) {
  return ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0 ? 0 : errno;
}

}  // namespace

int dial_unix(int fd, const std::string& path) noexcept {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) return ENAMETOOLONG;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return dial(fd, a);
}

Result<Uplink> open_uplink(const std::string& spec) {
  const auto colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const std::string arg = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const auto malformed = [&] {
    return make_error(Errc::invalid_argument,
                      "--uplink '" + spec + "': expected " + kUplinkSpecHelp);
  };
  if (arg.empty()) return malformed();
  Uplink out;
  if (kind == "dgram") {
    const auto comma = arg.find(',');
    if (comma == std::string::npos) return malformed();
    auto local = unix_address(arg.substr(0, comma));
    if (!local) return local.error();
    auto remote = unix_address(arg.substr(comma + 1));
    if (!remote) return remote.error();
    out.fd = UniqueFd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!out.fd.valid()) return sys_error("socket");
    // A socket left at LOCAL by an earlier run goes; anything else stays.
    struct stat st {};
    if (::lstat(local->sun_path, &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return make_error(Errc::invalid_argument,
                          std::string("uplink: ") + local->sun_path + " exists and is no socket");
      }
      ::unlink(local->sun_path);
    }
    if (::bind(out.fd.get(), reinterpret_cast<const sockaddr*>(&*local), sizeof *local) != 0) {
      return sys_error(std::string("bind ") + local->sun_path);
    }
    out.local = local->sun_path;
    out.peer = remote->sun_path;
    const int e = dial(out.fd.get(), *remote);
    if (e == ENOENT || e == ECONNREFUSED) {
      out.connected = false;  // the peer is not there yet
    } else if (e != 0) {
      ::unlink(out.local.c_str());
      errno = e;
      return sys_error(std::string("connect ") + remote->sun_path);
    }
    return out;
  }
  if (kind == "seqpacket") {
    auto a = unix_address(arg);
    if (!a) return a.error();
    out.fd = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!out.fd.valid()) return sys_error("socket");
    if (const int e = dial(out.fd.get(), *a); e != 0) {
      errno = e;
      return sys_error("connect " + arg);
    }
    return out;
  }
  if (kind == "tap") {
    if (arg.size() >= IFNAMSIZ) return malformed();
    out.fd = UniqueFd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    if (!out.fd.valid()) return sys_error("/dev/net/tun");
    ifreq ifr{};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    std::memcpy(ifr.ifr_name, arg.c_str(), arg.size() + 1);
    if (::ioctl(out.fd.get(), TUNSETIFF, &ifr) != 0) return sys_error("TUNSETIFF " + arg);
    return out;
  }
  return malformed();
}

}  // namespace keel::apps
