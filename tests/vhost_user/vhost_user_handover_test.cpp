// Servicing: a live vhost-user session handed from one server to the next (two processes in
// keel-vhost-blk's upgrade; two servers in one process here), through the same SOCK_SEQPACKET
// transport. The front end never reconnects: its rings go on where they stood.
#include <sys/socket.h>

#include "vhost_user_fixture.h"

namespace keel::testing {
namespace {

using vu::Request;

class VhostUserHandover : public VhostUserTest {
 protected:
  // take_session() on the live server, through a socket pair, adopt() by a new server that
  // serves on its own thread. The old server is destroyed in between, as its process exits.
  void hand_over() {
    auto session = server_->take_session();
    KEEL_ASSERT_OK(session);
    int sp[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp), 0);
    UniqueFd a(sp[0]), b(sp[1]);
    KEEL_ASSERT_OK(vmm::send_session(a.get(), *session));
    session = vmm::VhostUserSession{};  // the old process's copies go with it
    auto got = vmm::recv_session(b.get(), std::chrono::seconds(2));
    KEEL_ASSERT_OK(got);
    const std::string path = server_->socket_path();
    server_.reset();
    ASSERT_TRUE(std::filesystem::exists(path)) << "the old server removed the socket path";
    vmm::VhostUserBlkConfig vc;
    vc.socket_path = path;
    vc.message_timeout = std::chrono::milliseconds(200);
    auto s = vmm::VhostUserBlkServer::adopt(vc, factory(), std::move(got).value());
    KEEL_ASSERT_OK(s);
    server_ = std::move(s).value();
    KEEL_ASSERT_OK(server_->start());
  }
};

TEST_F(VhostUserHandover, TheFrontEndGoesOnWithTheNextServerWithoutReconnecting) {
  start(2, /*threaded=*/true);
  GuestRam ram;
  auto fe = connect();
  DriverRing r0(ram, kRingSize, 0), r1(ram, kRingSize, 0x10000);
  DriverRing* rings[] = {&r0, &r1};
  ASSERT_TRUE(fe->handshake(ram, rings));
  for (std::uint32_t i = 0; i < 4; ++i) {
    round_trip(ram, r0, 128 * i, 8 + i, 1 << 20, 2 << 20, 30 + i);
    round_trip(ram, r1, 8192 + 128 * i, 64, GuestRam::kHighGpa, GuestRam::kHighGpa + (1 << 20),
               40 + i, 2);
  }
  for (int round = 0; round < 3; ++round) {
    hand_over();
    if (HasFatalFailure()) return;
    EXPECT_TRUE(server_->connected());
    EXPECT_FALSE(fe->peer_closed(0)) << "the connection closed at hand-over " << round;
    // What the old server wrote reads back through the new one; new IO goes on on both rings.
    std::memset(ram.at(2 << 20, 4096), 0, 4096);
    ASSERT_EQ(io(r0, blk::kIn, 128 * 3, {{2 << 20, 4096}}), blk::kStatusOk);
    EXPECT_EQ(check_pattern(ram.at(2 << 20, 8 * 512), 8 * 512, 128 * 3, 33), -1);
    round_trip(ram, r0, 4096 + 64 * round, 16, 1 << 20, 2 << 20, 60 + round);
    round_trip(ram, r1, 12288 + 64 * round, 16, GuestRam::kHighGpa, GuestRam::kHighGpa + (1 << 20),
               70 + round, 3);
  }
  const auto st = server_->stats();
  EXPECT_EQ(st.connections, 1u);
  EXPECT_EQ(st.disconnects, 0u);
  EXPECT_EQ(st.failed_requests, 0u) << server_->last_error();
  // The rings' indices went on: 8 + 1 + 2 requests per ring... as the front end counts them.
  EXPECT_EQ(r0.used_idx(), r0.avail_idx());
  EXPECT_EQ(r1.used_idx(), r1.avail_idx());
}

TEST_F(VhostUserHandover, NoFrontEndNoSession) {
  start(1, /*threaded=*/true);
  auto s = server_->take_session();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Errc::unavailable);
}

// A session whose messages a front end could not send either is refused as a whole; so are a
// session without a connection and one that asks for replies.
TEST_F(VhostUserHandover, ABadSessionIsRefused) {
  start(1, /*threaded=*/true);
  GuestRam ram;
  auto fe = connect();
  DriverRing r0(ram, kRingSize, 0);
  DriverRing* rings[] = {&r0};
  ASSERT_TRUE(fe->handshake(ram, rings));
  auto session = server_->take_session();
  KEEL_ASSERT_OK(session);
  vmm::VhostUserBlkConfig vc;
  vc.socket_path = "/tmp/keel-vu-adopt-" + std::to_string(getpid()) + ".sock";
  auto refused = [&](auto mutate, const char* what) {
    vmm::VhostUserSession s;
    s.listener.reset(::fcntl(session->listener.get(), F_DUPFD_CLOEXEC, 0));
    s.connection.reset(::fcntl(session->connection.get(), F_DUPFD_CLOEXEC, 0));
    for (const auto& m : session->messages) {
      vmm::VhostUserSession::Message c;
      c.hdr = m.hdr;
      c.payload = m.payload;
      for (const auto& fd : m.fds) c.fds.emplace_back(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
      s.messages.push_back(std::move(c));
    }
    mutate(s);
    auto r = vmm::VhostUserBlkServer::adopt(vc, factory(), std::move(s));
    EXPECT_FALSE(r.ok()) << what;
    if (r.ok()) (void)(*r)->take_session();  // do not let it serve the front end
  };
  refused([](vmm::VhostUserSession& s) { s.connection.reset(); }, "no connection");
  refused(
      [](vmm::VhostUserSession& s) {
        for (auto& m : s.messages) {
          if (m.hdr.request == static_cast<std::uint32_t>(Request::set_vring_num)) {
            const std::uint32_t huge[2] = {0, 65536};
            std::memcpy(m.payload.data(), huge, sizeof huge);
          }
        }
      },
      "a ring size no front end may set");
  refused([](vmm::VhostUserSession& s) { s.messages.front().hdr.flags |= vu::kFlagNeedReply; },
          "a message asking for a reply");
  refused(
      [](vmm::VhostUserSession& s) {
        vmm::VhostUserSession::Message m;
        m.hdr = vu::Header{static_cast<std::uint32_t>(Request::get_features), vu::kVersion, 0};
        s.messages.push_back(std::move(m));
      },
      "a message that sets nothing");
  refused(
      [](vmm::VhostUserSession& s) {
        for (auto& m : s.messages) {
          if (m.hdr.request == static_cast<std::uint32_t>(Request::set_mem_table)) m.fds.pop_back();
        }
      },
      "a memory table without its fd");
}

// The transport refuses what is not a session.
TEST(VhostUserSessionWire, NotASessionIsRefused) {
  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp), 0);
  UniqueFd a(sp[0]), b(sp[1]);
  const char junk[20] = "KEELVUSX";
  ASSERT_EQ(::send(a.get(), junk, sizeof junk, 0), static_cast<ssize_t>(sizeof junk));
  auto r = vmm::recv_session(b.get(), std::chrono::milliseconds(500));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::invalid_argument);
  a.reset();
  auto closed = vmm::recv_session(b.get(), std::chrono::milliseconds(500));
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().code, Errc::gone);
}

}  // namespace
}  // namespace keel::testing
