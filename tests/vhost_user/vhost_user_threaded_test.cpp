// The server as keel-vhost-blk runs it: on its own thread, paravisor worker threads woken by
// kick eventfds, a free-running model card, completions signalled on call eventfds. Results
// are deterministic; waits are bounded by the call eventfd and a deadline.
#include "vhost_user_fixture.h"

namespace keel::testing {
namespace {

using vu::Request;

TEST_F(VhostUserTest, ServesOnItsOwnThreadWithWorkerThreads) {
  start(2, /*threaded=*/true);
  GuestRam ram;
  {
    auto fe = connect();
    DriverRing r0(ram, kRingSize, 0), r1(ram, kRingSize, 0x10000);
    DriverRing* rings[] = {&r0, &r1};
    ASSERT_TRUE(fe->handshake(ram, rings));
    for (std::uint32_t i = 0; i < 8; ++i) {
      round_trip(ram, r0, 128 * i, 8 + i, 1 << 20, 2 << 20, 30 + i);
      round_trip(ram, r1, 8192 + 128 * i, 64, GuestRam::kHighGpa, GuestRam::kHighGpa + (1 << 20),
                 40 + i, 2);
    }
    // Stop the rings as QEMU's vhost_dev_stop does (disable all, then each base), hang up.
    for (std::uint32_t q = 0; q < 2; ++q) {
      EXPECT_EQ(fe->ack_state(Request::set_vring_enable, q, 0), 0u);
    }
    for (std::uint32_t q = 0; q < 2; ++q) {
      const auto base = fe->get_vring_base(q);
      ASSERT_TRUE(base.has_value());
      EXPECT_EQ(base->num, 16u);
    }
  }
  // The server notices the hang-up on its own; the next front end reads what the first wrote.
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0x20000);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  EXPECT_EQ(server_->stats().disconnects, 1u) << "the hang-up was handled before the accept";
  std::memset(ram.at(2 << 20, 4096), 0, 4096);
  ASSERT_EQ(io(ring, blk::kIn, 128 * 3, {{2 << 20, 4096}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(ram.at(2 << 20, 4096), 4096, 128 * 3, 33), -1);
  const auto c = server_->counters();
  EXPECT_EQ(c.requests, 33u);
  EXPECT_GT(c.vf_ios, 0u);
  EXPECT_GT(c.notifications, 0u);
  const auto t = server_->transitions();
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t.front().to, vmm::PathState::active);
  server_->stop();
  EXPECT_EQ(server_->stats().connections, 2u);
}

// keel-vhost-blk's case: the VF is surprise-removed before the front end connects. The rings
// enable, the worker threads serve them on the host path, and when the VF is restored the probe
// (worker 0, on its own) brings it up and IO moves to it.
TEST_F(VhostUserTest, WorkerThreadsServeAFrontEndThatConnectsWhileTheVfIsAbsent) {
  start(1, /*threaded=*/true);
  KEEL_ASSERT_OK(card_->faults()->surprise_remove(0));
  GuestRam ram;
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings)) << "the rings enable without a VF";
  for (std::uint32_t i = 0; i < 4; ++i) {
    round_trip(ram, ring, 64 * i, 8, 1 << 20, 2 << 20, 60 + i);
  }
  EXPECT_EQ(server_->counters().vf_ios, 0u);
  EXPECT_GT(server_->counters().fallback_ios, 0u);

  KEEL_ASSERT_OK(card_->faults()->restore(0));
  ASSERT_TRUE(drive([&] { return server_->counters().to_vf == 1; }, &ring))
      << "the probe brings the returning VF up";
  for (std::uint32_t i = 0; i < 4; ++i) {
    std::memset(ram.at(2 << 20, 4096), 0, 4096);
    ASSERT_EQ(io(ring, blk::kIn, 64 * i, {{2 << 20, 4096}}), blk::kStatusOk);
    EXPECT_EQ(check_pattern(ram.at(2 << 20, 4096), 4096, 64 * i, 60 + i), -1)
        << "written on the host path, read through the VF";
  }
  const auto c = server_->counters();
  EXPECT_EQ(c.requests, 12u);
  EXPECT_GE(c.vf_ios, 4u) << "IO moved to the VF";
  EXPECT_EQ(c.errors, 0u);
  EXPECT_EQ(server_->stats().failed_requests, 0u) << server_->last_error();
}

}  // namespace
}  // namespace keel::testing
