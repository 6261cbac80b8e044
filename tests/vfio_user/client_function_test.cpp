// fpga/vfio_user_client against fpga/vfio_user_server: a VF of the free-running reference card
// served on a unix socket, reached through ClientFunction, driven by keel's NVMe driver:
// bring-up, an IO queue pair with MSI-X, data DMAed into the client's memfd buffers and back,
// and a server that goes away.
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "keel/clock.h"
#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/queue_pair.h"
#include "keel/fpga/stepper.h"
#include "keel/fpga/vfio_user/client_function.h"
#include "keel/fpga/vfio_user/function_server.h"
#include "keel/stack/stack.h"
#include "keel/unix_listener.h"
#include "keel/vmm/guest_driver.h"
#include "keel/vmm/guest_memory.h"

namespace keel::vfio_user {
namespace {

namespace drv = keel::drivers::nvme;

// The card runs in its own thread (free-running): a waiter only eases off the CPU.
struct Yield final : fpga::Stepper {
  void advance() noexcept override { std::this_thread::yield(); }
};

class ClientFunctionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    stack::StackConfig sc;
    sc.card = "model";
    sc.card_options.image_path = image_.path();  // the host path needs a file
    sc.card_options.storage_bytes = 16ull << 20;
    sc.card_options.lockstep = false;
    sc.vfs.count = 1;
    sc.vfs.queues = 2;
    auto s = stack::Stack::open(sc);
    ASSERT_TRUE(s.ok()) << s.error().message;
    stack_ = std::move(s).value();
    vf_ = stack_->vf(0).value();
    path_ =
        stack::scratch_image_path("vfio-user", std::filesystem::temp_directory_path()) + ".sock";
    auto l = UnixListener::listen(path_);
    ASSERT_TRUE(l.ok()) << l.error().message;
    listener_ = std::move(l.value());
    server_ = std::thread([this] { serve(); });
    auto c = ClientFunction::connect(path_);
    ASSERT_TRUE(c.ok()) << c.error().message;
    client_ = std::move(c).value();
  }
  void TearDown() override {
    client_.reset();
    stop_server();
  }
  void stop_server() {
    stop_.store(true);
    if (server_.joinable()) server_.join();
  }

  // keel-card's loop for one function, in a thread.
  void serve() {
    FunctionServerConfig fc;  // as keel-card serves a VF: its doorbells are a mapped page
    fc.doorbell_offset = 0x1000;
    fc.doorbell_bytes = vf_->bar_size() - 0x1000;
    fc.doorbell_slots = 2 * vf_->num_vectors();
    FunctionServer fs(*vf_, fc);
    std::unique_ptr<Channel> ch;
    while (!stop_.load()) {
      std::vector<pollfd> p{{listener_.fd(), POLLIN, 0}};
      if (ch) {
        p.push_back({ch->fd(), POLLIN, 0});
        for (int fd : fs.interrupt_fds()) p.push_back({fd, POLLIN, 0});
        if (fs.doorbell_fd() >= 0) p.push_back({fs.doorbell_fd(), POLLIN, 0});
      }
      if (::poll(p.data(), p.size(), 10) <= 0) continue;
      if ((p[0].revents & POLLIN) != 0 && !ch) ch = std::make_unique<Channel>(listener_.accept());
      if (ch && p.size() > 1 && p[1].revents != 0) {
        auto m = ch->receive(std::chrono::milliseconds(1000));
        if (!m || !fs.handle(*ch, *m).ok()) {
          ch.reset();
          fs.client_gone();
          continue;
        }
      }
      if (ch) {
        fs.apply_doorbells();
        fs.forward_interrupts();
      }
    }
  }

  const stack::ScratchImage image_{"vfio-user-card", std::filesystem::temp_directory_path()};
  std::unique_ptr<stack::Stack> stack_;  // after image_: the card goes first
  fpga::Function* vf_ = nullptr;
  std::string path_;
  UnixListener listener_;
  std::thread server_;
  std::atomic<bool> stop_{false};
  std::unique_ptr<ClientFunction> client_;
};

TEST_F(ClientFunctionTest, SeesTheFunctionsBarAndVectors) {
  EXPECT_EQ(client_->number(), 1u) << "VF 0 is function 1 (its configuration space says so)";
  EXPECT_FALSE(client_->identity().is_pf());
  EXPECT_EQ(client_->bar_size(), vf_->bar_size());
  EXPECT_EQ(client_->num_vectors(), vf_->num_vectors());
  EXPECT_EQ(client_->read32(0x8), 0x00010400u);  // NVMe 1.4
  EXPECT_EQ(client_->read64(0x0), vf_->read64(0x0));
  int x = 0;
  EXPECT_EQ(client_->map_dma(&x, 4096, 0x1000).error().code, Errc::unavailable);
}

TEST_F(ClientFunctionTest, TheNvmeDriverRunsOverIt) {
  Yield yield;
  auto ctrl = drv::Controller::open(*client_, steady_clock(), yield);
  ASSERT_TRUE(ctrl.ok()) << ctrl.error().message;
  drv::QueuePairConfig qc;
  qc.interrupts = true;  // completions come back as the server's eventfd signals
  qc.entries = 16;
  auto qp = (*ctrl)->create_queue_pair(qc);
  ASSERT_TRUE(qp.ok()) << qp.error().message;
  auto out = client_->alloc_dma(8 * 512);
  auto in = client_->alloc_dma(8 * 512);
  ASSERT_TRUE(out.ok() && in.ok());
  for (std::size_t i = 0; i < out->size(); ++i) out->data()[i] = std::byte(i * 7 + 3);
  auto run = [&](drv::IoStatus submitted) {
    EXPECT_TRUE(submitted.ok());
    drv::Completion c[1];
    const unsigned n = (*qp)->wait(c, std::chrono::seconds(5));
    EXPECT_EQ(n, 1u) << "no completion";
    return n == 1 && c[0].status.ok();
  };
  const drv::Segment w{out->iova(), 8 * 512}, r{in->iova(), 8 * 512};
  ASSERT_TRUE(run((*qp)->write(10, 8, {&w, 1}, 1)));
  ASSERT_TRUE(run((*qp)->read(10, 8, {&r, 1}, 2)));
  EXPECT_EQ(std::memcmp(in->data(), out->data(), 8 * 512), 0) << "data did not round-trip";
  EXPECT_GE(client_->doorbell_stores(), 4u) << "the doorbells went as messages, not stores";
  qp->reset();
  ctrl->reset();
}

// The paravisor maps the guest's RAM by its memfd (map_dma_fd): the card, behind the socket,
// DMAs a guest's write out of and its read into the same pages the guest sees.
TEST_F(ClientFunctionTest, AParavisorServesAGuestThroughIt) {
  namespace blk = virtio::blk;
  auto mem = vmm::GuestMemory::create(16ull << 20);
  ASSERT_TRUE(mem.ok());
  stack::DiskSpec disk;
  disk.length = 16ull << 20;  // VF 0's slice: the whole image
  auto host = stack_->start_host_service(stack_->host_config(**mem, disk));
  ASSERT_TRUE(host.ok()) << host.error().message;
  vmm::ParavisorConfig pc;
  pc.capacity_sectors = disk.length / 512;
  auto pv = stack_->create_paravisor(client_.get(), **mem, **host, pc);
  ASSERT_TRUE(pv.ok()) << pv.error().message;
  ASSERT_EQ((*pv)->state(), vmm::PathState::active) << "the VF path did not come up";
  auto guest = vmm::GuestDriver::attach(**pv, **mem, 1, 64, 1ull << 20);
  ASSERT_TRUE(guest.ok()) << guest.error().message;
  vmm::GuestDriver& g = **guest;
  const std::uint64_t out = g.alloc(8192), in = g.alloc(8192);
  for (std::size_t i = 0; i < 8192; ++i) g.host(out, 8192)[i] = std::byte(i * 13 + 1);
  auto run = [&](std::uint32_t type, std::uint64_t gpa) {
    const vmm::DataSeg seg{gpa, 8192};
    auto id = g.submit(0, type, 64, {&seg, 1});
    EXPECT_TRUE(id.ok());
    g.kick(0);
    vmm::GuestCompletion c[1];
    const std::uint64_t until = steady_clock().now_ns() + 10'000'000'000ull;
    while (steady_clock().now_ns() < until) {
      (*pv)->run_once();
      if (g.reap(0, c) == 1) return c[0].status;
    }
    ADD_FAILURE() << "the request did not complete";
    return std::uint8_t{0xff};
  };
  EXPECT_EQ(run(blk::kOut, out), blk::kStatusOk);
  EXPECT_EQ(run(blk::kIn, in), blk::kStatusOk);
  EXPECT_EQ(std::memcmp(g.host(in, 8192), g.host(out, 8192), 8192), 0);
  EXPECT_GE((*pv)->counters().vf_ios, 2u) << "the requests did not take the VF path";
  guest->reset();
  pv->reset();
}

TEST_F(ClientFunctionTest, AServerThatGoesAwayLeavesAGoneFunction) {
  stop_server();
  listener_.close();
  // The server's channel closed with its thread; the next access finds the socket dead.
  (void)client_->read32(0x8);
  EXPECT_EQ(client_->read32(0x8), 0xffffffffu);
  EXPECT_TRUE(client_->gone());
  EXPECT_EQ(client_->flr().error().code, Errc::gone);
}

// keel-card restarted: the function dials its socket again on its next use and finds a reset
// device (same function, same MSI-X eventfds, its DMA windows mapped again).
TEST_F(ClientFunctionTest, AFunctionWhoseServerComesBackIsFoundAgain) {
  const int irq_fd = client_->interrupt_fd(0);
  stop_server();  // keel-card dies: its connection and its socket go
  listener_.close();
  (void)client_->read32(0x8);
  EXPECT_EQ(client_->read32(0x8), 0xffffffffu);
  ASSERT_TRUE(client_->gone());
  auto l = UnixListener::listen(path_);  // and starts again
  ASSERT_TRUE(l.ok());
  listener_ = std::move(l.value());
  stop_.store(false);
  server_ = std::thread([this] { serve(); });
  // It dials at most every reconnect_interval (100 ms): a few reads find it back.
  std::uint32_t vs = 0xffffffffu;
  for (int i = 0; i < 500 && vs == 0xffffffffu; ++i) {
    vs = client_->read32(0x8);
    if (vs == 0xffffffffu) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(vs, 0x00010400u) << "the function did not come back";
  EXPECT_FALSE(client_->gone());
  EXPECT_EQ(client_->reconnects(), 1u);
  EXPECT_EQ(client_->number(), 1u);
  EXPECT_EQ(client_->interrupt_fd(0), irq_fd);
  auto buf = client_->alloc_dma(4096);
  EXPECT_TRUE(buf.ok()) << buf.error().message;
}

// A function that records every register write, in order.
class RecordingFunction final : public fpga::Function {
 public:
  unsigned number() const noexcept override { return 1; }
  std::uint64_t bar_size() const noexcept override { return 0x2000; }
  std::uint32_t read32(std::uint64_t offset) noexcept override {
    return offset == 0x8 ? 0x00010400u : 0;
  }
  std::uint64_t read64(std::uint64_t) noexcept override { return 0; }
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override {
    std::lock_guard lock(mu);
    writes.emplace_back(offset, value);
  }
  void write64(std::uint64_t, std::uint64_t) noexcept override {}
  Result<fpga::DmaBuffer> alloc_dma(std::size_t) override {
    return make_error(Errc::unavailable, "no DMA here");
  }
  Status map_dma(void*, std::size_t, fpga::Iova) override { return {}; }
  Status unmap_dma(fpga::Iova) override { return {}; }
  unsigned num_vectors() const noexcept override { return 0; }
  Result<std::uint32_t> wait_interrupt(unsigned, std::chrono::nanoseconds) override {
    return make_error(Errc::timeout, "none");
  }
  Status flr() override { return {}; }
  std::mutex mu;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> writes;
};

// Doorbells through the mapped page: writes to one doorbell reach the function in order and
// may coalesce into the last (the device needs only the newest tail); a message after stores
// comes after them; the same value written again after the function took it is seen again.
TEST(DoorbellPage, WritesReachTheFunctionInOrderAndTheSameValueTwice) {
  RecordingFunction fn;
  const std::string path =
      stack::scratch_image_path("doorbells", std::filesystem::temp_directory_path()) + ".sock";
  auto l = UnixListener::listen(path);
  ASSERT_TRUE(l.ok());
  std::atomic<bool> stop{false};
  std::thread server([&] {
    FunctionServerConfig fc;
    fc.doorbell_offset = 0x1000;
    fc.doorbell_bytes = 0x1000;
    fc.doorbell_slots = 4;
    FunctionServer fs(fn, fc);
    std::unique_ptr<Channel> ch;
    while (!stop.load()) {
      std::vector<pollfd> p{{l->fd(), POLLIN, 0}};
      if (ch) p.push_back({ch->fd(), POLLIN, 0});
      if (::poll(p.data(), p.size(), 10) <= 0) continue;
      if ((p[0].revents & POLLIN) != 0 && !ch) ch = std::make_unique<Channel>(l->accept());
      if (ch && p.size() > 1 && p[1].revents != 0) {
        auto m = ch->receive(std::chrono::milliseconds(1000));
        if (!m || !fs.handle(*ch, *m).ok()) break;
      }
    }
  });
  {
    auto c = ClientFunction::connect(path);
    ASSERT_TRUE(c.ok()) << c.error().message;
    ClientFunction& f = **c;
    f.write32(0x1000, 5);
    f.write32(0x1000, 5);
    f.write32(0x1000, 6);
    f.write32(0x1004, 1);
    f.write32(0x14, 0);                     // not a doorbell: a message, after the stores
    EXPECT_EQ(f.read32(0x8), 0x00010400u);  // a reply: everything before it was applied
    f.write32(0x1000, 6);                   // the same value, after the function took it
    EXPECT_EQ(f.read32(0x8), 0x00010400u);
    EXPECT_EQ(f.doorbell_stores(), 5u) << "doorbells went as messages";
    std::lock_guard lock(fn.mu);
    std::vector<std::uint32_t> db0, db1;
    std::size_t cc_at = fn.writes.size();
    for (std::size_t i = 0; i < fn.writes.size(); ++i) {
      const auto [off, v] = fn.writes[i];
      if (off == 0x1000) db0.push_back(v);
      if (off == 0x1004) db1.push_back(v);
      if (off == 0x14) cc_at = i;
    }
    // 0x1000 saw 5, 5, 6 or a coalesced tail of it (ending in 6), then 6 again; 0x1004 saw 1;
    // the register write came after all of those but the last 6, which came after it.
    ASSERT_GE(db0.size(), 2u);
    EXPECT_EQ(db0[db0.size() - 2], 6u);
    EXPECT_EQ(db0.back(), 6u) << "the second 6 was lost";
    for (std::size_t i = 1; i + 1 < db0.size(); ++i) EXPECT_GE(db0[i], db0[i - 1]);
    EXPECT_EQ(db1, std::vector<std::uint32_t>{1u});
    ASSERT_LT(cc_at, fn.writes.size());
    EXPECT_EQ(cc_at, fn.writes.size() - 2) << "the register write was not between the stores";
    EXPECT_EQ(fn.writes.back(), (std::pair<std::uint64_t, std::uint32_t>{0x1000, 6}));
  }
  stop.store(true);
  server.join();
}

}  // namespace
}  // namespace keel::vfio_user
