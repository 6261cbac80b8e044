// Several connections served in parallel (NbdServerConfig::queues workers, each on its own
// virtqueue and VF queue pair): verified IO on disjoint ranges from connections at once,
// NBD_FLAG_CAN_MULTI_CONN and its promise (a flush on one connection covers writes completed on
// another), byte-disjoint unaligned writes into the same sectors from two connections (the
// overlap order spans the workers), and a connection past the limit (closed at once, logged).
#include <fcntl.h>
#include <unistd.h>

#include <dirent.h>
#include <atomic>
#include <fstream>
#include <set>
#include <thread>

#include "nbd_fixture.h"

namespace keel::test {
namespace {

constexpr unsigned kConns = 3;

void parallel(unsigned n, const std::function<void(unsigned)>& body) {
  std::vector<std::thread> ts;
  for (unsigned i = 0; i < n; ++i) ts.emplace_back(body, i);
  for (auto& t : ts) t.join();
}

/// Names of this process's threads.
std::set<std::string> thread_names() {
  std::set<std::string> names;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::string n;
    if (std::getline(f, n)) names.insert(n);
  }
  closedir(d);
  return names;
}

class NbdMultiTest : public NbdTest {
 protected:
  void SetUp() override {
    start([](vmm::NbdServerConfig& s) {
      s.queues = kConns;
      s.max_connections = kConns;
    });
  }
  std::vector<std::unique_ptr<NbdClient>> open_all() {
    std::vector<std::unique_ptr<NbdClient>> cs;
    for (unsigned i = 0; i < kConns; ++i) {
      auto c = client();
      if (c == nullptr) return {};
      NbdClient::Export e;
      EXPECT_TRUE(c->open("keel", e)) << c->failure();
      EXPECT_EQ(e.flags & nbd::kFlagCanMultiConn, nbd::kFlagCanMultiConn);
      cs.push_back(std::move(c));
    }
    return cs;
  }
};

TEST_P(NbdMultiTest, ConnectionsInParallelOnDisjointRangesAndOneTooMany) {
  auto cs = open_all();
  ASSERT_EQ(cs.size(), kConns);
  // One worker thread per queue.
  const auto names = thread_names();
  for (unsigned i = 0; i < kConns; ++i) {
    EXPECT_TRUE(names.count("keel-nbd-srv" + std::to_string(i))) << "worker " << i;
  }
  // One more than the limit: closed at once, and said so.
  auto extra = client();
  ASSERT_NE(extra, nullptr);
  EXPECT_TRUE(extra->closed_by_peer());
  EXPECT_GE(disk_->server().stats().turned_away, 1u);
  EXPECT_NE(disk_->server().last_error().find("connection refused"), std::string::npos)
      << disk_->server().last_error();
  // Each connection writes its own 4 MiB region, pipelined, and reads it back at once.
  constexpr std::uint64_t kRegion = 4 * kMiB;
  constexpr unsigned kIos = 64;
  std::atomic<unsigned> failures{0};
  parallel(kConns, [&](unsigned i) {
    NbdClient& c = *cs[i];
    for (unsigned k = 0; k < kIos; ++k) {
      const std::uint32_t len = 4096u << (k % 5);  // 4 KiB .. 64 KiB
      const std::uint64_t off = i * kRegion + k * 65536ull;
      if (c.write(off, pattern(len, i * 1000 + k), k % 16 == 0 ? nbd::kCmdFlagFua : 0) != 0)
        ++failures;
    }
    for (unsigned k = 0; k < kIos; ++k) {
      const std::uint32_t len = 4096u << (k % 5);
      std::vector<std::uint8_t> got;
      if (c.read(i * kRegion + k * 65536ull, len, got) != 0 || got != pattern(len, i * 1000 + k))
        ++failures;
    }
  });
  EXPECT_EQ(failures.load(), 0u);
  // And every connection sees the others' data.
  for (unsigned i = 0; i < kConns; ++i) {
    NbdClient& reader = *cs[(i + 1) % kConns];
    for (unsigned k = 0; k < kIos; k += 7) {
      expect_data(reader, i * kRegion + k * 65536ull, pattern(4096u << (k % 5), i * 1000 + k));
    }
  }
  // A connection leaves; its slot serves a new one.
  cs.pop_back();
  ASSERT_TRUE(eventually([&] { return disk_->server().stats().disconnects >= 1; }));
  std::unique_ptr<NbdClient> late;
  ASSERT_TRUE(eventually([&] {
    late = client();
    NbdClient::Export e;
    return late != nullptr && late->open("keel", e);
  }));
  expect_data(*late, 0, pattern(4096, 0));
  EXPECT_EQ(disk_->server().stats().error_replies, 0u);
  expect_path_used();
}

// NBD_FLAG_CAN_MULTI_CONN: writes completed on one connection, a flush on another; then the
// data is in the disk image itself (what the flush must have made durable).
TEST_P(NbdMultiTest, FlushOnOneConnectionCoversWritesOfAnother) {
  auto cs = open_all();
  ASSERT_EQ(cs.size(), kConns);
  for (unsigned k = 0; k < 16; ++k) {
    ASSERT_EQ(cs[0]->write(20 * kMiB + k * 8192ull, pattern(8192, 500 + k)), 0u);
    ASSERT_EQ(cs[1]->write(24 * kMiB + k * 8192ull, pattern(8192, 600 + k)), 0u);
  }
  const auto flushes = disk_->server().stats().flushes;
  ASSERT_EQ(cs[2]->command(nbd::kCmdFlush, 0, 0), 0u);
  EXPECT_EQ(disk_->server().stats().flushes, flushes + 1);
  const int fd = ::open(disk_->image().c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << disk_->image();
  for (unsigned k = 0; k < 16; ++k) {
    std::vector<std::uint8_t> got(8192);
    ASSERT_EQ(pread(fd, got.data(), got.size(), static_cast<off_t>(20 * kMiB + k * 8192ull)), 8192);
    EXPECT_TRUE(got == pattern(8192, 500 + k)) << "connection 0, write " << k;
    ASSERT_EQ(pread(fd, got.data(), got.size(), static_cast<off_t>(24 * kMiB + k * 8192ull)), 8192);
    EXPECT_TRUE(got == pattern(8192, 600 + k)) << "connection 1, write " << k;
  }
  ::close(fd);
  expect_data(*cs[2], 20 * kMiB, pattern(8192, 500));
  expect_path_used();
}

// Byte-disjoint unaligned writes into the same sectors from connections served by different
// workers, at once: each is a read-modify-write of shared edge sectors, ordered across the
// workers, so no connection's bytes are lost.
TEST_P(NbdMultiTest, UnalignedWritesFromSeveralConnectionsIntoTheSameSectors) {
  auto cs = open_all();
  ASSERT_EQ(cs.size(), kConns);
  constexpr std::uint64_t kBase = 30 * kMiB;
  constexpr unsigned kPieces = 48;       // per connection; piece p of connection i: 100 bytes at
  constexpr std::uint32_t kPiece = 100;  // kBase + (p * kConns + i) * kPiece
  std::atomic<unsigned> failures{0};
  parallel(kConns, [&](unsigned i) {
    NbdClient& c = *cs[i];
    // Pipelined: several of one connection's RMWs in flight against the others'.
    for (unsigned p = 0; p < kPieces; ++p) {
      const auto data = pattern(kPiece, 7000 + p * kConns + i);
      if (!c.send_request(nbd::kCmdWrite, 0, p, kBase + (p * kConns + i) * kPiece, kPiece,
                          data.data())) {
        ++failures;
        return;
      }
    }
    for (unsigned p = 0; p < kPieces; ++p) {
      nbd::SimpleReply r{};
      if (!c.read_reply(r) || r.error != 0) ++failures;
    }
  });
  ASSERT_EQ(failures.load(), 0u);
  for (unsigned n = 0; n < kPieces * kConns; ++n) {
    expect_data(*cs[0], kBase + n * kPiece, pattern(kPiece, 7000 + n));
  }
  EXPECT_GE(disk_->server().stats().unaligned, kPieces * kConns);
  expect_path_used();
}

INSTANTIATE_TEST_SUITE_P(Paths, NbdMultiTest, ::testing::Values("vf", "fallback"),
                         [](const auto& p) { return std::string(p.param); });

}  // namespace
}  // namespace keel::test
