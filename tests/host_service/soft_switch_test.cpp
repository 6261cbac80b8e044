// The host's software switch (keel/vmm/soft_switch.h) over real sockets: fallback ports are
// SOCK_SEQPACKET connections to its listener speaking keel/wire/fallback_port.h, the uplink a
// socketpair. Deterministic: the switch runs one run_once(0) pass at a time, and unix sockets
// deliver synchronously, so a frame is in its receiver's socket when the pass returns.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "keel/unix_listener.h"
#include "keel/vmm/soft_switch.h"
#include "keel/wire/fallback_port.h"

namespace keel::vmm {
namespace {

namespace fp = fallback_port;
using eswitch::Drop;
using eswitch::Mac;
using Bytes = std::vector<std::uint8_t>;

constexpr Mac kA{0x02, 0, 0, 0, 0, 0xa}, kB{0x02, 0, 0, 0, 0, 0xb}, kC{0x02, 0, 0, 0, 0, 0xc};
constexpr Mac kD{0x02, 0, 0, 0, 0, 0xd}, kFar{0x02, 0, 0, 0, 0, 0xf};  // kFar: beyond the uplink
constexpr Mac kBcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

Bytes frame(const Mac& dst, const Mac& src, std::size_t bytes = 64, std::uint8_t seed = 1) {
  Bytes f(bytes);
  for (std::size_t i = 0; i < bytes; ++i) f[i] = static_cast<std::uint8_t>(seed + i * 7);
  if (bytes >= 12) {
    std::memcpy(f.data(), dst.data(), 6);
    std::memcpy(f.data() + 6, src.data(), 6);
  }
  return f;
}

Bytes record(fp::RecordType type, const void* body, std::size_t bytes) {
  Bytes r(sizeof(fp::RecordHeader) + bytes);
  r[0] = static_cast<std::uint8_t>(type);
  if (bytes != 0) std::memcpy(r.data() + sizeof(fp::RecordHeader), body, bytes);
  return r;
}

void send_raw(int fd, const Bytes& r) {
  ASSERT_EQ(::send(fd, r.data(), r.size(), MSG_NOSIGNAL), static_cast<ssize_t>(r.size()));
}

void hello(int fd, const Mac& mac, std::uint16_t mtu = 1500) {
  fp::Hello h{};
  std::memcpy(h.mac, mac.data(), 6);
  h.mtu = mtu;
  send_raw(fd, record(fp::RecordType::hello, &h, sizeof h));
}

void state(int fd, std::uint8_t on_fallback) {
  fp::State s{on_fallback, {}};
  send_raw(fd, record(fp::RecordType::state, &s, sizeof s));
}

void send_frame(int fd, const Bytes& f) {
  send_raw(fd, record(fp::RecordType::frame, f.data(), f.size()));
}

/// The next frame record on a port, or an empty vector if there is none now (or EOF).
Bytes recv_frame(int fd) {
  Bytes r(fp::kMaxRecord + 16);
  const ssize_t n = ::recv(fd, r.data(), r.size(), MSG_DONTWAIT);
  if (n <= 0) return {};
  EXPECT_GE(n, 4);
  EXPECT_EQ(r[0], static_cast<std::uint8_t>(fp::RecordType::frame));
  return Bytes(r.begin() + 4, r.begin() + n);
}

/// The next frame on the uplink's far end, or empty.
Bytes recv_uplink(int fd) {
  Bytes r(65536);
  const ssize_t n = ::recv(fd, r.data(), r.size(), MSG_DONTWAIT);
  if (n < 0) return {};
  r.resize(static_cast<std::size_t>(n));
  return r;
}

/// The switch closed this connection: its end reads EOF.
bool closed(int fd) {
  char c;
  return ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

class SoftSwitchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/keel-soft-switch-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    sw_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  /// A switch whose uplink's far end is uplink_ (a SOCK_DGRAM socketpair, unless `no_uplink`).
  void make(unsigned max_ports = 64, int uplink_type = SOCK_DGRAM) {
    SoftSwitchConfig c;
    c.socket_path = dir_ + "/switch.sock";
    c.max_ports = max_ports;
    if (uplink_type != 0) {
      int sv[2];
      ASSERT_EQ(::socketpair(AF_UNIX, uplink_type | SOCK_CLOEXEC, 0, sv), 0);
      c.uplink = UniqueFd(sv[0]);
      uplink_ = UniqueFd(sv[1]);
    }
    auto s = SoftSwitch::create(std::move(c));
    ASSERT_TRUE(s) << to_string(s.error());
    sw_ = std::move(*s);
  }

  /// Runs passes until one finds nothing to do (bounded).
  void pump() {
    for (int i = 0; i < 10000 && sw_->run_once(0); ++i) {
    }
  }

  /// A connected fallback port that said HELLO (and STATE on_fallback, if given).
  UniqueFd port(const Mac& mac, int on_fallback = 1, std::uint16_t mtu = 1500) {
    auto fd = connect_unix(sw_->socket_path(), SOCK_SEQPACKET);
    EXPECT_TRUE(fd) << to_string(fd.error());
    if (!fd) return {};
    hello(fd->get(), mac, mtu);
    if (on_fallback >= 0) state(fd->get(), static_cast<std::uint8_t>(on_fallback));
    pump();
    return std::move(*fd);
  }

  /// A connection that said nothing yet.
  UniqueFd raw() {
    auto fd = connect_unix(sw_->socket_path(), SOCK_SEQPACKET);
    EXPECT_TRUE(fd) << to_string(fd.error());
    pump();
    return fd ? std::move(*fd) : UniqueFd{};
  }

  eswitch::PortCounters port_counters(const Mac& mac) const {
    for (const SoftSwitchPort& p : sw_->counters().ports) {
      if (p.hello && p.mac == mac) return p.counters;
    }
    ADD_FAILURE() << "no port with that MAC";
    return {};
  }

  std::string dir_;
  std::unique_ptr<SoftSwitch> sw_;
  UniqueFd uplink_;  ///< The far end of the switch's uplink (the card's side).
};

TEST_F(SoftSwitchTest, TwoFallbackPortsExchangeUnicastByteExact) {
  make();
  UniqueFd a = port(kA), b = port(kB);
  const Bytes ab = frame(kB, kA, 1514, 3), ba = frame(kA, kB, 60, 9);
  send_frame(a.get(), ab);
  send_frame(b.get(), ba);
  pump();
  EXPECT_EQ(recv_frame(b.get()), ab);
  EXPECT_EQ(recv_frame(a.get()), ba);
  EXPECT_TRUE(recv_frame(a.get()).empty());
  EXPECT_TRUE(recv_frame(b.get()).empty());
  EXPECT_TRUE(recv_uplink(uplink_.get()).empty());
  const auto ca = port_counters(kA);
  EXPECT_EQ(ca.rx_frames, 1u);
  EXPECT_EQ(ca.rx_bytes, 1514u);
  EXPECT_EQ(ca.tx_frames, 1u);
  EXPECT_EQ(ca.tx_bytes, 60u);
  const auto c = sw_->counters();
  EXPECT_EQ(c.guests.rx_frames, 2u);
  EXPECT_EQ(c.connections_accepted, 2u);
  EXPECT_EQ(c.ports.size(), 2u);
}

TEST_F(SoftSwitchTest, PortOffFallbackGetsNoUnicastItGoesToTheUplink) {
  make();
  UniqueFd a = port(kA), b = port(kB, 0);
  const Bytes f = frame(kB, kA);
  send_frame(a.get(), f);
  pump();
  EXPECT_TRUE(recv_frame(b.get()).empty());
  EXPECT_EQ(recv_uplink(uplink_.get()), f);
  // Its guest still sends through it (a move in progress), checked against its MAC.
  const Bytes back = frame(kA, kB, 100, 5);
  send_frame(b.get(), back);
  send_frame(b.get(), frame(kA, kC));  // spoofed
  pump();
  EXPECT_EQ(recv_frame(a.get()), back);
  EXPECT_TRUE(recv_frame(a.get()).empty());
  EXPECT_EQ(port_counters(kB).drop(Drop::spoof), 1u);
  // On the fallback it gets them; back on its VF, the uplink does again.
  state(b.get(), 1);
  pump();  // B's STATE is switched before A's next frame (two sockets: no order between them)
  send_frame(a.get(), f);
  pump();
  EXPECT_EQ(recv_frame(b.get()), f);
  EXPECT_TRUE(recv_uplink(uplink_.get()).empty());
  state(b.get(), 0);
  pump();
  send_frame(a.get(), f);
  pump();
  EXPECT_TRUE(recv_frame(b.get()).empty());
  EXPECT_EQ(recv_uplink(uplink_.get()), f);
}

TEST_F(SoftSwitchTest, BroadcastFloodsOnFallbackPortsAndUplinkNotTheSender) {
  make();
  UniqueFd a = port(kA), b = port(kB), c = port(kC), d = port(kD, 0), e = port(kFar, -1);
  const Bytes f = frame(kBcast, kA, 342);
  send_frame(a.get(), f);
  pump();
  EXPECT_EQ(recv_frame(b.get()), f);
  EXPECT_EQ(recv_frame(c.get()), f);
  EXPECT_EQ(recv_uplink(uplink_.get()), f);
  EXPECT_TRUE(recv_frame(a.get()).empty());
  EXPECT_TRUE(recv_frame(d.get()).empty());  // on its VF
  EXPECT_TRUE(recv_frame(e.get()).empty());  // no STATE yet: not on the fallback
  // From the uplink: every on-fallback port, not back to the uplink.
  const Bytes g = frame(kBcast, kFar, 80);
  ASSERT_EQ(::send(uplink_.get(), g.data(), g.size(), 0), static_cast<ssize_t>(g.size()));
  pump();
  for (int fd : {a.get(), b.get(), c.get()}) EXPECT_EQ(recv_frame(fd), g);
  EXPECT_TRUE(recv_frame(d.get()).empty());
  EXPECT_TRUE(recv_uplink(uplink_.get()).empty());
}

TEST_F(SoftSwitchTest, UnknownUnicastGoesToTheUplink) {
  make();
  UniqueFd a = port(kA), b = port(kB);
  const Bytes f = frame(kFar, kA, 200);
  send_frame(a.get(), f);
  pump();
  EXPECT_EQ(recv_uplink(uplink_.get()), f);
  EXPECT_TRUE(recv_frame(b.get()).empty());
  EXPECT_EQ(sw_->counters().uplink.tx_frames, 1u);
}

TEST_F(SoftSwitchTest, FramesFromTheUplinkReachAPortOnlyOnTheFallback) {
  make();
  UniqueFd a = port(kA), b = port(kB, 0);
  const Bytes fa = frame(kA, kFar, 1000), fb = frame(kB, kFar);
  ASSERT_EQ(::send(uplink_.get(), fa.data(), fa.size(), 0), static_cast<ssize_t>(fa.size()));
  ASSERT_EQ(::send(uplink_.get(), fb.data(), fb.size(), 0), static_cast<ssize_t>(fb.size()));
  pump();
  EXPECT_EQ(recv_frame(a.get()), fa);
  EXPECT_TRUE(recv_frame(b.get()).empty());
  EXPECT_TRUE(recv_uplink(uplink_.get()).empty());  // not back out of the uplink
  const auto c = sw_->counters();
  EXPECT_EQ(c.uplink.rx_frames, 1u);
  EXPECT_EQ(c.uplink.drop(Drop::no_route), 1u);
}

TEST_F(SoftSwitchTest, SpoofedRuntAndOversizeFramesAreDroppedAndCounted) {
  make();
  UniqueFd a = port(kA), b = port(kB, 1, 576);
  send_frame(a.get(), frame(kB, kC));                 // spoofed source
  send_frame(a.get(), frame(kB, kA, 13));             // runt
  send_frame(a.get(), frame(kB, kA, 1519));           // over A's 1500 + 18
  send_frame(a.get(), frame(kB, kA, 1000));           // over B's 576 + 18: B's drop
  send_frame(a.get(), frame(kB, kA, 9018 + 1));       // a record longer than any: truncated
  send_raw(a.get(), Bytes(fp::kMaxRecord + 100, 3));  // type 3 too, far longer
  pump();
  EXPECT_TRUE(recv_frame(b.get()).empty());
  EXPECT_TRUE(recv_uplink(uplink_.get()).empty());
  const auto ca = port_counters(kA);
  EXPECT_EQ(ca.drop(Drop::spoof), 1u);
  EXPECT_EQ(ca.drop(Drop::runt), 1u);
  EXPECT_EQ(ca.drop(Drop::oversize), 3u);
  EXPECT_EQ(port_counters(kB).drop(Drop::oversize), 1u);
  EXPECT_FALSE(closed(a.get()));  // frame problems keep the connection
  const Bytes ok = frame(kB, kA, 594);
  send_frame(a.get(), ok);
  pump();
  EXPECT_EQ(recv_frame(b.get()), ok);
}

/// A bad record closes its connection, counts `e`, and leaves a neighbour working.
void expect_closed_for(SoftSwitch& sw, int fd, int neighbour, int uplink, SoftSwitchError e,
                       bool refused) {
  const auto before = sw.counters();
  for (int i = 0; i < 10000 && sw.run_once(0); ++i) {
  }
  const auto after = sw.counters();
  EXPECT_TRUE(closed(fd)) << to_string(e);
  EXPECT_EQ(after.error(e), before.error(e) + 1) << to_string(e);
  EXPECT_EQ(after.connections_refused, before.connections_refused + (refused ? 1 : 0))
      << to_string(e);
  EXPECT_EQ(after.connections_closed, before.connections_closed + 1) << to_string(e);
  const Bytes f = frame(kFar, kA, 70, static_cast<std::uint8_t>(e));
  send_frame(neighbour, f);
  for (int i = 0; i < 10000 && sw.run_once(0); ++i) {
  }
  EXPECT_EQ(recv_uplink(uplink), f) << to_string(e);
}

TEST_F(SoftSwitchTest, BadInputClosesOnlyThatConnection) {
  make();
  UniqueFd a = port(kA);
  const auto bad = [&](SoftSwitchError e, bool refused, auto&& send) {
    UniqueFd c = raw();
    send(c.get());
    expect_closed_for(*sw_, c.get(), a.get(), uplink_.get(), e, refused);
  };
  using E = SoftSwitchError;
  bad(E::short_record, false, [](int fd) { send_raw(fd, Bytes{1, 0}); });
  bad(E::bad_type, false, [](int fd) { send_raw(fd, Bytes{9, 0, 0, 0, 1, 2}); });
  bad(E::bad_type, false, [](int fd) { send_raw(fd, Bytes{0, 0, 0, 0}); });
  bad(E::bad_length, false, [](int fd) { send_raw(fd, Bytes{1, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0}); });
  bad(E::frame_before_hello, false, [](int fd) { send_frame(fd, frame(kFar, kB)); });
  bad(E::frame_before_hello, false, [](int fd) { state(fd, 1); });
  bad(E::second_hello, false, [](int fd) {
    hello(fd, kB);
    hello(fd, kC);
  });
  bad(E::bad_length, false, [](int fd) {
    hello(fd, kB);
    send_raw(fd, Bytes{2, 0, 0, 0, 1});
  });
  bad(E::bad_state, false, [](int fd) {
    hello(fd, kB);
    state(fd, 2);
  });
  bad(E::bad_mac, true, [](int fd) { hello(fd, Mac{0x03, 0, 0, 0, 0, 1}); });
  bad(E::bad_mac, true, [](int fd) { hello(fd, Mac{}); });
  bad(E::bad_mtu, true, [](int fd) { hello(fd, kB, 67); });
  bad(E::bad_mtu, true, [](int fd) { hello(fd, kB, 9001); });
  bad(E::mac_in_use, true, [](int fd) { hello(fd, kA); });
  // A port that was on the fallback and is closed for bad input stops getting frames.
  UniqueFd b = port(kB);
  send_raw(b.get(), Bytes{7, 0, 0, 0});
  pump();
  EXPECT_TRUE(closed(b.get()));
  send_frame(a.get(), frame(kB, kA));
  pump();
  EXPECT_EQ(recv_uplink(uplink_.get()), frame(kB, kA));  // unknown unicast now
  const auto c = sw_->counters();
  EXPECT_EQ(c.ports.size(), 1u);
  EXPECT_EQ(c.connections_accepted, 16u);
}

TEST_F(SoftSwitchTest, DisconnectFreesThePortAndItsMac) {
  make();
  UniqueFd a = port(kA), b = port(kB);
  send_frame(b.get(), frame(kA, kB));
  pump();
  EXPECT_EQ(recv_frame(a.get()).size(), 64u);
  b.reset();
  pump();
  auto c = sw_->counters();
  EXPECT_EQ(c.ports.size(), 1u);
  EXPECT_EQ(c.connections_closed, 1u);
  EXPECT_EQ(c.guests.rx_frames, 1u);  // B's counters stay in the totals
  send_frame(a.get(), frame(kB, kA));
  pump();
  EXPECT_EQ(recv_uplink(uplink_.get()).size(), 64u);  // kB is unknown now
  UniqueFd b2 = port(kB);
  EXPECT_FALSE(closed(b2.get()));
  const Bytes f = frame(kB, kA, 77);
  send_frame(a.get(), f);
  pump();
  EXPECT_EQ(recv_frame(b2.get()), f);
  EXPECT_EQ(port_counters(kB).tx_frames, 1u);  // a new port's counters start at 0
}

TEST_F(SoftSwitchTest, FullPortSocketDropsAndCountsNoBuffer) {
  make();
  UniqueFd a = port(kA), b = port(kB);
  const Bytes f = frame(kB, kA, 1500);
  std::uint64_t sent = 0;
  for (; sent < 20000 && port_counters(kB).drop(Drop::no_buffer) == 0; ++sent) {
    send_frame(a.get(), f);
    pump();
  }
  const auto cb = port_counters(kB);
  ASSERT_EQ(cb.drop(Drop::no_buffer), 1u) << "B's socket never filled";
  EXPECT_EQ(cb.tx_frames + 1, sent);
  std::uint64_t got = 0;
  while (recv_frame(b.get()) == f) ++got;
  EXPECT_EQ(got, cb.tx_frames);
  EXPECT_FALSE(closed(a.get()));
  send_frame(a.get(), f);  // room again
  pump();
  EXPECT_EQ(recv_frame(b.get()), f);
}

TEST_F(SoftSwitchTest, FullUplinkDropsAndCountsNoBuffer) {
  make();
  UniqueFd a = port(kA);
  const Bytes f = frame(kFar, kA, 1500);
  std::uint64_t sent = 0;
  for (; sent < 20000 && sw_->counters().uplink.drop(Drop::no_buffer) == 0; ++sent) {
    send_frame(a.get(), f);
    pump();
  }
  const auto c = sw_->counters();
  ASSERT_EQ(c.uplink.drop(Drop::no_buffer), 1u) << "the uplink never filled";
  EXPECT_EQ(c.uplink.tx_frames + 1, sent);
  EXPECT_EQ(c.drops(Drop::no_buffer), 1u);
}

TEST_F(SoftSwitchTest, PortsBeyondMaxPortsAreRefused) {
  make(2);
  UniqueFd a = port(kA), b = port(kB);
  UniqueFd c = raw();
  EXPECT_TRUE(closed(c.get()));
  EXPECT_FALSE(closed(a.get()));
  EXPECT_EQ(sw_->counters().connections_refused, 1u);
  a.reset();
  pump();
  UniqueFd d = port(kC);
  EXPECT_FALSE(closed(d.get()));
  EXPECT_EQ(sw_->counters().ports.size(), 2u);
}

TEST_F(SoftSwitchTest, UplinkHangUpTakesItOut) {
  make(64, SOCK_SEQPACKET);
  UniqueFd a = port(kA);
  uplink_.reset();
  pump();
  EXPECT_FALSE(sw_->counters().uplink_up);
  send_frame(a.get(), frame(kFar, kA));
  pump();
  EXPECT_EQ(port_counters(kA).drop(Drop::no_route), 1u);
}

TEST_F(SoftSwitchTest, UplinkThatStoppedReadingRaisesNoSigpipe) {
  // Only a stream socket raises SIGPIPE (unix datagram and seqpacket sockets do not): not an
  // uplink anyone should give, but one the switch must survive.
  make(64, SOCK_STREAM);
  UniqueFd a = port(kA);
  ASSERT_EQ(::shutdown(uplink_.get(), SHUT_RD), 0);  // the switch's writes now fail with EPIPE
  send_frame(a.get(), frame(kFar, kA));
  pump();  // with write(2) instead of send(MSG_NOSIGNAL), SIGPIPE ends the test here
  EXPECT_EQ(sw_->counters().uplink.drop(Drop::no_buffer), 1u);
  EXPECT_TRUE(sw_->counters().uplink_up);
}

TEST_F(SoftSwitchTest, DatagramUplinkConnectsWhenItsPeerAppears) {
  const std::string local = dir_ + "/up.local", remote = dir_ + "/up.remote";
  const auto bound = [](const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    ::unlink(path.c_str());
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a), 0);
    return fd;
  };
  SoftSwitchConfig c;
  c.socket_path = dir_ + "/switch.sock";
  c.uplink = bound(local);
  c.uplink_peer = remote;
  auto s = SoftSwitch::create(std::move(c));
  ASSERT_TRUE(s) << to_string(s.error());
  sw_ = std::move(*s);
  UniqueFd a = port(kA);
  const Bytes f = frame(kFar, kA);
  send_frame(a.get(), f);
  pump();
  EXPECT_EQ(sw_->counters().uplink.drop(Drop::no_buffer), 1u);  // nobody there yet
  UniqueFd peer = bound(remote);
  send_frame(a.get(), f);
  pump();
  EXPECT_EQ(recv_uplink(peer.get()), f);
  // The peer goes and a new one binds the path: the next frame finds it.
  peer = bound(remote);
  send_frame(a.get(), f);
  pump();
  EXPECT_EQ(recv_uplink(peer.get()), f);
  // And the peer's frames come in on the bound socket.
  sockaddr_un to{};
  to.sun_family = AF_UNIX;
  std::memcpy(to.sun_path, local.c_str(), local.size() + 1);
  const Bytes g = frame(kA, kFar);
  ASSERT_EQ(::sendto(peer.get(), g.data(), g.size(), 0, reinterpret_cast<const sockaddr*>(&to),
                     sizeof to),
            static_cast<ssize_t>(g.size()));
  pump();
  EXPECT_EQ(recv_frame(a.get()), g);
}

TEST_F(SoftSwitchTest, ItsOwnThreadSwitchesAndStops) {
  make();
  ASSERT_TRUE(sw_->start());
  EXPECT_FALSE(sw_->start());  // already running
  EXPECT_FALSE(sw_->run_once(0));
  auto a = connect_unix(sw_->socket_path(), SOCK_SEQPACKET);
  auto b = connect_unix(sw_->socket_path(), SOCK_SEQPACKET);
  ASSERT_TRUE(a && b);
  hello(a->get(), kA);
  state(a->get(), 1);
  hello(b->get(), kB);
  state(b->get(), 1);
  // B may not be in the table yet when A's first frame is switched: send until one arrives.
  const Bytes f = frame(kB, kA, 300);
  Bytes got;
  for (int i = 0; i < 500 && got.empty(); ++i) {
    send_frame(a->get(), f);
    pollfd p{b->get(), POLLIN, 0};
    if (::poll(&p, 1, 10) == 1) got = recv_frame(b->get());
  }
  EXPECT_EQ(got, f);
  sw_->stop();
  const auto c = sw_->counters();
  EXPECT_EQ(c.connections_accepted, 2u);
  EXPECT_GE(c.guests.rx_frames, 1u);
  EXPECT_NE(format_counters(c).find("accepted 2"), std::string::npos);
}

}  // namespace
}  // namespace keel::vmm
