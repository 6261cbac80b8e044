// keel/eswitch/eswitch.h - the Ethernet switch of keel: the card's embedded switch (the model
// card's NIC runs one, the RTL card implements the same rules) and the host's software switch
// (the fallback path) are both this component, so a frame is forwarded or dropped for the same
// reason on either path.
//
// Ports are numbered 0..ports()-1; one of them may be the uplink. A port has a MAC address (the
// one its VF or guest was given; the uplink has none), a largest frame, and anti-spoofing. The
// MAC table is static: the PF assigns every port's MAC, nothing is learned. Rules, in order:
//   1. ingress port disabled                     -> drop (port_down)
//   2. frame shorter than an Ethernet header     -> drop (runt)
//   3. longer than the ingress port's max_frame  -> drop (oversize)
//   4. anti-spoofing on and source MAC != port's -> drop (spoof)
//   5. destination multicast/broadcast           -> every other enabled port (flood)
//   6. destination = an enabled port's MAC       -> that port (its own MAC: drop, no_route)
//   7. otherwise                                 -> the uplink, if the frame did not come from
//                                                   it and there is one, enabled (else drop,
//                                                   no_route)
// An egress port whose max_frame is smaller than the frame does not get it; that is counted as
// an oversize drop on the egress port (the frame still reaches the other ports of a flood).
//
// Not thread-safe: the owner serialises calls.
#pragma once

#include <array>
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "keel/wire/knic.h"

namespace keel::eswitch {

using knic::Mac;

inline constexpr unsigned kMaxPorts = 128;

/// Why a frame was dropped. `none` means forwarded.
enum class Drop : std::uint8_t {
  none,
  port_down,  ///< Ingress port not enabled.
  runt,       ///< Shorter than an Ethernet header.
  oversize,   ///< Longer than the port's largest frame.
  spoof,      ///< Source MAC is not the ingress port's.
  no_route,   ///< Unicast to nobody: the sender's own MAC, or unknown with no uplink to take it.
  rate,       ///< Over the port's rate limit (callers that drop rather than wait count it here).
  no_buffer,  ///< The egress port had nowhere to put it (callers count it here).
  count_,
};
inline constexpr std::size_t kDropCauses = static_cast<std::size_t>(Drop::count_);
const char* to_string(Drop d) noexcept;

struct PortConfig {
  bool enabled = false;
  Mac mac{};               ///< Ignored for the uplink.
  bool anti_spoof = true;  ///< Ignored for the uplink.
  std::size_t max_frame = 1518;
};

/// Counters of one port, from the switch's point of view: rx = frames the port sent into the
/// switch and the switch accepted, tx = frames the switch handed to the port.
struct PortCounters {
  std::uint64_t rx_frames = 0, rx_bytes = 0;
  std::uint64_t tx_frames = 0, tx_bytes = 0;
  std::array<std::uint64_t, kDropCauses> drops{};  ///< Indexed by Drop.
  std::uint64_t drop(Drop d) const noexcept { return drops[static_cast<std::size_t>(d)]; }
};

/// Where a frame goes.
struct Route {
  Drop drop = Drop::none;     ///< Why the ingress dropped it (then `to` is empty).
  std::bitset<kMaxPorts> to;  ///< Egress ports.
};

class Eswitch {
 public:
  /// `ports` in 1..kMaxPorts; `uplink` is a port index or -1 for none.
  Eswitch(unsigned ports, int uplink);

  unsigned ports() const noexcept;
  int uplink() const noexcept;

  /// Replaces a port's configuration (counters stay).
  void configure(unsigned port, const PortConfig& config);
  const PortConfig& config(unsigned port) const noexcept;

  /// The enabled port (not the uplink) whose MAC is `mac`, or -1.
  int port_of(const Mac& mac) const noexcept;

  /// Decides where `frame`, sent by port `in`, goes, and counts it: rx on `in` (or the drop
  /// cause on `in`), tx on every egress port, oversize drops on egress ports too small for it.
  Route route(unsigned in, std::span<const std::uint8_t> frame);

  /// For callers that find out after routing that an egress port could not take a frame
  /// (no RX buffer): takes back its tx count and counts `cause` on it instead.
  void egress_failed(unsigned port, std::size_t bytes, Drop cause) noexcept;
  /// Counts a drop the caller decided before routing (e.g. rate, a bad descriptor).
  void count_drop(unsigned port, Drop cause) noexcept;

  const PortCounters& counters(unsigned port) const noexcept;
  void clear_counters(unsigned port) noexcept;

 private:
  struct Port {
    PortConfig config;
    PortCounters counters;
  };
  /// ports_[port], asserting that `port` exists.
  Port& at(unsigned port) noexcept;
  const Port& at(unsigned port) const noexcept;

  std::vector<Port> ports_;
  int uplink_;
};

/// Token bucket for a port's rate limit, in bytes, on a nanosecond clock the caller supplies
/// (card time on a card, the host clock in the software switch).
class TokenBucket {
 public:
  /// `bits_per_second` 0: unlimited. `burst_bytes`: the bucket's depth (it starts full).
  void configure(std::uint64_t bits_per_second, std::uint64_t burst_bytes,
                 std::uint64_t now_ns) noexcept;
  bool unlimited() const noexcept { return rate_bps_ == 0; }
  /// Takes `bytes` if the bucket holds them at `now_ns`; false (taking nothing) otherwise. A
  /// frame larger than the depth passes once the bucket is full (it would never fit otherwise),
  /// and leaves it empty.
  bool take(std::uint64_t bytes, std::uint64_t now_ns) noexcept;
  /// Earliest time at or after `now_ns` at which take(bytes) would succeed.
  std::uint64_t ready_at(std::uint64_t bytes, std::uint64_t now_ns) const noexcept;

 private:
  /// 128 bits: (2^64 - 1)^2 fits, so rate * elapsed never overflows. __extension__ because
  /// -Wpedantic rejects a bare __int128.
  __extension__ typedef unsigned __int128 Tokens;
  /// A token is 1/8e9 byte (a bit-nanosecond per second): in dt_ns the bucket gains exactly
  /// rate_bps_ * dt_ns tokens, with no division and no rounding.
  static constexpr Tokens kTokensPerByte = 8'000'000'000;

  /// What the bucket holds at `now_ns` (tokens_ refilled to then, capped at the depth).
  Tokens tokens_at(std::uint64_t now_ns) const noexcept;
  void refill(std::uint64_t now_ns) noexcept;
  /// Tokens take(bytes) needs: a frame larger than the depth needs a full bucket.
  Tokens needed(std::uint64_t bytes) const noexcept;

  std::uint64_t rate_bps_ = 0;
  std::uint64_t depth_ = 0;    ///< Bytes.
  Tokens tokens_ = 0;          ///< At most depth_ * kTokensPerByte.
  std::uint64_t last_ns_ = 0;  ///< Time tokens_ was refilled to.
};

}  // namespace keel::eswitch
