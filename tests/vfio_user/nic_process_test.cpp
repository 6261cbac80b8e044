// The card's NIC over vfio-user: keel-card serves the NIC PF (nicpf.sock) and NIC VF n
// (nicvf<n>.sock); two clients in this process, each as a paravisor process would, drive their
// own NIC VF with the NIC driver (drivers/net) through the card's switch; the test holds the
// other end of the switch's uplink (a unix datagram socket); a NIC PF client reads the PF's
// registers, changes NUM_VFS and pulls a NIC VF from the bus (keel-card's fault injection).
//
// The card is free-running in another process: every wait is bounded on the host's clock.
// KEEL_CARD_BIN: the keel-card binary; KEEL_CARD_BACKEND: "model" or "sim" (one ctest each).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "keel/clock.h"
#include "keel/drivers/net/nic.h"
#include "keel/drivers/net/queue_pair.h"
#include "keel/fpga/card.h"
#include "keel/fpga/nic.h"
#include "keel/fpga/vfio_user/vfio_user_card.h"
#include "keel/stack/stack.h"
#include "keel/unique_fd.h"
#include "keel/wire/knic.h"

extern char** environ;

namespace keel::vfio_user {
namespace {

namespace net = keel::drivers::net;
namespace np = regs::nicpf;
namespace vc = regs::nicvfcfg;
using Frame = std::vector<std::uint8_t>;
using namespace std::chrono_literals;

constexpr std::uint16_t kEtherType = 0x88B5;  // IEEE local experimental
constexpr auto kWait = 5s;                    // bound of every wait on the card process

std::string backend() {
  const char* b = std::getenv("KEEL_CARD_BACKEND");
  return b != nullptr && *b != '\0' ? b : "model";
}

/// The MAC keel-card gives NIC VF `vf` (--nic-vfs).
knic::Mac vf_mac(unsigned vf) { return knic::Mac{0x02, 0x4B, 0x45, 0x45, 0x4C, std::uint8_t(vf)}; }
/// A MAC on the far side of the uplink (in no switch port).
constexpr knic::Mac kOutside{0x02, 0x00, 0x00, 0x00, 0x00, 0x99};

Frame make_frame(const knic::Mac& dst, const knic::Mac& src, std::size_t payload_bytes,
                 unsigned seed) {
  Frame f(knic::kEthHeader + payload_bytes);
  std::memcpy(f.data(), dst.data(), 6);
  std::memcpy(f.data() + 6, src.data(), 6);
  f[12] = kEtherType >> 8;
  f[13] = kEtherType & 0xFF;
  for (std::size_t i = 0; i < payload_bytes; ++i) {
    f[knic::kEthHeader + i] = static_cast<std::uint8_t>(seed * 31 + i * 7 + (i >> 8));
  }
  return f;
}

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), std::min(path.size() + 1, sizeof a.sun_path - 1));
  return a;
}

/// One "paravisor": a card of one NIC VF (its socket) and the driver on it.
struct VfClient {
  std::unique_ptr<fpga::Card> card;
  std::unique_ptr<net::Nic> nic;
  net::QueuePair& qp() { return nic->queue(0); }
  /// The driver first (it disables the VF), then the card.
  void close() {
    nic.reset();
    card.reset();
  }
};

class NicProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_dir_ = stack::scratch_image_path("nic-run", std::filesystem::temp_directory_path());
    std::filesystem::create_directories(run_dir_);
    card_end_ = run_dir_ + "/uplink-card.sock";
    test_end_ = run_dir_ + "/uplink-test.sock";
  }
  void TearDown() override {
    clients_[0].close();
    clients_[1].close();
    stop_card();
    std::error_code ec;
    if (!run_dir_.empty()) std::filesystem::remove_all(run_dir_, ec);
  }

  std::string socket(const std::string& name) const { return run_dir_ + "/" + name + ".sock"; }

  /// The test's end of the uplink: bound at test_end_ (the peer keel-card dials).
  void bind_uplink() {
    uplink_ = UniqueFd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(uplink_.valid());
    const sockaddr_un a = unix_addr(test_end_);
    ASSERT_EQ(::bind(uplink_.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a), 0)
        << std::strerror(errno);
  }
  /// Sends into the switch through the uplink (to keel-card's end; a connected uplink: its
  /// peer).
  void uplink_send(const Frame& f) {
    const sockaddr_un a = unix_addr(card_end_);
    const ssize_t n = uplink_connected_ ? ::send(uplink_.get(), f.data(), f.size(), 0)
                                        : ::sendto(uplink_.get(), f.data(), f.size(), 0,
                                                   reinterpret_cast<const sockaddr*>(&a), sizeof a);
    ASSERT_EQ(n, static_cast<ssize_t>(f.size())) << std::strerror(errno);
  }
  /// Whether `want` comes out of the uplink within kWait; other frames (a TAP's host sends
  /// its own) are passed over.
  bool uplink_sees(const Frame& want) {
    const std::uint64_t until = steady_clock().deadline_after(kWait);
    for (std::uint64_t now = 0; (now = steady_clock().now_ns()) < until;) {
      if (uplink_receive(std::chrono::milliseconds((until - now) / 1'000'000 + 1)) == want) {
        return true;
      }
    }
    return false;
  }
  /// The next frame out of the uplink within `timeout`, or an empty one.
  Frame uplink_receive(std::chrono::milliseconds timeout) {
    pollfd p{uplink_.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return {};
    Frame f(65536);
    const ssize_t n = ::recv(uplink_.get(), f.data(), f.size(), MSG_DONTWAIT);
    if (n <= 0) return {};
    f.resize(static_cast<std::size_t>(n));
    return f;
  }

  /// Starts keel-card with the NIC and waits (bounded) for its banner: every socket is up.
  void start_card(unsigned nic_vfs, std::string uplink = {}) {
    if (uplink.empty()) uplink = "dgram:" + card_end_ + "," + test_end_;
    std::vector<std::string> args{KEEL_CARD_BIN, "--card",      backend(),
                                  "--size-mib",  "16",          "--vfs",
                                  "1",           "--nic-vfs",   std::to_string(nic_vfs),
                                  "--uplink",    uplink,        "--run-dir",
                                  run_dir_,      "--log-level", "warn"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int out[2];
    ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    const int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    stdout_ = UniqueFd(out[0]);
    ASSERT_EQ(rc, 0);
    // The banner is printed once every socket listens.
    const std::uint64_t until = steady_clock().deadline_after(60s);
    while (output_.find("serving on") == std::string::npos) {
      const std::uint64_t now = steady_clock().now_ns();
      ASSERT_LT(now, until) << "keel-card did not come up: " << output_;
      pollfd p{stdout_.get(), POLLIN, 0};
      ASSERT_GE(::poll(&p, 1, static_cast<int>((until - now) / 1'000'000 + 1)), 0);
      char b[512];
      const ssize_t n = ::read(stdout_.get(), b, sizeof b);
      ASSERT_GT(n, 0) << "keel-card exited at start: " << output_;
      output_.append(b, static_cast<std::size_t>(n));
    }
  }
  /// SIGTERM, then everything keel-card printed (its counters); SIGKILL if it does not end.
  void stop_card() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    char b[4096];
    for (;;) {
      pollfd p{stdout_.get(), POLLIN, 0};
      if (::poll(&p, 1, 10'000) <= 0) {
        ADD_FAILURE() << "keel-card did not exit on SIGTERM";
        ::kill(pid_, SIGKILL);
        break;
      }
      const ssize_t n = ::read(stdout_.get(), b, sizeof b);
      if (n <= 0) break;
      output_.append(b, static_cast<std::size_t>(n));
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  /// Opens NIC VF `vf`'s socket as its own card and brings the driver up on it.
  void open_client(unsigned vf, bool interrupts) {
    auto c = fpga::open_card("vfio-user:" + socket("nicvf" + std::to_string(vf)));
    ASSERT_TRUE(c.ok()) << c.error().message;
    VfClient& cl = clients_[vf];
    cl.card = std::move(c).value();
    ASSERT_NE(cl.card->nic(), nullptr);
    auto fn = cl.card->nic()->vf(0);
    ASSERT_TRUE(fn.ok()) << fn.error().message;
    net::NicConfig cfg;
    cfg.interrupts = interrupts;
    cfg.tx_ring_log2 = 5;
    cfg.rx_ring_log2 = 5;
    cfg.enable_timeout = kWait;
    auto n = net::Nic::open(**fn, *cl.card, *cl.card, cfg);
    ASSERT_TRUE(n.ok()) << to_string(n.error());
    cl.nic = std::move(n).value();
  }

  /// Frames `rx` receives within kWait until it has `want`.
  std::vector<Frame> receive(VfClient& c, std::size_t want) {
    std::vector<Frame> got;
    const std::uint64_t deadline = c.card->deadline_after(kWait);
    while (got.size() < want && c.card->now_ns() < deadline) {
      if (!c.qp().wait(net::WaitFor::rx, std::chrono::nanoseconds(deadline - c.card->now_ns()))) {
        break;
      }
      c.qp().poll_rx(
          64, [&](std::span<const std::uint8_t> f) { got.emplace_back(f.begin(), f.end()); });
    }
    return got;
  }
  /// Reaps TX completions until nothing is in flight (bounded).
  void reap_all(VfClient& c) {
    const std::uint64_t deadline = c.card->deadline_after(kWait);
    while (c.qp().tx_in_flight() > 0 && c.card->now_ns() < deadline) {
      if (c.qp().reap() == 0) (void)c.qp().wait(net::WaitFor::tx, 10ms);
    }
    EXPECT_EQ(c.qp().tx_in_flight(), 0u) << "TX completions missing";
  }
  /// `from` sends `frame`; `to` receives exactly it.
  void exchange(VfClient& from, VfClient& to, const Frame& frame) {
    ASSERT_EQ(from.qp().send(frame), net::NetErrc::ok);
    from.qp().flush();
    const auto got = receive(to, 1);
    ASSERT_EQ(got.size(), 1u) << "frame of " << frame.size() << " bytes not received";
    EXPECT_EQ(got[0], frame);
    reap_all(from);
  }
  /// Both ways between the two clients, a few sizes.
  void exchange_both_ways(unsigned seed) {
    for (const std::size_t bytes : {46u, 200u, 1500u}) {
      ASSERT_NO_FATAL_FAILURE(exchange(clients_[0], clients_[1],
                                       make_frame(vf_mac(1), vf_mac(0), bytes, seed + bytes)));
      ASSERT_NO_FATAL_FAILURE(exchange(clients_[1], clients_[0],
                                       make_frame(vf_mac(0), vf_mac(1), bytes, seed + bytes + 1)));
    }
  }

  std::string run_dir_, card_end_, test_end_;
  pid_t pid_ = -1;
  UniqueFd stdout_;
  std::string output_;  ///< What keel-card printed.
  UniqueFd uplink_;
  bool uplink_connected_ = false;  ///< uplink_ sends with send(), not sendto(card_end_)
  VfClient clients_[2];
};

// Two clients, each on its own NIC VF (a paravisor process each): the driver comes up with the
// MAC keel-card gave, frames go both ways byte-exact, a frame to an unknown MAC leaves through
// the uplink, a frame from the uplink reaches the VF it names. Then NIC VF 0 is pulled from the
// bus through the NIC PF (keel-card's fault injection): its driver sees it gone, recovers once
// it is back, and traffic resumes. keel-card prints every NIC function's counters at exit.
TEST_F(NicProcessTest, TwoClientsOnTheirOwnNicVfs) {
  ASSERT_NO_FATAL_FAILURE(bind_uplink());
  ASSERT_NO_FATAL_FAILURE(start_card(2));
  ASSERT_NO_FATAL_FAILURE(open_client(0, false));
  ASSERT_NO_FATAL_FAILURE(open_client(1, true));  // MSI-X through the client's eventfds
  for (unsigned i = 0; i < 2; ++i) {
    EXPECT_EQ(clients_[i].nic->mac(), vf_mac(i));
    EXPECT_TRUE(clients_[i].nic->link_up());
    EXPECT_EQ(clients_[i].nic->state(), net::DeviceState::ready);
  }
  ASSERT_NO_FATAL_FAILURE(exchange_both_ways(1));

  // Unknown unicast: out of the uplink, as sent.
  const Frame out = make_frame(kOutside, vf_mac(0), 300, 7);
  ASSERT_EQ(clients_[0].qp().send(out), net::NetErrc::ok);
  clients_[0].qp().flush();
  EXPECT_EQ(uplink_receive(kWait), out);
  reap_all(clients_[0]);
  // From the uplink to VF 1 (and only there).
  const Frame in = make_frame(vf_mac(1), kOutside, 400, 8);
  ASSERT_NO_FATAL_FAILURE(uplink_send(in));
  const auto got = receive(clients_[1], 1);
  ASSERT_EQ(got.size(), 1u) << "the frame from the uplink did not reach VF 1";
  EXPECT_EQ(got[0], in);
  EXPECT_FALSE(clients_[0].qp().rx_ready()) << "VF 0 received VF 1's frame";

  // Surprise removal of NIC VF 0 through the NIC PF, and back.
  auto pf = fpga::open_card("vfio-user:" + socket("nicpf"));
  ASSERT_TRUE(pf.ok()) << pf.error().message;
  fpga::NicCard* nic = (*pf)->nic();
  ASSERT_NE(nic, nullptr);
  const Status pulled = nic->surprise_remove(0);
  ASSERT_TRUE(pulled.ok()) << pulled.error().message;
  VfClient& c0 = clients_[0];
  EXPECT_EQ(c0.nic->state(), net::DeviceState::gone);
  const Frame f = make_frame(vf_mac(1), vf_mac(0), 100, 9);
  EXPECT_EQ(c0.qp().send(f), net::NetErrc::gone);
  const Status while_gone = c0.nic->recover();
  ASSERT_FALSE(while_gone.ok());
  EXPECT_EQ(while_gone.error().code, Errc::gone);
  EXPECT_EQ(nic->pf().read32(vc::at(0, vc::STATUS)) & vc::STATUS_PRESENT_MASK, 0u);
  // The other client carries on; its frames to the removed VF go to the uplink now.
  const Frame to_removed = make_frame(vf_mac(0), vf_mac(1), 120, 10);
  ASSERT_EQ(clients_[1].qp().send(to_removed), net::NetErrc::ok);
  clients_[1].qp().flush();
  EXPECT_EQ(uplink_receive(kWait), to_removed);
  reap_all(clients_[1]);
  EXPECT_EQ(nic->surprise_remove(5).error().code, Errc::not_found);
  const Status back = nic->restore(0);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_NE(c0.nic->state(), net::DeviceState::ready);
  EXPECT_EQ(c0.qp().send(f), net::NetErrc::down);
  const Status recovered = c0.nic->recover();
  ASSERT_TRUE(recovered.ok()) << recovered.error().message;
  EXPECT_EQ(c0.nic->state(), net::DeviceState::ready);
  ASSERT_NO_FATAL_FAILURE(exchange_both_ways(20));

  // The switch's view, from the NIC PF.
  EXPECT_GE(nic->pf().read64(vc::at(1, vc::RX_FRAMES)), 4u);
  EXPECT_GE(nic->pf().read64(np::UPLINK_TX_FRAMES), 2u);
  EXPECT_EQ(nic->pf().read64(np::UPLINK_RX_FRAMES), 1u);
  pf->reset();
  clients_[0].close();
  clients_[1].close();
  stop_card();
  for (const char* name : {"nicpf ", "nicvf0 ", "nicvf1 ", "uplink "}) {
    EXPECT_NE(output_.find(name), std::string::npos) << name << "counters missing:\n" << output_;
  }
}

// A NIC VF's socket is a card of that one NIC VF: its NVMe side is empty, and the NIC PF, the
// uplink and the faults are keel-card's.
TEST_F(NicProcessTest, ANicVfSocketIsACardOfThatOneNicVf) {
  ASSERT_NO_FATAL_FAILURE(bind_uplink());
  ASSERT_NO_FATAL_FAILURE(start_card(2));
  auto card = fpga::open_card("vfio-user:" + socket("nicvf1"));
  ASSERT_TRUE(card.ok()) << card.error().message;
  fpga::Card& c = **card;
  EXPECT_FALSE(c.owns_pf());
  EXPECT_EQ(c.num_vfs(), 0u);
  EXPECT_EQ(c.vf(0).error().code, Errc::not_found);
  EXPECT_EQ(c.pf().read32(0), 0xffffffffu);
  EXPECT_EQ(c.set_num_vfs(1).error().code, Errc::unavailable);
  EXPECT_EQ(c.faults(), nullptr);
  fpga::NicCard* nic = c.nic();
  ASSERT_NE(nic, nullptr);
  EXPECT_EQ(nic->num_vfs(), 1u);
  auto vf = nic->vf(0);
  ASSERT_TRUE(vf.ok()) << vf.error().message;
  EXPECT_EQ((*vf)->number(), fpga::nic_vf_function(1));
  EXPECT_EQ((*vf)->read32(regs::nic::ID), regs::NIC_MAGIC);
  EXPECT_EQ(nic->vf(1).error().code, Errc::not_found);
  EXPECT_EQ(nic->pf().read32(np::ID), 0xffffffffu) << "the NIC PF is not this process's";
  EXPECT_EQ(nic->set_num_vfs(0).error().code, Errc::unavailable);
  EXPECT_EQ(nic->attach_uplink(UniqueFd(::dup(0))).error().code, Errc::unavailable);
  EXPECT_EQ(nic->surprise_remove(0).error().code, Errc::unavailable);
  // One process per function.
  EXPECT_FALSE(fpga::open_card("vfio-user:" + socket("nicvf1")).ok());
  EXPECT_TRUE(fpga::open_card("vfio-user:" + socket("nicvf0")).ok());
}

// The NIC PF's socket: NUM_VFS and the ports keel-card set up; NUM_VFS changes through it
// (sysfs's rules) and keel-card's NIC VF sockets follow.
TEST_F(NicProcessTest, TheNicPfSocketManagesTheNicVfs) {
  ASSERT_NO_FATAL_FAILURE(bind_uplink());
  ASSERT_NO_FATAL_FAILURE(start_card(2));
  auto card = fpga::open_card("vfio-user:" + socket("nicpf"));
  ASSERT_TRUE(card.ok()) << card.error().message;
  fpga::Card& c = **card;
  EXPECT_FALSE(c.owns_pf()) << "the NVMe PF is not this process's";
  EXPECT_EQ(c.num_vfs(), 0u);
  fpga::NicCard* nic = c.nic();
  ASSERT_NE(nic, nullptr);
  fpga::Function& pf = nic->pf();
  EXPECT_EQ(pf.number(), fpga::kNicPfFunction);
  EXPECT_EQ(pf.read32(np::ID), regs::NIC_MAGIC);
  EXPECT_EQ(pf.read32(np::NUM_VFS), 2u);
  EXPECT_EQ(nic->num_vfs(), 2u);
  EXPECT_GE(nic->max_vfs(), 2u);
  EXPECT_EQ(pf.read32(np::CAPS) & np::CAPS_MAX_VFS_MASK, nic->max_vfs());
  EXPECT_NE(pf.read32(np::CAPS) & np::CAPS_UPLINK_MASK, 0u);
  EXPECT_NE(pf.read32(np::STATUS) & np::STATUS_UPLINK_UP_MASK, 0u);
  for (unsigned i = 0; i < 2; ++i) {
    const std::uint32_t st = pf.read32(vc::at(i, vc::STATUS));
    EXPECT_NE(st & vc::STATUS_ENABLED_MASK, 0u) << "port " << i;
    EXPECT_NE(st & vc::STATUS_PRESENT_MASK, 0u) << "port " << i;
    EXPECT_EQ(pf.read32(vc::at(i, vc::MAC_LO)), knic::mac_lo(vf_mac(i)));
    EXPECT_EQ(pf.read32(vc::at(i, vc::MAC_HI)), knic::mac_hi(vf_mac(i)));
  }
  auto vf1 = nic->vf(1);
  ASSERT_TRUE(vf1.ok()) << vf1.error().message;
  EXPECT_EQ((*vf1)->number(), fpga::nic_vf_function(1));
  EXPECT_EQ(nic->attach_uplink(UniqueFd(::dup(0))).error().code, Errc::unavailable);
  // NUM_VFS as sysfs: non-zero to non-zero goes through 0.
  EXPECT_EQ(nic->set_num_vfs(1).error().code, Errc::busy);
  EXPECT_NE(pf.read32(np::STATUS) & np::STATUS_NUM_VFS_ERR_MASK, 0u);
  EXPECT_EQ(nic->set_num_vfs(99).error().code, Errc::invalid_argument);
  EXPECT_EQ(nic->num_vfs(), 2u);
  const Status none = nic->set_num_vfs(0);
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_EQ(pf.read32(np::NUM_VFS), 0u);
  EXPECT_FALSE(std::filesystem::exists(socket("nicvf0")));
  const Status three = nic->set_num_vfs(3);
  ASSERT_TRUE(three.ok()) << three.error().message;
  EXPECT_EQ(nic->num_vfs(), 3u);
  EXPECT_TRUE(std::filesystem::exists(socket("nicvf2")));
  auto vf2 = nic->vf(2);
  ASSERT_TRUE(vf2.ok()) << vf2.error().message;
  EXPECT_EQ((*vf2)->number(), fpga::nic_vf_function(2));
  EXPECT_EQ((*vf2)->read32(regs::nic::ID), regs::NIC_MAGIC);
  // New VFs start with their ports disabled: the NIC PF's client is their PF manager.
  EXPECT_EQ(pf.read32(vc::at(2, vc::STATUS)) & vc::STATUS_ENABLED_MASK, 0u);
  // The register path too: a NUM_VFS write through BAR0 is followed by the sockets.
  pf.write32(np::NUM_VFS, 0);
  EXPECT_EQ(pf.read32(np::NUM_VFS), 0u);
  EXPECT_EQ(nic->num_vfs(), 0u);
  EXPECT_FALSE(std::filesystem::exists(socket("nicvf2")));
}

// keel-card's uplink peer does not exist when it starts: keel-card dials it until it appears,
// then frames flow both ways.
TEST_F(NicProcessTest, TheUplinkPeerMayAppearLater) {
  ASSERT_NO_FATAL_FAILURE(start_card(1));
  ASSERT_NO_FATAL_FAILURE(open_client(0, false));
  ASSERT_NO_FATAL_FAILURE(bind_uplink());
  // Until keel-card has dialled the peer its frames are dropped: send until one arrives.
  Frame got;
  const std::uint64_t deadline = steady_clock().deadline_after(kWait);
  for (unsigned i = 0; got.empty() && steady_clock().now_ns() < deadline; ++i) {
    const Frame out = make_frame(kOutside, vf_mac(0), 64, i);
    ASSERT_EQ(clients_[0].qp().send(out), net::NetErrc::ok);
    clients_[0].qp().flush();
    reap_all(clients_[0]);
    got = uplink_receive(50ms);
    if (!got.empty()) {
      EXPECT_EQ(got, out);
    }
  }
  ASSERT_FALSE(got.empty()) << "keel-card never reached the uplink's peer";
  const Frame in = make_frame(vf_mac(0), kOutside, 500, 3);
  ASSERT_NO_FATAL_FAILURE(uplink_send(in));
  const auto rx = receive(clients_[0], 1);
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0], in);
}

// The uplink as a unix SEQPACKET connection keel-card dials (--uplink seqpacket:PATH).
TEST_F(NicProcessTest, SeqpacketUplink) {
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener.valid());
  const sockaddr_un a = unix_addr(test_end_);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  ASSERT_NO_FATAL_FAILURE(start_card(2, "seqpacket:" + test_end_));
  uplink_ = UniqueFd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(uplink_.valid()) << std::strerror(errno);
  uplink_connected_ = true;
  ASSERT_NO_FATAL_FAILURE(open_client(0, false));
  ASSERT_NO_FATAL_FAILURE(open_client(1, false));
  const Frame out = make_frame(kOutside, vf_mac(0), 700, 21);
  ASSERT_EQ(clients_[0].qp().send(out), net::NetErrc::ok);
  clients_[0].qp().flush();
  EXPECT_TRUE(uplink_sees(out));
  reap_all(clients_[0]);
  const Frame in = make_frame(vf_mac(1), kOutside, 900, 22);
  ASSERT_NO_FATAL_FAILURE(uplink_send(in));
  const auto got = receive(clients_[1], 1);
  ASSERT_EQ(got.size(), 1u) << "the frame from the uplink did not reach VF 1";
  EXPECT_EQ(got[0], in);
}

// The uplink as a host TAP device (--uplink tap:IFNAME): frames the card sends to an unknown
// MAC leave through the host's interface, frames the host sends on it reach the VF they name.
// The test sees the interface with a packet socket. Needs CAP_NET_ADMIN and CAP_NET_RAW
// (skipped without).
TEST_F(NicProcessTest, TapUplink) {
  const std::string ifname = "keeltap" + std::to_string(::getpid() % 100000);
  {
    // Can this process make a TAP at all? (The same ioctl keel-card makes.)
    UniqueFd tun(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    ifreq ifr{};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    std::memcpy(ifr.ifr_name, ifname.c_str(), ifname.size() + 1);
    if (!tun.valid() || ::ioctl(tun.get(), TUNSETIFF, &ifr) != 0) {
      GTEST_SKIP() << "no TAP device here (" << std::strerror(errno) << ")";
    }
  }
  ASSERT_NO_FATAL_FAILURE(start_card(2, "tap:" + ifname));
  // No IPv6 on it (its autoconfiguration frames would be flooded to the VFs), and up.
  if (FILE* f = std::fopen(("/proc/sys/net/ipv6/conf/" + ifname + "/disable_ipv6").c_str(), "w")) {
    std::fputs("1", f);
    std::fclose(f);
  }
  UniqueFd ctl(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, ifname.c_str(), ifname.size() + 1);
  ASSERT_EQ(::ioctl(ctl.get(), SIOCGIFFLAGS, &ifr), 0) << std::strerror(errno);
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  ASSERT_EQ(::ioctl(ctl.get(), SIOCSIFFLAGS, &ifr), 0) << std::strerror(errno);
  ASSERT_EQ(::ioctl(ctl.get(), SIOCGIFINDEX, &ifr), 0) << std::strerror(errno);
  uplink_ = UniqueFd(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
  if (!uplink_.valid()) GTEST_SKIP() << "no packet socket here (" << std::strerror(errno) << ")";
  sockaddr_ll ll{};
  ll.sll_family = AF_PACKET;
  ll.sll_protocol = htons(ETH_P_ALL);
  ll.sll_ifindex = ifr.ifr_ifindex;
  ASSERT_EQ(::bind(uplink_.get(), reinterpret_cast<const sockaddr*>(&ll), sizeof ll), 0);
  uplink_connected_ = true;
  ASSERT_NO_FATAL_FAILURE(open_client(0, false));
  ASSERT_NO_FATAL_FAILURE(open_client(1, false));
  const Frame out = make_frame(kOutside, vf_mac(0), 500, 31);
  ASSERT_EQ(clients_[0].qp().send(out), net::NetErrc::ok);
  clients_[0].qp().flush();
  EXPECT_TRUE(uplink_sees(out)) << "the frame did not come out of " << ifname;
  reap_all(clients_[0]);
  const Frame in = make_frame(vf_mac(1), kOutside, 600, 32);
  ASSERT_NO_FATAL_FAILURE(uplink_send(in));
  const auto got = receive(clients_[1], 1);
  ASSERT_EQ(got.size(), 1u) << "the frame sent on " << ifname << " did not reach VF 1";
  EXPECT_EQ(got[0], in);
}

}  // namespace
}  // namespace keel::vfio_user
