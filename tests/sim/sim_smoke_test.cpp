// First light of the Verilated card: registers, enable, Identify, queues, one write and read.
#include <gtest/gtest.h>

#include <cstring>

#include <keel/regs/keel_regs.h>

#include "card_fixture.h"
#include "keel/fpga/sim/sim_card.h"
#include "nvme_host.h"

namespace keel::testing {
namespace {

namespace pfr = regs::pf;
namespace vc = regs::vfcfg;

std::unique_ptr<fpga::sim::SimCard> make_card() {
  fpga::sim::SimConfig cfg;
  cfg.card.storage_bytes = 16ull << 20;
  cfg.card.max_vfs = 4;
  cfg.card.max_ioq_per_vf = 4;
  auto card = fpga::sim::SimCard::create(cfg);
  EXPECT_TRUE(card.ok()) << to_string(card.error());
  return std::move(card).value();
}

TEST(SimSmoke, PfIdentity) {
  auto card = make_card();
  EXPECT_EQ(card->pf().read32(pfr::ID), regs::MAGIC);
  EXPECT_EQ(card->pf().read32(pfr::CAPS) & 0xFF, 4u);
  EXPECT_EQ(card->pf().read64(pfr::STORAGE_LBAS), (16ull << 20) / 512);
  EXPECT_EQ(card->num_vfs(), 0u);
  ASSERT_TRUE(card->set_num_vfs(2).ok());
  EXPECT_EQ(card->num_vfs(), 2u);
  EXPECT_EQ(card->pf().read32(pfr::NUM_VFS), 2u);
}

TEST(SimSmoke, ReadWrite) {
  auto card = make_card();
  ASSERT_TRUE(card->set_num_vfs(1).ok());
  fpga::Function& pf = card->pf();
  pf.write32(vc::at(0, vc::IOQ), 2);
  pf.write64(vc::at(0, vc::SLICE_BASE), 0);
  pf.write64(vc::at(0, vc::SLICE_LBAS), 4096);
  pf.write32(vc::at(0, vc::CTRL), 1);
  ASSERT_EQ(pf.read32(vc::at(0, vc::CTRL) + 4) & 1u, 1u)
      << std::hex << pf.read32(vc::at(0, vc::CTRL) + 4);
  auto vf = card->vf(0);
  ASSERT_TRUE(vf.ok());
  NvmeHost host(*card, **vf);
  auto st = host.enable();
  ASSERT_TRUE(st.ok()) << to_string(st.error());

  auto buf = (*vf)->alloc_dma(8192);
  ASSERT_TRUE(buf.ok());
  nvme::Sqe id{};
  id.opc = nvme::admin::kIdentify;
  id.cdw10 = 1;
  ASSERT_TRUE(host.set_prps(id, buf->iova(), 4096).ok());
  auto c = host.run(0, id);
  ASSERT_TRUE(c.ok()) << to_string(c.error());
  EXPECT_EQ(nvme::cqe_status(*c), 0) << std::hex << c->status;
  EXPECT_EQ(std::memcmp(buf->data() + 4, "KEELVF0000", 10), 0);

  st = host.create_io_pair(1, 16);
  ASSERT_TRUE(st.ok()) << to_string(st.error());
  fill_pattern(buf->data(), 4096, 10, 7);
  c = host.run(1, host.rw_cmd(true, 10, 8, buf->iova(), 4096));
  ASSERT_TRUE(c.ok()) << to_string(c.error());
  EXPECT_EQ(nvme::cqe_status(*c), 0) << std::hex << c->status;
  std::memset(buf->data(), 0, 8192);
  c = host.run(1, host.rw_cmd(false, 10, 8, buf->iova() + 4096, 4096));
  ASSERT_TRUE(c.ok()) << to_string(c.error());
  EXPECT_EQ(nvme::cqe_status(*c), 0) << std::hex << c->status;
  EXPECT_EQ(check_pattern(buf->data() + 4096, 4096, 10, 7), -1);
}

// The free-running card: its own thread clocks the RTL; BAR writes are posted, reads wait. The
// host's waits are bounded by wall-clock time here.
TEST(SimSmoke, FreeRunningReadWrite) {
  fpga::CardOptions o;
  o.storage_bytes = 16ull << 20;
  o.max_vfs = 2;
  o.max_ioq_per_vf = 2;
  o.lockstep = false;
  auto opened = fpga::open_card("sim", o);
  ASSERT_TRUE(opened.ok()) << to_string(opened.error());
  auto card = std::move(opened).value();
  EXPECT_FALSE(card->lockstep());
  EXPECT_EQ(card->backend(), "sim");
  ASSERT_TRUE(card->set_num_vfs(1).ok());
  fpga::Function& pf = card->pf();
  pf.write32(vc::at(0, vc::IOQ), 1);
  pf.write64(vc::at(0, vc::SLICE_LBAS), 4096);
  pf.write32(vc::at(0, vc::CTRL), 1);
  ASSERT_EQ(pf.read32(vc::at(0, vc::CTRL)) & 1u, 1u);
  NvmeHost host(*card, *card->vf(0).value());
  KEEL_ASSERT_OK(host.enable());
  KEEL_ASSERT_OK(host.create_io_pair(1, 16, /*irq=*/true, 1));
  auto buf = card->vf(0).value()->alloc_dma(4096);
  ASSERT_TRUE(buf.ok());
  for (std::uint64_t lba = 0; lba < 64; lba += 8) {
    fill_pattern(buf->data(), 4096, lba, 3);
    auto w = host.run(1, host.rw_cmd(true, lba, 8, buf->iova(), 4096), std::chrono::seconds(5));
    ASSERT_TRUE(w.ok()) << to_string(w.error());
    EXPECT_EQ(nvme::cqe_status(*w), 0);
    std::memset(buf->data(), 0, 4096);
    auto r = host.run(1, host.rw_cmd(false, lba, 8, buf->iova(), 4096), std::chrono::seconds(5));
    ASSERT_TRUE(r.ok()) << to_string(r.error());
    EXPECT_EQ(check_pattern(buf->data(), 4096, lba, 3), -1);
  }
  auto irq = card->vf(0).value()->wait_interrupt(1, std::chrono::seconds(5));
  ASSERT_TRUE(irq.ok()) << to_string(irq.error());
  EXPECT_GE(*irq, 1u);
  KEEL_ASSERT_OK(card->vf(0).value()->flr());
  EXPECT_EQ(card->vf(0).value()->read32(regs::nvme::CSTS), 0u);
}

}  // namespace
}  // namespace keel::testing
