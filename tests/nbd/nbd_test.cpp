// The NBD export of a keel guest disk, driven by a scripted client over its unix socket, on the
// accelerated path and on the fallback: negotiation, verified IO (split, pipelined, unaligned),
// flush/FUA, write zeroes and trim, and bad peers (bad magic, out-of-range and oversized
// requests, disconnects mid-request, stalls). The card runs free (the server needs its own
// threads); every wait is bounded (the client's socket timeout, or a minute where a test polls
// a counter), the server's timeouts run on a clock the test moves, and nothing asserts on time.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "nbd_client.h"

namespace keel::test {
namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
constexpr std::uint64_t kDiskBytes = 48 * kMiB;

std::vector<std::uint8_t> pattern(std::size_t n, std::uint32_t seed) {
  std::vector<std::uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<std::uint8_t>(rng());
  return v;
}

std::string socket_path() {
  static std::atomic<unsigned> n{0};
  return "/tmp/keel-nbd-test-" + std::to_string(getpid()) + "-" + std::to_string(n++) + ".sock";
}

/// Joins a client-side sender thread even when an assertion returns early (the socket is shut
/// down first, so the thread's blocked send fails instead of waiting for the timeout).
struct Joiner {
  std::thread& thread;
  NbdClient& client;
  ~Joiner() {
    if (thread.joinable()) {
      shutdown(client.fd(), SHUT_RDWR);
      thread.join();
    }
  }
};

/// A clock for the server's timeouts that moves only when the test says so.
class ManualClock {
 public:
  std::function<std::chrono::nanoseconds()> source() const {
    return [t = t_] { return std::chrono::nanoseconds(t->load()); };
  }
  void advance(std::chrono::nanoseconds d) { t_->fetch_add(d.count()); }

 private:
  std::shared_ptr<std::atomic<std::int64_t>> t_ =
      std::make_shared<std::atomic<std::int64_t>>(1'000'000'000);
};

class NbdTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { start({}); }
  void TearDown() override { disk_.reset(); }

  /// (Re)starts the disk with server settings changed by `tweak`.
  void start(const std::function<void(vmm::NbdServerConfig&)>& tweak) {
    disk_.reset();
    vmm::NbdDiskOptions o;
    o.size_bytes = kDiskBytes;
    o.vf_path = std::string(GetParam()) == "vf";
    o.server.socket_path = socket_path();
    o.server.log = false;
    if (tweak) tweak(o.server);
    auto d = vmm::NbdDisk::create(o);
    ASSERT_TRUE(d.ok()) << to_string(d.error());
    disk_ = std::move(d).value();
  }

  std::unique_ptr<NbdClient> client() {
    auto c = NbdClient::connect(disk_->server().socket_path());
    EXPECT_NE(c, nullptr);
    return c;
  }
  std::unique_ptr<NbdClient> open() {
    auto c = client();
    if (c == nullptr) return nullptr;
    NbdClient::Export e;
    EXPECT_TRUE(c->open("keel", e)) << c->failure();
    EXPECT_EQ(e.size, kDiskBytes);
    return c;
  }

  /// Moves `clock` an hour on, again and again, until the server has dropped `peers` peers in
  /// all: a message or a stall the server had not seen yet when the clock moved starts its wait
  /// then, and the next move ends it. Bounded by a minute of real time, which a loaded machine
  /// does not need and a server that drops nobody runs out.
  bool advance_until_dropped(ManualClock& clock, std::uint64_t peers) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (disk_->server().stats().protocol_errors < peers) {
      if (std::chrono::steady_clock::now() > until) return false;
      clock.advance(std::chrono::hours(1));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

  void expect_data(NbdClient& c, std::uint64_t off, const std::vector<std::uint8_t>& want) {
    std::vector<std::uint8_t> got;
    ASSERT_EQ(c.read(off, static_cast<std::uint32_t>(want.size()), got), 0u) << "read at " << off;
    ASSERT_TRUE(got == want) << "data differs at offset " << off << " (+" << want.size() << ")";
  }

  /// Every test ends here: the path that was asked for carried the IO.
  void expect_path_used() {
    const auto c = disk_->paravisor().counters();
    if (std::string(GetParam()) == "vf") {
      EXPECT_GT(c.vf_ios, 0u);
      EXPECT_EQ(c.fallback_ios, 0u);
    } else {
      EXPECT_GT(c.fallback_ios, 0u);
      EXPECT_EQ(c.vf_ios, 0u);
    }
  }

  std::unique_ptr<vmm::NbdDisk> disk_;
};

TEST_P(NbdTest, GoNegotiatesExportAndBlockSizes) {
  auto c = client();
  ASSERT_TRUE(c->handshake());
  EXPECT_EQ(c->greeting_flags(), nbd::kFlagFixedNewstyle | nbd::kFlagNoZeroes);
  NbdClient::Export e;
  ASSERT_EQ(c->go("keel", e), nbd::kRepAck);
  EXPECT_EQ(e.size, kDiskBytes);
  EXPECT_EQ(e.name, "keel");
  EXPECT_EQ(e.description, "keel guest disk");
  const std::uint16_t want = nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendFua |
                             nbd::kFlagSendTrim | nbd::kFlagSendWriteZeroes |
                             nbd::kFlagCanMultiConn;
  EXPECT_EQ(e.flags, want);
  EXPECT_EQ(e.block.type, nbd::kInfoBlockSize);
  EXPECT_EQ(e.block.minimum, 512u);
  EXPECT_EQ(e.block.preferred, 4096u);
  EXPECT_EQ(e.block.maximum, 32u << 20);
  std::vector<std::uint8_t> d;
  EXPECT_EQ(c->read(0, 4096, d), 0u);
}

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

TEST_P(NbdTest, OptionHaggling) {
  auto c = client();
  ASSERT_TRUE(c->handshake());
  NbdClient::OptReply r;
  // LIST: one export, then ACK.
  ASSERT_TRUE(c->send_option(nbd::kOptList, ""));
  ASSERT_TRUE(c->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepServer);
  ASSERT_GE(r.data.size(), 8u);
  EXPECT_EQ(r.data.substr(4, 4), "keel");
  ASSERT_TRUE(c->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepAck);
  ASSERT_TRUE(c->send_option(nbd::kOptList, "x"));
  ASSERT_TRUE(c->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepErrInvalid);
  // Options this server does not do.
  for (std::uint32_t opt : {nbd::kOptStartTls, nbd::kOptStructuredReply, 42u, 0xffffffffu}) {
    ASSERT_TRUE(c->send_option(opt, ""));
    ASSERT_TRUE(c->read_opt_reply(r));
    EXPECT_EQ(r.option, opt);
    EXPECT_EQ(r.type, nbd::kRepErrUnsup) << "option " << opt;
    EXPECT_FALSE(r.data.empty());  // a message for humans
  }
  // An option too long to take is skipped and refused.
  ASSERT_TRUE(c->send_option(77, std::string(100000, 'z')));
  ASSERT_TRUE(c->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepErrTooBig);
  // INFO: unknown export, malformed, then fine (and still negotiating).
  NbdClient::Export e;
  EXPECT_EQ(c->go("nope", e, true), nbd::kRepErrUnknown);
  ASSERT_TRUE(c->send_option(nbd::kOptInfo, std::string("\0\0\0\x09keel", 8)));
  ASSERT_TRUE(c->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepErrInvalid);
  std::string bad = NbdClient::info_request("keel", {1});
  bad.pop_back();  // request count says one, the data holds half
  ASSERT_TRUE(c->send_option(nbd::kOptGo, bad));
  ASSERT_TRUE(c->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepErrInvalid);
  EXPECT_EQ(c->go("keel", e, true), nbd::kRepAck);
  EXPECT_EQ(e.size, kDiskBytes);
  // GO on the default export ("") with no information requested.
  e = {};
  EXPECT_EQ(c->go("", e, false, {}), nbd::kRepAck);
  EXPECT_EQ(e.size, kDiskBytes);
  EXPECT_EQ(e.block.minimum, 512u);  // sent anyway
  std::vector<std::uint8_t> d;
  EXPECT_EQ(c->read(0, 512, d), 0u);
  // ABORT: ACK, then the server closes.
  auto a = client();
  ASSERT_TRUE(a->handshake());
  ASSERT_TRUE(a->send_option(nbd::kOptAbort, ""));
  ASSERT_TRUE(a->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepAck);
  EXPECT_TRUE(a->closed_by_peer());
  EXPECT_EQ(disk_->server().stats().protocol_errors, 0u);
}

TEST_P(NbdTest, ExportNameWithAndWithoutZeroes) {
  for (bool no_zeroes : {false, true}) {
    auto c = client();
    ASSERT_TRUE(c->handshake(nbd::kFlagCFixedNewstyle | (no_zeroes ? nbd::kFlagCNoZeroes : 0u)));
    ASSERT_TRUE(c->send_option(nbd::kOptExportName, "keel"));
    nbd::ExportNameReply r{};
    ASSERT_TRUE(c->recv_msg(r));
    EXPECT_EQ(r.size, kDiskBytes);
    EXPECT_NE(r.flags & nbd::kFlagHasFlags, 0);
    if (!no_zeroes) {
      std::vector<std::uint8_t> z(124, 1);
      ASSERT_TRUE(c->recv_all(z.data(), z.size()));
      EXPECT_EQ(z, std::vector<std::uint8_t>(124, 0));
    }
    const auto p = pattern(4096, 30);
    ASSERT_EQ(c->write(12288, p), 0u);
    expect_data(*c, 12288, p);
    // DISC after requests in flight: their replies come first, then the server closes.
    for (unsigned i = 0; i < 8; ++i) {
      ASSERT_TRUE(c->send_request(nbd::kCmdWrite, 0, 900 + i, i * 4096ull, 4096, p.data()));
    }
    ASSERT_TRUE(c->send_request(nbd::kCmdDisc, 0, 999, 0, 0));
    for (unsigned i = 0; i < 8; ++i) {
      nbd::SimpleReply sr{};
      ASSERT_TRUE(c->read_reply(sr));
      EXPECT_EQ(sr.error, 0u);
    }
    EXPECT_TRUE(c->closed_by_peer());
  }
  // Unknown export: the spec leaves nothing but closing.
  auto c = client();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_option(nbd::kOptExportName, "other"));
  EXPECT_TRUE(c->closed_by_peer());
}

TEST_P(NbdTest, HandshakeViolationsDisconnect) {
  auto c = client();
  ASSERT_TRUE(c->handshake(0x80));  // unknown client flag
  EXPECT_TRUE(c->closed_by_peer());
  c = client();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_msg(nbd::OptionHeader{0x1234, nbd::kOptGo, 0}));  // bad option magic
  EXPECT_TRUE(c->closed_by_peer());
  c = client();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_msg(nbd::OptionHeader{nbd::kOptMagic, nbd::kOptGo, 1u << 30}));
  EXPECT_TRUE(c->closed_by_peer());  // a gigabyte of option data: not waited for
  EXPECT_EQ(disk_->server().stats().protocol_errors, 3u);
  auto ok = open();
  ASSERT_NE(ok, nullptr);
}

// Every timeout runs on a clock the test moves: with it standing still, 1 ms timeouts drop
// nobody however slow the machine is; moved on, they drop exactly the stalled peers.
TEST_P(NbdTest, StalledPeersAreDropped) {
  ManualClock clock;
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

/// Polls `done` every millisecond for at most a minute of real time (a bound that a loaded
/// machine does not need and a broken server runs out).
bool eventually(const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Issue 10 item 5. A client sends two of the largest READs (32 MiB each: with the default
// 64 MiB of buffers, the whole pool) and takes its replies a little at a time. Its quota holds
// it to one of them; another client's small READ is answered at once; and the slow reader is
// dropped when its reply's send deadline passes, however much progress it makes meanwhile.
TEST_P(NbdTest, SlowReaderCannotHoardTheBufferPool) {
  ManualClock clock;
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
  ManualClock clock;
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
  ManualClock clock;
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

// Issue 10 item 6. Write A times out on the device (its completion is lost: the paravisor
// re-issues it on the fallback once its own command timeout passes) and the client gets EIO;
// then write B to the same range. B must land after A: A holds its range until the device has
// really finished with it, and B waits for that. Before the fix B was acknowledged at once and
// A's late write then overwrote it. `unaligned`: A is a read-modify-write (the lost completion
// is its edge read; its main write comes later still).
void late_write_test(NbdTest& t, vmm::NbdDisk& disk, NbdClient& c, ManualClock& clock,
                     bool unaligned) {
  const std::uint64_t base = 3 * kMiB;
  const auto old_data = pattern(8192, 90);
  ASSERT_EQ(c.write(base, old_data), 0u);
  const std::uint64_t virtio_before = disk.server().stats().virtio_requests;
  const std::uint64_t writes_before = disk.server().stats().writes;
  fpga::FaultInjector* fi = disk.card().faults();
  ASSERT_NE(fi, nullptr);
  ASSERT_TRUE(fi->drop_completions(0, 1).ok());
  const std::uint64_t a_off = unaligned ? base + 100 : base;
  const auto a = pattern(unaligned ? 5000 : 8192, 91);
  ASSERT_TRUE(
      c.send_request(nbd::kCmdWrite, 0, 1, a_off, static_cast<std::uint32_t>(a.size()), a.data()));
  ASSERT_TRUE(eventually([&] { return disk.server().stats().writes > writes_before; }));
  clock.advance(std::chrono::seconds(2));  // past io_timeout: A is answered EIO
  nbd::SimpleReply r{};
  ASSERT_TRUE(c.read_reply(r)) << c.failure();
  EXPECT_EQ(r.handle, 1u);
  EXPECT_EQ(r.error, nbd::kEio);
  const auto b = pattern(8192, 92);
  ASSERT_TRUE(c.send_request(nbd::kCmdWrite, 0, 2, base, 8192, b.data()));
  ASSERT_TRUE(c.read_reply(r)) << c.failure();
  EXPECT_EQ(r.handle, 2u);
  EXPECT_EQ(r.error, 0u);
  // Both have really finished on the device (A: its edge reads, if any, and its write; B).
  const std::uint64_t a_ops = unaligned ? 3 : 1;
  ASSERT_TRUE(eventually(
      [&] { return disk.server().stats().virtio_requests >= virtio_before + a_ops + 1; }));
  std::vector<std::uint8_t> got;
  ASSERT_EQ(c.read(base, 8192, got), 0u);
  EXPECT_TRUE(got == b) << "the timed-out write landed over the newer one";
  const auto s = disk.server().stats();
  EXPECT_EQ(s.device_timeouts, 1u);
  EXPECT_GE(s.overlap_waits, 1u);
  (void)t;
}

TEST_P(NbdTest, TimedOutWriteNeverLandsOverANewerOne) {
  if (std::string(GetParam()) != "vf") GTEST_SKIP() << "needs the card's fault injection";
  ManualClock clock;
  start([&](vmm::NbdServerConfig& s) {
    s.io_timeout = std::chrono::seconds(1);
    s.clock = clock.source();
  });
  auto c = open();
  ASSERT_NE(c, nullptr);
  late_write_test(*this, *disk_, *c, clock, false);
}

TEST_P(NbdTest, TimedOutReadModifyWriteNeverLandsOverANewerOne) {
  if (std::string(GetParam()) != "vf") GTEST_SKIP() << "needs the card's fault injection";
  ManualClock clock;
  start([&](vmm::NbdServerConfig& s) {
    s.io_timeout = std::chrono::seconds(1);
    s.clock = clock.source();
  });
  auto c = open();
  ASSERT_NE(c, nullptr);
  late_write_test(*this, *disk_, *c, clock, true);
}

// The handshake parser's limits (nbd::kMax*), each at its bound and one past it.
TEST_P(NbdTest, HandshakeLimits) {
  ManualClock clock;  // standing still: no handshake timeout ends a connection here
  start([&](vmm::NbdServerConfig& s) { s.clock = clock.source(); });
  auto c = client();
  ASSERT_TRUE(c->handshake());
  NbdClient::OptReply r;
  // kMaxOptions options are answered; the next one drops the peer.
  for (unsigned i = 0; i < nbd::kMaxOptions; ++i) {
    ASSERT_TRUE(c->send_option(42, "")) << i;
    ASSERT_TRUE(c->read_opt_reply(r)) << i;
    ASSERT_EQ(r.type, nbd::kRepErrUnsup);
  }
  ASSERT_TRUE(c->send_option(42, ""));
  EXPECT_TRUE(c->closed_by_peer());
  EXPECT_EQ(disk_->server().stats().protocol_errors, 1u);
  // Option data: kMaxOptionBytes is taken; one more is refused (ERR_TOO_BIG, data skipped).
  c = client();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_option(42, std::string(nbd::kMaxOptionBytes, 'x')));
  ASSERT_TRUE(c->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepErrUnsup);
  ASSERT_TRUE(c->send_option(42, std::string(nbd::kMaxOptionBytes + 1, 'x')));
  ASSERT_TRUE(c->read_opt_reply(r));
  EXPECT_EQ(r.type, nbd::kRepErrTooBig);
  // An export name of kMaxString bytes is looked up; a longer one is invalid.
  NbdClient::Export e;
  EXPECT_EQ(c->go(std::string(nbd::kMaxString, 'n'), e, true), nbd::kRepErrUnknown);
  EXPECT_EQ(c->go(std::string(nbd::kMaxString + 1, 'n'), e, true), nbd::kRepErrInvalid);
  EXPECT_EQ(c->go("keel", e), nbd::kRepAck);
  std::vector<std::uint8_t> d;
  EXPECT_EQ(c->read(0, 512, d), 0u);
  // Past kMaxSkipOptionBytes the peer is dropped without the data being read.
  c = client();
  ASSERT_TRUE(c->handshake());
  ASSERT_TRUE(c->send_msg(nbd::OptionHeader{nbd::kOptMagic, 42, nbd::kMaxSkipOptionBytes + 1}));
  EXPECT_TRUE(c->closed_by_peer());
  EXPECT_EQ(disk_->server().stats().protocol_errors, 2u);
}

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
    vmm::NbdDiskOptions o;
    o.size_bytes = kDiskBytes;
    o.vf_path = std::string(GetParam()) == "vf";
    o.server.socket_path = socket_path();
    o.server.log = false;
    tweak(o.server);
    auto d = vmm::NbdDisk::create(o);
    return !d.ok() && d.error().code == Errc::invalid_argument;
  };
  disk_.reset();
  EXPECT_TRUE(refused([](auto& s) { s.queue_depth = nbd::kMaxQueueDepth + 1; }));
  EXPECT_TRUE(refused([](auto& s) { s.max_connections = nbd::kMaxConnections + 1; }));
  EXPECT_TRUE(refused([](auto& s) { s.max_request_bytes = nbd::kMaxPayload * 2; }));
  EXPECT_TRUE(refused([](auto& s) { s.export_name = std::string(nbd::kMaxString + 1, 'n'); }));
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

TEST_P(NbdTest, StopWithConnectionsOpenIsClean) {
  auto c = open();
  ASSERT_NE(c, nullptr);
  for (unsigned i = 0; i < 16; ++i) ASSERT_TRUE(c->send_request(nbd::kCmdRead, 0, i, 0, 65536));
  // Stop while this thread reads (the replies are more than the socket buffers hold).
  std::thread stopper([&] { disk_->stop(); });
  // What the server took before the stop was answered in full; then it closed.
  unsigned replies = 0;
  for (;;) {
    nbd::SimpleReply r{};
    if (!c->read_reply(r)) break;
    EXPECT_EQ(r.error, 0u);
    std::vector<std::uint8_t> d(65536);
    if (!c->recv_all(d.data(), d.size())) {
      ADD_FAILURE() << "reply data cut short";
      break;
    }
    ++replies;
  }
  stopper.join();
  EXPECT_LE(replies, 16u);
  EXPECT_TRUE(c->closed_by_peer());
  EXPECT_EQ(NbdClient::connect(disk_->server().socket_path()), nullptr);  // socket removed
}

TEST_P(NbdTest, LosingTheVfUnderLoadIsInvisibleToTheClient) {
  if (std::string(GetParam()) != "vf") GTEST_SKIP() << "needs a VF to lose";
  auto c = open();
  ASSERT_NE(c, nullptr);
  // Two passes over 1500 blocks, pipelined (queue depth 64: a block's second write is read by
  // the server only after its first one was answered). The VF is surprise-removed a third of
  // the way in and comes back once the guest is on the fallback.
  constexpr unsigned kBlocks = 1500, kWrites = 2 * kBlocks;
  std::thread sender([&] {
    for (unsigned i = 0; i < kWrites; ++i) {
      const unsigned block = i % kBlocks, pass = i / kBlocks;
      const auto data = pattern(4096, block * 10 + pass);
      if (!c->send_request(nbd::kCmdWrite, 0, i, block * 4096ull, 4096, data.data())) return;
    }
  });
  const Joiner join_sender{sender, *c};
  fpga::FaultInjector* fi = disk_->card().faults();
  ASSERT_NE(fi, nullptr);
  bool removed = false, restored = false;
  for (unsigned done = 0; done < kWrites; ++done) {
    nbd::SimpleReply r{};
    ASSERT_TRUE(c->read_reply(r)) << "reply " << done;
    ASSERT_EQ(r.error, 0u) << "write " << r.handle;
    if (!removed && done >= kWrites / 3) {
      removed = true;
      ASSERT_TRUE(fi->surprise_remove(0).ok());
      disk_->paravisor().vf_removed("hot-remove announced by the test");
    }
    if (removed && !restored && disk_->paravisor().state() == vmm::PathState::fallback) {
      restored = true;
      ASSERT_TRUE(fi->restore(0).ok());
      disk_->paravisor().vf_arrived();
    }
  }
  sender.join();
  std::thread reads([&] {
    for (unsigned b = 0; b < kBlocks; ++b) {
      if (!c->send_request(nbd::kCmdRead, 0, b, b * 4096ull, 4096)) return;
    }
  });
  const Joiner join_reads{reads, *c};
  for (unsigned i = 0; i < kBlocks; ++i) {
    nbd::SimpleReply r{};
    ASSERT_TRUE(c->read_reply(r));
    ASSERT_EQ(r.error, 0u);
    std::vector<std::uint8_t> got(4096);
    ASSERT_TRUE(c->recv_all(got.data(), got.size()));
    EXPECT_TRUE(got == pattern(4096, static_cast<std::uint32_t>(r.handle) * 10 + 1))
        << "block " << r.handle << " does not hold its last write";
  }
  reads.join();
  const auto pc = disk_->paravisor().counters();
  EXPECT_GE(pc.to_fallback, 1u);
  EXPECT_GT(pc.fallback_ios, 0u);
  EXPECT_EQ(pc.errors, 0u);
  EXPECT_EQ(disk_->server().stats().error_replies, 0u);
}

// Tearing a disk down leaves the thread that created it alone. The kernel ties an io_uring to
// the threads that set it up, and when the ring goes away a kernel worker queues signal-style
// task work on each of them, some milliseconds later, which fails the blocking call the thread
// is in at that moment with EINTR. The host service's ring was set up on the test's thread:
// the next test's client saw its handshake fail at random (an export of size 0).
TEST_P(NbdTest, TeardownDoesNotInterruptTheCreatingThread) {
  {
    auto c = open();
    ASSERT_NE(c, nullptr);
    const auto p = pattern(65536, 60);
    ASSERT_EQ(c->write(0, p), 0u);
    expect_data(*c, 0, p);
  }
  expect_path_used();
  disk_.reset();
  // A receive nothing answers ends with its timeout, not with an interruption.
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  timeval tv{1, 0};
  ASSERT_EQ(setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
  char b;
  const ssize_t n = recv(sv[0], &b, 1, 0);
  const int err = errno;
  close(sv[0]);
  close(sv[1]);
  EXPECT_EQ(n, -1);
  EXPECT_TRUE(err == EAGAIN || err == EWOULDBLOCK) << "recv: " << std::strerror(err);
}

INSTANTIATE_TEST_SUITE_P(Paths, NbdTest, ::testing::Values("vf", "fallback"),
                         [](const auto& p) { return std::string(p.param); });

}  // namespace
}  // namespace keel::test
