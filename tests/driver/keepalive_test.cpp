// NVMe keepalive (servicing): the driver's state saved in one "process" and restored in the
// next on a controller that keeps running, with commands in flight across the gap. On every
// backend (model, RTL, keel-card over vfio-user; lockstep and free-running). The "processes"
// are two sets of driver objects here: the old ones are destroyed after the hand-over, the new
// ones see the queues only through a new mapping of the arena's memfd.
#include <atomic>
#include <cstring>
#include <map>
#include <random>

#include "cc_watch.h"
#include "driver_fixture.h"
#include "keel/drivers/nvme/saved_state.h"
#include "keel/regs/keel_regs.h"

namespace keel::testing {
namespace {

using drv::IoErrc;

// Far from guest RAM (IOVA = GPA) and from alloc_dma()'s 2^52.
constexpr fpga::Iova kArenaIova = fpga::Iova{1} << 44;
constexpr std::size_t kArenaBytes = 8u << 20;
constexpr unsigned kPairs = 2;
constexpr unsigned kDepth = 24;  // commands in flight per queue pair at each hand-over
constexpr std::uint32_t kBlocks = 8;

class Keepalive : public DriverTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped()) return;
    bring_up(1, kPairs);
    if (IsSkipped()) return;
    ctrl_.reset();  // this suite opens its own, on an arena
    watch_ = std::make_unique<CcWatch>(*vf_);
    auto a = fpga::DmaArena::create(*watch_, kArenaBytes, kArenaIova);
    KEEL_ASSERT_OK(a);
    arena_ = std::move(a).value();
    drv::ControllerConfig cc;
    cc.arena = arena_.get();
    auto c = drv::Controller::open(*watch_, *card_, *card_, cc);
    KEEL_ASSERT_OK(c);
    ctrl_ = std::move(c).value();
    for (unsigned i = 0; i < kPairs; ++i) {
      auto qp = ctrl_->create_queue_pair({.entries = 64});
      KEEL_ASSERT_OK(qp);
      qps_.push_back(std::move(qp).value());
    }
    // Data buffers are the "guest's": outside the arena, kept across hand-overs.
    auto d = vf_->alloc_dma(std::size_t{kPairs} * kDepth * kBlocks * 512);
    KEEL_ASSERT_OK(d);
    data_ = std::move(d).value();
  }

  void TearDown() override {
    qps_.clear();
    ctrl_.reset();
    arena_.reset();
    old_views_.clear();
    data_.reset();
    DriverTest::TearDown();
  }

  drv::Segment segment(unsigned pair, unsigned i) const {
    const std::size_t at = (std::size_t{pair} * kDepth + i) * kBlocks * 512;
    return {data_.iova() + at, kBlocks * 512};
  }
  std::byte* bytes(unsigned pair, unsigned i) const {
    return data_.data() + (std::size_t{pair} * kDepth + i) * kBlocks * 512;
  }

  // The old process's half, then the new one's: save, hand the arena over, destroy the old
  // objects, let the card run (completions land in the gap), adopt, restore.
  Result<drv::SavedDriver> hand_over(unsigned gap_steps) {
    drv::SavedDriver saved;
    for (auto& qp : qps_) {
      drv::SavedQueuePair q;
      if (Status st = qp->save(q); !st.ok()) return st.error();
      saved.queue_pairs.push_back(std::move(q));
    }
    if (Status st = ctrl_->save(saved.controller); !st.ok()) return st.error();
    auto h = arena_->hand_over();
    if (!h) return h.error();
    qps_.clear();
    ctrl_.reset();
    arena_.reset();
    old_views_.push_back(h->old_view);  // the in-process card may still DMA through it
    for (unsigned i = 0; i < gap_steps; ++i) card_->step();
    // Only bytes cross: what a new process would read from the hand-over socket.
    const std::vector<std::byte> blob = drv::encode(saved);
    auto decoded = drv::decode(blob);
    if (!decoded) return decoded.error();
    auto adopted = fpga::DmaArena::adopt(*watch_, std::move(h).value());
    if (!adopted) return adopted.error();
    arena_ = std::move(adopted).value();
    return decoded;
  }

  Status restore(const drv::SavedDriver& saved) {
    drv::ControllerConfig cc;
    cc.arena = arena_.get();
    auto c = drv::Controller::restore(*watch_, *card_, *card_, saved.controller, cc);
    if (!c) return c.error();
    ctrl_ = std::move(c).value();
    for (const auto& q : saved.queue_pairs) {
      auto qp = ctrl_->restore_queue_pair(q);
      if (!qp) return qp.error();
      qps_.push_back(std::move(qp).value());
    }
    return {};
  }

  std::unique_ptr<CcWatch> watch_;
  std::unique_ptr<fpga::DmaArena> arena_;
  std::vector<std::shared_ptr<void>> old_views_;
  std::vector<std::unique_ptr<drv::QueuePair>> qps_;
  fpga::DmaBuffer data_;
};

// Five hand-overs in a row, each with every queue pair full of writes in flight: every write
// completes exactly once (on the old objects or, after the gap, on the restored ones), CC is
// never written, and every block reads back as written.
TEST_P(Keepalive, FiveHandOversUnderWritesLoseAndRepeatNothing) {
  const unsigned cc_after_open = watch_->cc_writes();
  std::mt19937 rng(7);
  const std::uint64_t lbas = ctrl_->block_count();
  std::map<std::uint64_t, std::vector<std::byte>> expect;  // lba -> contents written there
  std::uint64_t next_tag = 1;
  for (unsigned round = 0; round < 5; ++round) {
    std::map<std::uint64_t, std::pair<unsigned, std::uint64_t>> in_flight;  // tag -> pair, lba
    // A free-running card finishes a few dozen writes before anyone can hand over: it holds
    // half of them back a while, so they cross (on a lockstep card they wait to be stepped).
    if (!card_->lockstep()) {
      fpga::FaultInjector* faults = card_->faults();
      if (faults == nullptr) GTEST_SKIP() << "a free-running card without delayed completions";
      KEEL_ASSERT_OK(
          faults->delay_completions(0, kPairs * kDepth / 2, std::chrono::milliseconds(2)));
    }
    for (unsigned p = 0; p < kPairs; ++p) {
      for (unsigned i = 0; i < kDepth; ++i) {
        // Distinct LBAs per round: any order of completion leaves one right answer.
        const std::uint64_t lba =
            (std::uint64_t{round} * kPairs * kDepth + p * kDepth + i) * kBlocks % (lbas - kBlocks);
        std::byte* b = bytes(p, i);
        for (std::size_t k = 0; k < kBlocks * 512; ++k) b[k] = static_cast<std::byte>(rng());
        const drv::Segment seg = segment(p, i);
        const std::uint64_t tag = next_tag++;
        ASSERT_TRUE(qps_[p]->write(lba, kBlocks, {&seg, 1}, tag).ok());
        in_flight[tag] = {p, lba};
        expect[lba].assign(b, b + kBlocks * 512);
      }
      qps_[p]->commit();
    }
    // Some complete before the hand-over, on the old objects.
    std::vector<drv::Completion> done(kDepth);
    for (unsigned p = 0; p < kPairs; ++p) {
      for (unsigned k = 0, n = 0; k < 3; ++k) {
        n = qps_[p]->poll(done);
        for (unsigned j = 0; j < n; ++j) {
          ASSERT_TRUE(done[j].status.ok()) << drv::to_string(done[j].status);
          ASSERT_EQ(in_flight.erase(done[j].tag), 1u) << "tag " << done[j].tag << " twice";
        }
        card_->step();
      }
    }
    // Commands must cross the hand-over, or this tests nothing.
    ASSERT_GT(qps_[0]->outstanding() + qps_[1]->outstanding(), 0u) << "round " << round;
    auto saved = hand_over(/*gap_steps=*/64);
    ASSERT_TRUE(saved.ok()) << to_string(saved.error());
    KEEL_ASSERT_OK(restore(*saved));
    // The rest complete on the restored queue pairs, each once.
    for (unsigned p = 0; p < kPairs; ++p) {
      while (qps_[p]->outstanding() > 0) {
        const unsigned n = qps_[p]->wait(done, std::chrono::seconds(5));
        ASSERT_GT(n, 0u) << "round " << round << ": pair " << p << " stalled with "
                         << qps_[p]->outstanding() << " outstanding";
        for (unsigned j = 0; j < n; ++j) {
          ASSERT_TRUE(done[j].status.ok()) << drv::to_string(done[j].status);
          ASSERT_EQ(in_flight.erase(done[j].tag), 1u) << "tag " << done[j].tag << " twice";
        }
      }
    }
    EXPECT_TRUE(in_flight.empty()) << in_flight.size() << " writes never completed";
    EXPECT_EQ(qps_[0]->stats().device_errors + qps_[1]->stats().device_errors, 0u);
  }
  EXPECT_EQ(watch_->cc_writes(), cc_after_open) << "CC was written: the controller was reset";

  // Every block as written, read on the restored queues (a queue's depth at a time).
  std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> all(expect.begin(), expect.end());
  std::vector<drv::Completion> done(kDepth);
  for (std::size_t first = 0; first < all.size(); first += kDepth) {
    const std::size_t n = std::min<std::size_t>(kDepth, all.size() - first);
    for (unsigned i = 0; i < n; ++i) {
      std::memset(bytes(0, i), 0, kBlocks * 512);
      const drv::Segment seg = segment(0, i);
      ASSERT_TRUE(qps_[0]->read(all[first + i].first, kBlocks, {&seg, 1}, i).ok());
    }
    for (unsigned got = 0; got < n;) {
      const unsigned k =
          qps_[0]->wait(std::span(done).subspan(0, n - got), std::chrono::seconds(10));
      ASSERT_GT(k, 0u) << "reads stalled";
      for (unsigned j = 0; j < k; ++j)
        ASSERT_TRUE(done[j].status.ok()) << drv::to_string(done[j].status);
      got += k;
    }
    for (unsigned i = 0; i < n; ++i) {
      ASSERT_EQ(std::memcmp(bytes(0, i), all[first + i].second.data(), kBlocks * 512), 0)
          << "LBA " << all[first + i].first;
    }
  }
}

// A controller reset during the gap (here an FLR of the VF) is found at restore: the registers
// no longer match. The new process then takes the reset path on the same arena, and works.
TEST_P(Keepalive, AResetDuringTheGapLeadsToTheResetPath) {
  const drv::Segment seg = segment(0, 0);
  ASSERT_TRUE(qps_[0]->write(0, kBlocks, {&seg, 1}, 1).ok());
  qps_[0]->commit();
  drv::SavedDriver saved;
  for (auto& qp : qps_) {
    drv::SavedQueuePair q;
    KEEL_ASSERT_OK(qp->save(q));
    saved.queue_pairs.push_back(std::move(q));
  }
  KEEL_ASSERT_OK(ctrl_->save(saved.controller));
  auto h = arena_->hand_over();
  KEEL_ASSERT_OK(h);
  qps_.clear();
  ctrl_.reset();
  arena_.reset();
  old_views_.push_back(h->old_view);
  KEEL_ASSERT_OK(vf_->flr());
  auto adopted = fpga::DmaArena::adopt(*watch_, std::move(h).value());
  KEEL_ASSERT_OK(adopted);
  arena_ = std::move(adopted).value();

  const Status st = restore(saved);
  ASSERT_FALSE(st.ok()) << "restored onto a controller that was reset";
  EXPECT_EQ(st.error().code, Errc::unavailable) << to_string(st.error());
  qps_.clear();
  ctrl_.reset();
  drv::ControllerConfig cc;
  cc.arena = arena_.get();
  auto c = drv::Controller::open(*watch_, *card_, *card_, cc);
  KEEL_ASSERT_OK(c);
  ctrl_ = std::move(c).value();
  auto qp = ctrl_->create_queue_pair({.entries = 64});
  KEEL_ASSERT_OK(qp);
  std::memset(bytes(0, 0), 0x5A, kBlocks * 512);
  EXPECT_TRUE(run(**qp, (*qp)->write(16, kBlocks, {&seg, 1}, 2)).ok());
  std::memset(bytes(0, 0), 0, kBlocks * 512);
  EXPECT_TRUE(run(**qp, (*qp)->read(16, kBlocks, {&seg, 1}, 3)).ok());
  EXPECT_EQ(bytes(0, 0)[100], std::byte{0x5A});
}

// Saving a queue pair ends its life in this process: it takes no command and reaps nothing.
TEST_P(Keepalive, ASavedQueuePairIsTheNextProcesss) {
  drv::SavedQueuePair q;
  KEEL_ASSERT_OK(qps_[0]->save(q));
  const drv::Segment seg = segment(0, 0);
  EXPECT_EQ(qps_[0]->write(0, kBlocks, {&seg, 1}, 1).code, IoErrc::gone);
  drv::Completion c[1];
  EXPECT_EQ(qps_[0]->poll(c), 0u);
  EXPECT_EQ(qps_[0]->save(q).error().code, Errc::gone) << "saved twice";
}

// A driver without an arena cannot hand over: its queues die with the process.
TEST_P(Keepalive, NoArenaNoSave) {
  qps_.clear();
  ctrl_.reset();
  auto c = drv::Controller::open(*watch_, *card_, *card_, {});
  KEEL_ASSERT_OK(c);
  drv::SavedController s;
  const Status st = (*c)->save(s);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::invalid_argument);
}

KEEL_INSTANTIATE_CARD_SUITE(Keepalive);

}  // namespace
}  // namespace keel::testing
