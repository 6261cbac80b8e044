// The vhost-user-blk server against a scripted front end on a lockstep model card: negotiation,
// config space, verified IO on one and two queues, stopping and restarting rings, a new memory
// table, and front ends coming and going.
#include <sys/eventfd.h>

#include "vhost_user_fixture.h"

namespace keel::testing {
namespace {

using vu::Request;
namespace f = keel::virtio::feature;

constexpr std::uint64_t kWbuf = 1 << 20, kRbuf = 2 << 20;  // data buffers in region 0
constexpr std::uint64_t kHighW = GuestRam::kHighGpa, kHighR = GuestRam::kHighGpa + (1 << 20);

TEST_F(VhostUserTest, NegotiatesFeaturesProtocolFeaturesAndQueues) {
  start(2);
  auto fe = connect();
  const auto features = fe->get_u64(Request::get_features);
  ASSERT_TRUE(features.has_value());
  for (unsigned b : {f::kVersion1, f::kBlkSegMax, f::kBlkBlkSize, f::kBlkFlush, f::kBlkMq,
                     f::kBlkWriteZeroes, f::kRingEventIdx, vu::kFeatureProtocolFeatures}) {
    EXPECT_NE(*features & keel::virtio::bit(b), 0u) << "feature bit " << b;
  }
  EXPECT_EQ(fe->get_u64(Request::get_protocol_features), vu::kOfferedProtocolFeatures);
  EXPECT_EQ(fe->ack_u64(Request::set_protocol_features, vu::kOfferedProtocolFeatures), 0u);
  EXPECT_EQ(fe->get_u64(Request::get_queue_num), 2u);
  EXPECT_EQ(fe->ack(Request::set_owner, nullptr, 0), 0u);
  EXPECT_EQ(fe->ack_u64(Request::set_features, *features), 0u);
  EXPECT_EQ(server_->stats().failed_requests, 0u);
  EXPECT_TRUE(server_->connected());
}

TEST_F(VhostUserTest, GetConfigReportsCapacityAndQueues) {
  start(2);
  auto fe = connect();
  const auto cfg = fe->get_config(0, 60);
  ASSERT_TRUE(cfg.has_value());
  ASSERT_EQ(cfg->size(), 60u);
  blk::Config c{};
  std::memcpy(&c, cfg->data(), 60);
  EXPECT_EQ(c.capacity, kSliceLbas);
  EXPECT_EQ(c.num_queues, 2);
  EXPECT_EQ(c.blk_size, 512u);
  EXPECT_EQ(c.seg_max, 126u);
  // A field on its own, as QEMU reads num_queues.
  const auto nq = fe->get_config(offsetof(blk::Config, num_queues), 2);
  ASSERT_TRUE(nq.has_value());
  ASSERT_EQ(nq->size(), 2u);
  EXPECT_EQ(static_cast<int>((*nq)[0]), 2);
  // Past the config space: an empty reply (the spec's error), and the connection stays.
  const auto bad = fe->get_config(250, 16);
  ASSERT_TRUE(bad.has_value());
  EXPECT_TRUE(bad->empty());
  // SET_CONFIG may rewrite what is there, and change nothing.
  std::vector<std::byte> w(sizeof(vu::ConfigHeader) + 8);
  const vu::ConfigHeader h{0, 8, 0};
  std::memcpy(w.data(), &h, sizeof h);
  std::memcpy(w.data() + sizeof h, cfg->data(), 8);
  EXPECT_EQ(fe->ack(Request::set_config, w.data(), w.size()), 0u);
  w[sizeof h] = std::byte{0x42};  // a new capacity: read-only
  EXPECT_NE(fe->ack(Request::set_config, w.data(), w.size()).value_or(0), 0u);
  EXPECT_EQ(fe->get_u64(Request::get_queue_num), 2u);
  EXPECT_EQ(server_->stats().failed_requests, 2u);
}

TEST_F(VhostUserTest, VerifiedIoOnOneQueue) {
  start(1);
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  EXPECT_EQ(factory_calls_, 2u) << "one probe at create, one for the memory table";
  round_trip(ram, ring, 0, 1, kWbuf, kRbuf, 1);
  round_trip(ram, ring, 100, 128, kWbuf, kRbuf, 2);            // 64 KiB, one descriptor
  round_trip(ram, ring, 1000, 256, kWbuf, kRbuf, 3, 3);        // 128 KiB in three descriptors
  round_trip(ram, ring, 5000, 64, kHighW, kHighR, 4);          // data in the second region
  round_trip(ram, ring, kSliceLbas - 8, 8, kWbuf, kHighR, 5);  // last 4 KiB of the disk
  EXPECT_EQ(io(ring, blk::kFlush, 0, {}), blk::kStatusOk);
  EXPECT_EQ(io(ring, blk::kIn, kSliceLbas, {{kRbuf, 512}}), blk::kStatusIoErr) << "past the end";
  EXPECT_GT(ring.take_calls(), 0u) << "completions were signalled on the call eventfd";
  const auto c = server_->counters();
  EXPECT_EQ(c.requests, 12u);
  EXPECT_GT(c.vf_ios, 0u);
  EXPECT_EQ(server_->paravisor()->state(), vmm::PathState::active);
  EXPECT_EQ(server_->stats().failed_requests, 0u);
}

TEST_F(VhostUserTest, VerifiedIoOnTwoQueues) {
  start(2);
  auto fe = connect();
  GuestRam ram;
  DriverRing r0(ram, kRingSize, 0), r1(ram, kRingSize, 0x10000);
  DriverRing* rings[] = {&r0, &r1};
  ASSERT_TRUE(fe->handshake(ram, rings));
  for (std::uint32_t i = 0; i < 4; ++i) {
    round_trip(ram, r0, 64 * i, 16 + i, kWbuf, kRbuf, 10 + i);
    round_trip(ram, r1, 8192 + 64 * i, 32 + i, kHighW, kHighR, 20 + i, 2);
  }
  // Both queues at once: a write on each, then both reads.
  fill_pattern(ram.at(kWbuf, 4096), 4096, 300, 7);
  fill_pattern(ram.at(kHighW, 4096), 4096, 400, 8);
  r0.submit(blk::kOut, 300, std::vector<DriverRing::Seg>{{kWbuf, 4096}});
  r1.submit(blk::kOut, 400, std::vector<DriverRing::Seg>{{kHighW, 4096}});
  int done = 0;
  ASSERT_TRUE(drive([&] {
    for (DriverRing* r : rings) {
      if (auto u = r->reap()) {
        EXPECT_EQ(u->second, blk::kStatusOk);
        ++done;
      }
    }
    return done == 2;
  }));
  ASSERT_EQ(io(r1, blk::kIn, 300, {{kRbuf, 4096}}), blk::kStatusOk);  // written via queue 0
  EXPECT_EQ(check_pattern(ram.at(kRbuf, 4096), 4096, 300, 7), -1);
  ASSERT_EQ(io(r0, blk::kIn, 400, {{kHighR, 4096}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(ram.at(kHighR, 4096), 4096, 400, 8), -1);
  EXPECT_GT(r0.take_calls(), 0u);
  EXPECT_GT(r1.take_calls(), 0u);
}

TEST_F(VhostUserTest, GetVringBaseStopsTheRingAndReturnsLastAvail) {
  start(1);
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  for (std::uint64_t i = 0; i < 3; ++i) {
    ASSERT_EQ(io(ring, blk::kIn, i, {{kRbuf, 512}}), blk::kStatusOk);
  }
  // QEMU's vhost_dev_stop: disable, then GET_VRING_BASE.
  EXPECT_EQ(fe->ack_state(Request::set_vring_enable, 0, 0), 0u);
  const auto base = fe->get_vring_base(0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->index, 0u);
  EXPECT_EQ(base->num, 3u);
  // A stopped ring is not served.
  ring.submit(blk::kIn, 7, std::vector<DriverRing::Seg>{{kRbuf, 512}});
  ring.kick();
  for (int t = 0; t < 2000; ++t) {
    EXPECT_EQ(server_->run_paravisor_once(), 0u);
    card_->step(1);
  }
  EXPECT_EQ(ring.used_idx(), 3);
  // Restarted from the base it reported, it serves what was published meanwhile.
  ASSERT_TRUE(fe->start_ring(ram, 0, ring, 3));
  ASSERT_TRUE(drive([&] { return ring.reap().has_value(); }));
  EXPECT_EQ(ring.used_idx(), 4);
}

TEST_F(VhostUserTest, StoppingOneOfTwoRingsLeavesTheOtherRunning) {
  start(2);
  auto fe = connect();
  GuestRam ram;
  DriverRing r0(ram, kRingSize, 0), r1(ram, kRingSize, 0x10000);
  DriverRing* rings[] = {&r0, &r1};
  ASSERT_TRUE(fe->handshake(ram, rings));
  round_trip(ram, r0, 0, 8, kWbuf, kRbuf, 1);
  round_trip(ram, r1, 64, 8, kHighW, kHighR, 2);
  EXPECT_EQ(fe->ack_state(Request::set_vring_enable, 0, 0), 0u);
  const auto base = fe->get_vring_base(0);
  ASSERT_TRUE(base.has_value());
  EXPECT_EQ(base->num, 2u);
  // Queue 1 carries on (on a new paravisor: the old one would still serve queue 0).
  round_trip(ram, r1, 128, 16, kHighW, kHighR, 3);
  EXPECT_EQ(server_->stats().paravisors, 2u);
  r0.submit(blk::kIn, 0, std::vector<DriverRing::Seg>{{kRbuf, 512}});
  for (int t = 0; t < 1000; ++t) {
    server_->run_paravisor_once();
    card_->step(1);
  }
  EXPECT_EQ(r0.used_idx(), 2) << "the stopped ring is not served";
  ASSERT_TRUE(fe->start_ring(ram, 0, r0, 2));
  ASSERT_TRUE(drive([&] { return r0.reap().has_value(); }));
  round_trip(ram, r0, 256, 8, kWbuf, kRbuf, 4);
}

TEST_F(VhostUserTest, ResetDeviceAndResetOwnerStopTheRings) {
  start(1);
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  round_trip(ram, ring, 0, 8, kWbuf, kRbuf, 1);
  // RESET_OWNER (deprecated) disables every ring; the paravisor and the table stay.
  EXPECT_EQ(fe->ack(Request::reset_owner, nullptr, 0), 0u);
  ring.submit(blk::kIn, 0, std::vector<DriverRing::Seg>{{kRbuf, 512}});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(server_->run_paravisor_once(), 0u);
  ASSERT_NE(server_->paravisor(), nullptr);
  ASSERT_TRUE(fe->start_ring(ram, 0, ring, 2));
  ASSERT_TRUE(drive([&] { return ring.reap().has_value(); }));
  // RESET_DEVICE drops rings, table and paravisor; the front end sets everything up again.
  EXPECT_EQ(fe->ack(Request::reset_device, nullptr, 0), 0u);
  EXPECT_EQ(server_->paravisor(), nullptr);
  DriverRing fresh(ram, kRingSize, 0x20000);
  DriverRing* again[] = {&fresh};
  ASSERT_TRUE(fe->handshake(ram, again));
  std::memset(ram.at(kRbuf, 4096), 0, 4096);
  ASSERT_EQ(io(fresh, blk::kIn, 0, {{kRbuf, 4096}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(ram.at(kRbuf, 4096), 4096, 0, 1), -1);
  EXPECT_EQ(server_->stats().failed_requests, 0u);
}

TEST_F(VhostUserTest, BrokenRingIsSignalledOnItsErrFd) {
  start(1);
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  const int err = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  EXPECT_EQ(fe->ack_u64(Request::set_vring_err, 0, {&err, 1}), 0u);
  round_trip(ram, ring, 0, 8, kWbuf, kRbuf, 1);
  ring.publish_loop();  // a chain that never ends: the driver is broken
  for (int i = 0; i < 10; ++i) server_->run_paravisor_once();
  std::uint64_t v = 0;
  EXPECT_EQ(::read(err, &v, sizeof v), 8) << "the err eventfd was signalled";
  EXPECT_EQ(v, 1u);
  EXPECT_TRUE(server_->paravisor()->needs_reset());
  EXPECT_EQ(server_->stats().ring_errors, 1u);
  ::close(err);
}

TEST_F(VhostUserTest, KickWithoutFdMakesTheParavisorPollTheRing) {
  start(1);
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, vu::kVringNoFd | 0), 0u);
  round_trip(ram, ring, 42, 8, kWbuf, kRbuf, 9);
}

TEST_F(VhostUserTest, NewMemoryTableRecreatesTheParavisorAndIoCarriesOn) {
  start(1);
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  round_trip(ram, ring, 10, 8, kWbuf, kRbuf, 1);
  // A request waits in the ring while the table changes: it is served, once.
  ring.submit(blk::kIn, 10, std::vector<DriverRing::Seg>{{kHighR, 4096}});
  const vu::MemoryTable t = ram.table();
  const int fds[2] = {ram.fd(), ram.fd()};
  EXPECT_EQ(fe->ack(Request::set_mem_table, &t, 8 + 2 * sizeof(vu::MemoryRegion), fds), 0u);
  EXPECT_EQ(factory_calls_, 3u);
  ASSERT_TRUE(drive([&] { return ring.reap().has_value(); }));
  EXPECT_EQ(check_pattern(ram.at(kHighR, 4096), 4096, 10, 1), -1);
  round_trip(ram, ring, 20, 8, kWbuf, kRbuf, 2);
  EXPECT_EQ(ring.used_idx(), 5);
  EXPECT_EQ(server_->stats().paravisors, 2u);
  EXPECT_EQ(server_->counters().requests, 5u) << "counters survive the old paravisor";
}

// A front end that connects while its VF is absent (surprise-removed, being serviced, not yet
// assigned) gets its disk on the host path: the rings enable, IO is served by the fallback, and
// when the VF returns IO moves to it, with what was written on the fallback intact.
TEST_F(VhostUserTest, FrontEndConnectingWhileTheVfIsAbsentIsServedThenMovesToTheVf) {
  start(1);
  KEEL_ASSERT_OK(card_->faults()->surprise_remove(0));
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings)) << "the rings enable without a VF";
  EXPECT_EQ(server_->stats().failed_requests, 0u) << server_->last_error();
  ASSERT_NE(server_->paravisor(), nullptr);
  EXPECT_EQ(server_->paravisor()->state(), vmm::PathState::fallback);
  round_trip(ram, ring, 0, 8, kWbuf, kRbuf, 1);
  round_trip(ram, ring, 1000, 256, kWbuf, kRbuf, 2, 3);
  auto c = server_->counters();
  EXPECT_EQ(c.requests, 4u);
  EXPECT_EQ(c.vf_ios, 0u);
  EXPECT_GT(c.fallback_ios, 0u);

  KEEL_ASSERT_OK(card_->faults()->restore(0));
  server_->paravisor()->vf_arrived();
  ASSERT_TRUE(drive([&] { return server_->paravisor()->state() == vmm::PathState::active; }))
      << "the returning VF is brought up";
  round_trip(ram, ring, 2000, 16, kWbuf, kRbuf, 3);
  std::memset(ram.at(kRbuf, 4096), 0, 4096);
  ASSERT_EQ(io(ring, blk::kIn, 0, {{kRbuf, 4096}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(ram.at(kRbuf, 4096), 4096, 0, 1), -1)
      << "the fallback's write, via the VF";
  c = server_->counters();
  EXPECT_EQ(c.requests, 7u);
  EXPECT_GE(c.vf_ios, 3u) << "IO moved to the VF";
  EXPECT_EQ(c.to_vf, 1u);
  EXPECT_EQ(server_->stats().failed_requests, 0u);
}

TEST_F(VhostUserTest, FactoryFailureFailsTheMemoryTableAndIsRetried) {
  start(1);
  auto fe = connect();
  GuestRam ram;
  DriverRing ring(ram, kRingSize, 0);
  fail_factory_ = true;
  const vu::MemoryTable t = ram.table();
  const int fds[2] = {ram.fd(), ram.fd()};
  EXPECT_EQ(fe->ack(Request::set_mem_table, &t, 8 + 2 * sizeof(vu::MemoryRegion), fds), 1u);
  EXPECT_NE(server_->last_error().find("no paravisor this time"), std::string::npos);
  fail_factory_ = false;
  ASSERT_TRUE(fe->start_ring(ram, 0, ring));  // starting the ring builds the paravisor
  ASSERT_NE(server_->paravisor(), nullptr);
  round_trip(ram, ring, 9, 8, kWbuf, kRbuf, 6);
}

TEST_F(VhostUserTest, ServesTheNextFrontEndAfterADisconnect) {
  start(1);
  GuestRam ram;
  {
    auto fe = connect();
    DriverRing ring(ram, kRingSize, 0);
    DriverRing* rings[] = {&ring};
    ASSERT_TRUE(fe->handshake(ram, rings));
    round_trip(ram, ring, 77, 16, kWbuf, kRbuf, 3);
    fe->close();
    server_->run_once(std::chrono::milliseconds(100));  // notices the EOF
  }
  EXPECT_FALSE(server_->connected());
  EXPECT_EQ(server_->paravisor(), nullptr);
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0x20000);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  std::memset(ram.at(kRbuf, 8192), 0, 8192);
  ASSERT_EQ(io(ring, blk::kIn, 77, {{kRbuf, 8192}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(ram.at(kRbuf, 8192), 8192, 77, 3), -1);
  const auto s = server_->stats();
  EXPECT_EQ(s.connections, 2u);
  EXPECT_EQ(s.disconnects, 1u);
}

TEST_F(VhostUserTest, SecondFrontEndIsTurnedAway) {
  start(1);
  auto first = connect();
  ASSERT_TRUE(first->get_u64(Request::get_features).has_value());
  FrontEnd second(server_->socket_path(),
                  [this] { server_->run_once(std::chrono::milliseconds(100)); });
  ASSERT_TRUE(second.connect());
  EXPECT_TRUE(second.peer_closed());
  EXPECT_EQ(server_->stats().turned_away, 1u);
  EXPECT_TRUE(first->get_u64(Request::get_features).has_value()) << "the first is still served";
}

}  // namespace
}  // namespace keel::testing
