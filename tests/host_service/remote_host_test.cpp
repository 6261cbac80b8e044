// The host storage service in its own process (keel-hostd, issue 12): a paravisor in this
// process serves a guest on the host path through it. For a confidential guest the daemon
// never receives a guest-RAM fd, and /proc/<daemon>/maps proves it has no mapping of the
// guest's RAM (only the shared pool); a non-confidential guest's RAM does appear there (the
// check can fail). A disk the daemon does not serve is refused and the daemon serves on.
//
// KEEL_HOSTD_BIN: the keel-hostd binary.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "keel/clock.h"
#include "keel/stack/stack.h"
#include "keel/vmm/guest_driver.h"
#include "keel/vmm/guest_memory.h"
#include "keel/vmm/remote_host.h"
#include "keel/wire/virtio.h"

extern char** environ;

namespace keel::vmm {
namespace {

namespace blk = virtio::blk;
constexpr std::uint64_t kMiB = 1ull << 20;

// Inodes of the memfd mappings of process `pid`.
std::vector<std::uint64_t> memfd_inodes(pid_t pid) {
  std::vector<std::uint64_t> out;
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream f(line);
    std::string range, perms, offset, dev, path;
    std::uint64_t inode = 0;
    f >> range >> perms >> offset >> dev >> inode >> path;
    if (path.rfind("/memfd:", 0) == 0) out.push_back(inode);
  }
  return out;
}

bool maps_inode(pid_t pid, std::uint64_t ino) {
  for (std::uint64_t i : memfd_inodes(pid)) {
    if (i == ino) return true;
  }
  return false;
}

class RemoteHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    {
      std::ofstream img(image_.path(), std::ios::binary);
      img.seekp(static_cast<std::streamoff>(16 * kMiB - 1));
      img.put('\0');
    }
    socket_ = image_.path() + ".sock";
    std::vector<std::string> args{
        KEEL_HOSTD_BIN, "--socket", socket_, "--disk", "vm0=" + image_.path() + ":4M:8M",
        "--log-level",  "warn"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ASSERT_EQ(posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ), 0);
    const std::uint64_t until = steady_clock().now_ns() + 30'000'000'000ull;
    while (!std::filesystem::exists(socket_)) {
      ASSERT_LT(steady_clock().now_ns(), until) << "keel-hostd did not come up";
      int status = 0;
      ASSERT_EQ(waitpid(pid_, &status, WNOHANG), 0) << "keel-hostd exited at start";
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    stack::StackConfig sc;  // a card only for the paravisor's clock: every IO is on the host
    sc.card_options.lockstep = false;
    sc.card_options.storage_bytes = 1 * kMiB;
    auto s = stack::Stack::open_card(sc);
    ASSERT_TRUE(s.ok());
    stack_ = std::move(s).value();
    auto m = GuestMemory::create(16 * kMiB);
    ASSERT_TRUE(m.ok());
    mem_ = std::move(m).value();
    struct stat st {};
    ASSERT_EQ(fstat(mem_->regions()[0].fd, &st), 0);
    ram_ino_ = st.st_ino;
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "keel-hostd did not exit cleanly";
    }
  }

  std::vector<HostMemoryRegion> ram_regions() const {
    std::vector<HostMemoryRegion> out;
    for (const auto& r : mem_->regions()) out.push_back({r.fd, r.fd_offset, r.gpa, r.bytes});
    return out;
  }

  // A guest on the host path through `host`: writes a pattern, reads it back.
  void guest_io(HostStorage& host, bool confidential) {
    ParavisorConfig pc;
    pc.confidential = confidential;
    pc.capacity_sectors = 8 * kMiB / 512;
    auto pv = stack_->create_paravisor(nullptr, *mem_, host, pc);
    ASSERT_TRUE(pv.ok()) << pv.error().message;
    auto guest = GuestDriver::attach(**pv, *mem_, 1, 64, 1 * kMiB);
    ASSERT_TRUE(guest.ok()) << guest.error().message;
    GuestDriver& g = **guest;
    const std::uint64_t out = g.alloc(8192), in = g.alloc(8192);
    for (std::size_t i = 0; i < 8192; ++i) g.host(out, 8192)[i] = std::byte(i * 31 + 7);
    auto run = [&](std::uint32_t type, std::uint64_t gpa) {
      const DataSeg seg{gpa, 8192};
      auto id = g.submit(0, type, 64, {&seg, 1});
      EXPECT_TRUE(id.ok());
      g.kick(0);
      GuestCompletion c[1];
      const std::uint64_t until = steady_clock().now_ns() + 30'000'000'000ull;
      while (steady_clock().now_ns() < until) {
        (*pv)->run_once();
        if (g.reap(0, c) == 1) return c[0].status;
        (void)(*pv)->wait_for_host(std::chrono::milliseconds(100));
      }
      ADD_FAILURE() << "the request did not complete";
      return std::uint8_t{0xff};
    };
    EXPECT_EQ(run(blk::kOut, out), blk::kStatusOk);
    EXPECT_EQ(run(blk::kIn, in), blk::kStatusOk);
    EXPECT_EQ(std::memcmp(g.host(in, 8192), g.host(out, 8192), 8192), 0);
    EXPECT_GE((*pv)->counters().fallback_ios, 2u);
    // On the disk: sector 64 of the slice that starts 4 MiB into the image.
    std::ifstream img(image_.path(), std::ios::binary);
    img.seekg(static_cast<std::streamoff>(4 * kMiB + 64 * 512));
    std::vector<char> disk(8192);
    img.read(disk.data(), 8192);
    EXPECT_EQ(std::memcmp(disk.data(), g.host(out, 8192), 8192), 0)
        << "the data is not where the disk's slice says";
    guest->reset();
    pv->reset();
  }

  const stack::ScratchImage image_{"remote-host", std::filesystem::temp_directory_path()};
  std::string socket_;
  pid_t pid_ = -1;
  std::unique_ptr<stack::Stack> stack_;
  std::unique_ptr<GuestMemory> mem_;
  std::uint64_t ram_ino_ = 0;
};

TEST_F(RemoteHostTest, AConfidentialGuestsRamIsNotInTheHostProcess) {
  auto host = RemoteHostStorage::connect(socket_, "vm0", {});
  ASSERT_TRUE(host.ok()) << host.error().message;
  EXPECT_EQ((*host)->server_pid(), pid_);
  EXPECT_EQ((*host)->disk_bytes(), 8 * kMiB);
  guest_io(**host, true);
  // What the daemon maps: the shared pool (it says so, and its maps agree), not guest RAM.
  std::uint64_t pool_ino = 0;
  for (const HostRegionInfo& r : (*host)->regions()) {
    EXPECT_TRUE(r.shared) << "the daemon holds a region that is not the shared pool";
    pool_ino = r.ino;
  }
  ASSERT_NE(pool_ino, 0u) << "no shared pool was registered";
  EXPECT_TRUE(maps_inode(pid_, pool_ino)) << "the shared pool is not mapped by keel-hostd";
  EXPECT_FALSE(maps_inode(pid_, ram_ino_)) << "keel-hostd maps the confidential guest's RAM";
}

TEST_F(RemoteHostTest, AGuestThatSharesItsRamIsMappedThere) {
  auto host = RemoteHostStorage::connect(socket_, "vm0", ram_regions());
  ASSERT_TRUE(host.ok()) << host.error().message;
  guest_io(**host, false);
  EXPECT_TRUE(maps_inode(pid_, ram_ino_)) << "the shared guest RAM is not in keel-hostd's maps";
  host->reset();
  // The session ends with the connection: its mapping goes with it.
  const std::uint64_t until = steady_clock().now_ns() + 10'000'000'000ull;
  while (maps_inode(pid_, ram_ino_) && steady_clock().now_ns() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_FALSE(maps_inode(pid_, ram_ino_)) << "guest RAM stayed mapped after the session";
}

TEST_F(RemoteHostTest, ADiskThatIsNotServedIsRefused) {
  auto bad = RemoteHostStorage::connect(socket_, "/etc/passwd", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, Errc::not_found) << bad.error().message;
  auto none = RemoteHostStorage::connect(socket_ + ".missing", "vm0", {});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, Errc::unavailable);
  auto good = RemoteHostStorage::connect(socket_, "vm0", {});  // still serving
  EXPECT_TRUE(good.ok()) << good.error().message;
}

}  // namespace
}  // namespace keel::vmm
