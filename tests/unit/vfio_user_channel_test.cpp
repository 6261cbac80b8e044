// fpga/vfio_user: framing, fds and VERSION capabilities over a socketpair, and what a peer
// that breaks the rules gets.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "keel/fpga/vfio_user/channel.h"

namespace keel::vfio_user {
namespace {

using std::chrono::milliseconds;

class Channels : public ::testing::Test {
 protected:
  void SetUp() override {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    client_fd_ = sv[0];
    server = std::make_unique<Channel>(UniqueFd(sv[1]), limits);
    client = std::make_unique<Channel>(UniqueFd(::dup(sv[0])), limits);
  }
  void TearDown() override { ::close(client_fd_); }
  // Raw bytes from the "client" side, bypassing Channel::send's checks.
  void raw(const void* p, std::size_t n) { ASSERT_EQ(::write(client_fd_, p, n), ssize_t(n)); }

  ChannelLimits limits{4096, 2};
  std::unique_ptr<Channel> server, client;
  int client_fd_ = -1;
};

TEST_F(Channels, AMessageWithAnFdArrivesWhole) {
  const int mem = ::memfd_create("vfio-user-test", MFD_CLOEXEC);
  ASSERT_GE(mem, 0);
  const DmaMap map{sizeof(DmaMap), kDmaRead | kDmaWrite, 0, 0x100000, 0x1000};
  Header h{};
  h.msg_id = 42;
  h.command = Command::dma_map;
  ASSERT_TRUE(client->send(h, std::as_bytes(std::span(&map, 1)), {&mem, 1}).ok());
  auto got = server->receive(milliseconds(1000));
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->header.msg_id, 42u);
  EXPECT_EQ(got->header.command, Command::dma_map);
  EXPECT_EQ(got->header.size, 48u);
  ASSERT_EQ(got->payload.size(), sizeof(DmaMap));
  DmaMap back;
  std::memcpy(&back, got->payload.data(), sizeof back);
  EXPECT_EQ(back.address, 0x100000u);
  ASSERT_EQ(got->fds.size(), 1u);
  struct stat a {
  }, b{};
  ASSERT_EQ(::fstat(mem, &a), 0);
  ASSERT_EQ(::fstat(got->fds[0].get(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino) << "a different file arrived";
  ::close(mem);
}

TEST_F(Channels, AFailedReplyIsTheHeaderWithTheErrno) {
  Header req{};
  req.msg_id = 9;
  req.command = Command::dma_unmap;
  const std::byte ignored[8] = {};
  ASSERT_TRUE(server->reply(req, ignored, {}, ENOENT).ok());
  auto got = client->receive(milliseconds(1000));
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->header.msg_id, 9u);
  EXPECT_EQ(got->header.flags, kFlagTypeReply | kFlagError);
  EXPECT_EQ(got->header.error, std::uint32_t{ENOENT});
  EXPECT_TRUE(got->payload.empty());
}

TEST_F(Channels, FramingErrorsNameWhatWasWrong) {
  Header h{};
  h.command = Command::region_read;
  h.size = 8;  // shorter than the header itself
  raw(&h, sizeof h);
  auto small = server->receive(milliseconds(1000));
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.error().code, Errc::invalid_argument);
  EXPECT_NE(small.error().message.find("REGION_READ: message size 8"), std::string::npos);

  h.size = 1u << 30;  // over the limit: refused before any payload is read
  raw(&h, sizeof h);
  auto big = server->receive(milliseconds(1000));
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().code, Errc::invalid_argument);

  h.size = sizeof h;
  h.flags = 7;  // neither command nor reply
  raw(&h, sizeof h);
  auto type = server->receive(milliseconds(1000));
  ASSERT_FALSE(type.ok());
  EXPECT_NE(type.error().message.find("unknown message type 7"), std::string::npos);
}

TEST_F(Channels, MoreFdsThanTheLimitAreRefusedAndClosed) {
  const int fds[3] = {::dup(0), ::dup(0), ::dup(0)};
  Header h{};
  h.command = Command::device_set_irqs;
  // The sender's own check first.
  EXPECT_EQ(client->send(h, {}, fds).error().code, Errc::invalid_argument);
  // A peer that sends them anyway: build the message by hand.
  ChannelLimits loose{4096, 8};
  Channel sender(UniqueFd(::dup(client_fd_)), loose);
  ASSERT_TRUE(sender.send(h, {}, fds).ok());
  auto got = server->receive(milliseconds(1000));
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code, Errc::invalid_argument);
  EXPECT_NE(got.error().message.find("more fds than the limit of 2"), std::string::npos);
  for (int fd : fds) ::close(fd);
}

TEST_F(Channels, AMessageAlreadyThereIsReadWithANoWaitBound) {
  Header h{};
  h.command = Command::device_reset;
  ASSERT_TRUE(client->send(h, {}).ok());
  auto got = server->receive(milliseconds(0));
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got->header.command, Command::device_reset);
  EXPECT_EQ(server->receive(milliseconds(0)).error().code, Errc::timeout);
}

TEST_F(Channels, TimeoutsACutMessageAndAClosedPeer) {
  auto idle = server->receive(milliseconds(20));
  ASSERT_FALSE(idle.ok());
  EXPECT_EQ(idle.error().code, Errc::timeout);

  Header h{};
  h.command = Command::region_write;
  h.size = sizeof h + 16;
  raw(&h, sizeof h);
  raw("12345678", 8);  // 8 of the 16 payload bytes
  auto cut = server->receive(milliseconds(50));
  ASSERT_FALSE(cut.ok());
  EXPECT_EQ(cut.error().code, Errc::invalid_argument);
  EXPECT_NE(cut.error().message.find("cut short"), std::string::npos);

  client.reset();
  ::close(client_fd_);
  client_fd_ = ::dup(0);  // TearDown closes something harmless
  auto closed = server->receive(milliseconds(1000));
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().code, Errc::gone);
}

TEST(VfioUserVersion, EncodesDecodesAndNegotiates) {
  Capabilities mine;
  mine.max_msg_fds = 64;
  mine.max_data_xfer_size = 1u << 16;
  const auto bytes = encode_version(mine);
  auto offer = decode_version(bytes);
  ASSERT_TRUE(offer.ok()) << offer.error().message;
  EXPECT_EQ(offer->major, kMajor);
  EXPECT_EQ(offer->minor, kMinor);
  EXPECT_EQ(offer->caps.max_msg_fds, 64u);
  EXPECT_EQ(offer->caps.max_data_xfer_size, 1u << 16);

  Capabilities server;
  server.max_msg_fds = 8;
  server.max_data_xfer_size = 1u << 20;
  auto agreed = negotiate(*offer, server);
  ASSERT_TRUE(agreed.ok());
  EXPECT_EQ(agreed->caps.max_msg_fds, 8u);
  EXPECT_EQ(agreed->caps.max_data_xfer_size, 1u << 16);

  VersionOffer other = *offer;
  other.major = 1;
  auto refused = negotiate(other, server);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("speaks 1."), std::string::npos);
}

TEST(VfioUserVersion, DefaultsWithoutJsonAndErrorsOnBadJson) {
  const Version v{0, 1};
  auto bare = decode_version(std::as_bytes(std::span(&v, 1)));
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->caps.max_msg_fds, kDefaultMaxMsgFds);
  EXPECT_EQ(bare->caps.max_data_xfer_size, kDefaultMaxDataXferSize);

  auto with = [&](const std::string& json, bool nul = true) {
    std::vector<std::byte> p(sizeof v + json.size() + (nul ? 1 : 0));
    std::memcpy(p.data(), &v, sizeof v);
    std::memcpy(p.data() + sizeof v, json.data(), json.size());
    return decode_version(p);
  };
  EXPECT_TRUE(with(R"({"capabilities":{"migration":{"pgsize":4096}}})").ok());  // unknown: ignored
  EXPECT_EQ(with(R"({"capabilities":{"max_msg_fds":0}})").error().code, Errc::invalid_argument);
  EXPECT_EQ(with(R"({"capabilities":{"max_msg_fds":"8"}})").error().code, Errc::invalid_argument);
  EXPECT_EQ(with("{not json").error().code, Errc::invalid_argument);
  EXPECT_EQ(with("{}", false).error().code, Errc::invalid_argument);  // no NUL
  EXPECT_EQ(decode_version(std::span<const std::byte>()).error().code, Errc::invalid_argument);
}

}  // namespace
}  // namespace keel::vfio_user
