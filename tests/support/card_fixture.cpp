#include "card_fixture.h"

namespace keel::testing {

namespace vc = regs::vfcfg;

void CardTest::open(const FixtureOptions& o) {
  card_.reset();
  fpga::CardOptions co;
  co.storage_bytes = o.storage_bytes;
  co.max_vfs = o.max_vfs;
  co.max_ioq_per_vf = o.max_ioq_per_vf;
  co.lockstep = o.lockstep;
  co.image_path = o.image_path;
  auto card = fpga::open_card(GetParam(), co);
  if (!card.ok() && card.error().code == Errc::unavailable) {
    GTEST_SKIP() << "backend '" << GetParam() << "' cannot run here: " << to_string(card.error());
  }
  ASSERT_TRUE(card.ok()) << to_string(card.error());
  card_ = std::move(card).value();
  // Every test starts with SR-IOV off, as a PF driver finds a card at probe: a card that is
  // not new (a board, a card in another process that served earlier tests) may have VFs left.
  if (card_->num_vfs() != 0) {
    const Status st = card_->set_num_vfs(0);
    ASSERT_TRUE(st.ok()) << "disabling the VFs left on the card: " << to_string(st.error());
  }
}

std::uint32_t CardTest::try_enable_vf(unsigned vf, std::uint64_t slice_base,
                                      std::uint64_t slice_lbas, unsigned ioq, unsigned weight,
                                      unsigned rate_mbps) {
  fpga::Function& p = pf();
  p.write32(vc::at(vf, vc::CTRL), 0);
  p.write32(vc::at(vf, vc::IOQ), ioq);
  p.write32(vc::at(vf, vc::QOS), weight);
  p.write32(vc::at(vf, vc::RATE), rate_mbps);
  p.write64(vc::at(vf, vc::SLICE_BASE), slice_base);
  p.write64(vc::at(vf, vc::SLICE_LBAS), slice_lbas);
  p.write32(vc::at(vf, vc::CTRL), static_cast<std::uint32_t>(vc::CTRL_ENABLE_MASK));
  const std::uint32_t status = p.read32(vc::at(vf, vc::STATUS));
  return static_cast<std::uint32_t>(
      regs::field_get(status, vc::STATUS_ERR_CODE_MASK, vc::STATUS_ERR_CODE_SHIFT));
}

fpga::Function& CardTest::enable_vf(unsigned vf, std::uint64_t slice_base, std::uint64_t slice_lbas,
                                    unsigned ioq, unsigned weight, unsigned rate_mbps) {
  const std::uint32_t err = try_enable_vf(vf, slice_base, slice_lbas, ioq, weight, rate_mbps);
  EXPECT_EQ(err, 0u) << "VF " << vf << " resources refused";
  auto f = card_->vf(vf);
  EXPECT_TRUE(f.ok()) << to_string(f.error());
  return **f;
}

void CardTest::enable_vfs(unsigned n, std::uint64_t lbas_each, unsigned ioq) {
  ASSERT_TRUE(card_->set_num_vfs(0).ok());
  const Status st = card_->set_num_vfs(n);
  ASSERT_TRUE(st.ok()) << to_string(st.error());
  for (unsigned i = 0; i < n; ++i) enable_vf(i, i * lbas_each, lbas_each, ioq);
}

std::unique_ptr<NvmeHost> CardTest::ready_host(unsigned vf, std::uint16_t io_entries, bool irq) {
  auto f = card_->vf(vf);
  EXPECT_TRUE(f.ok());
  if (!f.ok()) return nullptr;
  auto host = std::make_unique<NvmeHost>(*card_, **f);
  Status st = host->enable();
  EXPECT_TRUE(st.ok()) << to_string(st.error());
  st = host->create_io_pair(1, io_entries, irq, irq ? 1 : 0);
  EXPECT_TRUE(st.ok()) << to_string(st.error());
  return host;
}

std::string backend_test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

}  // namespace keel::testing
