// Every fault the card can inject, under the driver: each ends in a typed error or a recovery,
// never a hang or a crash.
#include <cstring>

#include "driver_fixture.h"

namespace keel::testing {
namespace {

using drv::IoErrc;
using std::chrono::milliseconds;

class DriverFaults : public DriverTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped()) return;
    if (card_->faults() == nullptr) GTEST_SKIP() << "backend cannot inject faults";
    bring_up();
    ASSERT_NE(ctrl_, nullptr);
    auto qp = ctrl_->create_queue_pair({.entries = 32, .command_timeout = milliseconds(20)});
    KEEL_ASSERT_OK(qp);
    qp_ = std::move(qp).value();
    auto b = vf_->alloc_dma(8 * 4096);
    KEEL_ASSERT_OK(b);
    buf_ = std::move(b).value();
  }
  void TearDown() override {
    qp_.reset();
    buf_.reset();
    DriverTest::TearDown();
  }
  fpga::FaultInjector& faults() { return *card_->faults(); }
  drv::IoStatus read(drv::QueuePair& qp, std::uint64_t tag, unsigned slot = 0) {
    const drv::Segment seg{buf_.iova() + slot * 4096, 4096};
    return qp.read(tag * 8, 8, {&seg, 1}, tag);
  }
  /// Submits `n` reads and collects every completion, failing the test if any is missing.
  std::vector<drv::Completion> run_all(drv::QueuePair& qp, unsigned n) {
    for (unsigned i = 0; i < n; ++i) EXPECT_TRUE(read(qp, i, i % 8).ok());
    std::vector<drv::Completion> out(n);
    unsigned got = 0;
    for (int tries = 0; got < n && tries < 50; ++tries) {
      got += qp.wait(std::span(out).subspan(got), milliseconds(100));
    }
    EXPECT_EQ(got, n) << "commands left hanging";
    out.resize(got);
    return out;
  }
  /// A new queue pair does verified IO: the controller recovered.
  void recovered() {
    qp_.reset();
    if (ctrl_->generation() == 0) return;
    auto qp = ctrl_->create_queue_pair({.entries = 16});
    KEEL_ASSERT_OK(qp);
    fill_pattern(buf_.data(), 4096, 77, 1);
    const drv::Segment seg{buf_.iova(), 4096};
    ASSERT_TRUE(run(**qp, (*qp)->write(77, 8, {&seg, 1}, 1)).ok());
    std::memset(buf_.data(), 0, 4096);
    ASSERT_TRUE(run(**qp, (*qp)->read(77, 8, {&seg, 1}, 2)).ok());
    EXPECT_EQ(check_pattern(buf_.data(), 4096, 77, 1), -1);
  }

  std::unique_ptr<drv::QueuePair> qp_;
  fpga::DmaBuffer buf_;
};

TEST_P(DriverFaults, DroppedCompletionTimesOutAndIsAborted) {
  KEEL_ASSERT_OK(faults().drop_completions(0, 1));
  const auto done = run_all(*qp_, 4);
  ASSERT_EQ(done.size(), 4u);
  unsigned timeouts = 0;
  for (const auto& c : done) {
    if (c.status.code == IoErrc::timeout)
      ++timeouts;
    else
      EXPECT_TRUE(c.status.ok()) << drv::to_string(c.status);
  }
  EXPECT_EQ(timeouts, 1u);
  EXPECT_EQ(qp_->stats().timeouts, 1u);
  EXPECT_TRUE(run(*qp_, read(*qp_, 9)).ok()) << "the abort fixed it without a reset";
}

TEST_P(DriverFaults, DelayedCompletionWithinTheTimeoutSucceeds) {
  KEEL_ASSERT_OK(faults().delay_completions(0, 2, milliseconds(5)));
  for (const auto& c : run_all(*qp_, 3)) EXPECT_TRUE(c.status.ok()) << drv::to_string(c.status);
  EXPECT_EQ(qp_->stats().timeouts, 0u);
}

TEST_P(DriverFaults, FatalStatusEndsInResetAndRecovery) {
  KEEL_ASSERT_OK(faults().raise_fatal(0));
  const std::uint64_t gen = ctrl_->generation();
  const auto done = run_all(*qp_, 3);
  for (const auto& c : done) {
    EXPECT_TRUE(c.status.code == IoErrc::timeout || c.status.code == IoErrc::gone)
        << drv::to_string(c.status);
  }
  EXPECT_GT(ctrl_->generation(), gen) << "the controller was reset";
  EXPECT_EQ(read(*qp_, 1).code, IoErrc::gone) << "the old queue pair is dead";
  recovered();
}

TEST_P(DriverFaults, RefusedDmaIsATypedDeviceError) {
  KEEL_ASSERT_OK(faults().refuse_dma(0, true));
  const drv::IoStatus st = run(*qp_, read(*qp_, 1));
  EXPECT_EQ(st.code, IoErrc::nvme);
  EXPECT_EQ(keel::nvme::status_base(st.nvme), keel::nvme::sc::kDataTransferError);
  KEEL_ASSERT_OK(faults().refuse_dma(0, false));
  EXPECT_TRUE(run(*qp_, read(*qp_, 1)).ok());
}

TEST_P(DriverFaults, FlrMidIo) {
  for (unsigned i = 0; i < 4; ++i) ASSERT_TRUE(read(*qp_, i, i).ok());
  qp_->commit();
  KEEL_ASSERT_OK(faults().drop_completions(0, 4));  // whatever is still in flight stays there
  KEEL_ASSERT_OK(vf_->flr());
  std::vector<drv::Completion> out(4);
  unsigned got = 0;
  for (int tries = 0; got < 4 && tries < 50; ++tries) {
    got += qp_->wait(std::span(out).subspan(got), milliseconds(100));
  }
  ASSERT_EQ(got, 4u) << "commands hung across the FLR";
  recovered();
}

TEST_P(DriverFaults, SurpriseRemovalMidIo) {
  for (unsigned i = 0; i < 4; ++i) ASSERT_TRUE(read(*qp_, i, i).ok());
  KEEL_ASSERT_OK(faults().surprise_remove(0));
  qp_->commit();
  std::vector<drv::Completion> out(4);
  unsigned got = 0;
  for (int tries = 0; got < 4 && tries < 50; ++tries) {
    got += qp_->wait(std::span(out).subspan(got), milliseconds(100));
  }
  ASSERT_EQ(got, 4u) << "commands hung after removal";
  for (const auto& c : out) {
    EXPECT_TRUE(c.status.code == IoErrc::gone || c.status.code == IoErrc::timeout)
        << drv::to_string(c.status);
  }
  EXPECT_TRUE(ctrl_->gone());
  EXPECT_EQ(read(*qp_, 1).code, IoErrc::gone);
  // The VF comes back: a reset brings the controller up again.
  KEEL_ASSERT_OK(faults().restore(0));
  qp_.reset();
  KEEL_ASSERT_OK(ctrl_->reset());
  recovered();
}

// With a command timeout far away, a device that disappears or is reset under the queue is
// still noticed by the queue pair's health check (CSTS): the commands fail as gone at once.
TEST_P(DriverFaults, LossIsNoticedLongBeforeTheCommandTimeout) {
  for (const bool removal : {true, false}) {
    SCOPED_TRACE(removal ? "surprise removal" : "FLR");
    qp_.reset();
    KEEL_ASSERT_OK(ctrl_->reset());
    auto qp = ctrl_->create_queue_pair({.entries = 32, .command_timeout = std::chrono::hours(1)});
    KEEL_ASSERT_OK(qp);
    qp_ = std::move(qp).value();
    KEEL_ASSERT_OK(faults().drop_completions(0, 4));  // nothing in flight completes by itself
    for (unsigned i = 0; i < 4; ++i) ASSERT_TRUE(read(*qp_, i, i).ok());
    qp_->commit();
    if (removal) {
      KEEL_ASSERT_OK(faults().surprise_remove(0));
    } else {
      KEEL_ASSERT_OK(vf_->flr());
    }
    std::vector<drv::Completion> out(4);
    unsigned got = 0;
    for (int tries = 0; got < 4 && tries < 20; ++tries) {
      got += qp_->wait(std::span(out).subspan(got), milliseconds(50));
    }
    ASSERT_EQ(got, 4u) << "the loss was not noticed";
    for (const auto& c : out) EXPECT_EQ(c.status.code, IoErrc::gone) << drv::to_string(c.status);
    EXPECT_EQ(qp_->stats().timeouts, 0u);
    if (removal) KEEL_ASSERT_OK(faults().restore(0));
  }
  qp_.reset();
  KEEL_ASSERT_OK(ctrl_->reset());
  recovered();
}

TEST_P(DriverFaults, ReadyNeverComesWithinCapTo) {
  qp_.reset();
  ctrl_.reset();
  KEEL_ASSERT_OK(faults().delay_ready(0, std::chrono::seconds(30)));
  auto c = drv::Controller::open(*card_, *vf_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, Errc::timeout);
  EXPECT_NE(c.error().message.find("CSTS.RDY"), std::string::npos) << c.error().message;
}

TEST_P(DriverFaults, RemovedBeforeBringUp) {
  qp_.reset();
  ctrl_.reset();
  KEEL_ASSERT_OK(faults().surprise_remove(0));
  auto c = drv::Controller::open(*card_, *vf_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, Errc::gone);
}

KEEL_INSTANTIATE_CARD_SUITE(DriverFaults);

}  // namespace
}  // namespace keel::testing
