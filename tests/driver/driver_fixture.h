// A card with VFs enabled through the PF manager and the NVMe driver brought up on VF 0, by
// keel::stack on the card the card fixture opened.
#pragma once

#include "card_fixture.h"
#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/queue_pair.h"
#include "keel/stack/stack.h"

namespace keel::testing {

namespace drv = keel::drivers::nvme;

class DriverTest : public CardTest {
 protected:
  /// VFs, each with `queues` queue pairs and an even share of storage; the driver on VF 0.
  void bring_up(unsigned vfs = 2, unsigned queues = 3, FixtureOptions o = {}) {
    if (card_ == nullptr || o.lockstep != card_->lockstep()) open(o);
    if (IsSkipped()) return;
    stack_ = stack::Stack::attach(*card_, {});
    KEEL_ASSERT_OK(stack_->discover_pf());
    stack::VfPlan plan;
    plan.count = vfs;
    plan.queues = queues;
    plan.disable_first = true;
    KEEL_ASSERT_OK(stack_->enable_vfs(plan));
    auto fn = stack_->vf(0);
    KEEL_ASSERT_OK(fn);
    vf_ = *fn;
    auto c = stack_->open_controller(*vf_);
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
    stack_.reset();
    CardTest::TearDown();
  }

  std::unique_ptr<stack::Stack> stack_;  ///< On card_, which outlives it.
  fpga::Function* vf_ = nullptr;
  std::unique_ptr<drv::Controller> ctrl_;
};

}  // namespace keel::testing
