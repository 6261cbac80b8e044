// Every fault the card can inject, under the driver: each ends in a typed error or a recovery,
// never a hang or a crash.
#include <cstring>

#include "driver_fixture.h"

namespace keel::testing {
namespace {

using drv::IoErrc;
using fpga::CqeFault;
using std::chrono::milliseconds;

/// Arms a fault the backend may not be able to inject: the test is skipped there, with the
/// reason (the RTL card's debug port has no such fault).
#define KEEL_ARM_OR_SKIP(expr)                                                           \
  do {                                                                                   \
    const Status keel_arm_ = (expr);                                                     \
    if (!keel_arm_.ok() && keel_arm_.error().code == Errc::unavailable) {                \
      GTEST_SKIP() << "backend cannot inject this fault: " << keel_arm_.error().message; \
    }                                                                                    \
    KEEL_ASSERT_OK(keel_arm_);                                                           \
  } while (0)

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

  /// A queue pair of two command slots, so that CIDs are reused after two commands.
  std::unique_ptr<drv::QueuePair> small_queue_pair() {
    auto qp = ctrl_->create_queue_pair({.entries = 3, .command_timeout = milliseconds(20)});
    EXPECT_TRUE(qp.ok()) << (qp.ok() ? "" : to_string(qp.error()));
    if (!qp.ok()) return nullptr;
    EXPECT_EQ((*qp)->depth(), 2u);
    return std::move(qp).value();
  }
  /// Writes the pattern of `lba` (8 blocks) through `qp`, using buffer page 7.
  void write_pattern(drv::QueuePair& qp, std::uint64_t lba, std::uint64_t tag) {
    fill_pattern(buf_.data() + 7 * 4096, 4096, lba, 3);
    const drv::Segment seg{buf_.iova() + 7 * 4096, 4096};
    ASSERT_TRUE(run(qp, qp.write(lba, 8, {&seg, 1}, tag)).ok());
  }
  /// Waits for completions one at a time and checks, the moment each is reported, that its
  /// read (tag = LBA, into buffer page tag / 8 % 8) succeeded with its data in place.
  void expect_reads_complete_with_data(drv::QueuePair& qp, unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
      drv::Completion c[1];
      ASSERT_EQ(qp.wait(c, milliseconds(500)), 1u) << "a read never completed";
      EXPECT_TRUE(c[0].status.ok()) << "tag " << c[0].tag << ": " << drv::to_string(c[0].status);
      const std::byte* page = buf_.data() + (c[0].tag / 8 % 8) * 4096;
      EXPECT_EQ(check_pattern(page, 4096, c[0].tag, 3), -1)
          << "tag " << c[0].tag << " reported complete before its data arrived";
    }
  }
  drv::IoStatus read_lba(drv::QueuePair& qp, std::uint64_t lba) {
    std::memset(buf_.data() + (lba / 8 % 8) * 4096, 0, 4096);
    const drv::Segment seg{buf_.iova() + (lba / 8 % 8) * 4096, 4096};
    return qp.read(lba, 8, {&seg, 1}, lba);
  }
  /// The only completion of a read is corrupt: it is dropped and counted, the read times out,
  /// the abort cannot find it (the card completed it), so the controller is reset.
  void corrupt_completion_is_dropped() {
    const std::uint64_t gen = ctrl_->generation();
    const drv::IoStatus st = run(*qp_, read(*qp_, 1));
    EXPECT_EQ(st.code, IoErrc::timeout) << drv::to_string(st);
    EXPECT_EQ(qp_->stats().device_errors, 1u);
    EXPECT_EQ(qp_->stats().timeouts, 1u);
    EXPECT_GT(ctrl_->generation(), gen) << "the controller was reset";
    recovered();
  }

  std::unique_ptr<drv::QueuePair> qp_;
  fpga::DmaBuffer buf_;
};

// A completion posted twice: the copy carries the old CID of a slot that a new command already
// reuses (with a new generation), so it must complete nothing; before generation bits it
// completed the new read before the card had even fetched it (stale data to the guest).
TEST_P(DriverFaults, DuplicateCompletionCompletesNothingElse) {
  auto qp = small_queue_pair();
  ASSERT_NE(qp, nullptr);
  write_pattern(*qp, 40, 1);
  write_pattern(*qp, 48, 2);
  KEEL_ARM_OR_SKIP(faults().corrupt_completions(0, CqeFault::duplicate, 1));
  write_pattern(*qp, 56, 3);  // completes once; its copy waits in the CQ
  ASSERT_TRUE(read_lba(*qp, 40).ok());
  ASSERT_TRUE(read_lba(*qp, 48).ok());  // reuses the slot of the duplicated write
  expect_reads_complete_with_data(*qp, 2);
  EXPECT_EQ(qp->stats().device_errors, 1u);
  drv::Completion c[1];
  EXPECT_EQ(qp->wait(c, milliseconds(50)), 0u) << "something completed twice";
}

// A stale completion (the previous entry of the CQ replayed, a failed command's) ahead of a new
// one: the new commands complete with their own status, never the stale one's.
TEST_P(DriverFaults, StaleCompletionWithAnOldCidIsDropped) {
  auto qp = small_queue_pair();
  ASSERT_NE(qp, nullptr);
  write_pattern(*qp, 40, 1);
  write_pattern(*qp, 48, 2);
  KEEL_ASSERT_OK(faults().refuse_dma(0, true));
  EXPECT_EQ(run(*qp, read_lba(*qp, 56)).code, IoErrc::nvme);  // the entry to be replayed
  KEEL_ASSERT_OK(faults().refuse_dma(0, false));
  KEEL_ARM_OR_SKIP(faults().corrupt_completions(0, CqeFault::stale, 1));
  ASSERT_TRUE(read_lba(*qp, 40).ok());
  ASSERT_TRUE(read_lba(*qp, 48).ok());  // reuses the failed read's slot
  expect_reads_complete_with_data(*qp, 2);
  EXPECT_EQ(qp->stats().device_errors, 1u);
}

TEST_P(DriverFaults, CompletionNamingAnotherSqIsDropped) {
  KEEL_ARM_OR_SKIP(faults().corrupt_completions(0, CqeFault::wrong_sq_id, 1));
  corrupt_completion_is_dropped();
}

TEST_P(DriverFaults, CompletionWithSqHeadBeyondTheQueueIsDropped) {
  KEEL_ARM_OR_SKIP(faults().corrupt_completions(0, CqeFault::bad_sq_head, 1));
  corrupt_completion_is_dropped();
}

// The admin queue checks its completions too: one naming an IO SQ completes no admin command.
TEST_P(DriverFaults, AdminCompletionNamingAnotherSqIsDropped) {
  KEEL_ARM_OR_SKIP(faults().corrupt_completions(0, CqeFault::wrong_sq_id, 1));
  keel::nvme::Sqe get{};
  get.opc = keel::nvme::admin::kGetFeatures;
  get.cdw10 = keel::nvme::feature::kNumberOfQueues;
  auto r = ctrl_->admin(get);
  ASSERT_FALSE(r.ok()) << "a completion of another SQ completed the admin command";
  EXPECT_EQ(r.error().code, Errc::timeout) << r.error().message;
  EXPECT_EQ(ctrl_->device_errors(), 1u);
  r = ctrl_->admin(get);
  KEEL_ASSERT_OK(r);
  EXPECT_EQ(keel::nvme::cqe_status(*r), 0);
}

// The device acknowledges the Abort but never completes the command: the slot must not stay
// taken for ever. After another timeout the controller is reset and the command fails.
TEST_P(DriverFaults, AcknowledgedAbortThatNeverCompletesEndsInReset) {
  KEEL_ASSERT_OK(faults().drop_completions(0, 1));
  KEEL_ARM_OR_SKIP(faults().swallow_aborts(0, 1));
  const std::uint64_t gen = ctrl_->generation();
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
  EXPECT_EQ(qp_->stats().abort_escalations, 1u);
  EXPECT_GT(ctrl_->generation(), gen) << "the controller was reset";
  recovered();
}

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
  // Armed before the doorbell: on a free-running card (a keel-card) a completion could
  // otherwise come first and leave part of the fault armed past the FLR.
  KEEL_ASSERT_OK(faults().drop_completions(0, 4));  // whatever is still in flight stays there
  qp_->commit();
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
  auto c = stack_->open_controller(*vf_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, Errc::timeout);
  EXPECT_NE(c.error().message.find("CSTS.RDY"), std::string::npos) << c.error().message;
}

TEST_P(DriverFaults, RemovedBeforeBringUp) {
  qp_.reset();
  ctrl_.reset();
  KEEL_ASSERT_OK(faults().surprise_remove(0));
  auto c = stack_->open_controller(*vf_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, Errc::gone);
}

TEST_P(DriverFaults, StatusSaysWhatTheDeviceIs) {
  EXPECT_EQ(ctrl_->status(), drv::DeviceState::ready);
  KEEL_ASSERT_OK(faults().raise_fatal(0));
  EXPECT_EQ(ctrl_->status(), drv::DeviceState::fatal);
  KEEL_ASSERT_OK(faults().surprise_remove(0));
  EXPECT_EQ(ctrl_->status(), drv::DeviceState::gone);
  EXPECT_EQ(drv::Controller::status_of(*vf_), drv::DeviceState::gone);
}

KEEL_INSTANTIATE_CARD_SUITE(DriverFaults);

}  // namespace
}  // namespace keel::testing
