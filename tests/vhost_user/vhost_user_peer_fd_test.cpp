// File descriptors from the front end (issue 10, items 3 and 4): guest memory must be a file
// sealed against shrinking, so the front end cannot truncate it under keel's mapping (SIGBUS);
// kick, call and err fds must be eventfds, are made non-blocking, and a kick eventfd belongs to
// one ring, so no notification can block the worker or the server.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include "vhost_user_fixture.h"

namespace keel::testing {
namespace {

using vu::Request;

constexpr std::uint64_t kFullCounter = 0xfffffffffffffffeull;  // an eventfd's largest count

class PeerFds : public VhostUserTest {
 protected:
  /// Sends the memory table of `ram` with `fd` as the fd of its one region.
  std::optional<std::uint64_t> set_table(FrontEnd& fe, const GuestRam& ram, int fd) {
    const vu::MemoryTable t = ram.table(false);
    return fe.ack(Request::set_mem_table, &t, 8 + sizeof(vu::MemoryRegion), {&fd, 1});
  }

  /// A blocking eventfd whose counter cannot take one more: a write of 1 would wait for a read.
  static int full_blocking_eventfd() {
    const int fd = ::eventfd(0, EFD_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::write(fd, &kFullCounter, sizeof kFullCounter), 8);
    return fd;
  }

  /// Empties a full eventfd, releasing a writer the server may have left blocked on it.
  static void drain(int fd) {
    std::uint64_t v;
    (void)!::read(fd, &v, sizeof v);
  }
};

// A front end that sends guest RAM it can still shrink is refused: truncating the file under
// keel's mapping would kill keel with SIGBUS on the next ring access.
TEST_F(PeerFds, GuestMemoryNotSealedAgainstShrinkingIsRefused) {
  start(1);
  GuestRam ram;  // its layout; the fds below stand in for its memfd
  const int fds_before = open_fds();
  auto fe = connect();
  const auto bytes = static_cast<off_t>(ram.region_bytes());

  const int plain = ::memfd_create("unsealable", MFD_CLOEXEC);  // no MFD_ALLOW_SEALING
  ASSERT_EQ(::ftruncate(plain, bytes), 0);
  EXPECT_EQ(set_table(*fe, ram, plain), 1u) << "a memfd that cannot be sealed";
  EXPECT_NE(server_->last_error().find("F_SEAL_SHRINK"), std::string::npos)
      << server_->last_error();

  const int unsealed = ::memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_EQ(::ftruncate(unsealed, bytes), 0);
  ASSERT_EQ(::fcntl(unsealed, F_ADD_SEALS, F_SEAL_GROW), 0);  // sealed, but may still shrink
  EXPECT_EQ(set_table(*fe, ram, unsealed), 1u) << "a memfd without F_SEAL_SHRINK";

  const std::string path = "/tmp/keel-vu-" + std::to_string(::getpid()) + "-ram";
  const int file = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ::unlink(path.c_str());
  ASSERT_EQ(::ftruncate(file, bytes), 0);
  EXPECT_EQ(set_table(*fe, ram, file), 1u) << "a plain file (memory-backend-file) has no seals";

  EXPECT_EQ(server_->paravisor(), nullptr) << "no table was taken";
  EXPECT_EQ(server_->stats().failed_requests, 3u);
  for (int fd : {plain, unsealed, file}) ::close(fd);
  // The sealed memfd of every other test is taken, and the connection carries on.
  const int sealed = ram.fd();
  EXPECT_EQ(set_table(*fe, ram, sealed), 0u);
  EXPECT_NE(server_->paravisor(), nullptr);
  fe.reset();
  server_->run_once(std::chrono::milliseconds(100));
  EXPECT_EQ(open_fds(), fds_before) << "every refused memory fd was closed";
}

// The sealed memfd keel takes cannot be truncated by the front end, so keel keeps serving.
TEST_F(PeerFds, SealedGuestMemoryCannotBeShrunkUnderKeel) {
  start(1);
  GuestRam ram;
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  round_trip(ram, ring, 0, 8, 1 << 20, 2 << 20, 1);
  EXPECT_NE(::ftruncate(ram.fd(), 0), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(::ftruncate(ram.fd(), static_cast<off_t>(ram.region_bytes())), 0);
  round_trip(ram, ring, 64, 16, GuestRam::kHighGpa, 2 << 20, 2);  // the region past the cut
  EXPECT_TRUE(server_->connected());
}

// A pipe (or a socket, or a file) as a kick, call or err fd is refused: a blocking pipe as the
// call fd stopped the worker after 8,192 notifications, and the server with it.
TEST_F(PeerFds, OnlyEventfdsAreTakenForNotifications) {
  start(1);
  const int fds_before = open_fds();
  auto fe = connect();
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
  const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  for (Request r : {Request::set_vring_call, Request::set_vring_kick, Request::set_vring_err}) {
    EXPECT_EQ(fe->ack_u64(r, 0, {&p[1], 1}), 1u) << vu::request_name(static_cast<unsigned>(r));
    EXPECT_EQ(fe->ack_u64(r, 0, {&sp[0], 1}), 1u) << vu::request_name(static_cast<unsigned>(r));
    EXPECT_EQ(fe->ack_u64(r, 0, {&null, 1}), 1u) << vu::request_name(static_cast<unsigned>(r));
  }
  EXPECT_NE(server_->last_error().find("not an eventfd"), std::string::npos)
      << server_->last_error();
  EXPECT_NE(server_->last_error().find("/dev/null"), std::string::npos) << server_->last_error();
  EXPECT_EQ(server_->stats().failed_requests, 9u);
  // An eventfd is taken, and made non-blocking (on the description the front end shares).
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  ASSERT_EQ(::fcntl(efd, F_GETFL) & O_NONBLOCK, 0);
  EXPECT_EQ(fe->ack_u64(Request::set_vring_call, 0, {&efd, 1}), 0u);
  EXPECT_NE(::fcntl(efd, F_GETFL) & O_NONBLOCK, 0);
  for (int fd : {p[0], p[1], sp[0], sp[1], null, efd}) ::close(fd);
  fe.reset();
  server_->run_once(std::chrono::milliseconds(100));
  EXPECT_EQ(open_fds(), fds_before) << "every refused fd was closed";
}

// Fds a request does not take are closed as soon as it has been handled, not when the front end
// disconnects: a front end cannot pile up descriptors in keel (limit kMaxFds per message).
TEST_F(PeerFds, FdsARequestDoesNotTakeAreClosedAtOnce) {
  start(1);
  auto fe = connect();
  ASSERT_TRUE(fe->get_u64(Request::get_features).has_value());
  const int fds_before = open_fds();
  int e[3];
  for (int& fd : e) fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  for (int i = 0; i < 4; ++i) {
    // A request that takes none; a no-fd kick with one attached; a call with two (fails).
    fe->send(static_cast<std::uint32_t>(Request::get_features), nullptr, 0, {e, 3});
    EXPECT_TRUE(fe->recv().has_value());
    EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, vu::kVringNoFd, {e, 1}), 0u);
    EXPECT_EQ(fe->ack_u64(Request::set_vring_call, 0, {e, 2}), 1u);
  }
  for (int fd : e) ::close(fd);
  EXPECT_EQ(open_fds(), fds_before) << "the server kept fds it did not take";
  EXPECT_TRUE(server_->connected());
}

// One eventfd as the kick fd of two rings: their workers would steal each other's kicks (and,
// blocking, wait for good on a counter the other emptied). Refused, as is a kick eventfd that is
// also a call or err fd.
TEST_F(PeerFds, KickEventfdSharedWithAnotherRingIsRefused) {
  start(2);
  GuestRam ram;
  auto fe = connect();
  DriverRing r0(ram, kRingSize, 0), r1(ram, kRingSize, 0x10000);
  DriverRing* rings[] = {&r0};
  ASSERT_TRUE(fe->handshake(ram, rings));
  const int kick0 = r0.kick_fd(), call0 = r0.call_fd();
  EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, 1, {&kick0, 1}), 1u) << "ring 0's kick";
  EXPECT_NE(server_->last_error().find("ring 0's kick"), std::string::npos)
      << server_->last_error();
  EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, 1, {&call0, 1}), 1u) << "ring 0's call";
  EXPECT_EQ(fe->ack_u64(Request::set_vring_call, 1, {&kick0, 1}), 1u) << "call = ring 0's kick";
  const int dup0 = ::dup(kick0);  // another number, the same eventfd
  EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, 1, {&dup0, 1}), 1u);
  ::close(dup0);
  EXPECT_EQ(server_->stats().failed_requests, 4u);
  // Ring 0 may be given its own kick again; ring 1 its own eventfds; both serve.
  EXPECT_EQ(fe->ack_u64(Request::set_vring_kick, 0, {&kick0, 1}), 0u);
  ASSERT_TRUE(fe->start_ring(ram, 1, r1));
  round_trip(ram, r0, 0, 8, 1 << 20, 2 << 20, 3);
  round_trip(ram, r1, 512, 8, GuestRam::kHighGpa, GuestRam::kHighGpa + (1 << 20), 4);
}

// A call eventfd whose counter is full: the worker's notification must not wait for the front
// end to read it. Before: the worker blocked in write(), GET_VRING_BASE (which stops the
// worker) never got its reply, and SIGTERM could no longer end keel-vhost-blk.
TEST_F(PeerFds, FullCallEventfdNeverBlocksTheWorker) {
  start(1, /*threaded=*/true);
  GuestRam ram;
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  const int call = full_blocking_eventfd();
  ASSERT_EQ(fe->ack_u64(Request::set_vring_call, 0, {&call, 1}), 0u);
  // (No ASSERT until the counter is drained: before the fix, the stuck worker would keep the
  // fixture's teardown waiting for it.)
  unsigned completed = 0;
  for (std::uint64_t i = 0; i < 4; ++i) {
    ring.submit(blk::kIn, 8 * i, std::vector<DriverRing::Seg>{{1 << 20, 4096}});
    ring.kick();
    if (!drive([&] { return ring.reap().has_value(); }, &ring)) break;
    ++completed;
  }
  EXPECT_EQ(completed, 4u) << "the worker is stuck notifying the guest";
  EXPECT_GT(server_->counters().notifications, 0u) << "the worker did try to notify";
  const auto base = fe->get_vring_base(0);
  EXPECT_TRUE(base.has_value()) << "GET_VRING_BASE unanswered: the worker is stuck";
  drain(call);  // (before the fix: lets the stuck worker go, so the test can end)
  if (base) {
    EXPECT_EQ(base->num, 4u);
  }
  ::close(call);
  EXPECT_TRUE(fe->get_u64(Request::get_features).has_value());
}

// keel makes the call eventfd non-blocking, but O_NONBLOCK lives on the open file description
// the front end shares: a hostile front end clears it again and fills the counter, so the
// worker's next notification blocks. Stopping the ring (GET_VRING_BASE) must still get the
// worker out of that write and answer.
TEST_F(PeerFds, CallEventfdMadeBlockingAgainDoesNotHangGetVringBase) {
  start(1, /*threaded=*/true);
  GuestRam ram;
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  const int call = full_blocking_eventfd();
  ASSERT_EQ(fe->ack_u64(Request::set_vring_call, 0, {&call, 1}), 0u);
  const int flags = ::fcntl(call, F_GETFL);
  ASSERT_GE(flags, 0);
  ASSERT_EQ(::fcntl(call, F_SETFL, flags & ~O_NONBLOCK), 0) << "the front end's own copy";
  ring.submit(blk::kIn, 0, std::vector<DriverRing::Seg>{{1 << 20, 4096}});
  ring.kick();
  const bool completed = drive([&] { return ring.reap().has_value(); }, &ring);
  EXPECT_TRUE(completed) << "the used entry is pushed before the notification";
  // The worker now blocks in write() on the call fd (the counter is full, the fd blocking).
  const auto base = fe->get_vring_base(0);
  EXPECT_TRUE(base.has_value()) << "GET_VRING_BASE unanswered: the worker is stuck";
  drain(call);  // (before the fix: lets the stuck worker go, so the test can end)
  if (base) {
    EXPECT_EQ(base->num, 1u);
  }
  ::close(call);
  EXPECT_TRUE(fe->get_u64(Request::get_features).has_value());
}

// An err eventfd whose counter is full: signalling a broken ring must not block the server.
TEST_F(PeerFds, FullErrEventfdNeverBlocksTheServer) {
  start(1, /*threaded=*/true);
  GuestRam ram;
  auto fe = connect();
  DriverRing ring(ram, kRingSize, 0);
  DriverRing* rings[] = {&ring};
  ASSERT_TRUE(fe->handshake(ram, rings));
  const int err = full_blocking_eventfd();
  ASSERT_EQ(fe->ack_u64(Request::set_vring_err, 0, {&err, 1}), 0u);
  ring.publish_loop();  // a chain that links to itself: the driver breaks the ring
  ring.kick();
  // Every message is answered while the server signals the broken ring (bounded: 10 s).
  bool answered = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (server_->stats().ring_errors == 0 && std::chrono::steady_clock::now() < deadline) {
    answered = fe->get_u64(Request::get_queue_num).has_value();
    if (!answered) break;
  }
  EXPECT_TRUE(answered) << "the server is stuck writing the err eventfd";
  drain(err);  // (before the fix: lets the stuck server go, so the test can end)
  EXPECT_EQ(server_->stats().ring_errors, 1u);
  ::close(err);
  EXPECT_TRUE(fe->get_u64(Request::get_features).has_value());
}

}  // namespace
}  // namespace keel::testing
