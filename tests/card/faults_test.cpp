// Faults the card can inject: each ends in a status, a timeout or a recovery, never a hang.
#include <cstring>

#include "card_fixture.h"

namespace keel::testing {
namespace {

namespace sc = nvme::sc;
namespace nv = regs::nvme;
using std::chrono::milliseconds;

class Faults : public CardTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped()) return;
    if (card_->faults() == nullptr) GTEST_SKIP() << "backend cannot inject faults";
    enable_vfs(2, 8192);
    host_ = ready_host(0);
    other_ = ready_host(1);
    auto b = host_->fn().alloc_dma(8192);
    auto o = other_->fn().alloc_dma(8192);
    ASSERT_TRUE(b.ok() && o.ok());
    buf_ = std::move(b).value();
    obuf_ = std::move(o).value();
  }
  fpga::FaultInjector& faults() { return *card_->faults(); }
  /// Bytes VF 0 has moved. The card counts a command's data when its completion is decided
  /// (posted, dropped or held back by a fault), so waiting for it to grow tells a test that
  /// the card has taken its commands, on a card that runs on its own too.
  std::uint64_t vf0_bytes() { return pf().read64(regs::vfcfg::at(0, regs::vfcfg::BYTES)); }
  void wait_for_vf0_bytes(std::uint64_t at_least) {
    ASSERT_TRUE(fpga::poll_until(*card_, std::chrono::seconds(2), [&] {
      return vf0_bytes() >= at_least;
    })) << "the card never did the reads";
  }
  nvme::Sqe read_cmd(std::uint64_t lba = 0) {
    return host_->rw_cmd(false, lba, 8, buf_.iova(), 4096);
  }
  /// The other VF still does verified IO.
  void other_vf_works() {
    fill_pattern(obuf_.data(), 4096, 3, 3);
    auto w = other_->run(1, other_->rw_cmd(true, 3, 8, obuf_.iova(), 4096));
    ASSERT_TRUE(w.ok());
    ASSERT_EQ(sc_of(*w), sc::kSuccess);
    std::memset(obuf_.data(), 0, 4096);
    auto r = other_->run(1, other_->rw_cmd(false, 3, 8, obuf_.iova(), 4096));
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(sc_of(*r), sc::kSuccess);
    EXPECT_EQ(check_pattern(obuf_.data(), 4096, 3, 3), -1);
  }

  std::unique_ptr<NvmeHost> host_, other_;
  fpga::DmaBuffer buf_, obuf_;
};

TEST_P(Faults, DroppedCompletionIsRecoveredByAbort) {
  ASSERT_TRUE(faults().drop_completions(0, 1).ok());
  const std::uint64_t moved = vf0_bytes();
  const std::uint16_t cid = host_->submit(1, read_cmd());
  wait_for_vf0_bytes(moved + 4096);  // the read's completion, not the abort's, is dropped
  if (HasFatalFailure()) return;
  auto lost = host_->reap(1, milliseconds(5));
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.error().code, Errc::timeout);
  nvme::Sqe abort{};
  abort.opc = nvme::admin::kAbort;
  abort.cdw10 = (std::uint32_t{cid} << 16) | 1u;
  auto a = host_->run(0, abort);
  KEEL_ASSERT_OK(a);
  EXPECT_EQ(sc_of(*a), sc::kSuccess);
  EXPECT_EQ(a->dw0 & 1u, 0u) << "aborted";
  auto c = host_->reap(1, milliseconds(5));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->cid, cid);
  EXPECT_EQ(sc_of(*c), sc::kAbortRequested);
  auto next = host_->run(1, read_cmd());
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(sc_of(*next), sc::kSuccess);
}

TEST_P(Faults, DroppedCompletionIsRecoveredByReset) {
  ASSERT_TRUE(faults().drop_completions(0, 3).ok());
  const std::uint64_t moved = vf0_bytes();
  for (int i = 0; i < 3; ++i) host_->submit(1, read_cmd());
  // All three drops are spent before the reset (a controller reset keeps armed faults: one
  // left would take a completion of the queue setup after it).
  wait_for_vf0_bytes(moved + 3 * 4096);
  if (HasFatalFailure()) return;
  EXPECT_FALSE(host_->reap(1, milliseconds(5)).ok());
  KEEL_ASSERT_OK(host_->enable());
  ASSERT_TRUE(host_->create_io_pair(1, 16).ok());
  auto c = host_->run(1, read_cmd());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kSuccess);
}

TEST_P(Faults, DelayedCompletionArrivesLate) {
  if (!card_->lockstep()) GTEST_SKIP() << "card time is only exact in lockstep";
  ASSERT_TRUE(faults().delay_completions(0, 1, milliseconds(2)).ok());
  const std::uint64_t t0 = card_->now_ns();
  host_->submit(1, read_cmd());
  EXPECT_FALSE(host_->reap(1, milliseconds(1)).ok()) << "not before the delay";
  auto c = host_->reap(1, milliseconds(5));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kSuccess);
  EXPECT_GE(card_->now_ns() - t0, 2'000'000u);
}

TEST_P(Faults, DelayedCompletionCanBeAborted) {
  ASSERT_TRUE(faults().delay_completions(0, 1, std::chrono::seconds(100)).ok());
  const std::uint64_t moved = vf0_bytes();
  const std::uint16_t cid = host_->submit(1, read_cmd());
  // The abort goes in once the card has done the read (only its completion is held back):
  // otherwise a card that serves the admin queue first, or in another process, would hold
  // back the abort's completion instead.
  wait_for_vf0_bytes(moved + 4096);
  if (HasFatalFailure()) return;
  nvme::Sqe abort{};
  abort.opc = nvme::admin::kAbort;
  abort.cdw10 = (std::uint32_t{cid} << 16) | 1u;
  auto a = host_->run(0, abort);
  KEEL_ASSERT_OK(a);
  EXPECT_EQ(a->dw0 & 1u, 0u);
  auto c = host_->reap(1, milliseconds(5));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kAbortRequested);
}

TEST_P(Faults, DelayedReady) {
  ASSERT_TRUE(host_->disable().ok());
  // Longer than CAP.TO: the host's bounded wait gives up with a timeout.
  ASSERT_TRUE(faults().delay_ready(0, std::chrono::seconds(5)).ok());
  const Status st = host_->enable();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::timeout);
  // Shorter than CAP.TO: enable succeeds.
  ASSERT_TRUE(faults().delay_ready(0, milliseconds(300)).ok());
  KEEL_ASSERT_OK(host_->enable());
  other_vf_works();
}

TEST_P(Faults, FatalStatusStopsTheControllerUntilReset) {
  ASSERT_TRUE(faults().raise_fatal(0).ok());
  EXPECT_NE(host_->fn().read32(nv::CSTS) & nv::CSTS_CFS_MASK, 0u);
  host_->submit(1, read_cmd());
  EXPECT_FALSE(host_->reap(1, milliseconds(2)).ok()) << "a fatal controller processes nothing";
  other_vf_works();
  KEEL_ASSERT_OK(host_->enable());
  EXPECT_EQ(host_->fn().read32(nv::CSTS) & nv::CSTS_CFS_MASK, 0u);
  ASSERT_TRUE(host_->create_io_pair(1, 16).ok());
  auto c = host_->run(1, read_cmd());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kSuccess);
}

TEST_P(Faults, RefusedDmaIsADataTransferError) {
  const std::uint64_t before = pf().read64(regs::pf::DMA_FAULTS);
  ASSERT_TRUE(faults().refuse_dma(0, true).ok());
  auto c = host_->run(1, read_cmd());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kDataTransferError);
  EXPECT_GT(pf().read64(regs::pf::DMA_FAULTS), before);
  other_vf_works();
  ASSERT_TRUE(faults().refuse_dma(0, false).ok());
  c = host_->run(1, read_cmd());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kSuccess);
}

TEST_P(Faults, SurpriseRemovalAndRestore) {
  host_->submit(1, read_cmd());
  ASSERT_TRUE(faults().surprise_remove(0).ok());
  fpga::Function& vf = host_->fn();
  EXPECT_EQ(vf.read32(nv::CSTS), 0xFFFFFFFFu) << "a removed function reads all ones";
  auto w = vf.wait_interrupt(0, milliseconds(1));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code, Errc::gone);
  EXPECT_EQ(vf.alloc_dma(4096).error().code, Errc::gone);
  EXPECT_EQ(vf.flr().error().code, Errc::gone);
  EXPECT_EQ(regs::field_get(pf().read32(regs::vfcfg::at(0, regs::vfcfg::STATUS)),
                            regs::vfcfg::STATUS_PRESENT_MASK, 1),
            0u);
  other_vf_works();
  ASSERT_TRUE(faults().restore(0).ok());
  KEEL_ASSERT_OK(host_->enable());
  ASSERT_TRUE(host_->create_io_pair(1, 16).ok());
  auto c = host_->run(1, read_cmd());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kSuccess);
}

TEST_P(Faults, FlrWithCommandsOutstanding) {
  ASSERT_TRUE(faults().drop_completions(0, 2).ok());
  host_->submit(1, read_cmd());
  host_->submit(1, read_cmd());
  ASSERT_TRUE(host_->fn().flr().ok());
  EXPECT_EQ(host_->fn().read32(nv::CC), 0u) << "FLR resets the register file";
  EXPECT_EQ(host_->fn().read32(nv::CSTS), 0u);
  EXPECT_NE(pf().read32(regs::vfcfg::at(0, regs::vfcfg::CTRL)) & 1u, 0u) << "resources survive FLR";
  KEEL_ASSERT_OK(host_->enable());
  ASSERT_TRUE(host_->create_io_pair(1, 16).ok());
  auto c = host_->run(1, read_cmd());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kSuccess);
  other_vf_works();
}

TEST_P(Faults, FlrThroughThePfRegister) {
  pf().write32(regs::vfcfg::at(0, regs::vfcfg::FLR), 1);
  EXPECT_EQ(host_->fn().read32(nv::CSTS), 0u);
  KEEL_ASSERT_OK(host_->enable());
}

TEST_P(Faults, InjectionOnAnAbsentVfIsRefused) {
  EXPECT_EQ(faults().raise_fatal(7).error().code, Errc::not_found);
  EXPECT_EQ(faults().surprise_remove(2).error().code, Errc::not_found);
}

KEEL_INSTANTIATE_CARD_SUITE(Faults);

}  // namespace
}  // namespace keel::testing
