// keel-card as its own process (issue 12): the card spec "vfio-user:<socket>" against a running
// keel-card, the PF socket as the whole card, a VF socket as a card of one VF, and a paravisor
// in this process that loses the card (kill -9 of keel-card mid-IO), finishes every write on
// the host path, and returns to the VF when keel-card is started again on the same image.
//
// KEEL_CARD_BIN: the keel-card binary; KEEL_CARD_BACKEND: "model" or "sim" (one ctest each).
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "keel/clock.h"
#include "keel/fpga/card.h"
#include "keel/fpga/vfio_user/vfio_user_card.h"
#include "keel/stack/stack.h"
#include "keel/vmm/guest_driver.h"
#include "keel/vmm/guest_memory.h"
#include "keel/wire/virtio.h"
#include "nvme_host.h"

extern char** environ;

namespace keel::vfio_user {
namespace {

namespace blk = virtio::blk;
using keel::testing::check_pattern;
using keel::testing::fill_pattern;

constexpr std::uint64_t kMiB = 1ull << 20;
constexpr unsigned kSizeMiB = 16, kVfs = 2;

std::string backend() {
  const char* b = std::getenv("KEEL_CARD_BACKEND");
  return b != nullptr && *b != '\0' ? b : "model";
}

/// One guest on one VF socket of a keel-card: that VF as its card, guest RAM, the host service
/// on the VF's slice of the card's image (from `offset`), the paravisor and the guest's
/// driver. Members go in reverse: the driver, the paravisor and its host service, the card.
struct VfGuest {
  std::unique_ptr<stack::Stack> stack;
  std::unique_ptr<vmm::GuestMemory> mem;
  stack::GuestDisk disk;
  std::unique_ptr<vmm::GuestDriver> drv;
  vmm::Paravisor& pv() { return *disk.paravisor; }
};

void open_vf_guest(VfGuest& out, const std::string& vf_socket, const std::string& image,
                   std::uint64_t offset, vmm::ParavisorConfig pc = {}) {
  stack::StackConfig sc;
  sc.card = "vfio-user:" + vf_socket;
  sc.card_options.image_path = image;  // the host path's image (the card's own)
  auto st = stack::Stack::open_card(sc);
  ASSERT_TRUE(st.ok()) << st.error().message;
  out.stack = std::move(st).value();
  auto mem = vmm::GuestMemory::create(16 * kMiB);
  ASSERT_TRUE(mem.ok());
  out.mem = std::move(mem).value();
  stack::DiskSpec disk;
  disk.vf = 0;
  disk.base_offset = offset;
  disk.length = kSizeMiB * kMiB / kVfs;
  pc.capacity_sectors = disk.length / 512;
  auto d = out.stack->assemble(*out.mem, disk, pc);
  ASSERT_TRUE(d.ok()) << d.error().message;
  out.disk = std::move(d).value();
  auto drv = vmm::GuestDriver::attach(out.pv(), *out.mem, 1, 64, 1 * kMiB);
  ASSERT_TRUE(drv.ok()) << drv.error().message;
  out.drv = std::move(drv).value();
}

class CardProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_dir_ = stack::scratch_image_path("card-run", std::filesystem::temp_directory_path());
    std::filesystem::create_directories(run_dir_);
    start_card();
  }
  void TearDown() override {
    stop_card(SIGTERM);
    std::error_code ec;
    std::filesystem::remove_all(run_dir_, ec);
  }

  std::string socket(const std::string& name) const { return run_dir_ + "/" + name + ".sock"; }

  /// Starts keel-card and waits (real time: a process starting) until every function answers.
  void start_card() {
    std::vector<std::string> args{KEEL_CARD_BIN,
                                  "--card",
                                  backend(),
                                  "--image",
                                  image_.path(),
                                  "--size-mib",
                                  std::to_string(kSizeMiB),
                                  "--vfs",
                                  std::to_string(kVfs),
                                  "--queues",
                                  "2",
                                  "--run-dir",
                                  run_dir_,
                                  "--log-level",
                                  "warn"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // Sockets of a killed card are left behind: wait for fresh ones.
    for (const char* n : {"pf", "vf0", "vf1"}) std::filesystem::remove(socket(n));
    ASSERT_EQ(posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ), 0);
    const std::uint64_t until = steady_clock().now_ns() + 60'000'000'000ull;
    while (!std::filesystem::exists(socket("vf1"))) {
      ASSERT_LT(steady_clock().now_ns(), until) << "keel-card did not come up";
      int status = 0;
      ASSERT_EQ(waitpid(pid_, &status, WNOHANG), 0) << "keel-card exited at start";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  void stop_card(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  const stack::ScratchImage image_{"card-process", std::filesystem::temp_directory_path()};
  std::string run_dir_;
  pid_t pid_ = -1;
};

TEST_F(CardProcessTest, ThePfSocketIsTheWholeCard) {
  auto card = fpga::open_card("vfio-user:" + socket("pf"));
  ASSERT_TRUE(card.ok()) << card.error().message;
  fpga::Card& c = **card;
  EXPECT_EQ(c.backend(), "vfio-user");
  EXPECT_FALSE(c.lockstep());
  EXPECT_EQ(c.num_vfs(), kVfs);
  EXPECT_GE(c.max_vfs(), kVfs);
  EXPECT_EQ(c.pf().number(), 0u);
  EXPECT_NE(c.pf().read32(0), 0xffffffffu) << "the PF's registers are not reachable";
  auto vf1 = c.vf(1);
  ASSERT_TRUE(vf1.ok()) << vf1.error().message;
  EXPECT_EQ((*vf1)->number(), 2u);
  EXPECT_EQ((*vf1)->read32(0x8), 0x00010400u);  // NVMe 1.4
  EXPECT_EQ(c.vf(kVfs).error().code, Errc::not_found);
  // A VF pulled from the bus through the PF (a host taking it from its guest), and put back.
  fpga::FaultInjector* fi = c.faults();
  ASSERT_NE(fi, nullptr);
  const Status pulled = fi->surprise_remove(1);
  ASSERT_TRUE(pulled.ok()) << pulled.error().message;
  EXPECT_EQ((*vf1)->read32(0x8), 0xffffffffu) << "a removed VF still answers";
  EXPECT_TRUE(fi->drop_completions(0, 1).ok()) << "keel-card takes every fault";
  const Status back = fi->restore(1);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ((*vf1)->read32(0x8), 0x00010400u) << "a restored VF does not answer";
  EXPECT_EQ(fi->surprise_remove(7).error().code, Errc::not_found);
  // NumVFs through the PF, as SR-IOV: non-zero to non-zero goes through 0; keel-card makes and
  // removes the VFs' sockets.
  EXPECT_EQ(c.set_num_vfs(1).error().code, Errc::busy);
  EXPECT_EQ(c.num_vfs(), kVfs);
  EXPECT_EQ(c.set_num_vfs(99).error().code, Errc::invalid_argument);
  const Status none = c.set_num_vfs(0);
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_EQ(c.num_vfs(), 0u);
  EXPECT_FALSE(std::filesystem::exists(socket("vf0")));
  const Status three = c.set_num_vfs(3);
  ASSERT_TRUE(three.ok()) << three.error().message;
  EXPECT_EQ(c.num_vfs(), 3u);
  EXPECT_TRUE(std::filesystem::exists(socket("vf2")));
  auto vf2 = c.vf(2);
  ASSERT_TRUE(vf2.ok()) << vf2.error().message;
  EXPECT_EQ((*vf2)->number(), 3u);
}

TEST_F(CardProcessTest, AVfSocketIsACardOfThatOneVf) {
  auto card = fpga::open_card("vfio-user:" + socket("vf1"));
  ASSERT_TRUE(card.ok()) << card.error().message;
  fpga::Card& c = **card;
  EXPECT_EQ(c.num_vfs(), 1u);
  auto vf = c.vf(0);
  ASSERT_TRUE(vf.ok());
  EXPECT_EQ((*vf)->number(), 2u) << "vf1.sock is VF 1, function 2";
  EXPECT_EQ((*vf)->read32(0x8), 0x00010400u);
  EXPECT_EQ(c.pf().read32(0), 0xffffffffu) << "the PF is not this process's";
  EXPECT_EQ(c.pf().flr().error().code, Errc::gone);
  // One process per function: a second client is turned away.
  auto second = fpga::open_card("vfio-user:" + socket("vf1"));
  EXPECT_FALSE(second.ok());
  // Another VF's socket is free.
  EXPECT_TRUE(fpga::open_card("vfio-user:" + socket("vf0")).ok());
}

TEST_F(CardProcessTest, BadSpecsSayWhatIsWrong) {
  auto none = fpga::open_card("vfio-user:");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, Errc::invalid_argument);
  auto missing = fpga::open_card("vfio-user:" + run_dir_ + "/nothing.sock");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, Errc::unavailable);
  EXPECT_NE(missing.error().message.find("keel-card"), std::string::npos)
      << missing.error().message;
}

// The paravisor of one guest on VF 0 of the card process. keel-card is killed (SIGKILL) with
// writes in flight: they finish on the host path, the guest sees no error; keel-card started
// again on the same image is found by the paravisor's probe and traffic returns to the VF;
// every block holds the last version written.
TEST_F(CardProcessTest, AParavisorOutlivesTheCardProcessAndReturnsToIt) {
  vmm::ParavisorConfig pc;
  pc.command_timeout = std::chrono::seconds(2);
  pc.probe_interval = std::chrono::milliseconds(20);
  VfGuest guest;
  open_vf_guest(guest, socket("vf0"), image_.path(), 0, pc);  // VF 0: the first half
  if (HasFatalFailure()) return;
  vmm::Paravisor& pv = guest.pv();
  ASSERT_EQ(pv.state(), vmm::PathState::active);
  vmm::GuestDriver& g = *guest.drv;

  constexpr unsigned kBlocks = 256, kDepth = 16, kWrites = 1500;
  const std::uint64_t buf = g.alloc(std::uint64_t{kDepth} * 2 * 4096);
  std::vector<std::uint32_t> version(kBlocks, 0);
  std::map<std::uint16_t, std::pair<unsigned, unsigned>> inflight;  // id -> block, slot
  std::vector<unsigned> free_slots;
  for (unsigned s = 0; s < kDepth * 2; ++s) free_slots.push_back(s);
  std::set<unsigned> busy;
  std::mt19937 rng(11);
  unsigned issued = 0, completed = 0;
  bool killed = false, restarted = false;
  vmm::GuestCompletion c[64];
  const std::uint64_t until = steady_clock().now_ns() + 120'000'000'000ull;
  while (completed < kWrites && steady_clock().now_ns() < until) {
    while (issued < kWrites && inflight.size() < kDepth) {
      const unsigned block = rng() % kBlocks;
      if (busy.count(block) != 0) continue;
      const unsigned slot = free_slots.back();
      free_slots.pop_back();
      const std::uint32_t v = ++version[block];
      fill_pattern(g.host(buf + slot * 4096ull, 4096), 4096, block * 8, v);
      auto id = g.submit(0, blk::kOut, block * 8ull,
                         std::vector<vmm::DataSeg>{{buf + slot * 4096ull, 4096}});
      ASSERT_TRUE(id.ok());
      inflight[*id] = {block, slot};
      busy.insert(block);
      ++issued;
    }
    g.kick(0);
    pv.run_once();
    const unsigned n = g.reap(0, c);
    for (unsigned i = 0; i < n; ++i) {
      ASSERT_EQ(c[i].status, blk::kStatusOk) << "the guest saw an error";
      auto it = inflight.find(c[i].id);
      ASSERT_NE(it, inflight.end());
      busy.erase(it->second.first);
      free_slots.push_back(it->second.second);
      inflight.erase(it);
      ++completed;
    }
    if (!killed && completed >= kWrites / 3) {
      killed = true;
      stop_card(SIGKILL);  // with writes on the VF
    }
    if (killed && !restarted && pv.state() == vmm::PathState::fallback) {
      restarted = true;
      start_card();
    }
  }
  ASSERT_EQ(completed, kWrites) << "writes did not complete";
  ASSERT_TRUE(restarted) << "the paravisor never fell back after the card died";
  const std::uint64_t back_by = steady_clock().now_ns() + 60'000'000'000ull;
  while (pv.state() != vmm::PathState::active && steady_clock().now_ns() < back_by) {
    pv.run_once();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(pv.state(), vmm::PathState::active) << "traffic did not return to the restarted card";
  const std::uint64_t vf_ios_before = pv.counters().vf_ios;
  auto read_block = [&](unsigned block) {
    const vmm::DataSeg seg{buf, 4096};
    auto id = g.submit(0, blk::kIn, block * 8ull, {&seg, 1});
    EXPECT_TRUE(id.ok());
    g.kick(0);
    const std::uint64_t deadline = steady_clock().now_ns() + 10'000'000'000ull;
    while (steady_clock().now_ns() < deadline) {
      pv.run_once();
      if (g.reap(0, c) == 1) return c[0].status;
    }
    return std::uint8_t{0xff};
  };
  for (unsigned block = 0; block < kBlocks; ++block) {
    if (version[block] == 0) continue;
    ASSERT_EQ(read_block(block), blk::kStatusOk);
    ASSERT_EQ(check_pattern(g.host(buf, 4096), 4096, block * 8, version[block]), -1)
        << "block " << block << " does not hold version " << version[block];
  }
  EXPECT_GT(pv.counters().vf_ios, vf_ios_before) << "the reads did not take the VF";
  const auto k = pv.counters();
  EXPECT_EQ(k.errors, 0u);
  EXPECT_GE(k.to_fallback, 1u);
  EXPECT_GE(k.to_vf, 1u);
  EXPECT_GT(k.fallback_ios, 0u) << "the host path carried none of the writes";
}

// One guest's paravisor in a process of its own: run by the test below as a child (this
// binary, this test only), on the VF socket KEEL_CHILD_VF of the card whose image is
// KEEL_CHILD_IMAGE, slice at KEEL_CHILD_OFFSET. Writes forever (bounded: 120 s) with 8 in
// flight; creates KEEL_CHILD_READY after its first 100 completions.
TEST(CardProcessChild, DISABLED_GuestWritesUntilKilled) {
  const char* vf_socket = std::getenv("KEEL_CHILD_VF");
  const char* image = std::getenv("KEEL_CHILD_IMAGE");
  const char* offset = std::getenv("KEEL_CHILD_OFFSET");
  const char* ready = std::getenv("KEEL_CHILD_READY");
  ASSERT_TRUE(vf_socket != nullptr && image != nullptr && offset != nullptr && ready != nullptr);
  VfGuest guest;
  open_vf_guest(guest, vf_socket, image, std::stoull(offset));
  if (HasFatalFailure()) return;
  vmm::GuestDriver& g = *guest.drv;
  const std::uint64_t buf = g.alloc(8 * 4096);
  std::mt19937 rng(5);
  unsigned inflight = 0, done = 0;
  vmm::GuestCompletion c[16];
  const std::uint64_t until = steady_clock().now_ns() + 120'000'000'000ull;
  while (steady_clock().now_ns() < until) {
    while (inflight < 8) {
      const vmm::DataSeg seg{buf + inflight * 4096ull, 4096};
      ASSERT_TRUE(g.submit(0, blk::kOut, (rng() % 256) * 8ull, {&seg, 1}).ok());
      ++inflight;
    }
    g.kick(0);
    guest.pv().run_once();
    const unsigned n = g.reap(0, c);
    inflight -= n;
    done += n;
    if (done >= 100 && done - n < 100) std::fclose(std::fopen(ready, "w"));
  }
}

// A guest's paravisor process is killed (SIGKILL) with writes on its VF: keel-card resets that
// VF, and the other guest, on another VF of the same card, keeps every request on its VF with
// no error and no path change; the dead guest's VF takes a new paravisor at once.
TEST_F(CardProcessTest, AParavisorProcessThatDiesLeavesTheOtherGuestsAlone) {
  const std::string ready = run_dir_ + "/child-ready";
  std::vector<std::string> env_s{
      "KEEL_CHILD_VF=" + socket("vf1"), "KEEL_CHILD_IMAGE=" + image_.path(),
      "KEEL_CHILD_OFFSET=" + std::to_string(kSizeMiB * kMiB / kVfs), "KEEL_CHILD_READY=" + ready};
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
  for (auto& e : env_s) env.push_back(e.data());
  env.push_back(nullptr);
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string also = "--gtest_also_run_disabled_tests";
  std::string filter = "--gtest_filter=CardProcessChild.DISABLED_GuestWritesUntilKilled";
  char* argv[] = {self.data(), also.data(), filter.data(), nullptr};
  pid_t child = -1;
  ASSERT_EQ(posix_spawn(&child, argv[0], nullptr, nullptr, argv, env.data()), 0);

  // This guest: VF 0, the first half of the image.
  VfGuest guest;
  open_vf_guest(guest, socket("vf0"), image_.path(), 0);
  if (HasFatalFailure()) return;
  vmm::Paravisor& pv = guest.pv();
  vmm::GuestDriver& g = *guest.drv;

  const std::uint64_t started = steady_clock().now_ns();
  while (!std::filesystem::exists(ready)) {
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, WNOHANG), 0) << "the other guest's process ended";
    ASSERT_LT(steady_clock().now_ns() - started, 60'000'000'000ull) << "the other guest did no IO";
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::uint64_t buf = g.alloc(8 * 4096);
  for (unsigned s = 0; s < 8; ++s) fill_pattern(g.host(buf + s * 4096ull, 4096), 4096, s, 7);
  unsigned inflight = 0, done = 0;
  bool killed = false;
  vmm::GuestCompletion c[16];
  const std::uint64_t until = steady_clock().now_ns() + 60'000'000'000ull;
  while (done < 2000 && steady_clock().now_ns() < until) {
    while (inflight < 8) {
      const vmm::DataSeg seg{buf + inflight * 4096ull, 4096};
      ASSERT_TRUE(g.submit(0, blk::kOut, (done + inflight) % 256 * 8ull, {&seg, 1}).ok());
      ++inflight;
    }
    g.kick(0);
    pv.run_once();
    const unsigned n = g.reap(0, c);
    for (unsigned i = 0; i < n; ++i) ASSERT_EQ(c[i].status, blk::kStatusOk);
    inflight -= n;
    done += n;
    if (!killed && done >= 500) {
      killed = true;
      kill(child, SIGKILL);
      int status = 0;
      waitpid(child, &status, 0);
    }
  }
  ASSERT_GE(done, 2000u);
  EXPECT_EQ(pv.state(), vmm::PathState::active);
  const auto k = pv.counters();
  EXPECT_EQ(k.to_fallback, 0u) << "the other guest's death moved this guest off its VF";
  EXPECT_EQ(k.fallback_ios, 0u);
  EXPECT_EQ(k.errors, 0u);

  // The dead guest's VF: free again (keel-card saw its client go) and reset, so a new
  // paravisor's driver brings it up.
  Result<std::unique_ptr<fpga::Card>> again = make_error(Errc::unavailable, "not tried");
  for (int i = 0; i < 500 && !again.ok(); ++i) {
    again = fpga::open_card("vfio-user:" + socket("vf1"));
    if (!again.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(again.ok()) << again.error().message;
  auto vf1 = (*again)->vf(0);
  ASSERT_TRUE(vf1.ok());
  auto s2 = stack::Stack::attach(**again, {});
  auto ctrl = s2->open_controller(**vf1);
  EXPECT_TRUE(ctrl.ok()) << ctrl.error().message;
}

}  // namespace
}  // namespace keel::vfio_user
