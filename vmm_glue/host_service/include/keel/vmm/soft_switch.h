// keel/vmm/soft_switch.h - the host's software switch: the network fallback path. Each guest's
// paravisor connects its virtio-net device's fallback port to a unix SOCK_SEQPACKET socket
// (keel/wire/fallback_port.h); the card's uplink is the switch's uplink, so a guest on its VF
// and a guest on the fallback reach each other (software switch -> uplink -> card's eswitch).
//
// The forwarding rules are keel::eswitch's, the card's: one eswitch port per connection (its
// MAC from HELLO, anti-spoofing on, largest frame mtu + 18), and the uplink (no MAC, no
// anti-spoofing, largest frame kMaxFrame). A guest port is in the MAC table (gets unicast for
// its MAC and floods) only while its STATE is on_fallback; frames it sends are switched, checked
// against its MAC, in either state. Unicast to a MAC not on the fallback goes to the uplink.
//
// Bad input from a port never reaches another port:
//   - a frame problem drops the frame and counts it on the port, by eswitch::Drop: shorter than
//     an Ethernet header (runt), longer than mtu + 18 or than a record may be (oversize), a
//     source MAC not the port's (spoof);
//   - a protocol problem (SoftSwitchError) closes that connection and counts it; a HELLO the
//     switch turns down (MAC taken, multicast or zero, MTU out of range) also counts as a
//     refused connection.
// A port whose socket is full when a frame is for it misses that frame (no_buffer on it), as
// the uplink does when its write fails. A datagram uplink whose peer is not there yet, or went
// and came back, is connected again (uplink_peer) when a frame for it finds it unconnected.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "keel/eswitch/eswitch.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::vmm {

/// Why the switch closed a connection.
enum class SoftSwitchError : std::uint8_t {
  short_record,        ///< Shorter than a RecordHeader.
  bad_type,            ///< Unknown RecordType.
  bad_length,          ///< HELLO or STATE whose body is not exactly its struct.
  frame_before_hello,  ///< FRAME or STATE before HELLO.
  second_hello,        ///< HELLO after HELLO.
  bad_mac,             ///< HELLO with a multicast or all-zero MAC (refused).
  mac_in_use,          ///< HELLO with the MAC of another connected port (refused).
  bad_mtu,             ///< HELLO with an MTU outside 68..9000 (refused).
  bad_state,           ///< STATE whose on_fallback is neither 0 nor 1.
  count_,
};
inline constexpr std::size_t kSoftSwitchErrors = static_cast<std::size_t>(SoftSwitchError::count_);
const char* to_string(SoftSwitchError e) noexcept;

struct SoftSwitchConfig {
  std::string socket_path;  ///< Where paravisors connect (SOCK_SEQPACKET; stale sockets go).
  /// The uplink: one read or write is one frame (a unix SOCK_DGRAM or SOCK_SEQPACKET socket, a
  /// TAP device opened IFF_TAP | IFF_NO_PI). Invalid: no uplink. Made non-blocking.
  UniqueFd uplink;
  /// For a datagram uplink: its peer's path, connected again whenever a write finds the socket
  /// unconnected or the peer gone (ENOTCONN, ECONNREFUSED, ENOENT). Empty: never.
  std::string uplink_peer;
  unsigned max_ports = 64;  ///< Guest ports (1..kMaxPorts - 1); connections past it are refused.
  unsigned batch = 32;      ///< Records taken from one fd per pass (fairness).
};

/// A connected guest port as counters() reports it.
struct SoftSwitchPort {
  unsigned port = 0;  ///< Eswitch port number (1..max_ports; 0 is the uplink).
  bool hello = false;
  eswitch::Mac mac{};
  std::uint16_t mtu = 0;
  bool on_fallback = false;
  eswitch::PortCounters counters;
};

struct SoftSwitchCounters {
  eswitch::PortCounters uplink;
  /// Every guest port, those gone included (a port's counters move here when it goes).
  eswitch::PortCounters guests;
  std::uint64_t connections_accepted = 0;
  /// Turned away: no free port, or a HELLO refused (bad_mac, mac_in_use, bad_mtu).
  std::uint64_t connections_refused = 0;
  std::uint64_t connections_closed = 0;  ///< Ended, for any reason (refusals included).
  std::array<std::uint64_t, kSoftSwitchErrors> errors{};  ///< Indexed by SoftSwitchError.
  bool uplink_up = false;                                 ///< An uplink is attached and alive.
  std::vector<SoftSwitchPort> ports;                      ///< Connected now, by port number.

  std::uint64_t error(SoftSwitchError e) const noexcept {
    return errors[static_cast<std::size_t>(e)];
  }
  /// Drops of `cause`, uplink and guest ports together.
  std::uint64_t drops(eswitch::Drop cause) const noexcept {
    return uplink.drop(cause) + guests.drop(cause);
  }
};

/// One line per counter group, for a daemon's exit summary.
std::string format_counters(const SoftSwitchCounters& c);

class SoftSwitch {
 public:
  /// Listens at config.socket_path. Errors: those of keel::UnixListener::listen
  /// (invalid_argument, busy, io_error), invalid_argument (max_ports out of range), io_error.
  static Result<std::unique_ptr<SoftSwitch>> create(SoftSwitchConfig config);
  SoftSwitch(const SoftSwitch&) = delete;
  SoftSwitch& operator=(const SoftSwitch&) = delete;
  ~SoftSwitch();  ///< Stops the thread; closes every connection and the listening socket.

  /// Runs the switch on a thread of its own until stop(). Errors: busy (already running),
  /// io_error.
  Status start();
  /// Stops the thread (no-op if not running). Connections stay open.
  void stop() noexcept;

  /// One pass without the thread, for tests: waits up to `timeout_ms` (-1: no limit) for an fd
  /// to be ready, then serves every ready one. True when anything was read, accepted or closed.
  /// Not while the thread runs.
  bool run_once(int timeout_ms);

  /// A snapshot; from any thread.
  SoftSwitchCounters counters() const;
  const std::string& socket_path() const noexcept;

 private:
  struct Impl;
  explicit SoftSwitch(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::vmm
