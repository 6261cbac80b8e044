// PF registers: identity, capabilities, NUM_VFS, VF resources and their validation.
#include "card_fixture.h"

namespace keel::testing {
namespace {

namespace pf = regs::pf;
namespace vc = regs::vfcfg;

class PfRegisters : public CardTest {};

TEST_P(PfRegisters, IdentityAndCapabilities) {
  EXPECT_EQ(pf().read32(pf::ID), regs::MAGIC);
  const std::uint32_t version = pf().read32(pf::VERSION);
  EXPECT_EQ(regs::field_get(version, pf::VERSION_MAJOR_MASK, pf::VERSION_MAJOR_SHIFT),
            regs::VERSION_MAJOR);
  EXPECT_EQ(regs::field_get(version, pf::VERSION_MINOR_MASK, pf::VERSION_MINOR_SHIFT),
            regs::VERSION_MINOR);
  const std::uint32_t caps = pf().read32(pf::CAPS);
  EXPECT_EQ(regs::field_get(caps, pf::CAPS_MAX_VFS_MASK, pf::CAPS_MAX_VFS_SHIFT), card_->max_vfs());
  EXPECT_GE(regs::field_get(caps, pf::CAPS_MAX_IOQ_MASK, pf::CAPS_MAX_IOQ_SHIFT), 1u);
  EXPECT_EQ(regs::field_get(caps, pf::CAPS_LBA_SHIFT_MASK, pf::CAPS_LBA_SHIFT_SHIFT),
            regs::LBA_SHIFT);
  EXPECT_GT(pf().read64(pf::STORAGE_LBAS), 0u);
  EXPECT_NE(pf().read32(pf::STATUS) & pf::STATUS_READY_MASK, 0u);
  EXPECT_GT(pf().read32(pf::CLOCK_MHZ), 0u);
  EXPECT_EQ(
      pf().read64(pf::STORAGE_LBAS),
      pf().read32(pf::STORAGE_LBAS) | (std::uint64_t{pf().read32(pf::STORAGE_LBAS + 4)} << 32));
}

TEST_P(PfRegisters, NumVfsFollowsSriovRules) {
  ASSERT_TRUE(card_->set_num_vfs(0).ok());
  EXPECT_EQ(card_->num_vfs(), 0u);
  EXPECT_EQ(card_->vf(0).error().code, Errc::not_found);

  ASSERT_TRUE(card_->set_num_vfs(4).ok());
  EXPECT_EQ(card_->num_vfs(), 4u);
  EXPECT_EQ(pf().read32(pf::NUM_VFS), 4u);
  EXPECT_TRUE(card_->vf(3).ok());
  EXPECT_EQ(card_->vf(4).error().code, Errc::not_found);

  // Non-zero to a different non-zero is refused, as sysfs sriov_numvfs refuses it.
  const Status busy = card_->set_num_vfs(2);
  EXPECT_EQ(busy.error().code, Errc::busy);
  EXPECT_EQ(card_->num_vfs(), 4u);
  EXPECT_NE(pf().read32(pf::STATUS) & pf::STATUS_NUM_VFS_ERR_MASK, 0u);

  // More than the card has is refused.
  ASSERT_TRUE(card_->set_num_vfs(0).ok());
  EXPECT_EQ(pf().read32(pf::STATUS) & pf::STATUS_NUM_VFS_ERR_MASK, 0u);
  const Status too_many = card_->set_num_vfs(card_->max_vfs() + 1);
  EXPECT_EQ(too_many.error().code, Errc::invalid_argument);
  EXPECT_EQ(card_->num_vfs(), 0u);

  // The same through the register.
  pf().write32(pf::NUM_VFS, 2);
  EXPECT_EQ(card_->num_vfs(), 2u);
}

TEST_P(PfRegisters, AbsentVfReadsAllOnes) {
  ASSERT_TRUE(card_->set_num_vfs(1).ok());
  fpga::Function& vf0 = **card_->vf(0);
  ASSERT_TRUE(card_->set_num_vfs(0).ok());
  EXPECT_EQ(vf0.read32(regs::nvme::VS), 0xFFFFFFFFu);
  EXPECT_EQ(vf0.read64(regs::nvme::CAP), ~std::uint64_t{0});
}

TEST_P(PfRegisters, VfResourcesReadBack) {
  ASSERT_TRUE(card_->set_num_vfs(2).ok());
  enable_vf(1, 1000, 2048, 3, 5, 100);
  EXPECT_EQ(vfcfg(1, vc::SLICE_BASE), 1000u);
  EXPECT_EQ(vfcfg(1, vc::SLICE_LBAS), 2048u);
  EXPECT_EQ(pf().read32(vc::at(1, vc::IOQ)), 3u);
  EXPECT_EQ(pf().read32(vc::at(1, vc::QOS)), 5u);
  EXPECT_EQ(pf().read32(vc::at(1, vc::RATE)), 100u);
  const std::uint32_t status = pf().read32(vc::at(1, vc::STATUS));
  EXPECT_NE(status & vc::STATUS_ENABLED_MASK, 0u);
  EXPECT_NE(status & vc::STATUS_PRESENT_MASK, 0u);
  EXPECT_EQ(status & vc::STATUS_CFG_ERR_MASK, 0u);
  EXPECT_EQ(pf().read32(vc::at(1, vc::CTRL)) & vc::CTRL_ENABLE_MASK, 1u);
}

TEST_P(PfRegisters, InvalidResourcesAreRefusedWithACode) {
  ASSERT_TRUE(card_->set_num_vfs(3).ok());
  const std::uint64_t total = pf().read64(pf::STORAGE_LBAS);
  const std::uint32_t max_ioq = static_cast<std::uint32_t>(
      regs::field_get(pf().read32(pf::CAPS), pf::CAPS_MAX_IOQ_MASK, pf::CAPS_MAX_IOQ_SHIFT));

  EXPECT_EQ(try_enable_vf(0, total - 10, 11), 1u) << "slice past the end";
  EXPECT_EQ(try_enable_vf(0, ~std::uint64_t{0} - 5, 10), 1u) << "slice wrapping";
  EXPECT_EQ(try_enable_vf(0, 0, 100, 0), 3u) << "zero queues";
  EXPECT_EQ(try_enable_vf(0, 0, 100, max_ioq + 1), 3u) << "too many queues";
  EXPECT_EQ(try_enable_vf(0, 0, 0), 4u) << "empty slice";
  EXPECT_EQ(pf().read32(vc::at(0, vc::CTRL)) & vc::CTRL_ENABLE_MASK, 0u);
  EXPECT_NE(pf().read32(vc::at(0, vc::STATUS)) & vc::STATUS_CFG_ERR_MASK, 0u);

  EXPECT_EQ(try_enable_vf(0, 0, 100), 0u);
  EXPECT_EQ(try_enable_vf(1, 99, 100), 2u) << "overlaps VF 0";
  EXPECT_EQ(try_enable_vf(1, 100, 100), 0u) << "adjacent is fine";

  // Resources cannot change under an enabled VF.
  pf().write64(vc::at(0, vc::SLICE_LBAS), 5000);
  EXPECT_EQ(vfcfg(0, vc::SLICE_LBAS), 100u);
  EXPECT_EQ(regs::field_get(pf().read32(vc::at(0, vc::STATUS)), vc::STATUS_ERR_CODE_MASK,
                            vc::STATUS_ERR_CODE_SHIFT),
            6u);

  // A VF beyond NUM_VFS cannot be enabled.
  EXPECT_EQ(try_enable_vf(3, 1000, 10), 5u);
}

TEST_P(PfRegisters, NvmeControllerOfAVfWithoutResourcesIsFatal) {
  ASSERT_TRUE(card_->set_num_vfs(1).ok());
  NvmeHost host(*card_, **card_->vf(0));
  const Status st = host.enable();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::device_error);
}

KEEL_INSTANTIATE_CARD_SUITE(PfRegisters);

}  // namespace
}  // namespace keel::testing
