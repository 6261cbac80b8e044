// The NBD server's handshake: GO/INFO/EXPORT_NAME negotiation, option haggling, violations that
// drop the peer, and the handshake parser's limits.
#include "nbd_fixture.h"

namespace keel::test {
namespace {

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

// The handshake parser's limits (nbd::kMax*), each at its bound and one past it.
TEST_P(NbdTest, HandshakeLimits) {
  TestClock clock;  // standing still: no handshake timeout ends a connection here
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

}  // namespace
}  // namespace keel::test
