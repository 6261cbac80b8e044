// Protocol abuse: every bad message fails the way the server documents (a failure ack, an empty
// GET_CONFIG reply, or the connection closed), and the server keeps serving front ends.
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <array>
#include <random>

#include "vhost_user_fixture.h"

namespace keel::testing {
namespace {

using vu::Request;
constexpr auto R = [](Request r) { return static_cast<std::uint32_t>(r); };

class VhostUserAbuse : public VhostUserTest {
 protected:
  void SetUp() override { start(1); }

  /// A new front end is served after whatever happened before.
  void expect_server_still_serves() {
    auto fe = connect();
    EXPECT_TRUE(fe->get_u64(Request::get_features).has_value()) << "the server stopped serving";
  }
};

TEST_F(VhostUserAbuse, TruncatedMessagesEndTheConnection) {
  {
    // The payload never completes: the server gives up after message_timeout.
    auto fe = connect();
    const vu::Header h{R(Request::set_features), vu::kVersion, 8};
    std::byte msg[sizeof h + 4] = {};
    std::memcpy(msg, &h, sizeof h);
    fe->send_raw(msg, sizeof msg);
    EXPECT_TRUE(fe->peer_closed());
  }
  {
    // Half a header, then the peer stops sending.
    auto fe = connect();
    const vu::Header h{R(Request::get_features), vu::kVersion, 0};
    fe->send_raw(&h, 6, {}, /*hang_up=*/true);
    EXPECT_TRUE(fe->peer_closed());
  }
  EXPECT_EQ(server_->stats().protocol_errors, 2u);
  EXPECT_NE(server_->last_error().find("header"), std::string::npos) << server_->last_error();
  expect_server_still_serves();
}

TEST_F(VhostUserAbuse, BadFramingEndsTheConnection) {
  {
    auto fe = connect();
    const vu::Header h{R(Request::get_features), 2, 0};  // version 2
    fe->send_raw(&h, sizeof h);
    EXPECT_TRUE(fe->peer_closed());
  }
  {
    auto fe = connect();
    const vu::Header h{R(Request::set_features), vu::kVersion, 100000};  // oversized payload
    fe->send_raw(&h, sizeof h);
    EXPECT_TRUE(fe->peer_closed());
  }
  EXPECT_EQ(server_->stats().protocol_errors, 2u);
  expect_server_still_serves();
}

TEST_F(VhostUserAbuse, UnknownRequestFailsAlone) {
  auto fe = connect();
  const std::uint64_t junk = 5;
  EXPECT_EQ(fe->ack(static_cast<Request>(99), &junk, sizeof junk), 1u);
  EXPECT_EQ(fe->ack(Request::set_log_base, &junk, sizeof junk), 1u) << "known, not offered";
  EXPECT_TRUE(fe->get_u64(Request::get_features).has_value()) << "the connection survived";
  // Without need_reply the front end could not learn of the failure: the server hangs up.
  fe->send(99, &junk, sizeof junk);
  EXPECT_TRUE(fe->peer_closed());
  EXPECT_EQ(server_->stats().failed_requests, 3u);
  expect_server_still_serves();
}

TEST_F(VhostUserAbuse, WrongPayloadSizesFail) {
  auto fe = connect();
  const std::uint32_t half = 1;
  EXPECT_EQ(fe->ack(Request::set_features, &half, sizeof half), 1u);
  const vu::VringState s{0, 128};
  EXPECT_EQ(fe->ack(Request::set_vring_addr, &s, sizeof s), 1u);
  // A request with a reply of its own cannot carry a failure: the connection ends.
  const std::uint64_t extra = 0;
  fe->send(R(Request::get_features), &extra, sizeof extra);
  EXPECT_TRUE(fe->peer_closed());
  expect_server_still_serves();
}

TEST_F(VhostUserAbuse, OutOfRangeQueueIndexFails) {
  const int fds_before = open_fds();
  auto fe = connect();
  EXPECT_EQ(fe->ack_state(Request::set_vring_num, 1, 128), 1u) << "the device has one queue";
  EXPECT_EQ(fe->ack_state(Request::set_vring_enable, 200, 1), 1u);
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  EXPECT_EQ(fe->ack_u64(Request::set_vring_call, 7, {&efd, 1}), 1u);
  EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, 0x1000, {&efd, 1}), 1u) << "unknown bits";
  EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, 0, {}), 1u) << "no fd and no no-fd flag";
  ::close(efd);
  EXPECT_EQ(fe->ack_state(Request::set_vring_num, 0, 100), 1u) << "not a power of two";
  EXPECT_EQ(fe->ack_state(Request::set_vring_num, 0, 2 * vu::kMaxRingSize), 1u) << "too big";
  EXPECT_EQ(fe->ack_state(Request::set_vring_base, 0, 70000), 1u);
  EXPECT_TRUE(fe->get_vring_base(0).has_value()) << "queue 0 exists";
  const vu::VringState three{3, 0};
  fe->send(R(Request::get_vring_base), &three, sizeof three);
  EXPECT_TRUE(fe->peer_closed());
  fe.reset();
  EXPECT_EQ(open_fds(), fds_before) << "every fd the failed requests carried was closed";
  expect_server_still_serves();
}

TEST_F(VhostUserAbuse, RingOutsideTheMemoryTableFailsAndNeverRuns) {
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  const vu::VringAddr early{0, 0, ram.user_addr(0), ram.user_addr(0x1000), ram.user_addr(0x800), 0};
  EXPECT_EQ(fe->ack(Request::set_vring_addr, &early, sizeof early), 1u) << "no memory table yet";
  const vu::MemoryTable t = ram.table();
  const int fds[2] = {ram.fd(), ram.fd()};
  ASSERT_EQ(fe->ack(Request::set_mem_table, &t, 8 + 2 * sizeof(vu::MemoryRegion), fds), 0u);
  ASSERT_EQ(fe->ack_state(Request::set_vring_num, 0, kRingSize), 0u);
  // The hole between the regions, and a used ring running off the end of region 0.
  const std::uint64_t hole = ram.user_addr(0) + 2 * ram.region_bytes() + (1 << 20);
  const vu::VringAddr outside{0, 0, hole, ram.user_addr(0x1000), ram.user_addr(0x800), 0};
  EXPECT_EQ(fe->ack(Request::set_vring_addr, &outside, sizeof outside), 1u);
  const vu::VringAddr straddle{
      0, 0, ram.user_addr(0), ram.user_addr(ram.region_bytes() - 64), ram.user_addr(0x800), 0};
  EXPECT_EQ(fe->ack(Request::set_vring_addr, &straddle, sizeof straddle), 1u);
  const vu::VringAddr logged{0,
                             vu::kVringFlagLog,
                             ram.user_addr(ring.desc_gpa()),
                             ram.user_addr(ring.used_gpa()),
                             ram.user_addr(ring.avail_gpa()),
                             0};
  EXPECT_EQ(fe->ack(Request::set_vring_addr, &logged, sizeof logged), 1u) << "no dirty log";
  // Kicked and enabled, the ring without valid addresses does not run.
  const int kick = ring.kick_fd();
  EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, 0, {&kick, 1}), 0u);
  EXPECT_EQ(fe->ack_state(Request::set_vring_enable, 0, 1), 0u);
  ring.submit(keel::virtio::blk::kIn, 0, std::vector<DriverRing::Seg>{{1 << 20, 512}});
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(server_->run_paravisor_once(), 0u);
  EXPECT_EQ(ring.used_idx(), 0);
  EXPECT_GE(server_->stats().failed_requests, 4u);
  EXPECT_TRUE(fe->get_u64(Request::get_features).has_value());
}

TEST_F(VhostUserAbuse, BadMemoryTablesFail) {
  GuestRam ram;
  const int fds_before = open_fds();
  auto fe = connect();
  vu::MemoryTable t = ram.table();
  int fds[vu::kMaxRegions + 1];
  for (int& fd : fds) fd = ram.fd();
  t.nregions = 9;
  EXPECT_EQ(fe->ack(Request::set_mem_table, &t, sizeof t, {fds, 8}), 1u) << "9 regions";
  t.nregions = 0;
  EXPECT_EQ(fe->ack(Request::set_mem_table, &t, 8, {}), 1u) << "no regions";
  t.nregions = 2;
  EXPECT_EQ(fe->ack(Request::set_mem_table, &t, 8 + 64, {fds, 1}), 1u) << "one fd for two";
  EXPECT_EQ(fe->ack(Request::set_mem_table, &t, 8 + 32, {fds, 2}), 1u) << "short payload";
  vu::MemoryTable big = ram.table(false);
  big.regions[0].memory_size = 64ull << 20;  // more than the memfd holds: would SIGBUS
  EXPECT_EQ(fe->ack(Request::set_mem_table, &big, 8 + 32, {fds, 1}), 1u);
  vu::MemoryTable odd = ram.table(false);
  odd.regions[0].mmap_offset = 100;
  odd.regions[0].memory_size = 4096;
  EXPECT_EQ(fe->ack(Request::set_mem_table, &odd, 8 + 32, {fds, 1}), 1u);
  vu::MemoryTable overlap = ram.table();
  overlap.regions[1].guest_phys_addr = 4096;
  EXPECT_EQ(fe->ack(Request::set_mem_table, &overlap, 8 + 64, {fds, 2}), 1u);
  EXPECT_EQ(server_->paravisor(), nullptr) << "no table was taken";
  EXPECT_EQ(server_->stats().failed_requests, 7u);
  // More fds than any message may carry: framing error.
  fe->send(R(Request::set_mem_table), &t, 8 + 64, {fds, vu::kMaxRegions + 1}, true);
  EXPECT_TRUE(fe->peer_closed());
  fe.reset();
  EXPECT_EQ(open_fds(), fds_before) << "every fd of the refused tables was closed";
  expect_server_still_serves();
}

TEST_F(VhostUserAbuse, FeaturesNotOfferedFail) {
  auto fe = connect();
  const std::uint64_t offered = *fe->get_u64(Request::get_features);
  EXPECT_EQ(fe->ack_u64(Request::set_features, offered | (1ull << 3)), 1u);
  EXPECT_EQ(fe->ack_u64(Request::set_features, offered & ~keel::virtio::bit(32)), 1u)
      << "VERSION_1 is required";
  EXPECT_EQ(fe->ack_u64(Request::set_protocol_features, 1ull << vu::protocol::kLogShmfd), 1u)
      << "LOG_SHMFD is not offered (no dirty logging)";
  EXPECT_EQ(fe->ack_u64(Request::set_features, offered), 0u);
}

// Seeded random messages (valid and invalid requests, sizes, ring indices, ring addresses
// inside and outside guest memory) on a live device: the server neither crashes nor stops
// serving, and a fresh front end afterwards does verified IO.
TEST_F(VhostUserAbuse, RandomMessagesNeverBreakTheServer) {
  GuestRam ram;
  std::mt19937_64 rng(12345);
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  unsigned reconnects = 0;
  struct Kind {
    Request request;
    std::size_t bytes;
  };
  const Kind kinds[] = {
      {Request::set_vring_num, 8},    {Request::set_vring_addr, 40}, {Request::set_vring_base, 8},
      {Request::get_vring_base, 8},   {Request::set_vring_kick, 8},  {Request::set_vring_call, 8},
      {Request::set_vring_enable, 8}, {Request::set_features, 8},    {Request::get_config, 20},
      {Request::set_config, 16},      {Request::reset_owner, 0},     {Request::set_mem_table, 72},
      {Request::get_features, 0},     {Request::set_vring_err, 8}};
  for (int i = 0; i < 600; ++i) {
    std::array<std::uint64_t, 34> payload{};
    for (auto& w : payload) {
      switch (rng() % 4) {
        case 0: w = rng(); break;
        case 1: w = rng() % 3; break;
        case 2: w = ram.user_addr((rng() % ram.region_bytes()) & ~std::uint64_t{15}); break;
        default:
          w = (rng() % 2) | std::uint64_t{std::array{1u, 2u, 64u, 128u, 256u, 1000u}[rng() % 6]}
                                << 32;
          break;
      }
    }
    std::uint32_t request = static_cast<std::uint32_t>(rng() % 42);
    std::size_t bytes = rng() % 272;
    if (rng() % 8 != 0) {
      const Kind& k = kinds[rng() % std::size(kinds)];
      request = static_cast<std::uint32_t>(k.request);
      if (rng() % 8 != 0) bytes = k.bytes;
    }
    const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    const bool with_fd = rng() % 2 == 0;
    fe->send(request, payload.data(), bytes,
             with_fd ? std::span<const int>(&efd, 1) : std::span<const int>(), rng() % 8 != 0);
    ::close(efd);
    while (fe->recv(0).has_value()) {
    }
    for (int t = 0; t < 20; ++t) {
      server_->run_paravisor_once();
      card_->step(1);
    }
    if (ring.free_descriptors() >= 3) {  // never reaped: the rings may be anywhere by now
      ring.submit(keel::virtio::blk::kIn, rng() % kSliceLbas,
                  std::vector<DriverRing::Seg>{{1 << 20, 512}});
    }
    if (!server_->connected()) {
      ++reconnects;
      fe = connect();
      ASSERT_TRUE(fe->handshake(ram, rings)) << "after message " << i;
    }
  }
  EXPECT_GT(server_->stats().failed_requests, 100u);
  fe.reset();
  server_->run_once(std::chrono::milliseconds(100));
  fe = connect();
  DriverRing fresh(ram, kRingSize, 0x20000);
  DriverRing* again[] = {&fresh};
  ASSERT_TRUE(fe->handshake(ram, again));
  round_trip(ram, fresh, 4096, 16, 1 << 20, 2 << 20, 77);
  const auto st = server_->stats();
  const auto c = server_->counters();
  std::printf(
      "random messages: %u reconnects, %llu failed requests, %llu guest requests "
      "(%llu malformed), %llu broken rings\n",
      reconnects, static_cast<unsigned long long>(st.failed_requests),
      static_cast<unsigned long long>(c.requests), static_cast<unsigned long long>(c.bad_requests),
      static_cast<unsigned long long>(st.ring_errors));
}

TEST_F(VhostUserAbuse, PeerDisconnectMidIoLosesNothing) {
  GuestRam ram;
  {
    auto fe = connect();
    DriverRing ring(ram, kRingSize, 0);
    DriverRing* rings[] = {&ring};
    ASSERT_TRUE(fe->handshake(ram, rings));
    fill_pattern(ram.at(1 << 20, 65536), 65536, 500, 11);
    ring.submit(keel::virtio::blk::kOut, 500, std::vector<DriverRing::Seg>{{1 << 20, 65536}});
    ring.kick();
    server_->run_paravisor_once();  // the write is on the VF now, not complete
    EXPECT_EQ(ring.used_idx(), 0);
    fe->close();
    server_->run_once(std::chrono::milliseconds(100));  // EOF: the rings stop, in-flight IO ends
    EXPECT_FALSE(server_->connected());
    ASSERT_EQ(ring.used_idx(), 1) << "the in-flight write completed before the teardown";
    EXPECT_EQ(ring.reap()->second, keel::virtio::blk::kStatusOk);
  }
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0x20000);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  std::memset(ram.at(2 << 20, 65536), 0, 65536);
  ASSERT_EQ(io(ring, keel::virtio::blk::kIn, 500, {{2 << 20, 65536}}),
            keel::virtio::blk::kStatusOk);
  EXPECT_EQ(check_pattern(ram.at(2 << 20, 65536), 65536, 500, 11), -1) << "the write landed";
  EXPECT_EQ(server_->counters().requests, 2u) << "completed once";
}

// Issue 10 item 7: GET_VRING_BASE while a request is stuck on a VF that does not answer. The
// pause is bounded (quiesce_timeout) and takes nothing new; the stuck request is not reported
// consumed (the base stops before it), so the front end makes it available again and it
// completes exactly once when the ring restarts.
TEST_F(VhostUserTest, GetVringBaseDoesNotCountAnUnfinishedRequest) {
  pv_config_.command_timeout = std::chrono::seconds(30);
  pv_config_.quiesce_timeout = std::chrono::milliseconds(5);
  start(1);
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  round_trip(ram, ring, 0, 8, 1 << 20, 2 << 20, 1);  // requests 1 and 2; the queue pair is up
  ASSERT_TRUE(card_->faults()->drop_completions(0, 1).ok());
  fill_pattern(ram.at(1 << 20, 4096), 4096, 64, 2);
  const std::uint16_t head =
      ring.submit(blk::kOut, 64, std::vector<DriverRing::Seg>{{1 << 20, 4096}});
  ring.kick();
  for (int i = 0; i < 100; ++i) {
    server_->run_paravisor_once();
    card_->step(1);
  }
  ASSERT_EQ(ring.used_idx(), 2) << "the write is on the VF, its completion dropped";

  const auto base = fe->get_vring_base(0);

  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 2u) << "the unfinished write is not reported consumed";
  EXPECT_EQ(ring.used_idx(), 2);
  ASSERT_TRUE(fe->start_ring(ram, 0, ring, static_cast<std::uint16_t>(base->num)));
  std::optional<std::pair<std::uint16_t, std::uint8_t>> done;
  ASSERT_TRUE(drive([&] { return (done = ring.reap()).has_value(); }, &ring));
  EXPECT_EQ(done->first, head);
  EXPECT_EQ(done->second, blk::kStatusOk);
  std::memset(ram.at(2 << 20, 4096), 0, 4096);
  ASSERT_EQ(io(ring, blk::kIn, 64, {{2 << 20, 4096}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(ram.at(2 << 20, 4096), 4096, 64, 2), -1);
  EXPECT_EQ(server_->counters().requests, 4u) << "the write completed exactly once";
}

}  // namespace
}  // namespace keel::testing
