// IO through the NBD server, verified: every size (split into several virtio requests),
// pipelined requests, flush/FUA, write zeroes and trim, unaligned read-modify-writes, and a
// read-only export.
#include <set>
#include <thread>

#include "nbd_fixture.h"

namespace keel::test {
namespace {

TEST_P(NbdTest, VerifiedWritesAndReadsOfEverySize) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  struct Io {
    std::uint64_t off;
    std::uint32_t len;
  };
  const Io ios[] = {
      {0, 4096},                   // one page
      {40960 + 512, 512},          // one sector
      {3 * kMiB, 1 * kMiB + 512},  // more than one virtio request
      {8 * kMiB, 32u << 20},       // the largest payload: 32 virtio requests
      {kDiskBytes - 8192, 8192},   // the last blocks
  };
  std::uint32_t seed = 1;
  for (const Io& io : ios) ASSERT_EQ(c->write(io.off, pattern(io.len, seed++)), 0u);
  seed = 1;
  for (const Io& io : ios) expect_data(*c, io.off, pattern(io.len, seed++));
  // FUA write and a flush.
  ASSERT_EQ(c->write(5 * kMiB, pattern(65536, 99), nbd::kCmdFlagFua), 0u);
  EXPECT_EQ(c->command(nbd::kCmdFlush, 0, 0), 0u);
  expect_data(*c, 5 * kMiB, pattern(65536, 99));
  const auto s = disk_->server().stats();
  EXPECT_GE(s.flushes, 1u);
  EXPECT_EQ(s.error_replies, 0u);
  EXPECT_EQ(s.bytes_written, s.bytes_read);
  expect_path_used();
}

TEST_P(NbdTest, PipelinedRequestsCompleteByHandle) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  // More requests than the queue depth (64) and the socket buffer hold: a sender thread keeps
  // sending while this thread takes replies, as a real client with iodepth does.
  constexpr unsigned kN = 400;
  std::vector<std::uint64_t> offsets(kN);
  for (unsigned i = 0; i < kN; ++i) offsets[i] = (i * 7919ull % (kDiskBytes / 4096)) * 4096;
  std::set<std::uint64_t> unique(offsets.begin(), offsets.end());
  ASSERT_EQ(unique.size(), kN);
  std::thread sender([&] {
    for (unsigned i = 0; i < kN; ++i) {
      const auto data = pattern(4096, 1000 + i);
      if (!c->send_request(nbd::kCmdWrite, 0, 0x100000000ull + i, offsets[i], 4096, data.data()))
        return;
    }
  });
  const Joiner join_sender{sender, *c};
  std::set<std::uint64_t> seen;
  for (unsigned i = 0; i < kN; ++i) {
    nbd::SimpleReply r{};
    ASSERT_TRUE(c->read_reply(r)) << "reply " << i;
    EXPECT_EQ(r.error, 0u);
    EXPECT_TRUE(seen.insert(r.handle).second) << "handle twice: " << r.handle;
  }
  sender.join();
  // Pipelined reads: replies carry their data right after the header.
  std::thread reader_sender([&] {
    for (unsigned i = 0; i < kN; ++i) {
      if (!c->send_request(nbd::kCmdRead, 0, i, offsets[i], 4096)) return;
    }
  });
  const Joiner join_reader_sender{reader_sender, *c};
  unsigned out_of_order = 0;
  for (unsigned i = 0; i < kN; ++i) {
    nbd::SimpleReply r{};
    ASSERT_TRUE(c->read_reply(r));
    ASSERT_EQ(r.error, 0u);
    ASSERT_LT(r.handle, kN);
    out_of_order += r.handle != i ? 1u : 0u;
    std::vector<std::uint8_t> got(4096);
    ASSERT_TRUE(c->recv_all(got.data(), got.size()));
    EXPECT_TRUE(got == pattern(4096, 1000 + static_cast<std::uint32_t>(r.handle)))
        << "handle " << r.handle;
  }
  reader_sender.join();
  std::printf("pipelined reads replied out of order: %u of %u\n", out_of_order, kN);
  expect_path_used();
}

TEST_P(NbdTest, WriteZeroesAndTrim) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  const std::uint64_t base = 2 * kMiB;
  auto data = pattern(kMiB, 5);
  ASSERT_EQ(c->write(base, data), 0u);
  // Aligned write zeroes in the middle.
  ASSERT_EQ(c->command(nbd::kCmdWriteZeroes, base + 4096, 8192), 0u);
  std::fill(data.begin() + 4096, data.begin() + 4096 + 8192, 0);
  // Unaligned write zeroes: read-modify-write of both edge sectors.
  ASSERT_EQ(c->command(nbd::kCmdWriteZeroes, base + 20000, 1000, nbd::kCmdFlagNoHole), 0u);
  std::fill(data.begin() + 20000, data.begin() + 21000, 0);
  // Inside one sector.
  ASSERT_EQ(c->command(nbd::kCmdWriteZeroes, base + 30010, 20, nbd::kCmdFlagFua), 0u);
  std::fill(data.begin() + 30010, data.begin() + 30030, 0);
  // Trim (zero mode): whole sectors inside the range read back as zeroes.
  ASSERT_EQ(c->command(nbd::kCmdTrim, base + 65536, 65536), 0u);
  std::fill(data.begin() + 65536, data.begin() + 131072, 0);
  expect_data(*c, base, data);
  // Longer than one virtio write-zeroes (32 MiB): split.
  ASSERT_EQ(c->write(10 * kMiB, pattern(4096, 6)), 0u);
  ASSERT_EQ(c->write(10 * kMiB + 34 * kMiB - 4096, pattern(4096, 7)), 0u);
  ASSERT_EQ(c->command(nbd::kCmdWriteZeroes, 10 * kMiB, 34 * kMiB), 0u);
  expect_data(*c, 10 * kMiB, std::vector<std::uint8_t>(4096, 0));
  expect_data(*c, 10 * kMiB + 34 * kMiB - 4096, std::vector<std::uint8_t>(4096, 0));
  // FAST_ZERO was not advertised.
  EXPECT_EQ(c->command(nbd::kCmdWriteZeroes, 0, 4096, nbd::kCmdFlagFastZero), nbd::kEinval);
  expect_path_used();
}

TEST_P(NbdTest, UnalignedWritesReadModifyWrite) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  const std::uint64_t base = 6 * kMiB;
  auto data = pattern(65536, 11);
  ASSERT_EQ(c->write(base, data), 0u);
  const auto b = pattern(3000, 12);
  ASSERT_EQ(c->write(base + 1000, b), 0u);
  std::copy(b.begin(), b.end(), data.begin() + 1000);
  const auto t = pattern(7, 13);  // inside one sector
  ASSERT_EQ(c->write(base + 5000, t, nbd::kCmdFlagFua), 0u);
  std::copy(t.begin(), t.end(), data.begin() + 5000);
  // Pipelined unaligned writes to different bytes of the same sectors: none may lose another's.
  for (unsigned i = 0; i < 16; ++i) {
    const auto p = pattern(100, 20 + i);
    ASSERT_TRUE(c->send_request(nbd::kCmdWrite, 0, 500 + i, base + 8192 + i * 130, 100, p.data()));
    std::copy(p.begin(), p.end(), data.begin() + 8192 + i * 130);
  }
  for (unsigned i = 0; i < 16; ++i) {
    nbd::SimpleReply r{};
    ASSERT_TRUE(c->read_reply(r));
    EXPECT_EQ(r.error, 0u);
  }
  expect_data(*c, base, data);
  // Unaligned reads.
  std::vector<std::uint8_t> got;
  ASSERT_EQ(c->read(base + 7, 10, got), 0u);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin() + 7));
  ASSERT_EQ(c->read(base + 4095, 4099, got), 0u);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin() + 4095));
  EXPECT_GE(disk_->server().stats().unaligned, 20u);
  expect_path_used();
}

TEST_P(NbdTest, ReadOnlyExportRefusesWrites) {
  start([](vmm::NbdServerConfig& s) { s.read_only = true; });
  auto c = client();
  ASSERT_TRUE(c->handshake());
  NbdClient::Export e;
  ASSERT_EQ(c->go("keel", e), nbd::kRepAck);
  EXPECT_NE(e.flags & nbd::kFlagReadOnly, 0);
  EXPECT_EQ(c->write(0, pattern(4096, 1)), nbd::kEperm);
  EXPECT_EQ(c->command(nbd::kCmdWriteZeroes, 0, 4096), nbd::kEperm);
  EXPECT_EQ(c->command(nbd::kCmdTrim, 0, 4096), nbd::kEperm);
  std::vector<std::uint8_t> d;
  EXPECT_EQ(c->read(0, 4096, d), 0u);
  EXPECT_EQ(c->command(nbd::kCmdFlush, 0, 0), 0u);
}

}  // namespace
}  // namespace keel::test
