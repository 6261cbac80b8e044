// fpga/eswitch/: the switch's forwarding rules and counters, and the rate limiter's token bucket.
#include <gtest/gtest.h>

#include <algorithm>
#include <bitset>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "keel/eswitch/eswitch.h"

namespace keel::eswitch {
namespace {

constexpr Mac kMac0{0x02, 0, 0, 0, 0, 0x10};
constexpr Mac kMac1{0x02, 0, 0, 0, 0, 0x11};
constexpr Mac kMac2{0x02, 0, 0, 0, 0, 0x12};
constexpr Mac kStranger{0x02, 0, 0, 0, 0, 0x99};
constexpr Mac kMulticast{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01};

// A frame of `size` bytes (at least 12) from `src` to `dst`.
std::vector<std::uint8_t> frame(const Mac& dst, const Mac& src, std::size_t size = 64) {
  std::vector<std::uint8_t> f(size, 0xab);
  std::copy(dst.begin(), dst.end(), f.begin());
  std::copy(src.begin(), src.end(), f.begin() + 6);
  return f;
}

std::bitset<kMaxPorts> ports(std::initializer_list<unsigned> list) {
  std::bitset<kMaxPorts> b;
  for (unsigned p : list) b.set(p);
  return b;
}

// Every drop counter of `c` but `except` is zero.
void expect_no_drops_but(const PortCounters& c, Drop except = Drop::none) {
  for (std::size_t i = 1; i < kDropCauses; ++i) {
    if (static_cast<Drop>(i) == except) continue;
    EXPECT_EQ(c.drops[i], 0u) << to_string(static_cast<Drop>(i));
  }
}

// Three VF ports (0..2, MACs kMac0..2) and the uplink (3), all enabled with 1518-byte frames.
class EswitchTest : public ::testing::Test {
 protected:
  static constexpr unsigned kUplink = 3;
  EswitchTest() {
    sw.configure(0, {.enabled = true, .mac = kMac0});
    sw.configure(1, {.enabled = true, .mac = kMac1});
    sw.configure(2, {.enabled = true, .mac = kMac2});
    sw.configure(kUplink, {.enabled = true});
  }
  Route send(unsigned in, const std::vector<std::uint8_t>& f) { return sw.route(in, f); }
  Eswitch sw{4, static_cast<int>(kUplink)};
};

TEST(EswitchDrop, ToStringNamesEveryCause) {
  EXPECT_EQ(std::string(to_string(Drop::none)), "none");
  EXPECT_EQ(std::string(to_string(Drop::port_down)), "port_down");
  EXPECT_EQ(std::string(to_string(Drop::runt)), "runt");
  EXPECT_EQ(std::string(to_string(Drop::oversize)), "oversize");
  EXPECT_EQ(std::string(to_string(Drop::spoof)), "spoof");
  EXPECT_EQ(std::string(to_string(Drop::no_route)), "no_route");
  EXPECT_EQ(std::string(to_string(Drop::rate)), "rate");
  EXPECT_EQ(std::string(to_string(Drop::no_buffer)), "no_buffer");
}

TEST_F(EswitchTest, Accessors) {
  EXPECT_EQ(sw.ports(), 4u);
  EXPECT_EQ(sw.uplink(), 3);
  EXPECT_EQ(Eswitch(2, -1).uplink(), -1);
  EXPECT_EQ(sw.config(1).mac, kMac1);
  EXPECT_TRUE(sw.config(1).anti_spoof);
  EXPECT_EQ(sw.config(1).max_frame, 1518u);
}

TEST_F(EswitchTest, DisabledIngressPortDrops) {
  sw.configure(0, {.enabled = false, .mac = kMac0});
  const Route r = send(0, frame(kMac1, kMac0));
  EXPECT_EQ(r.drop, Drop::port_down);
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(sw.counters(0).drop(Drop::port_down), 1u);
  EXPECT_EQ(sw.counters(0).rx_frames, 0u);
  expect_no_drops_but(sw.counters(0), Drop::port_down);
  EXPECT_EQ(sw.counters(1).tx_frames, 0u);
}

TEST_F(EswitchTest, FrameShorterThanAHeaderIsARunt) {
  const Route r = send(0, frame(kMac1, kMac0, knic::kEthHeader - 1));
  EXPECT_EQ(r.drop, Drop::runt);
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(sw.counters(0).drop(Drop::runt), 1u);
  EXPECT_EQ(sw.counters(0).rx_frames, 0u);
  // A bare header is a frame.
  EXPECT_EQ(send(0, frame(kMac1, kMac0, knic::kEthHeader)).to, ports({1}));
  EXPECT_EQ(sw.counters(0).drop(Drop::runt), 1u);
}

TEST_F(EswitchTest, FrameOverIngressMaxFrameDrops) {
  sw.configure(0, {.enabled = true, .mac = kMac0, .max_frame = 100});
  const Route r = send(0, frame(kMac1, kMac0, 101));
  EXPECT_EQ(r.drop, Drop::oversize);
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(sw.counters(0).drop(Drop::oversize), 1u);
  EXPECT_EQ(sw.counters(0).rx_frames, 0u);
  expect_no_drops_but(sw.counters(1));
  EXPECT_EQ(send(0, frame(kMac1, kMac0, 100)).to, ports({1}));
  EXPECT_EQ(sw.counters(0).drop(Drop::oversize), 1u);
}

TEST_F(EswitchTest, ForeignSourceMacIsSpoofed) {
  const Route r = send(0, frame(kMac1, kStranger));
  EXPECT_EQ(r.drop, Drop::spoof);
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(sw.counters(0).drop(Drop::spoof), 1u);
  EXPECT_EQ(sw.counters(0).rx_frames, 0u);
  expect_no_drops_but(sw.counters(0), Drop::spoof);
  EXPECT_EQ(sw.counters(1).tx_frames, 0u);
  // Another port's MAC is as foreign as any.
  EXPECT_EQ(send(0, frame(kMac2, kMac1)).drop, Drop::spoof);
  EXPECT_EQ(sw.counters(0).drop(Drop::spoof), 2u);
}

TEST_F(EswitchTest, PortWithoutAntiSpoofSendsAnySource) {
  sw.configure(0, {.enabled = true, .mac = kMac0, .anti_spoof = false});
  const Route r = send(0, frame(kMac1, kStranger));
  EXPECT_EQ(r.drop, Drop::none);
  EXPECT_EQ(r.to, ports({1}));
  expect_no_drops_but(sw.counters(0));
}

TEST_F(EswitchTest, UplinkFramesAreNeverSpoofChecked) {
  // Even with anti_spoof and a MAC configured on it (both ignored for the uplink).
  sw.configure(kUplink, {.enabled = true, .mac = kMac2, .anti_spoof = true});
  const Route r = send(kUplink, frame(kMac1, kStranger));
  EXPECT_EQ(r.drop, Drop::none);
  EXPECT_EQ(r.to, ports({1}));
  expect_no_drops_but(sw.counters(kUplink));
}

TEST_F(EswitchTest, UnicastToAKnownPortGoesThereOnly) {
  const Route r = send(0, frame(kMac2, kMac0, 100));
  EXPECT_EQ(r.drop, Drop::none);
  EXPECT_EQ(r.to, ports({2}));
  EXPECT_EQ(sw.counters(0).rx_frames, 1u);
  EXPECT_EQ(sw.counters(0).rx_bytes, 100u);
  EXPECT_EQ(sw.counters(2).tx_frames, 1u);
  EXPECT_EQ(sw.counters(2).tx_bytes, 100u);
  for (unsigned p : {1u, kUplink}) EXPECT_EQ(sw.counters(p).tx_frames, 0u) << p;
  EXPECT_EQ(sw.counters(0).tx_frames, 0u);
  EXPECT_EQ(sw.counters(2).rx_frames, 0u);
}

TEST_F(EswitchTest, UnknownUnicastGoesToTheUplink) {
  const Route r = send(1, frame(kStranger, kMac1));
  EXPECT_EQ(r.drop, Drop::none);
  EXPECT_EQ(r.to, ports({kUplink}));
  EXPECT_EQ(sw.counters(kUplink).tx_frames, 1u);
  EXPECT_EQ(sw.counters(kUplink).tx_bytes, 64u);
}

TEST_F(EswitchTest, UnicastToADisabledPortsMacGoesToTheUplink) {
  sw.configure(2, {.enabled = false, .mac = kMac2});
  EXPECT_EQ(send(0, frame(kMac2, kMac0)).to, ports({kUplink}));
  EXPECT_EQ(sw.counters(2).tx_frames, 0u);
}

TEST_F(EswitchTest, UnknownUnicastFromTheUplinkDrops) {
  const Route r = send(kUplink, frame(kStranger, kStranger));
  EXPECT_EQ(r.drop, Drop::no_route);
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(sw.counters(kUplink).drop(Drop::no_route), 1u);
  EXPECT_EQ(sw.counters(kUplink).rx_frames, 0u);
  EXPECT_EQ(sw.counters(kUplink).tx_frames, 0u);
}

TEST_F(EswitchTest, UnknownUnicastWithoutAnUplinkDrops) {
  Eswitch no_uplink(2, -1);
  no_uplink.configure(0, {.enabled = true, .mac = kMac0});
  no_uplink.configure(1, {.enabled = true, .mac = kMac1});
  const auto f = frame(kStranger, kMac0);
  const Route r = no_uplink.route(0, f);
  EXPECT_EQ(r.drop, Drop::no_route);
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(no_uplink.counters(0).drop(Drop::no_route), 1u);
  EXPECT_EQ(no_uplink.counters(0).rx_frames, 0u);
  EXPECT_EQ(no_uplink.counters(1).tx_frames, 0u);
}

TEST_F(EswitchTest, UnknownUnicastWithTheUplinkDisabledDrops) {
  sw.configure(kUplink, {.enabled = false});
  EXPECT_EQ(send(0, frame(kStranger, kMac0)).drop, Drop::no_route);
  EXPECT_EQ(sw.counters(0).drop(Drop::no_route), 1u);
  EXPECT_EQ(sw.counters(kUplink).tx_frames, 0u);
}

TEST_F(EswitchTest, UnicastToOwnMacDrops) {
  const Route r = send(1, frame(kMac1, kMac1));
  EXPECT_EQ(r.drop, Drop::no_route);
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(sw.counters(1).drop(Drop::no_route), 1u);
  EXPECT_EQ(sw.counters(1).rx_frames, 0u);
  EXPECT_EQ(sw.counters(1).tx_frames, 0u);
  EXPECT_EQ(sw.counters(kUplink).tx_frames, 0u);
}

TEST_F(EswitchTest, BroadcastFloodsEveryOtherEnabledPort) {
  sw.configure(2, {.enabled = false, .mac = kMac2});
  const Route r = send(0, frame(knic::kBroadcast, kMac0, 200));
  EXPECT_EQ(r.drop, Drop::none);
  EXPECT_EQ(r.to, ports({1, kUplink}));
  EXPECT_EQ(sw.counters(0).rx_frames, 1u);
  EXPECT_EQ(sw.counters(0).rx_bytes, 200u);
  EXPECT_EQ(sw.counters(0).tx_frames, 0u);
  EXPECT_EQ(sw.counters(1).tx_bytes, 200u);
  EXPECT_EQ(sw.counters(kUplink).tx_bytes, 200u);
  EXPECT_EQ(sw.counters(2).tx_frames, 0u);
}

TEST_F(EswitchTest, MulticastFloodsEveryOtherEnabledPort) {
  const Route r = send(1, frame(kMulticast, kMac1));
  EXPECT_EQ(r.drop, Drop::none);
  EXPECT_EQ(r.to, ports({0, 2, kUplink}));
  for (unsigned p : {0u, 2u, kUplink}) EXPECT_EQ(sw.counters(p).tx_frames, 1u) << p;
  EXPECT_EQ(sw.counters(1).tx_frames, 0u);
}

TEST_F(EswitchTest, FloodFromTheUplinkReachesEveryEnabledVf) {
  EXPECT_EQ(send(kUplink, frame(knic::kBroadcast, kStranger)).to, ports({0, 1, 2}));
  sw.configure(1, {.enabled = false, .mac = kMac1});
  EXPECT_EQ(send(kUplink, frame(kMulticast, kStranger)).to, ports({0, 2}));
  EXPECT_EQ(sw.counters(kUplink).rx_frames, 2u);
  EXPECT_EQ(sw.counters(kUplink).tx_frames, 0u);
}

TEST_F(EswitchTest, FloodWithNobodyElseIsForwardedToNobody) {
  Eswitch lone(1, -1);
  lone.configure(0, {.enabled = true, .mac = kMac0});
  const auto f = frame(knic::kBroadcast, kMac0);
  const Route r = lone.route(0, f);
  EXPECT_EQ(r.drop, Drop::none);
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(lone.counters(0).rx_frames, 1u);
  expect_no_drops_but(lone.counters(0));
}

TEST_F(EswitchTest, EgressPortTooSmallDropsItsCopyOfAFlood) {
  sw.configure(1, {.enabled = true, .mac = kMac1, .max_frame = 500});
  const Route r = send(0, frame(knic::kBroadcast, kMac0, 501));
  EXPECT_EQ(r.drop, Drop::none);
  EXPECT_EQ(r.to, ports({2, kUplink}));
  EXPECT_EQ(sw.counters(0).rx_frames, 1u);
  expect_no_drops_but(sw.counters(0));
  EXPECT_EQ(sw.counters(1).drop(Drop::oversize), 1u);
  EXPECT_EQ(sw.counters(1).tx_frames, 0u);
  EXPECT_EQ(sw.counters(1).tx_bytes, 0u);
  EXPECT_EQ(sw.counters(2).tx_bytes, 501u);
  EXPECT_EQ(sw.counters(kUplink).tx_bytes, 501u);
  // Exactly max_frame fits.
  EXPECT_EQ(send(0, frame(knic::kBroadcast, kMac0, 500)).to, ports({1, 2, kUplink}));
  EXPECT_EQ(sw.counters(1).drop(Drop::oversize), 1u);
}

TEST_F(EswitchTest, EgressPortTooSmallForAUnicast) {
  sw.configure(2, {.enabled = true, .mac = kMac2, .max_frame = 100});
  const Route r = send(0, frame(kMac2, kMac0, 101));
  EXPECT_EQ(r.drop, Drop::none);  // the ingress accepted it
  EXPECT_TRUE(r.to.none());
  EXPECT_EQ(sw.counters(0).rx_frames, 1u);
  EXPECT_EQ(sw.counters(2).drop(Drop::oversize), 1u);
  EXPECT_EQ(sw.counters(2).tx_frames, 0u);
}

TEST_F(EswitchTest, CountersAddUpFramesAndBytes) {
  send(0, frame(kMac1, kMac0, 60));
  send(0, frame(kMac1, kMac0, 1518));
  send(1, frame(kMac0, kMac1, 100));
  send(0, frame(kMac1, kStranger, 80));  // spoofed: not counted as rx
  const PortCounters& c0 = sw.counters(0);
  const PortCounters& c1 = sw.counters(1);
  EXPECT_EQ(c0.rx_frames, 2u);
  EXPECT_EQ(c0.rx_bytes, 1578u);
  EXPECT_EQ(c0.tx_frames, 1u);
  EXPECT_EQ(c0.tx_bytes, 100u);
  EXPECT_EQ(c1.rx_frames, 1u);
  EXPECT_EQ(c1.rx_bytes, 100u);
  EXPECT_EQ(c1.tx_frames, 2u);
  EXPECT_EQ(c1.tx_bytes, 1578u);
  EXPECT_EQ(c0.drop(Drop::spoof), 1u);
}

TEST_F(EswitchTest, EgressFailedTakesBackTheTxCount) {
  send(0, frame(kMac1, kMac0, 100));
  send(0, frame(kMac1, kMac0, 300));
  sw.egress_failed(1, 300, Drop::no_buffer);
  EXPECT_EQ(sw.counters(1).tx_frames, 1u);
  EXPECT_EQ(sw.counters(1).tx_bytes, 100u);
  EXPECT_EQ(sw.counters(1).drop(Drop::no_buffer), 1u);
  expect_no_drops_but(sw.counters(1), Drop::no_buffer);
  EXPECT_EQ(sw.counters(0).rx_frames, 2u);  // the ingress still sent it
  EXPECT_EQ(sw.counters(0).rx_bytes, 400u);
}

TEST_F(EswitchTest, EgressFailedAfterAClearStopsAtZero) {
  send(0, frame(kMac1, kMac0, 100));
  sw.clear_counters(1);
  sw.egress_failed(1, 100, Drop::no_buffer);
  EXPECT_EQ(sw.counters(1).tx_frames, 0u);
  EXPECT_EQ(sw.counters(1).tx_bytes, 0u);
  EXPECT_EQ(sw.counters(1).drop(Drop::no_buffer), 1u);
}

TEST_F(EswitchTest, CountDropCountsOnlyTheCause) {
  sw.count_drop(2, Drop::rate);
  sw.count_drop(2, Drop::rate);
  sw.count_drop(2, Drop::no_buffer);
  EXPECT_EQ(sw.counters(2).drop(Drop::rate), 2u);
  EXPECT_EQ(sw.counters(2).drop(Drop::no_buffer), 1u);
  EXPECT_EQ(sw.counters(2).rx_frames, 0u);
  EXPECT_EQ(sw.counters(2).tx_frames, 0u);
  expect_no_drops_but(sw.counters(1));
}

TEST_F(EswitchTest, ClearCountersClearsOnePort) {
  send(0, frame(kMac1, kMac0));
  send(0, frame(kMac1, kStranger));
  sw.clear_counters(0);
  EXPECT_EQ(sw.counters(0).rx_frames, 0u);
  EXPECT_EQ(sw.counters(0).rx_bytes, 0u);
  expect_no_drops_but(sw.counters(0));
  EXPECT_EQ(sw.counters(1).tx_frames, 1u);  // not this port's
  EXPECT_EQ(sw.config(0).mac, kMac0);       // nor its configuration
}

TEST_F(EswitchTest, ConfigureReplacesTheConfigAndKeepsCounters) {
  send(0, frame(kMac1, kMac0, 90));
  send(0, frame(kMac1, kStranger));
  sw.configure(0, {.enabled = true, .mac = kStranger, .max_frame = 9000});
  EXPECT_EQ(sw.config(0).mac, kStranger);
  EXPECT_EQ(sw.config(0).max_frame, 9000u);
  EXPECT_EQ(sw.counters(0).rx_frames, 1u);
  EXPECT_EQ(sw.counters(0).rx_bytes, 90u);
  EXPECT_EQ(sw.counters(0).drop(Drop::spoof), 1u);
  // The new MAC rules: the old one is now spoofed, and frames to it go to the uplink.
  EXPECT_EQ(send(0, frame(kMac1, kMac0)).drop, Drop::spoof);
  EXPECT_EQ(send(0, frame(kMac1, kStranger)).to, ports({1}));
  EXPECT_EQ(send(1, frame(kMac0, kMac1)).to, ports({kUplink}));
  EXPECT_EQ(send(1, frame(kStranger, kMac1)).to, ports({0}));
}

TEST_F(EswitchTest, PortOfFindsEnabledNonUplinkPorts) {
  EXPECT_EQ(sw.port_of(kMac0), 0);
  EXPECT_EQ(sw.port_of(kMac2), 2);
  EXPECT_EQ(sw.port_of(kStranger), -1);
  EXPECT_EQ(sw.port_of(knic::kBroadcast), -1);
  sw.configure(2, {.enabled = false, .mac = kMac2});
  EXPECT_EQ(sw.port_of(kMac2), -1);
  sw.configure(kUplink, {.enabled = true, .mac = kStranger});
  EXPECT_EQ(sw.port_of(kStranger), -1);
}

// TokenBucket: 8000 bit/s is one byte per millisecond.
constexpr std::uint64_t kMs = 1'000'000;

TEST(TokenBucket, DefaultAndRateZeroAreUnlimited) {
  TokenBucket b;
  EXPECT_TRUE(b.unlimited());
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b.take(1'000'000'000, 0));
  EXPECT_EQ(b.ready_at(1'000'000'000, 5), 5u);
  b.configure(0, 100, 0);
  EXPECT_TRUE(b.unlimited());
  EXPECT_TRUE(b.take(1000, 0));
  EXPECT_TRUE(b.take(1000, 0));
  b.configure(8000, 100, 0);
  EXPECT_FALSE(b.unlimited());
}

TEST(TokenBucket, StartsFullAtDepth) {
  TokenBucket b;
  b.configure(8000, 1000, 7 * kMs);
  EXPECT_EQ(b.ready_at(1000, 7 * kMs), 7 * kMs);
  EXPECT_TRUE(b.take(600, 7 * kMs));
  EXPECT_FALSE(b.take(401, 7 * kMs));  // takes nothing
  EXPECT_TRUE(b.take(400, 7 * kMs));
  EXPECT_FALSE(b.take(1, 7 * kMs));
}

TEST(TokenBucket, ReadyAtIsTheFirstTimeTakeSucceeds) {
  TokenBucket b;
  b.configure(8000, 1000, 0);
  ASSERT_TRUE(b.take(1000, 0));
  EXPECT_EQ(b.ready_at(250, 0), 250 * kMs);
  EXPECT_EQ(b.ready_at(250, 100 * kMs), 250 * kMs);  // the same from a later now
  EXPECT_FALSE(b.take(250, 250 * kMs - 1));
  EXPECT_TRUE(b.take(250, 250 * kMs));
  EXPECT_FALSE(b.take(1, 250 * kMs));
  EXPECT_EQ(b.ready_at(1, 250 * kMs), 251 * kMs);
}

TEST(TokenBucket, ReadyAtRoundsUpToAWholeNanosecond) {
  // 3 bit/s: a byte takes 8/3 s, 2666666666.67 ns.
  TokenBucket b;
  b.configure(3, 1, 10);
  ASSERT_TRUE(b.take(1, 10));
  const std::uint64_t ready = b.ready_at(1, 10);
  EXPECT_EQ(ready, 10u + 2'666'666'667u);
  EXPECT_FALSE(b.take(1, ready - 1));
  EXPECT_EQ(b.ready_at(1, ready - 1), ready);  // the failed take refilled, consistently
  EXPECT_TRUE(b.take(1, ready));
}

TEST(TokenBucket, RefillStopsAtDepth) {
  TokenBucket b;
  b.configure(8000, 1000, 0);
  ASSERT_TRUE(b.take(1000, 0));
  EXPECT_FALSE(b.take(501, 500 * kMs));  // half refilled
  EXPECT_TRUE(b.take(500, 500 * kMs));
  // Long idle: full, not more.
  EXPECT_TRUE(b.take(1000, 100'000 * kMs));
  EXPECT_FALSE(b.take(1, 100'000 * kMs));
}

TEST(TokenBucket, FrameLargerThanTheDepthNeedsAFullBucket) {
  TokenBucket b;
  b.configure(8000, 1000, 0);
  EXPECT_TRUE(b.take(1500, 0));  // full: passes, and empties it
  EXPECT_FALSE(b.take(1, 0));
  EXPECT_EQ(b.ready_at(1500, 0), 1000 * kMs);
  EXPECT_FALSE(b.take(1500, 1000 * kMs - 1));
  EXPECT_TRUE(b.take(1500, 1000 * kMs));
  EXPECT_FALSE(b.take(1, 1000 * kMs));
}

TEST(TokenBucket, OneMegabitPerSecondOverALongIdle) {
  TokenBucket b;
  b.configure(1'000'000, 1500, 0);
  ASSERT_TRUE(b.take(1500, 0));
  constexpr std::uint64_t kIdle = 1'000'000'000'000;  // 1000 s
  EXPECT_TRUE(b.take(1500, kIdle));
  EXPECT_FALSE(b.take(1, kIdle));
  EXPECT_EQ(b.ready_at(1500, kIdle), kIdle + 12 * kMs);  // 12000 bits at 1 Mbit/s
  EXPECT_FALSE(b.take(1500, kIdle + 12 * kMs - 1));
  EXPECT_TRUE(b.take(1500, kIdle + 12 * kMs));
}

TEST(TokenBucket, HundredGigabitPerSecondOverALongIdle) {
  TokenBucket b;
  b.configure(100'000'000'000, 1'000'000, 0);
  ASSERT_TRUE(b.take(1'000'000, 0));
  constexpr std::uint64_t kIdle = 1'000'000'000'000;
  EXPECT_TRUE(b.take(1'000'000, kIdle));
  EXPECT_FALSE(b.take(1, kIdle));
  EXPECT_EQ(b.ready_at(1'000'000, kIdle), kIdle + 80'000);  // 8e6 bits at 1e11 bit/s
  EXPECT_EQ(b.ready_at(1, kIdle), kIdle + 1);               // 12.5 bytes per ns
  EXPECT_FALSE(b.take(1'000'000, kIdle + 79'999));
  EXPECT_TRUE(b.take(1'000'000, kIdle + 80'000));
}

TEST(TokenBucket, LargestRateDepthAndIdleDoNotOverflow) {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  TokenBucket b;
  b.configure(kMax, kMax, 0);
  ASSERT_TRUE(b.take(kMax, 0));
  EXPECT_FALSE(b.take(1, 0));
  EXPECT_TRUE(b.take(kMax, kMax));
  // 1 bit/s with a huge depth: the wait does not fit in 64 bits and saturates.
  b.configure(1, kMax, 0);
  ASSERT_TRUE(b.take(kMax, 0));
  EXPECT_EQ(b.ready_at(kMax, 0), kMax);
}

}  // namespace
}  // namespace keel::eswitch
