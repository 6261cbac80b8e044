// Checks the generated register header <keel/regs/keel_regs.h> (from hdl/regmap/keel_regs.json)
// against a few values other code relies on. Most checks are static_asserts: if this file
// compiles, the naming contract holds.

#include <keel/regs/keel_regs.h>

#include <cstdint>
#include <type_traits>

#include <gtest/gtest.h>

namespace {

namespace r = keel::regs;

// Types of the naming contract.
static_assert(std::is_same_v<decltype(r::MAGIC), const std::uint64_t>);
static_assert(std::is_same_v<decltype(r::pf::BASE), const std::uint64_t>);
static_assert(std::is_same_v<decltype(r::nvme::CAP), const std::uint64_t>);
static_assert(std::is_same_v<decltype(r::nvme::CAP_BITS), const unsigned>);
static_assert(std::is_same_v<decltype(r::nvme::CAP_RESET), const std::uint64_t>);
static_assert(std::is_same_v<decltype(r::nvme::CAP_MQES_SHIFT), const unsigned>);
static_assert(std::is_same_v<decltype(r::nvme::CAP_MQES_WIDTH), const unsigned>);
static_assert(std::is_same_v<decltype(r::nvme::CAP_MQES_MASK), const std::uint64_t>);
static_assert(noexcept(r::vfcfg::at(0, r::vfcfg::CTRL)));

// Values.
static_assert(r::MAGIC == 0x4B45454Cull);
static_assert(r::pf::ID == 0);
static_assert(r::pf::ID_RESET == r::MAGIC);
static_assert(r::pf::VERSION_RESET == ((r::VERSION_MAJOR << r::pf::VERSION_MAJOR_SHIFT) |
                                       (r::VERSION_MINOR << r::pf::VERSION_MINOR_SHIFT)));
static_assert(r::nvme::CAP == 0x00 && r::nvme::CAP_BITS == 64);
static_assert(r::nvme::VS == 0x08 && r::nvme::VS_RESET == r::NVME_VS_1_4);
static_assert(r::nvme::CAP_MQES_MASK == 0xFFFF);
static_assert(r::nvme::CAP_MPSMAX_SHIFT == 52 && r::nvme::CAP_MPSMAX_WIDTH == 4);
static_assert(r::nvme::ASQ_ASQB_MASK == 0xFFFFFFFFFFFFF000ull);
static_assert(r::vfcfg::BASE == 0x1000 && r::vfcfg::STRIDE == 0x80);
static_assert(r::vfcfg::COUNT == r::MAX_VFS);
static_assert(r::vfcfg::at(2, r::vfcfg::CTRL) == 0x1100);
static_assert(r::vfcfg::at(0, r::vfcfg::SLICE_BASE) == 0x1018);

TEST(RegsHeader, FieldGetExtractsField) {
  // MQES=0x3FF, CQR=1, TO=15, CSS=NVM only, MPSMAX=15.
  const std::uint64_t cap = 0x00F0'0020'0F01'03FFull;
  EXPECT_EQ(r::field_get(cap, r::nvme::CAP_MQES_MASK, r::nvme::CAP_MQES_SHIFT), 0x03FFu);
  EXPECT_EQ(r::field_get(cap, r::nvme::CAP_CQR_MASK, r::nvme::CAP_CQR_SHIFT), 1u);
  EXPECT_EQ(r::field_get(cap, r::nvme::CAP_TO_MASK, r::nvme::CAP_TO_SHIFT), 0x0Fu);
  EXPECT_EQ(r::field_get(cap, r::nvme::CAP_CSS_MASK, r::nvme::CAP_CSS_SHIFT), 1u);
  EXPECT_EQ(r::field_get(cap, r::nvme::CAP_MPSMAX_MASK, r::nvme::CAP_MPSMAX_SHIFT), 0xFu);
  EXPECT_EQ(r::field_get(r::pf::ID_RESET, r::pf::ID_MAGIC_MASK, r::pf::ID_MAGIC_SHIFT), r::MAGIC);
}

TEST(RegsHeader, FieldSetReplacesOnlyTheField) {
  std::uint64_t cc = 0;
  cc = r::field_set(cc, r::nvme::CC_IOSQES_MASK, r::nvme::CC_IOSQES_SHIFT, 6);
  cc = r::field_set(cc, r::nvme::CC_IOCQES_MASK, r::nvme::CC_IOCQES_SHIFT, 4);
  cc = r::field_set(cc, r::nvme::CC_EN_MASK, r::nvme::CC_EN_SHIFT, 1);
  EXPECT_EQ(cc, 0x0046'0001u);
  EXPECT_EQ(r::field_get(cc, r::nvme::CC_IOSQES_MASK, r::nvme::CC_IOSQES_SHIFT), 6u);
  EXPECT_EQ(r::field_get(cc, r::nvme::CC_IOCQES_MASK, r::nvme::CC_IOCQES_SHIFT), 4u);

  // Replacing a field clears its old value and leaves the others alone.
  cc = r::field_set(cc, r::nvme::CC_IOSQES_MASK, r::nvme::CC_IOSQES_SHIFT, 0x9);
  EXPECT_EQ(cc, 0x0049'0001u);
  // Bits of the new value beyond the field's width are dropped.
  cc = r::field_set(cc, r::nvme::CC_EN_MASK, r::nvme::CC_EN_SHIFT, 0x2);
  EXPECT_EQ(cc, 0x0049'0000u);
}

TEST(RegsHeader, FieldRoundTripOverEveryValueOfASmallField) {
  for (std::uint64_t v = 0; v < (1u << r::nvme::CC_MPS_WIDTH); ++v) {
    const std::uint64_t reg =
        r::field_set(0xFFFF'FFFFu, r::nvme::CC_MPS_MASK, r::nvme::CC_MPS_SHIFT, v);
    EXPECT_EQ(r::field_get(reg, r::nvme::CC_MPS_MASK, r::nvme::CC_MPS_SHIFT), v);
    EXPECT_EQ(reg | r::nvme::CC_MPS_MASK, 0xFFFF'FFFFu);
  }
}

TEST(RegsHeader, ArrayedBlockAddresses) {
  EXPECT_EQ(r::vfcfg::at(0, r::vfcfg::CTRL), r::vfcfg::BASE);
  EXPECT_EQ(r::vfcfg::at(2, r::vfcfg::CTRL), 0x1100u);
  const auto last = static_cast<unsigned>(r::vfcfg::COUNT - 1);
  EXPECT_EQ(r::vfcfg::at(last, r::vfcfg::CMD_ERRORS), 0x1000u + 63u * 0x80u + 0x48u);
  EXPECT_LE(r::vfcfg::CMD_ERRORS + r::vfcfg::CMD_ERRORS_BITS / 8, r::vfcfg::STRIDE);
}

}  // namespace
