// Bad NBD peers: invalid and out-of-range requests, bad magic, disconnects mid-request, and peers
// that stall, read slowly or idle (every timeout on a clock the test moves), none of which may
// hold the server's buffers or connection slots for ever.
#include <set>
#include <thread>

#include "nbd_fixture.h"

namespace keel::test {
namespace {

TEST_P(NbdTest, InvalidRequestsGetErrorsAndTheConnectionLives) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  const auto keep = pattern(4096, 3);
  ASSERT_EQ(c->write(0, keep), 0u);
  std::vector<std::uint8_t> d;
  EXPECT_EQ(c->read(kDiskBytes - 4096, 8192, d), nbd::kEinval);  // past the end
  EXPECT_EQ(c->read(kDiskBytes, 512, d), nbd::kEinval);
  EXPECT_EQ(c->read(~0ull - 100, 512, d), nbd::kEinval);                  // offset + length wraps
  EXPECT_EQ(c->write(kDiskBytes - 512, pattern(4096, 4)), nbd::kEnospc);  // payload skipped
  EXPECT_EQ(c->command(nbd::kCmdWriteZeroes, kDiskBytes, 4096), nbd::kEnospc);
  EXPECT_EQ(c->command(nbd::kCmdTrim, kDiskBytes - 512, 1024), nbd::kEinval);
  EXPECT_EQ(c->read(0, 0, d), nbd::kEinval);                             // zero length
  EXPECT_EQ(c->read(0, (32u << 20) + 512, d), nbd::kEinval);             // longer than the maximum
  EXPECT_EQ(c->write(0, pattern((32u << 20) + 4096, 5)), nbd::kEinval);  // payload skipped
  EXPECT_EQ(c->command(99, 0, 4096), nbd::kEinval);                      // unknown command
  EXPECT_EQ(c->command(nbd::kCmdCache, 0, 4096), nbd::kEinval);          // not advertised
  EXPECT_EQ(c->command(nbd::kCmdBlockStatus, 0, 4096), nbd::kEinval);
  EXPECT_EQ(c->command(nbd::kCmdRead, 0, 4096, 1u << 9), nbd::kEinval);  // unknown flag
  EXPECT_EQ(c->command(nbd::kCmdRead, 0, 4096, nbd::kCmdFlagDf), nbd::kEinval);
  expect_data(*c, 0, keep);  // the connection still works and nothing was written
  EXPECT_EQ(disk_->server().stats().protocol_errors, 0u);
}

TEST_P(NbdTest, BadMagicDisconnectsAndTheServerKeepsAccepting) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  const auto keep = pattern(4096, 8);
  ASSERT_EQ(c->write(4096, keep), 0u);
  ASSERT_TRUE(c->send_request(nbd::kCmdRead, 0, 1, 0, 4096, nullptr, 0xdeadbeef));
  EXPECT_TRUE(c->closed_by_peer());
  auto c2 = open();
  ASSERT_NE(c2, nullptr);
  expect_data(*c2, 4096, keep);
  EXPECT_EQ(disk_->server().stats().protocol_errors, 1u);
}

TEST_P(NbdTest, DisconnectMidRequestChangesNothing) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  const auto keep = pattern(kMiB, 9);
  ASSERT_EQ(c->write(kMiB, keep), 0u);
  // A write header and half its payload, then gone.
  const auto half = pattern(kMiB / 2, 10);
  ASSERT_TRUE(c->send_msg(nbd::Request{nbd::kRequestMagic, 0, nbd::kCmdWrite, 7, kMiB,
                                       static_cast<std::uint32_t>(kMiB)}));
  ASSERT_TRUE(c->send_all(half.data(), half.size()));
  c->close_now();
  // Requests in flight when the peer goes: their replies go nowhere, nothing breaks.
  auto c2 = open();
  ASSERT_NE(c2, nullptr);
  for (unsigned i = 0; i < 32; ++i) {
    ASSERT_TRUE(c2->send_request(nbd::kCmdRead, 0, i, i * 65536ull, 65536));
  }
  c2->close_now();
  // Half a header.
  auto c3 = open();
  ASSERT_NE(c3, nullptr);
  ASSERT_TRUE(c3->send_all("\x25\x60\x95\x13\x00\x00", 6));
  c3->close_now();
  auto c4 = open();
  ASSERT_NE(c4, nullptr);
  expect_data(*c4, kMiB, keep);
}

// Every timeout runs on a clock the test moves: with it standing still, 1 ms timeouts drop
// nobody however slow the machine is; moved on, they drop exactly the stalled peers.
TEST_P(NbdTest, StalledPeersAreDropped) {
  TestClock clock;
  start([&](vmm::NbdServerConfig& s) {
    s.handshake_timeout = std::chrono::milliseconds(1);
    s.io_timeout = std::chrono::milliseconds(1);
    s.idle_timeout = std::chrono::hours(24 * 365);  // IdleConnectionsTimeOut tests that one
    s.clock = clock.source();
  });
  auto idle = client();  // never finishes the handshake
  ASSERT_NE(idle, nullptr);
  auto partial = open();
  ASSERT_NE(partial, nullptr);
  ASSERT_TRUE(partial->send_all("\x25\x60\x95\x13\x00\x00\x00\x01", 8));  // 8 of 28 bytes
  auto half_write = open();
  ASSERT_NE(half_write, nullptr);
  ASSERT_TRUE(half_write->send_request(nbd::kCmdWrite, 0, 1, 0, 65536));  // no payload
  // An idle connection in transmission is fine until its idle timeout.
  auto quiet = open();
  ASSERT_NE(quiet, nullptr);
  const auto keep = pattern(4096, 50);
  ASSERT_EQ(quiet->write(0, keep), 0u);
  // A peer that takes none of its replies: more read data than the socket holds.
  auto deaf = open();
  ASSERT_NE(deaf, nullptr);
  const std::uint64_t replied = disk_->server().stats().requests;
  constexpr unsigned kReads = 16;  // 16 MiB: far more than a unix socket buffers
  for (unsigned i = 0; i < kReads; ++i) {
    ASSERT_TRUE(
        deaf->send_request(nbd::kCmdRead, 0, i, i * kMiB, static_cast<std::uint32_t>(kMiB)));
  }
  // The device finishes the reads before the clock moves (so they cannot time out on it).
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (disk_->server().stats().requests < replied + kReads &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(disk_->server().stats().requests, replied + kReads);
  EXPECT_EQ(disk_->server().stats().protocol_errors, 0u);  // the clock has not moved
  ASSERT_TRUE(advance_until_dropped(clock, 4)) << disk_->server().last_error();
  EXPECT_TRUE(idle->closed_by_peer());
  EXPECT_TRUE(partial->closed_by_peer());
  EXPECT_TRUE(half_write->closed_by_peer());
  EXPECT_TRUE(deaf->closed_by_peer());
  expect_data(*quiet, 0, keep);
  const auto s = disk_->server().stats();
  EXPECT_EQ(s.protocol_errors, 4u);
  EXPECT_EQ(s.send_timeouts, 1u);
  EXPECT_EQ(s.idle_timeouts, 0u);
  EXPECT_EQ(s.device_timeouts, 0u);
  EXPECT_EQ(s.error_replies, 0u);
}

// Issue 10 item 5. A client sends two of the largest READs (32 MiB each: with the default
// 64 MiB of buffers, the whole pool) and takes its replies a little at a time. Its quota holds
// it to one of them; another client's small READ is answered at once; and the slow reader is
// dropped when its reply's send deadline passes, however much progress it makes meanwhile.
TEST_P(NbdTest, SlowReaderCannotHoardTheBufferPool) {
  TestClock clock;
  start([&](vmm::NbdServerConfig& s) {
    s.io_timeout = std::chrono::seconds(10);
    s.clock = clock.source();
  });
  auto other = open();
  ASSERT_NE(other, nullptr);
  const auto keep = pattern(4096, 80);
  ASSERT_EQ(other->write(40 * kMiB, keep), 0u);
  auto hog = open();
  ASSERT_NE(hog, nullptr);
  constexpr std::uint32_t kBig = 32u << 20;
  ASSERT_TRUE(hog->send_request(nbd::kCmdRead, 0, 1, 0, kBig));
  ASSERT_TRUE(hog->send_request(nbd::kCmdRead, 0, 2, 8 * kMiB, kBig));
  // The server has taken both: the first runs, the second waits (on the hog's quota; before
  // the fix it took the rest of the pool).
  ASSERT_TRUE(eventually([&] {
    const auto s = disk_->server().stats();
    return s.reads >= 2 || s.quota_waits >= 1;
  }));
  expect_data(*other, 40 * kMiB, keep);  // not held up by the hog's replies
  EXPECT_EQ(disk_->server().stats().quota_waits, 1u);
  // The hog's first reply is queued (its send deadline runs from here)...
  ASSERT_TRUE(eventually([&] { return disk_->server().stats().bytes_read >= kBig; }));
  // ...and the hog keeps taking some of it: 6 s, a MiB, 6 s. Progress does not move the
  // deadline: 12 s after the reply headed the queue the hog is gone.
  clock.advance(std::chrono::seconds(6));
  std::vector<std::uint8_t> some(kMiB);
  ASSERT_TRUE(hog->recv_all(some.data(), some.size()));  // more than the socket buffers
  clock.advance(std::chrono::seconds(6));
  ASSERT_TRUE(eventually([&] { return disk_->server().stats().protocol_errors >= 1; }))
      << "the slow reader was not dropped at its send deadline";
  EXPECT_TRUE(hog->closed_by_peer());
  const auto s = disk_->server().stats();
  EXPECT_EQ(s.send_timeouts, 1u);
  EXPECT_EQ(s.protocol_errors, 1u);
  // Its buffers are back: the largest READ fits again.
  std::vector<std::uint8_t> big;
  ASSERT_EQ(other->read(16 * kMiB, kBig, big), 0u);
  EXPECT_TRUE(std::equal(keep.begin(), keep.end(), big.begin() + 24 * kMiB));
  expect_path_used();
}

// A slow reader that takes one reply per send deadline must not hold the buffers of the
// replies queued behind it for queue_depth x io_timeout: each reply's deadline runs from when it
// was queued, so the second reply, queued with the first, is late when the first is taken.
TEST_P(NbdTest, EachQueuedReplyHasItsOwnSendDeadline) {
  TestClock clock;
  start([&](vmm::NbdServerConfig& s) {
    s.io_timeout = std::chrono::seconds(10);
    s.clock = clock.source();
  });
  auto hog = open();
  ASSERT_NE(hog, nullptr);
  for (std::uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(hog->send_request(nbd::kCmdRead, 0, i + 1, i * kMiB, kMiB));
  }
  // All four replies are queued (the reads are done)...
  ASSERT_TRUE(eventually([&] { return disk_->server().stats().bytes_read >= 4 * kMiB; }));
  // ...the hog takes the first one 6 s later, within its deadline...
  clock.advance(std::chrono::seconds(6));
  nbd::SimpleReply r{};
  ASSERT_TRUE(hog->read_reply(r)) << hog->failure();
  std::vector<std::uint8_t> data(kMiB);
  ASSERT_TRUE(hog->recv_all(data.data(), data.size()));
  // ...and 6 s after that the second reply, queued 12 s ago, is past its own deadline.
  clock.advance(std::chrono::seconds(6));
  ASSERT_TRUE(eventually([&] { return disk_->server().stats().send_timeouts >= 1; }))
      << "the second reply's deadline restarted when it reached the head of the queue";
  EXPECT_TRUE(hog->closed_by_peer());
  EXPECT_EQ(disk_->server().stats().send_timeouts, 1u);
}

// A connection waiting for buffers (here: past its quota) reads nothing more until it has
// them, even when one of its replies goes out meanwhile. Found by nbd_fuzz: the server parsed
// the next request header then, lost the waiting request and queued the connection twice.
TEST_P(NbdTest, AConnectionWaitingForBuffersParsesNothingMore) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  constexpr std::uint32_t kBig = 32u << 20;
  ASSERT_TRUE(c->send_request(nbd::kCmdRead, 0, 1, 0, kBig));
  ASSERT_TRUE(c->send_request(nbd::kCmdRead, 0, 2, 0, kBig));  // past the quota: waits
  ASSERT_TRUE(c->send_request(nbd::kCmdRead, 0, 3, 0, 4096));  // behind it, already sent
  std::set<std::uint64_t> seen;
  for (unsigned i = 0; i < 3; ++i) {
    nbd::SimpleReply r{};
    ASSERT_TRUE(c->read_reply(r)) << "reply " << i << ": " << c->failure();
    ASSERT_EQ(r.error, 0u);
    ASSERT_TRUE(seen.insert(r.handle).second);
    std::vector<std::uint8_t> data(r.handle == 3 ? 4096 : kBig);
    ASSERT_TRUE(c->recv_all(data.data(), data.size()));
  }
  EXPECT_EQ(seen, (std::set<std::uint64_t>{1, 2, 3}));
  EXPECT_EQ(disk_->server().stats().quota_waits, 1u);
  expect_path_used();
}

// Issue 10 item 5: idle connections in transmission time out, so they cannot keep every
// connection slot (here 2) from new clients for ever.
TEST_P(NbdTest, IdleConnectionsTimeOut) {
  TestClock clock;
  start([&](vmm::NbdServerConfig& s) {
    s.max_connections = 2;
    s.idle_timeout = std::chrono::seconds(60);
    s.clock = clock.source();
  });
  auto a = open();
  ASSERT_NE(a, nullptr);
  auto b = open();
  ASSERT_NE(b, nullptr);
  const auto keep = pattern(4096, 81);
  ASSERT_EQ(a->write(0, keep), 0u);
  auto turned_away = client();
  ASSERT_NE(turned_away, nullptr);
  EXPECT_TRUE(turned_away->closed_by_peer());  // both slots taken
  // A minute and a bit at a time: a connection is idle from the first timer check that sees it
  // so, and closed at a check past idle_timeout from there.
  ASSERT_TRUE(eventually([&] {
    clock.advance(std::chrono::seconds(61));
    return disk_->server().stats().disconnects >= 2;
  })) << "idle connections were never closed";
  EXPECT_TRUE(a->closed_by_peer());
  EXPECT_TRUE(b->closed_by_peer());
  auto late = open();
  ASSERT_NE(late, nullptr);
  expect_data(*late, 0, keep);
  const auto s = disk_->server().stats();
  EXPECT_EQ(s.idle_timeouts, 2u);
  EXPECT_EQ(s.protocol_errors, 0u);
}

}  // namespace
}  // namespace keel::test
