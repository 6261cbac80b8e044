// NVM command set on one VF: verified Read/Write through every PRP shape, Flush, Write Zeroes,
// and every IO error status.
#include <poll.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "card_fixture.h"

namespace keel::testing {
namespace {

namespace sc = nvme::sc;
constexpr std::uint64_t kSlice = 16384;  // LBAs per VF (8 MiB)

class Io : public CardTest {
 protected:
  void SetUp() override {
    CardTest::SetUp();
    if (IsSkipped()) return;
    enable_vfs(2, kSlice);
    host_ = ready_host(0);
    ASSERT_NE(host_, nullptr);
    auto b = host_->fn().alloc_dma(256 * 1024);
    ASSERT_TRUE(b.ok());
    buf_ = std::move(b).value();
  }

  nvme::Cqe io(nvme::Sqe s) {
    auto r = host_->run(1, s);
    EXPECT_TRUE(r.ok()) << to_string(r.error());
    return r.ok() ? *r : nvme::Cqe{};
  }
  nvme::Cqe rw(bool write, std::uint64_t slba, std::uint32_t nlb, std::size_t offset = 0,
               unsigned list_slots = 0) {
    nvme::Sqe s = host_->rw_cmd(write, slba, nlb, buf_.iova() + offset, std::size_t{nlb} * 512);
    EXPECT_TRUE(host_->set_prps(s, buf_.iova() + offset, std::size_t{nlb} * 512, list_slots).ok());
    return io(s);
  }
  /// Writes a pattern through one PRP shape and reads it back through another.
  void round_trip(std::uint64_t slba, std::uint32_t nlb, std::size_t woff, std::size_t roff,
                  unsigned slots = 0) {
    const std::size_t bytes = std::size_t{nlb} * 512;
    fill_pattern(buf_.data() + woff, bytes, slba, 7);
    ASSERT_EQ(sc_of(rw(true, slba, nlb, woff, slots)), sc::kSuccess);
    std::memset(buf_.data() + roff, 0, bytes);
    ASSERT_EQ(sc_of(rw(false, slba, nlb, roff, slots)), sc::kSuccess);
    EXPECT_EQ(check_pattern(buf_.data() + roff, bytes, slba, 7), -1)
        << "slba " << slba << " nlb " << nlb << " woff " << woff << " roff " << roff;
  }

  std::unique_ptr<NvmeHost> host_;
  fpga::DmaBuffer buf_;
};

TEST_P(Io, Prp1Only) { round_trip(0, 8, 0, 0); }
TEST_P(Io, Prp1WithOffset) { round_trip(10, 1, 512, 3584); }
TEST_P(Io, Prp1AndPrp2) { round_trip(20, 8, 2048, 1024); }
TEST_P(Io, PrpList) { round_trip(100, 64, 0, 4096); }
TEST_P(Io, PrpListWithOffsetFirstPage) { round_trip(200, 63, 1536, 512); }
TEST_P(Io, ChainedPrpLists) { round_trip(300, 128, 0, 0, 3); }
TEST_P(Io, LargestTransfer) { round_trip(1000, 256, 0, 0); }  // 128 KiB = MDTS

TEST_P(Io, RandomSizesAndAlignments) {
  std::mt19937_64 rng(12345);
  for (int i = 0; i < 60; ++i) {
    const std::uint32_t nlb = 1 + static_cast<std::uint32_t>(rng() % 128);
    const std::uint64_t slba = rng() % (kSlice - nlb);
    const std::size_t woff = (rng() % 64) * 4;  // dword aligned, anywhere in a page
    const std::size_t roff = (rng() % 1024) * 4;
    round_trip(slba, nlb, woff, roff, rng() % 2 == 0 ? 0 : 2 + static_cast<unsigned>(rng() % 8));
    if (HasFailure()) return;
  }
}

TEST_P(Io, LastBlockOfTheSlice) {
  round_trip(kSlice - 1, 1, 0, 0);
  EXPECT_EQ(sc_of(rw(false, kSlice - 1, 2)), sc::kLbaOutOfRange);
  EXPECT_EQ(sc_of(rw(false, kSlice, 1)), sc::kLbaOutOfRange);
  EXPECT_EQ(sc_of(rw(true, ~std::uint64_t{0} - 1, 4)), sc::kLbaOutOfRange) << "wrapping range";
}

TEST_P(Io, WriteZeroes) {
  round_trip(500, 16, 0, 0);
  nvme::Sqe s{};
  s.opc = nvme::io::kWriteZeroes;
  s.nsid = 1;
  s.cdw10 = 504;
  s.cdw12 = 3;  // 4 blocks
  ASSERT_EQ(sc_of(io(s)), sc::kSuccess);
  std::memset(buf_.data(), 0xFF, 16 * 512);
  ASSERT_EQ(sc_of(rw(false, 500, 16)), sc::kSuccess);
  EXPECT_EQ(check_pattern(buf_.data(), 4 * 512, 500, 7), -1);
  for (std::size_t i = 4 * 512; i < 8 * 512; ++i) ASSERT_EQ(buf_.data()[i], std::byte{0}) << i;
  EXPECT_EQ(check_pattern(buf_.data() + 8 * 512, 8 * 512, 508, 7), -1);
  s.cdw10 = static_cast<std::uint32_t>(kSlice - 2);
  EXPECT_EQ(sc_of(io(s)), sc::kLbaOutOfRange);
}

TEST_P(Io, Flush) {
  nvme::Sqe s{};
  s.opc = nvme::io::kFlush;
  s.nsid = 1;
  EXPECT_EQ(sc_of(io(s)), sc::kSuccess);
  s.nsid = 0xFFFFFFFF;
  EXPECT_EQ(sc_of(io(s)), sc::kSuccess);
  s.nsid = 3;
  EXPECT_EQ(sc_of(io(s)), sc::kInvalidNamespace);
}

TEST_P(Io, StatusCodesForBadCommands) {
  nvme::Sqe s = host_->rw_cmd(false, 0, 1, buf_.iova(), 512);
  s.nsid = 2;
  EXPECT_EQ(sc_of(io(s)), sc::kInvalidNamespace);
  s.nsid = 1;
  s.opc = 0x55;
  EXPECT_EQ(sc_of(io(s)), sc::kInvalidOpcode);
  s.opc = nvme::io::kRead;
  s.flags = 0x01;  // fused
  EXPECT_EQ(sc_of(io(s)), sc::kInvalidField);
  s.flags = 0;
  s.prp1 = buf_.iova() + 2;  // not dword aligned
  EXPECT_EQ(sc_of(io(s)), sc::kPrpOffsetInvalid);
  // Beyond MDTS (128 KiB): 257 blocks.
  nvme::Sqe big = host_->rw_cmd(false, 0, 257, buf_.iova(), 257 * 512);
  EXPECT_EQ(sc_of(io(big)), sc::kInvalidField);
  // PRP2 of a two-page transfer must be page aligned.
  nvme::Sqe two = host_->rw_cmd(false, 0, 16, buf_.iova(), 16 * 512);
  two.prp2 += 512;
  EXPECT_EQ(sc_of(io(two)), sc::kPrpOffsetInvalid);
  // A PRP list pointer that is not qword aligned.
  nvme::Sqe list = host_->rw_cmd(false, 0, 24, buf_.iova(), 24 * 512);
  ASSERT_NE(list.prp2, 0u);
  list.prp2 += 4;
  EXPECT_EQ(sc_of(io(list)), sc::kPrpOffsetInvalid);
  // A PRP list entry with an offset (list built by hand in the buffer's last page).
  const std::size_t list_off = buf_.size() - 4096;
  std::uint64_t entries[2] = {buf_.iova() + 4096 + 8, buf_.iova() + 8192};
  std::memcpy(buf_.data() + list_off, entries, sizeof entries);
  nvme::Sqe bad_entry = host_->rw_cmd(false, 0, 24, buf_.iova(), 24 * 512);
  bad_entry.prp2 = buf_.iova() + list_off;
  EXPECT_EQ(sc_of(io(bad_entry)), sc::kPrpOffsetInvalid);
  // Still serving.
  round_trip(5, 4, 0, 0);
}

TEST_P(Io, DmaOutsideTheWindowsFailsAndIsCounted) {
  const std::uint64_t vf_faults = vfcfg(0, regs::vfcfg::DMA_FAULTS);
  const std::uint64_t card_faults = pf().read64(regs::pf::DMA_FAULTS);
  round_trip(40, 8, 0, 0);
  // An IOVA nothing is mapped at.
  nvme::Sqe s = host_->rw_cmd(false, 40, 8, 0x7000'0000, 8 * 512);
  EXPECT_EQ(sc_of(io(s)), sc::kDataTransferError);
  // A transfer that runs off the end of the buffer into the guard page.
  const std::size_t tail = buf_.size() - 2048;
  nvme::Sqe over = host_->rw_cmd(false, 40, 8, buf_.iova() + tail, 8 * 512);
  std::memset(buf_.data() + tail, 0x5A, 2048);
  EXPECT_EQ(sc_of(io(over)), sc::kDataTransferError);
  for (std::size_t i = tail; i < buf_.size(); ++i) {
    ASSERT_EQ(buf_.data()[i], std::byte{0x5A}) << "a refused DMA touched memory at " << i;
  }
  EXPECT_EQ(vfcfg(0, regs::vfcfg::DMA_FAULTS), vf_faults + 2);
  EXPECT_EQ(pf().read64(regs::pf::DMA_FAULTS), card_faults + 2);
  EXPECT_GE(vfcfg(0, regs::vfcfg::CMD_ERRORS), 2u);
  round_trip(41, 8, 0, 0);
}

TEST_P(Io, CountersTrackCommandsAndBytes) {
  const std::uint64_t cmds = vfcfg(0, regs::vfcfg::CMDS);
  const std::uint64_t bytes = vfcfg(0, regs::vfcfg::BYTES);
  const std::uint64_t card_bytes = pf().read64(regs::pf::BYTES);
  round_trip(50, 8, 0, 0);
  // A free-running card (keel-card's, silicon) may post a completion a few cycles before its
  // counters move: wait for them, bounded, then check they moved by exactly this much.
  (void)fpga::poll_until(*card_, std::chrono::milliseconds(1000), [&] {
    return vfcfg(0, regs::vfcfg::CMDS) >= cmds + 2 &&
           pf().read64(regs::pf::BYTES) >= card_bytes + 2 * 8 * 512;
  });
  EXPECT_EQ(vfcfg(0, regs::vfcfg::CMDS), cmds + 2);
  EXPECT_EQ(vfcfg(0, regs::vfcfg::BYTES), bytes + 2 * 8 * 512);
  EXPECT_EQ(pf().read64(regs::pf::BYTES), card_bytes + 2 * 8 * 512);
  EXPECT_GT(vfcfg(0, regs::vfcfg::BUSY_CYCLES), 0u);
  EXPECT_GT(pf().read64(regs::pf::CYCLES), 0u);
}

TEST_P(Io, QueueDepthAndPhaseWrap) {
  // 64-entry queue; 200 commands at depth 48 wrap SQ, CQ and the phase several times.
  constexpr int kTotal = 200, kDepth = 48;
  for (int i = 0; i < 32; ++i) fill_pattern(buf_.data() + i * 4096, 4096, i * 8, 9);
  for (int i = 0; i < 32; ++i) {
    ASSERT_EQ(sc_of(io(host_->rw_cmd(true, i * 8, 8, buf_.iova() + i * 4096, 4096))), sc::kSuccess);
  }
  std::memset(buf_.data(), 0, 32 * 4096);
  int submitted = 0, done = 0;
  while (done < kTotal) {
    while (submitted < kTotal && submitted - done < kDepth) {
      const int slot = submitted % 32;
      host_->queue(1, host_->rw_cmd(false, slot * 8, 8, buf_.iova() + slot * 4096, 4096));
      ++submitted;
    }
    host_->ring(1);
    auto c = host_->reap(1);
    ASSERT_TRUE(c.ok()) << to_string(c.error());
    ASSERT_EQ(sc_of(*c), sc::kSuccess);
    ++done;
  }
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(check_pattern(buf_.data() + i * 4096, 4096, i * 8, 9), -1) << i;
  }
}

TEST_P(Io, InterruptOnCompletion) {
  auto f = card_->vf(1);
  ASSERT_TRUE(f.ok());
  NvmeHost h(*card_, **f);
  ASSERT_TRUE(h.enable().ok());
  KEEL_ASSERT_OK(h.create_io_pair(1, 16, true, 1));
  auto b = (*f)->alloc_dma(4096);
  ASSERT_TRUE(b.ok());
  h.submit(1, h.rw_cmd(false, 0, 8, b->iova(), 4096));
  auto n = (*f)->wait_interrupt(1, std::chrono::milliseconds(100));
  ASSERT_TRUE(n.ok()) << to_string(n.error());
  EXPECT_GE(*n, 1u);
  nvme::Cqe c{};
  EXPECT_TRUE(h.try_reap(1, &c)) << "the completion is visible when the interrupt arrives";
  EXPECT_EQ(sc_of(c), sc::kSuccess);
  // No completion, no interrupt.
  auto none = (*f)->wait_interrupt(1, std::chrono::milliseconds(1));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, Errc::timeout);
  EXPECT_EQ((*f)->wait_interrupt(99, std::chrono::milliseconds(1)).error().code,
            Errc::invalid_argument);
}

// Signals on an MSI-X eventfd (8-byte read; 0 when nothing is signalled within `wait`). A
// card in another process signals after the completion is visible, not with it: a check for
// a signal waits up to a second; one for none waits a little, in case one comes late.
std::uint64_t signals(int efd, std::chrono::milliseconds wait = std::chrono::milliseconds(0)) {
  pollfd p{efd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) return 0;
  std::uint64_t v = 0;
  return read(efd, &v, sizeof v) == sizeof v ? v : 0;
}
constexpr std::chrono::milliseconds kSignalled{1000}, kNotSignalled{50};

// The MSI-X eventfd of a vector (what a paravisor worker sleeps on with epoll): signalled by a
// completion's interrupt; while the vector is masked the message stays pending and is signalled
// when the vector is unmasked. Both simulated cards have it.
TEST_P(Io, InterruptFdSignalsAndHonoursTheMask) {
  auto f = card_->vf(1);
  ASSERT_TRUE(f.ok());
  fpga::Function& vf = **f;
  NvmeHost h(*card_, vf);
  ASSERT_TRUE(h.enable().ok());
  KEEL_ASSERT_OK(h.create_io_pair(1, 16, true, 1));
  const int efd = vf.interrupt_fd(1);
  const bool simulated = card_->backend() == "model" || card_->backend() == "sim";
  if (efd < 0 && !simulated) GTEST_SKIP() << card_->backend() << " offers no MSI-X eventfd";
  ASSERT_GE(efd, 0) << "a simulated card gives every vector an eventfd";
  EXPECT_EQ(vf.interrupt_fd(1), efd) << "one fd per vector, kept";
  EXPECT_EQ(vf.interrupt_fd(99), -1) << "no such vector";
  EXPECT_EQ(signals(efd), 0u) << "nothing completed yet";
  auto b = vf.alloc_dma(4096);
  ASSERT_TRUE(b.ok());
  // The completion is found in the CQ, not by waiting on the vector: where the eventfd is how
  // the function delivers (VFIO, vfio-user), a wait would consume the signal under test.
  auto complete_one = [&] {
    h.submit(1, h.rw_cmd(false, 0, 8, b->iova(), 4096));
    nvme::Cqe c{};
    ASSERT_TRUE(fpga::poll_until(*card_, std::chrono::milliseconds(1000), [&] {
      return h.try_reap(1, &c);
    })) << "no completion";
    EXPECT_EQ(sc_of(c), sc::kSuccess);
  };

  complete_one();
  EXPECT_GE(signals(efd, kSignalled), 1u) << "the completion's interrupt signals the eventfd";
  EXPECT_EQ(signals(efd), 0u) << "reading consumes the signal";

  vf.set_interrupt_masked(1, true);
  complete_one();
  EXPECT_EQ(signals(efd, kNotSignalled), 0u) << "masked: the message is pending, not signalled";
  vf.set_interrupt_masked(1, false);
  EXPECT_EQ(signals(efd, kSignalled), 1u) << "unmasking delivers the pending message";
  vf.set_interrupt_masked(1, true);
  vf.set_interrupt_masked(1, false);
  EXPECT_EQ(signals(efd, kNotSignalled), 0u) << "nothing pending: unmasking signals nothing";
}

KEEL_INSTANTIATE_CARD_SUITE(Io);

}  // namespace
}  // namespace keel::testing
