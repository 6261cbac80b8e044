// apps/common/uplink.h - the `--uplink SPEC` option of keel's programs that have an Ethernet
// uplink (keel-hostd's software switch; keel-card's NIC can use it too): one read or write of
// the fd is one frame.
//   dgram:LOCAL,REMOTE  a unix SOCK_DGRAM socket bound to LOCAL (a stale socket file there is
//                       replaced; anything else at LOCAL is an error) and connected to REMOTE.
//                       REMOTE may not exist yet (ENOENT, ECONNREFUSED): the socket is then
//                       returned unconnected, `connected` false, and its owner dials `peer`
//                       later (the software switch does so whenever a frame for the uplink
//                       finds it unconnected or its peer gone).
//   seqpacket:PATH      a unix SOCK_SEQPACKET socket connected to PATH (which must be there).
//   tap:IFNAME          /dev/net/tun opened IFF_TAP | IFF_NO_PI on IFNAME.
#pragma once

#include <string>

#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::apps {

struct Uplink {
  UniqueFd fd;
  bool connected = true;
  std::string local;  ///< dgram: the path bound (remove it when done); else empty.
  std::string peer;   ///< dgram: REMOTE, for dialling again; else empty.
};

/// Errors: invalid_argument (malformed SPEC, a path empty or too long, LOCAL not a socket),
/// io_error (socket, bind, connect, /dev/net/tun or TUNSETIFF failed; with the errno text).
Result<Uplink> open_uplink(const std::string& spec);

/// connect(2) of `fd` to the unix socket at `path` (a dgram uplink's `peer`, dialled again):
/// 0 when connected, else the errno (ENAMETOOLONG for a path too long).
int dial_unix(int fd, const std::string& path) noexcept;

/// For help texts.
inline constexpr const char* kUplinkSpecHelp =
    "dgram:LOCAL,REMOTE (unix datagram socket bound to LOCAL, sending to REMOTE, which may "
    "appear later), seqpacket:PATH or tap:IFNAME";

}  // namespace keel::apps
