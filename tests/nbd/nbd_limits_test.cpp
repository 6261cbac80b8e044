// The NBD server's limits: requests in flight per connection, settings past the parsers'
// bounds, and the connection limit.
#include <atomic>
#include <functional>
#include <thread>

#include "nbd_fixture.h"

namespace keel::test {
namespace {

// Requests in flight per connection (queue_depth): past it the server reads no further
// request from that connection until a reply has gone out.
TEST_P(NbdTest, QueueDepthBoundsRequestsInFlight) {
  start([](vmm::NbdServerConfig& s) { s.queue_depth = 2; });
  auto c = open();
  ASSERT_NE(c, nullptr);
  // Replies of a MiB each: the first one fills the socket, so none can drain while this
  // client reads nothing.
  for (unsigned i = 0; i < 4; ++i) {
    ASSERT_TRUE(c->send_request(nbd::kCmdRead, 0, i, i * kMiB, static_cast<std::uint32_t>(kMiB)));
  }
  ASSERT_TRUE(eventually([&] { return disk_->server().stats().reads >= 2; }));
  // Another client's round trips: the server has had every chance to read the other two.
  auto other = open();
  ASSERT_NE(other, nullptr);
  std::vector<std::uint8_t> d;
  ASSERT_EQ(other->read(0, 4096, d), 0u);
  EXPECT_EQ(disk_->server().stats().reads, 3u);  // two of the four, and the other's one
  // Taking the replies lets the rest in.
  for (unsigned i = 0; i < 4; ++i) {
    nbd::SimpleReply r{};
    ASSERT_TRUE(c->read_reply(r));
    EXPECT_EQ(r.error, 0u);
    std::vector<std::uint8_t> data(kMiB);
    ASSERT_TRUE(c->recv_all(data.data(), data.size()));
  }
  EXPECT_EQ(disk_->server().stats().reads, 5u);
}

// Settings past the parsers' bounds are refused when the server is made.
TEST_P(NbdTest, ConfigurationBeyondTheLimitsIsRefused) {
  auto refused = [&](const std::function<void(vmm::NbdServerConfig&)>& tweak) {
    stack::NbdDiskOptions o;
    o.size_bytes = kDiskBytes;
    o.vf_path = std::string(GetParam()) == "vf";
    o.server.socket_path = socket_path();
    o.server.log = false;
    tweak(o.server);
    auto d = stack::NbdDisk::create(o);
    return !d.ok() && d.error().code == Errc::invalid_argument;
  };
  disk_.reset();
  EXPECT_TRUE(refused([](auto& s) { s.queue_depth = nbd::kMaxQueueDepth + 1; }));
  EXPECT_TRUE(refused([](auto& s) { s.max_connections = nbd::kMaxConnections + 1; }));
  EXPECT_TRUE(refused([](auto& s) { s.queues = nbd::kMaxQueues + 1; }));
  EXPECT_TRUE(refused([](auto& s) { s.queues = 0; }));
  EXPECT_TRUE(refused([](auto& s) { s.max_request_bytes = nbd::kMaxPayload * 2; }));
  EXPECT_TRUE(refused([](auto& s) { s.export_name = std::string(nbd::kMaxString + 1, 'n'); }));
}

TEST_P(NbdTest, ConnectionLimitAndManyClients) {
  start([](vmm::NbdServerConfig& s) { s.max_connections = 4; });
  std::vector<std::unique_ptr<NbdClient>> cs;
  for (unsigned i = 0; i < 4; ++i) {
    cs.push_back(open());
    ASSERT_NE(cs.back(), nullptr);
  }
  auto extra = client();
  ASSERT_NE(extra, nullptr);
  EXPECT_TRUE(extra->closed_by_peer());  // turned away
  // The four write their own regions at once, each pipelined.
  std::vector<std::thread> ts;
  std::atomic<unsigned> failures{0};
  for (unsigned i = 0; i < 4; ++i) {
    ts.emplace_back([&, i] {
      NbdClient& c = *cs[i];
      for (unsigned k = 0; k < 32; ++k) {
        const auto p = pattern(16384, i * 100 + k);
        if (c.write((i * 64 + k) * 16384ull, p, k % 8 == 0 ? nbd::kCmdFlagFua : 0) != 0) ++failures;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failures.load(), 0u);
  cs.pop_back();  // one leaves: room for another once the server has seen it go
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (disk_->server().stats().disconnects < 1 && std::chrono::steady_clock::now() < until) {
    std::this_thread::yield();
  }
  auto late = open();
  ASSERT_NE(late, nullptr);
  for (unsigned i = 0; i < 4; ++i) {
    for (unsigned k = 0; k < 32; ++k) {
      expect_data(*late, (i * 64 + k) * 16384ull, pattern(16384, i * 100 + k));
    }
  }
  EXPECT_GE(disk_->server().stats().turned_away, 1u);
  expect_path_used();
}

}  // namespace
}  // namespace keel::test
