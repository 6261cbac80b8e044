// Board checks: what every card must do through the Card/Function interface, without a
// driver: identity, free-running time, DMA windows, VF life cycle. Run on the board named by
// KEEL_CARD (vfio:<PF address> or xrt:<index>); skipped, with the reason, when none is named
// or the named one cannot run here. ctest also runs them on the free-running model card, so
// the checks themselves are known to be right.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/card.h"

namespace keel {
namespace {

namespace pf = regs::pf;
using namespace std::chrono_literals;

constexpr std::size_t kPage = 4096;

// The error code of a failed call; a call that succeeded fails the expectation instead.
template <typename R>
Errc code(const R& r) {
  EXPECT_FALSE(r.ok()) << "expected an error";
  return r.ok() ? Errc::io_error : r.error().code;
}

class BoardChecks : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* spec = std::getenv("KEEL_CARD");
    if (spec == nullptr || *spec == '\0') {
      GTEST_SKIP() << "no board named: set KEEL_CARD=vfio:<PF address> or KEEL_CARD=xrt:<index> "
                      "to run the board checks (docs/boards.md)";
    }
    spec_ = spec;
    fpga::CardOptions options;
    options.lockstep = false;  // boards run free; a model card named here runs free like one
    auto card = fpga::open_card(spec_, options);
    if (!card.ok() && card.error().code == Errc::unavailable) {
      GTEST_SKIP() << "board '" << spec_ << "' cannot run here: " << to_string(card.error());
    }
    ASSERT_TRUE(card.ok()) << to_string(card.error());
    card_ = std::move(card).value();
  }

  void TearDown() override {
    if (card_ != nullptr) (void)card_->set_num_vfs(0);
  }

  fpga::Function& pf() { return card_->pf(); }

  std::string spec_;
  std::unique_ptr<fpga::Card> card_;
};

TEST_F(BoardChecks, AnswersAsAKeelCard) {
  const std::uint32_t id = pf().read32(pf::ID);
  const std::uint32_t version = pf().read32(pf::VERSION);
  const std::uint32_t caps = pf().read32(pf::CAPS);
  const std::uint32_t status = pf().read32(pf::STATUS);
  const std::uint64_t lbas = pf().read64(pf::STORAGE_LBAS);

  EXPECT_EQ(id, regs::MAGIC);
  EXPECT_EQ(regs::field_get(version, pf::VERSION_MAJOR_MASK, pf::VERSION_MAJOR_SHIFT),
            regs::VERSION_MAJOR);
  EXPECT_LE(regs::field_get(caps, pf::CAPS_MAX_VFS_MASK, pf::CAPS_MAX_VFS_SHIFT), regs::MAX_VFS);
  EXPECT_LE(card_->max_vfs(), regs::field_get(caps, pf::CAPS_MAX_VFS_MASK, pf::CAPS_MAX_VFS_SHIFT));
  EXPECT_NE(status & pf::STATUS_READY_MASK, 0u);
  EXPECT_GT(lbas, 0u);
  EXPECT_EQ(spec_.rfind(std::string(card_->backend()), 0), 0u)
      << "backend '" << card_->backend() << "' for spec " << spec_;
  EXPECT_FALSE(card_->describe().empty());
}

TEST_F(BoardChecks, RunsFreeOnTheHostClock) {
  const std::uint64_t cycles = pf().read64(pf::CYCLES);
  const std::uint64_t t0 = card_->now_ns();

  const bool advanced =
      fpga::poll_until(*card_, 1s, [&] { return pf().read64(pf::CYCLES) > cycles; });

  EXPECT_FALSE(card_->lockstep());
  if (card_->backend() == "vfio" || card_->backend() == "xrt") {
    EXPECT_EQ(card_->faults(), nullptr) << "real hardware injects no faults";
  }
  EXPECT_EQ(card_->step(5), 0u);
  EXPECT_GE(card_->now_ns(), t0);
  EXPECT_TRUE(advanced) << "PF CYCLES did not move within 1 s";
}

TEST_F(BoardChecks, PfTakesNoFlrAndRaisesNoUnknownVector) {
  EXPECT_EQ(code(pf().flr()), Errc::invalid_argument);
  EXPECT_EQ(code(pf().wait_interrupt(pf().num_vectors(), 1ms)), Errc::invalid_argument);
}

TEST_F(BoardChecks, AllocatesZeroedPageAlignedDmaBuffers) {
  auto a = pf().alloc_dma(1);
  if (!a.ok() && a.error().code == Errc::unavailable) {
    GTEST_SKIP() << "this board gives the PF no DMA memory: " << to_string(a.error());
  }
  auto b = pf().alloc_dma(3 * kPage);
  ASSERT_TRUE(a.ok()) << to_string(a.error());
  ASSERT_TRUE(b.ok()) << to_string(b.error());

  EXPECT_GE(a->size(), 1u);
  EXPECT_EQ(b->size() % kPage, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b->data()) % kPage, 0u);
  EXPECT_EQ(b->iova() % kPage, 0u);
  EXPECT_TRUE(b->iova() >= a->iova() + a->size() || a->iova() >= b->iova() + b->size())
      << "DMA buffers overlap in IOVA space";
  bool zero = true;
  for (std::size_t i = 0; i < b->size(); ++i) zero = zero && b->data()[i] == std::byte{0};
  EXPECT_TRUE(zero);
  EXPECT_EQ(code(pf().alloc_dma(0)), Errc::invalid_argument);
}

TEST_F(BoardChecks, CallerChosenWindowsAreCheckedAndRemovable) {
  constexpr fpga::Iova kIova = 1ull << 30;  // below the allocator's 2^52: the caller's space
  void* mem = std::aligned_alloc(kPage, 4 * kPage);
  ASSERT_NE(mem, nullptr);
  std::unique_ptr<void, decltype(&std::free)> owner(mem, &std::free);

  const Status mapped = pf().map_dma(mem, 4 * kPage, kIova);
  if (!mapped.ok() && mapped.error().code == Errc::unavailable) {
    GTEST_SKIP() << "this board cannot place memory at a chosen IOVA: "
                 << to_string(mapped.error());
  }
  ASSERT_TRUE(mapped.ok()) << to_string(mapped.error());
  EXPECT_EQ(code(pf().map_dma(mem, 4 * kPage, kIova + kPage)), Errc::out_of_range);
  EXPECT_EQ(code(pf().map_dma(static_cast<char*>(mem) + 8, kPage, kIova + (64ull << 20))),
            Errc::invalid_argument);
  EXPECT_TRUE(pf().unmap_dma(kIova).ok());
  EXPECT_EQ(code(pf().unmap_dma(kIova)), Errc::not_found);
}

TEST_F(BoardChecks, VfLifeCycle) {
  if (card_->max_vfs() == 0) {
    EXPECT_EQ(code(card_->set_num_vfs(1)), Errc::unavailable);
    EXPECT_EQ(code(card_->vf(0)), Errc::not_found);
    GTEST_SKIP() << card_->backend() << " reaches no VFs: " << card_->describe();
  }
  ASSERT_TRUE(card_->set_num_vfs(0).ok());
  EXPECT_EQ(code(card_->set_num_vfs(card_->max_vfs() + 1)), Errc::invalid_argument);

  const Status enabled = card_->set_num_vfs(1);
  ASSERT_TRUE(enabled.ok()) << to_string(enabled.error());
  EXPECT_EQ(card_->num_vfs(), 1u);
  EXPECT_EQ(pf().read32(pf::NUM_VFS) & pf::NUM_VFS_COUNT_MASK, 1u);
  if (card_->max_vfs() >= 2) {
    EXPECT_EQ(code(card_->set_num_vfs(2)), Errc::busy);
  }
  EXPECT_EQ(code(card_->vf(1)), Errc::not_found);

  auto vf = card_->vf(0);
  ASSERT_TRUE(vf.ok()) << to_string(vf.error());
  fpga::Function& f = **vf;
  EXPECT_EQ(f.number(), 1u);
  EXPECT_EQ(f.read32(regs::nvme::VS), regs::NVME_VS_1_4);
  EXPECT_GE(f.num_vectors(), 1u);
  EXPECT_EQ(code(f.wait_interrupt(f.num_vectors(), 1ms)), Errc::invalid_argument);
  EXPECT_EQ(code(f.wait_interrupt(0, 1ms)), Errc::timeout) << "a disabled controller fired";
  EXPECT_TRUE(f.flr().ok());
  auto buffer = f.alloc_dma(kPage);
  ASSERT_TRUE(buffer.ok()) << to_string(buffer.error());

  ASSERT_TRUE(card_->set_num_vfs(0).ok());
  EXPECT_EQ(card_->num_vfs(), 0u);
  EXPECT_EQ(code(card_->vf(0)), Errc::not_found);
  // The removed VF reads as a function that left the bus; its pointer stays safe to use.
  EXPECT_EQ(f.read32(regs::nvme::VS), 0xFFFFFFFFu);
  EXPECT_EQ(code(f.alloc_dma(kPage)), Errc::gone);
  EXPECT_EQ(code(f.wait_interrupt(0, 1ms)), Errc::gone);
}

}  // namespace
}  // namespace keel
