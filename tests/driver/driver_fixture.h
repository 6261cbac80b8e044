// A card with VFs enabled through the PF manager and the NVMe driver brought up on VF 0.
#pragma once

#include "card_fixture.h"
#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/queue_pair.h"
#include "keel/sriov/pf_manager.h"

namespace keel::testing {

namespace drv = keel::drivers::nvme;

class DriverTest : public CardTest {
 protected:
  /// VFs, each with `queues` queue pairs and an even share of storage; the driver on VF 0.
  void bring_up(unsigned vfs = 2, unsigned queues = 3, FixtureOptions o = {}) {
    if (card_ == nullptr || o.lockstep != card_->lockstep()) open(o);
    if (IsSkipped()) return;
    auto pm = sriov::PfManager::discover(*card_);
    KEEL_ASSERT_OK(pm);
    KEEL_ASSERT_OK(pm->disable_vfs());
    KEEL_ASSERT_OK(pm->enable_vfs_even(vfs, queues));
    auto fn = card_->vf(0);
    KEEL_ASSERT_OK(fn);
    vf_ = *fn;
    auto c = drv::Controller::open(*vf_, *card_, *card_);
    KEEL_ASSERT_OK(c);
    ctrl_ = std::move(c).value();
  }

  /// Runs one request to completion on `qp` (stepping a lockstep card).
  drv::IoStatus run(drv::QueuePair& qp, drv::IoStatus submitted,
                    std::chrono::nanoseconds timeout = std::chrono::seconds(1)) {
    if (!submitted.ok()) return submitted;
    drv::Completion c[1];
    const unsigned n = qp.wait(c, timeout);
    EXPECT_EQ(n, 1u) << "no completion within the timeout";
    return n == 1 ? c[0].status : drv::IoStatus::error(drv::IoErrc::timeout);
  }

  void TearDown() override {
    ctrl_.reset();
    CardTest::TearDown();
  }

  fpga::Function* vf_ = nullptr;
  std::unique_ptr<drv::Controller> ctrl_;
};

}  // namespace keel::testing
