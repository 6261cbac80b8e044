// The PF manager: VF creation, resource validation with clear errors, FLR, counters.
#include "driver_fixture.h"

namespace keel::testing {
namespace {

class PfManager : public CardTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped()) return;
    auto pm = sriov::PfManager::discover(*card_);
    KEEL_ASSERT_OK(pm);
    pm_.emplace(std::move(pm).value());
    KEEL_ASSERT_OK(pm_->disable_vfs());
  }
  std::optional<sriov::PfManager> pm_;
};

TEST_P(PfManager, DiscoverReportsTheCard) {
  const sriov::CardInfo i = pm_->info();
  EXPECT_EQ(i.backend, GetParam().substr(0, GetParam().find(':')));
  EXPECT_EQ(i.max_vfs, card_->max_vfs());
  EXPECT_GE(i.max_ioq_per_vf, 1u);
  EXPECT_EQ(i.lba_bytes, 512u);
  EXPECT_GT(i.storage_lbas, 0u);
  EXPECT_EQ(i.num_vfs, 0u);
}

TEST_P(PfManager, EnableEvenSplit) {
  KEEL_ASSERT_OK(pm_->enable_vfs_even(4, 2));
  const auto vfs = pm_->vfs();
  ASSERT_EQ(vfs.size(), 4u);
  const std::uint64_t each = pm_->info().storage_lbas / 4;
  for (unsigned i = 0; i < 4; ++i) {
    EXPECT_TRUE(vfs[i].present && vfs[i].enabled);
    EXPECT_EQ(vfs[i].resources.slice_base, i * each);
    EXPECT_EQ(vfs[i].resources.slice_lbas, each);
    EXPECT_EQ(vfs[i].resources.queues, 2u);
  }
  const Status again = pm_->enable_vfs_even(2);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, Errc::busy);
  KEEL_ASSERT_OK(pm_->disable_vfs());
  EXPECT_EQ(pm_->vfs().size(), 0u);
}

TEST_P(PfManager, ImpossibleRequestsAreRefusedWithReasons) {
  const sriov::CardInfo i = pm_->info();
  auto expect_refused = [&](std::vector<sriov::VfResources> vfs, const std::string& words) {
    const Status st = pm_->enable_vfs(vfs);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code, Errc::invalid_argument);
    EXPECT_NE(st.error().message.find(words), std::string::npos) << st.error().message;
    EXPECT_EQ(card_->num_vfs(), 0u) << "nothing changed";
  };
  expect_refused(std::vector<sriov::VfResources>(i.max_vfs + 1, {1, 0, 1, 1, 0}), "the card has");
  expect_refused({{1, 0, 100, 1, 0}, {1, 50, 100, 1, 0}}, "overlaps VF 0");
  expect_refused({{1, i.storage_lbas - 10, 20, 1, 0}}, "past the end");
  expect_refused({{i.max_ioq_per_vf + 1, 0, 100, 1, 0}}, "IO queues");
  expect_refused({{0, 0, 100, 1, 0}}, "IO queues");
  expect_refused({{1, 0, 0, 1, 0}}, "empty slice");
  expect_refused({{1, 0, 100, 0, 0}}, "weight");
  expect_refused({}, "0 VFs");
}

TEST_P(PfManager, ResetAndCountersOfOneVf) {
  KEEL_ASSERT_OK(pm_->enable_vfs_even(2));
  auto fn = card_->vf(1);
  KEEL_ASSERT_OK(fn);
  auto c = stack::Stack::attach(*card_, {})->open_controller(**fn);
  KEEL_ASSERT_OK(c);
  auto v = pm_->vf(1);
  KEEL_ASSERT_OK(v);
  EXPECT_GE(v->counters.commands, 3u) << "identify x2 + set features";
  const std::uint64_t before = pm_->counters().commands;
  KEEL_ASSERT_OK(pm_->reset_vf(1));
  EXPECT_EQ((*fn)->read32(regs::nvme::CSTS) & 1u, 0u) << "controller reset by FLR";
  EXPECT_TRUE(pm_->vf(1)->enabled) << "resources kept";
  EXPECT_EQ(pm_->counters().commands, before);
  EXPECT_EQ(pm_->reset_vf(5).error().code, Errc::not_found);
  KEEL_ASSERT_OK((*c)->reset());  // the driver recovers after the FLR
}

KEEL_INSTANTIATE_CARD_SUITE(PfManager);

}  // namespace
}  // namespace keel::testing
