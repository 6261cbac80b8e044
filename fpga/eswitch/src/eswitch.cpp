// The switch's forwarding rules and counters, and the rate limiter's token bucket (the rules are
// in eswitch.h).
#include "keel/eswitch/eswitch.h"

#include <algorithm>
#include <cassert>
#include <limits>

namespace keel::eswitch {

namespace {

void count(PortCounters& c, Drop cause) noexcept {
  assert(cause != Drop::none && cause < Drop::count_);
  ++c.drops[static_cast<std::size_t>(cause)];
}

}  // namespace

const char* to_string(Drop d) noexcept {
  switch (d) {
    case Drop::none: return "none";
    case Drop::port_down: return "port_down";
    case Drop::runt: return "runt";
    case Drop::oversize: return "oversize";
    case Drop::spoof: return "spoof";
    case Drop::no_route: return "no_route";
    case Drop::rate: return "rate";
    case Drop::no_buffer: return "no_buffer";
    case Drop::count_: break;
  }
  return "unknown";
}

Eswitch::Eswitch(unsigned ports, int uplink) : ports_(ports), uplink_(uplink) {
  assert(ports >= 1 && ports <= kMaxPorts);
  assert(uplink >= -1 && uplink < static_cast<int>(ports));
}

Eswitch::Port& Eswitch::at(unsigned port) noexcept {
  assert(port < ports_.size());
  return ports_[port];
}

const Eswitch::Port& Eswitch::at(unsigned port) const noexcept {
  assert(port < ports_.size());
  return ports_[port];
}

unsigned Eswitch::ports() const noexcept { return static_cast<unsigned>(ports_.size()); }

int Eswitch::uplink() const noexcept { return uplink_; }

void Eswitch::configure(unsigned port, const PortConfig& config) { at(port).config = config; }

const PortConfig& Eswitch::config(unsigned port) const noexcept { return at(port).config; }

int Eswitch::port_of(const Mac& mac) const noexcept {
  // A linear scan: at most kMaxPorts ports, and the table changes only when the PF configures.
  for (unsigned p = 0; p < ports_.size(); ++p) {
    if (static_cast<int>(p) != uplink_ && ports_[p].config.enabled && ports_[p].config.mac == mac) {
      return static_cast<int>(p);
    }
  }
  return -1;
}

Route Eswitch::route(unsigned in, std::span<const std::uint8_t> frame) {
  Port& ingress = at(in);
  const bool from_uplink = static_cast<int>(in) == uplink_;
  const auto ingress_drop = [&]() -> Drop {
    if (!ingress.config.enabled) return Drop::port_down;
    if (frame.size() < knic::kEthHeader) return Drop::runt;
    if (frame.size() > ingress.config.max_frame) return Drop::oversize;
    if (!from_uplink && ingress.config.anti_spoof && knic::src_mac(frame) != ingress.config.mac) {
      return Drop::spoof;
    }
    return Drop::none;
  };

  // Rules 1-7 choose the egress ports before their max_frame is looked at.
  Route route;
  route.drop = ingress_drop();
  std::bitset<kMaxPorts> egress;
  if (route.drop == Drop::none) {
    const Mac dst = knic::dst_mac(frame);
    if (knic::is_multicast(dst)) {  // broadcast included
      for (unsigned p = 0; p < ports_.size(); ++p) {
        if (p != in && ports_[p].config.enabled) egress.set(p);
      }
    } else if (const int port = port_of(dst); port >= 0) {
      if (port == static_cast<int>(in)) {
        route.drop = Drop::no_route;
      } else {
        egress.set(static_cast<unsigned>(port));
      }
    } else if (uplink_ >= 0 && !from_uplink &&
               ports_[static_cast<unsigned>(uplink_)].config.enabled) {
      egress.set(static_cast<unsigned>(uplink_));
    } else {
      route.drop = Drop::no_route;
    }
  }
  if (route.drop != Drop::none) {
    count(ingress.counters, route.drop);
    return route;
  }

  ingress.counters.rx_frames++;
  ingress.counters.rx_bytes += frame.size();
  // A flood that finds no other enabled port is still forwarded, to nobody.
  for (unsigned p = 0; p < ports_.size(); ++p) {
    if (!egress.test(p)) continue;
    Port& out = ports_[p];
    if (frame.size() > out.config.max_frame) {
      count(out.counters, Drop::oversize);
      continue;
    }
    out.counters.tx_frames++;
    out.counters.tx_bytes += frame.size();
    route.to.set(p);
  }
  return route;
}

void Eswitch::egress_failed(unsigned port, std::size_t bytes, Drop cause) noexcept {
  PortCounters& c = at(port).counters;
  // Saturating: the counters may have been cleared since route() counted the frame.
  c.tx_frames -= std::min<std::uint64_t>(c.tx_frames, 1);
  c.tx_bytes -= std::min<std::uint64_t>(c.tx_bytes, bytes);
  count(c, cause);
}

void Eswitch::count_drop(unsigned port, Drop cause) noexcept { count(at(port).counters, cause); }

const PortCounters& Eswitch::counters(unsigned port) const noexcept { return at(port).counters; }

void Eswitch::clear_counters(unsigned port) noexcept { at(port).counters = {}; }

void TokenBucket::configure(std::uint64_t bits_per_second, std::uint64_t burst_bytes,
                            std::uint64_t now_ns) noexcept {
  rate_bps_ = bits_per_second;
  depth_ = burst_bytes;
  tokens_ = Tokens{depth_} * kTokensPerByte;
  last_ns_ = now_ns;
}

TokenBucket::Tokens TokenBucket::tokens_at(std::uint64_t now_ns) const noexcept {
  if (now_ns <= last_ns_) return tokens_;  // a clock that went back refills nothing
  const Tokens gained = Tokens{rate_bps_} * (now_ns - last_ns_);  // < 2^128: both < 2^64
  const Tokens room = Tokens{depth_} * kTokensPerByte - tokens_;
  return gained >= room ? tokens_ + room : tokens_ + gained;  // no overflow past the depth
}

void TokenBucket::refill(std::uint64_t now_ns) noexcept {
  tokens_ = tokens_at(now_ns);
  last_ns_ = std::max(last_ns_, now_ns);
}

TokenBucket::Tokens TokenBucket::needed(std::uint64_t bytes) const noexcept {
  return Tokens{std::min(bytes, depth_)} * kTokensPerByte;
}

bool TokenBucket::take(std::uint64_t bytes, std::uint64_t now_ns) noexcept {
  if (unlimited()) return true;
  refill(now_ns);
  const Tokens need = needed(bytes);
  if (tokens_ < need) return false;
  tokens_ -= need;
  return true;
}

std::uint64_t TokenBucket::ready_at(std::uint64_t bytes, std::uint64_t now_ns) const noexcept {
  if (unlimited()) return now_ns;
  const Tokens need = needed(bytes);
  if (tokens_at(now_ns) >= need) return now_ns;
  // Short at now_ns, so tokens_ < need: the bucket holds `need` after the first whole
  // nanosecond past last_ns_ whose refill covers the difference (need <= the depth, so the cap
  // does not get in the way). That is after now_ns, since now_ns was short.
  const Tokens wait = (need - tokens_ + rate_bps_ - 1) / rate_bps_;
  const Tokens at = last_ns_ + wait;
  constexpr std::uint64_t kNever = std::numeric_limits<std::uint64_t>::max();
  return at >= kNever ? kNever : static_cast<std::uint64_t>(at);
}

}  // namespace keel::eswitch
