// A model card with one VF, a host storage service and a paravisor factory (all from
// keel::stack) behind a VhostUserBlkServer, and the scripted front end that talks to it.
// Caller-driven by default: the test thread runs the server, the paravisor's data path and a
// lockstep card, so every step is deterministic. threaded = true: a free-running card, paravisor
// worker threads and the server on its own thread (as keel-vhost-blk runs), waits bounded by the
// call eventfd.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "card_fixture.h"
#include "front_end.h"
#include "keel/stack/stack.h"
#include "keel/vmm/vhost_user.h"
#include "nvme_host.h"

namespace keel::testing {

namespace vmm = keel::vmm;
namespace blk = keel::virtio::blk;

class VhostUserTest : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kSliceLbas = 32768;  // 16 MiB disk
  static constexpr std::uint16_t kRingSize = 128;     // QEMU's default queue-size

  ~VhostUserTest() override {
    server_.reset();  // destroys the paravisor before the host service it uses
    host_.reset();
    card_ = nullptr;
    stack_.reset();
    if (!image_.empty()) std::filesystem::remove(image_);
  }

  /// Card, VF 0 with `queues` queue pairs, and the server (not yet serving).
  void start(unsigned queues = 1, bool threaded = false) {
    threaded_ = threaded;
    queues_ = queues;
    const std::string tag =
        std::string("vu-") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    image_ = stack::scratch_image_path(tag, std::filesystem::temp_directory_path());
    stack::StackConfig sc;
    sc.card = "model";
    sc.card_options.image_path = image_;
    sc.card_options.storage_bytes = kSliceLbas * 512;
    sc.card_options.lockstep = !threaded;
    sc.vfs.resources.resize(1);
    sc.vfs.resources[0].queues = queues;
    sc.vfs.resources[0].slice_base = 0;
    sc.vfs.resources[0].slice_lbas = kSliceLbas;
    auto opened = stack::Stack::open(sc);
    KEEL_ASSERT_OK(opened);
    stack_ = std::move(opened).value();
    card_ = &stack_->card();
    vmm::VhostUserBlkConfig vc;
    vc.socket_path = "/tmp/keel-vu-" + std::to_string(getpid()) + ".sock";
    vc.message_timeout = std::chrono::milliseconds(200);
    auto s = vmm::VhostUserBlkServer::create(vc, factory());
    KEEL_ASSERT_OK(s);
    server_ = std::move(s).value();
    if (threaded) KEEL_ASSERT_OK(server_->start());
  }

  /// What a VMM integration would pass: a host service over the front end's memory table,
  /// and a paravisor on VF 0.
  vmm::ParavisorFactory factory() {
    return [this](vmm::GuestMemory& mem) -> Result<std::unique_ptr<vmm::Paravisor>> {
      host_.reset();  // the server destroyed the paravisor that used it
      if (fail_factory_) return make_error(Errc::unavailable, "test: no paravisor this time");
      stack::DiskSpec disk;
      disk.length = kSliceLbas * 512;
      disk.ram = stack::GuestRamView::regions;
      auto h = stack_->start_host_service(stack_->host_config(mem, disk));
      if (!h) return h.error();
      host_ = std::move(h).value();
      auto vf = stack_->vf(0);
      if (!vf) return vf.error();
      vmm::ParavisorConfig pc = pv_config_;
      pc.queues = queues_;
      pc.threads = threaded_;
      pc.capacity_sectors = kSliceLbas;
      ++factory_calls_;
      return stack_->create_paravisor(*vf, mem, *host_, pc);
    };
  }

  /// A connected front end (the server has accepted it).
  std::unique_ptr<FrontEnd> connect() {
    std::function<void()> pump;
    if (!threaded_) pump = [this] { server_->run_once(std::chrono::milliseconds(100)); };
    auto fe = std::make_unique<FrontEnd>(server_->socket_path(), pump);
    EXPECT_TRUE(fe->connect());
    return fe;
  }

  /// Runs the data path until `done()` (bounded: card steps, or 10 s with threads).
  bool drive(const std::function<bool()>& done, const DriverRing* ring = nullptr) {
    if (!threaded_) {
      for (unsigned t = 0; t < 400'000; ++t) {
        server_->run_paravisor_once();
        if (done()) return true;
        card_->step(1);
      }
      return done();
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (done()) return true;
      EXPECT_NE(ring, nullptr) << "with threads, a wait needs a ring's call eventfd";
      if (ring == nullptr) return false;
      (void)ring->wait_call(50);
      (void)ring->take_calls();
    }
    return done();
  }

  /// One request, kicked, run to completion; its status (0xFF if it never completed).
  std::uint8_t io(DriverRing& ring, std::uint32_t type, std::uint64_t sector,
                  std::vector<DriverRing::Seg> segs) {
    const std::uint16_t head = ring.submit(type, sector, segs);
    ring.kick();
    std::uint8_t status = 0xFF;
    const bool done = drive(
        [&] {
          auto r = ring.reap();
          if (!r) return false;
          EXPECT_EQ(r->first, head);
          status = r->second;
          return true;
        },
        &ring);
    EXPECT_TRUE(done) << "request did not complete";
    return status;
  }

  /// Writes a pattern from `wgpa` (in `pieces` descriptors), reads it back into `rgpa`, and
  /// compares both the read and the backing image.
  void round_trip(GuestRam& ram, DriverRing& ring, std::uint64_t sector, std::uint32_t sectors,
                  std::uint64_t wgpa, std::uint64_t rgpa, std::uint32_t seed, unsigned pieces = 1) {
    const std::uint32_t bytes = sectors * 512;
    auto split = [&](std::uint64_t gpa) {
      std::vector<DriverRing::Seg> segs;
      const std::uint32_t step = (sectors / pieces) * 512;
      for (unsigned i = 0; i < pieces; ++i) {
        const std::uint32_t len = i + 1 == pieces ? bytes - step * i : step;
        segs.push_back({gpa + std::uint64_t{step} * i, len});
      }
      return segs;
    };
    fill_pattern(ram.at(wgpa, bytes), bytes, sector, seed);
    ASSERT_EQ(io(ring, blk::kOut, sector, split(wgpa)), blk::kStatusOk);
    std::memset(ram.at(rgpa, bytes), 0, bytes);
    ASSERT_EQ(io(ring, blk::kIn, sector, split(rgpa)), blk::kStatusOk);
    EXPECT_EQ(check_pattern(ram.at(rgpa, bytes), bytes, sector, seed), -1) << "read back";
    std::vector<std::byte> disk(bytes);
    const int fd = ::open(image_.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, disk.data(), bytes, static_cast<off_t>(sector * 512)),
              static_cast<ssize_t>(bytes));
    ::close(fd);
    EXPECT_EQ(check_pattern(disk.data(), bytes, sector, seed), -1) << "backing image";
  }

  std::string image_;
  std::unique_ptr<stack::Stack> stack_;
  fpga::Card* card_ = nullptr;  ///< stack_'s card
  std::unique_ptr<vmm::HostStorageService> host_;
  std::unique_ptr<vmm::VhostUserBlkServer> server_;
  unsigned queues_ = 1;
  bool threaded_ = false;
  unsigned factory_calls_ = 0;
  bool fail_factory_ = false;
  vmm::ParavisorConfig pv_config_;  ///< What the factory starts from (set before start()).
};

}  // namespace keel::testing
