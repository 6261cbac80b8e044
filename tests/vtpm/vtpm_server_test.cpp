// The vTPM's socket server in process (keel/vtpm/vtpm_server.h): what it does with a peer that
// misbehaves, and the state it refuses to resume.
#include "keel/vtpm/vtpm_server.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>

#include "keel/fd_passing.h"
#include "keel/unix_listener.h"

namespace keel::vtpm {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

class VtpmServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/keel-vtpm-srv-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    config_.ctrl_path = dir_ + "/ctrl.sock";
    config_.state.path = dir_ + "/state";
    config_.state.key_path = dir_ + "/key";
    config_.state.guest = "server-guest";
    int fd = ::open(config_.state.key_path.c_str(), O_WRONLY | O_CREAT, 0600);
    Bytes key(32, 0x33);
    ASSERT_EQ(::write(fd, key.data(), key.size()), 32);
    ::close(fd);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // What the peer gets before the server closes, up to `max` bytes (5 s at most).
  static Bytes read_until_closed(int fd, std::size_t max) {
    Bytes out;
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 5000) <= 0) return out;
      std::uint8_t buf[256];
      ssize_t k = ::recv(fd, buf, sizeof buf, 0);
      if (k <= 0 || out.size() > max) return out;
      out.insert(out.end(), buf, buf + k);
    }
  }
  std::string dir_;
  VtpmServerConfig config_;
};

// A refused SET_STATEBLOB header is answered, then the connection goes: the blob's bytes that
// follow would otherwise be read as commands (00 00 00 03 is SHUTDOWN).
TEST_F(VtpmServerTest, RefusedStateBlobHeaderClosesTheConnection) {
  auto server = VtpmServer::create(config_);
  ASSERT_TRUE(server.ok()) << server.error().message;
  ASSERT_TRUE((*server)->start().ok());
  auto c = connect_unix(config_.ctrl_path);
  ASSERT_TRUE(c.ok());
  Bytes hdr;
  append_be32(hdr, 0x0d);
  append_be32(hdr, 0);
  append_be32(hdr, kBlobPermanent);
  append_be32(hdr, 2u << 20);  // 2 MiB: above the limit
  ASSERT_EQ(::send(c->get(), hdr.data(), hdr.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(hdr.size()));
  Bytes body(4096, 0);
  body[3] = 0x03;  // would be SHUTDOWN if it were read as a message
  (void)::send(c->get(), body.data(), body.size(), MSG_NOSIGNAL);
  Bytes got = read_until_closed(c->get(), 64);
  ASSERT_EQ(got.size(), 4u) << "a 4-byte refusal, then the end of the stream";
  EXPECT_EQ(load_be32(got.data()), kResBadParameter);
  // The server serves the next client.
  auto c2 = connect_unix(config_.ctrl_path);
  ASSERT_TRUE(c2.ok());
  Bytes caps;
  append_be32(caps, 0x01);
  ASSERT_EQ(::send(c2->get(), caps.data(), caps.size(), MSG_NOSIGNAL), 4);
  pollfd p{c2->get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  std::uint8_t reply[8];
  EXPECT_EQ(::recv(c2->get(), reply, sizeof reply, 0), 8);
}

// A peer that stops halfway through a command holds the server only until stop(): the
// destructor returns (ctest's timeout would catch a hang).
TEST_F(VtpmServerTest, StopEndsAStalledPeersHold) {
  auto server = VtpmServer::create(config_);
  ASSERT_TRUE(server.ok()) << server.error().message;
  ASSERT_TRUE((*server)->start().ok());
  auto c = connect_unix(config_.ctrl_path);
  ASSERT_TRUE(c.ok());
  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
  UniqueFd mine(sp[0]), theirs(sp[1]);
  Bytes set_datafd;
  append_be32(set_datafd, 0x10);
  const std::span<const std::byte> part(reinterpret_cast<const std::byte*>(set_datafd.data()),
                                        set_datafd.size());
  const int fds[1] = {theirs.get()};
  ASSERT_TRUE(send_with_fds(c->get(), {&part, 1}, fds).ok());
  std::uint8_t res[4];
  pollfd p{c->get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  ASSERT_EQ(::recv(c->get(), res, sizeof res, 0), 4);
  // Half a TPM command's header: the server waits for the rest.
  const std::uint8_t half[5] = {0x80, 0x01, 0, 0, 0};
  ASSERT_EQ(::send(mine.get(), half, sizeof half, MSG_NOSIGNAL), 5);
  server->reset();  // stop() + join
  SUCCEED();
}

// A volatile state left in the file by an upgrade that no process took over is dropped by a
// fresh start: a cold boot must not resume the old PCRs.
TEST_F(VtpmServerTest, FreshStartDropsALeftoverVolatileState) {
  {
    auto st = SealedState::open(config_.state);
    ASSERT_TRUE(st.ok());
    ASSERT_TRUE((*st)->store("volatilestate", Bytes{1, 2, 3}).ok());
  }
  auto server = VtpmServer::create(config_);
  ASSERT_TRUE(server.ok()) << server.error().message;
  EXPECT_FALSE((*server)->vtpm().state()->load("volatilestate"));
}

}  // namespace
}  // namespace keel::vtpm
