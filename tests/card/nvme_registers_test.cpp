// NVMe 1.4 controller registers of a VF and the CC.EN / CSTS.RDY handshake.
#include "card_fixture.h"

namespace keel::testing {
namespace {

namespace nv = regs::nvme;

class NvmeRegisters : public CardTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped()) return;
    enable_vfs(2, 4096);
    vf_ = *card_->vf(0);
  }
  fpga::Function* vf_ = nullptr;
};

TEST_P(NvmeRegisters, CapabilitiesAndVersion) {
  const std::uint64_t cap = vf_->read64(nv::CAP);
  EXPECT_GE(regs::field_get(cap, nv::CAP_MQES_MASK, nv::CAP_MQES_SHIFT), 63u);
  EXPECT_EQ(regs::field_get(cap, nv::CAP_CQR_MASK, nv::CAP_CQR_SHIFT), 1u);
  EXPECT_GT(regs::field_get(cap, nv::CAP_TO_MASK, nv::CAP_TO_SHIFT), 0u);
  EXPECT_EQ(regs::field_get(cap, nv::CAP_DSTRD_MASK, nv::CAP_DSTRD_SHIFT), 0u);
  EXPECT_EQ(regs::field_get(cap, nv::CAP_CSS_MASK, nv::CAP_CSS_SHIFT) & 1u, 1u);
  EXPECT_EQ(regs::field_get(cap, nv::CAP_MPSMIN_MASK, nv::CAP_MPSMIN_SHIFT), 0u);
  EXPECT_GE(regs::field_get(cap, nv::CAP_MPSMAX_MASK, nv::CAP_MPSMAX_SHIFT), 0u);
  EXPECT_EQ(vf_->read32(nv::CAP), static_cast<std::uint32_t>(cap));
  EXPECT_EQ(vf_->read32(nv::CAP + 4), static_cast<std::uint32_t>(cap >> 32));
  EXPECT_EQ(vf_->read32(nv::VS), regs::NVME_VS_1_4);
  EXPECT_EQ(vf_->read32(nv::CSTS), 0u);
}

TEST_P(NvmeRegisters, AdminQueueRegistersReadBack) {
  vf_->write32(nv::AQA, 0x001F003F);
  vf_->write64(nv::ASQ, 0x12345000);
  vf_->write32(nv::ACQ, 0x6789A000);
  vf_->write32(nv::ACQ + 4, 0x1);
  EXPECT_EQ(vf_->read32(nv::AQA), 0x001F003Fu);
  EXPECT_EQ(vf_->read64(nv::ASQ), 0x12345000u);
  EXPECT_EQ(vf_->read64(nv::ACQ), 0x16789A000u);
  EXPECT_EQ(vf_->read32(nv::ACQ + 4), 0x1u);
  // CAP, VS and CSTS are read-only.
  vf_->write32(nv::VS, 0);
  vf_->write32(nv::CSTS, 1);
  EXPECT_EQ(vf_->read32(nv::VS), regs::NVME_VS_1_4);
  EXPECT_EQ(vf_->read32(nv::CSTS), 0u);
}

TEST_P(NvmeRegisters, EnableAndDisableHandshake) {
  NvmeHost host(*card_, *vf_);
  KEEL_ASSERT_OK(host.enable());
  EXPECT_NE(vf_->read32(nv::CSTS) & nv::CSTS_RDY_MASK, 0u);
  EXPECT_NE(vf_->read32(nv::CC) & nv::CC_EN_MASK, 0u);
  ASSERT_TRUE(host.disable().ok());
  EXPECT_EQ(vf_->read32(nv::CSTS) & nv::CSTS_RDY_MASK, 0u);
  ASSERT_TRUE(host.enable().ok()) << "a controller can be enabled again after a reset";
}

TEST_P(NvmeRegisters, ShutdownNotificationCompletes) {
  NvmeHost host(*card_, *vf_);
  KEEL_ASSERT_OK(host.enable());
  vf_->write32(nv::CC, vf_->read32(nv::CC) | (1u << nv::CC_SHN_SHIFT));
  EXPECT_TRUE(fpga::poll_until(*card_, host.ready_timeout(), [&] {
    return regs::field_get(vf_->read32(nv::CSTS), nv::CSTS_SHST_MASK, nv::CSTS_SHST_SHIFT) == 2;
  }));
}

TEST_P(NvmeRegisters, BadAdminQueueConfigurationIsFatal) {
  vf_->write32(nv::AQA, 0x000F000F);
  vf_->write64(nv::ASQ, 0x1234);  // not page aligned
  vf_->write64(nv::ACQ, 0x2000);
  vf_->write32(nv::CC, static_cast<std::uint32_t>(nv::CC_EN_MASK | (6u << nv::CC_IOSQES_SHIFT) |
                                                  (4u << nv::CC_IOCQES_SHIFT)));
  EXPECT_TRUE(fpga::poll_until(*card_, std::chrono::milliseconds(100),
                               [&] { return (vf_->read32(nv::CSTS) & nv::CSTS_CFS_MASK) != 0; }));
  EXPECT_EQ(vf_->read32(nv::CSTS) & nv::CSTS_RDY_MASK, 0u);
  // A reset clears it and a good configuration works.
  NvmeHost host(*card_, *vf_);
  KEEL_ASSERT_OK(host.enable());
  EXPECT_EQ(vf_->read32(nv::CSTS) & nv::CSTS_CFS_MASK, 0u);
}

TEST_P(NvmeRegisters, LargerMemoryPageSizeWorks) {
  NvmeHost host(*card_, *vf_);
  ASSERT_TRUE(host.enable(32, 1).ok());  // 8 KiB pages
  auto buf = vf_->alloc_dma(4096);
  ASSERT_TRUE(buf.ok());
  nvme::Sqe id{};
  id.opc = nvme::admin::kIdentify;
  id.cdw10 = nvme::cns::kController;
  id.prp1 = buf->iova();
  auto cqe = host.run(0, id);
  ASSERT_TRUE(cqe.ok()) << to_string(cqe.error());
  EXPECT_EQ(sc_of(*cqe), nvme::sc::kSuccess);
}

KEEL_INSTANTIATE_CARD_SUITE(NvmeRegisters);

}  // namespace
}  // namespace keel::testing
