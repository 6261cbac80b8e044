// Several VFs at once: concurrent verified IO, isolation of slices and DMA domains, QoS.
#include <cstring>
#include <random>
#include <thread>

#include "card_fixture.h"

namespace keel::testing {
namespace {

namespace sc = nvme::sc;
namespace vc = regs::vfcfg;
constexpr std::uint64_t kSlice = 8192;

class MultiVf : public CardTest {};

// One thread per VF on a free-running card, each writing then verifying its whole slice in
// random order at queue depth 16.
TEST_P(MultiVf, FourVfsConcurrentVerifiedIo) {
  FixtureOptions o;
  o.lockstep = false;
  open(o);
  if (IsSkipped()) return;
  enable_vfs(4, kSlice);
  // The card's counters run from its power-on (a card in another process served earlier
  // tests): what this test moved is the difference.
  std::vector<std::uint64_t> bytes_before(4);
  for (unsigned v = 0; v < 4; ++v) bytes_before[v] = vfcfg(v, vc::BYTES);
  std::vector<std::unique_ptr<NvmeHost>> hosts;
  for (unsigned v = 0; v < 4; ++v) {
    hosts.push_back(ready_host(v, 32));
    ASSERT_NE(hosts.back(), nullptr);
  }
  std::vector<std::string> errors(4);
  auto worker = [&](unsigned v) {
    NvmeHost& h = *hosts[v];
    auto b = h.fn().alloc_dma(16 * 8192);
    if (!b) {
      errors[v] = to_string(b.error());
      return;
    }
    std::mt19937 rng(v + 1);
    std::vector<std::uint32_t> order(kSlice / 16);
    for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    for (bool write : {true, false}) {
      std::shuffle(order.begin(), order.end(), rng);
      std::size_t next = 0, done = 0;
      std::vector<std::uint32_t> slot_chunk(32);
      std::vector<int> free_slots;
      for (int s = 0; s < 16; ++s) free_slots.push_back(s);
      std::vector<int> cid_slot(65536, -1);
      while (done < order.size()) {
        while (next < order.size() && !free_slots.empty()) {
          const int slot = free_slots.back();
          free_slots.pop_back();
          const std::uint64_t lba = std::uint64_t{order[next]} * 16;
          std::byte* mem = b->data() + slot * 8192;
          if (write) fill_pattern(mem, 8192, lba, 100 + v);
          const auto cid = h.queue(1, h.rw_cmd(write, lba, 16, b->iova() + slot * 8192, 8192));
          cid_slot[cid] = slot;
          slot_chunk[static_cast<std::size_t>(slot)] = order[next];
          ++next;
        }
        h.ring(1);
        auto c = h.reap(1, std::chrono::seconds(10));
        if (!c || sc_of(*c) != sc::kSuccess) {
          errors[v] = c ? "status " + std::to_string(sc_of(*c)) : to_string(c.error());
          return;
        }
        const int slot = cid_slot[c->cid];
        if (!write) {
          const std::uint64_t lba = std::uint64_t{slot_chunk[static_cast<std::size_t>(slot)]} * 16;
          if (check_pattern(b->data() + slot * 8192, 8192, lba, 100 + v) != -1) {
            errors[v] = "data mismatch at LBA " + std::to_string(lba);
            return;
          }
        }
        free_slots.push_back(slot);
        ++done;
      }
    }
  };
  std::vector<std::thread> threads;
  for (unsigned v = 0; v < 4; ++v) threads.emplace_back(worker, v);
  for (auto& t : threads) t.join();
  for (unsigned v = 0; v < 4; ++v) EXPECT_EQ(errors[v], "") << "VF " << v;
  for (unsigned v = 0; v < 4; ++v) {
    EXPECT_EQ(vfcfg(v, vc::BYTES) - bytes_before[v], 2 * kSlice * 512) << "VF " << v;
  }
}

TEST_P(MultiVf, SlicesAreIsolated) {
  enable_vfs(2, kSlice);
  auto h0 = ready_host(0);
  auto h1 = ready_host(1);
  auto b0 = h0->fn().alloc_dma(8192);
  auto b1 = h1->fn().alloc_dma(8192);
  ASSERT_TRUE(b0.ok() && b1.ok());
  // Both write LBA 0 of their own namespace; neither sees the other's data.
  fill_pattern(b0->data(), 4096, 0, 1);
  fill_pattern(b1->data(), 4096, 0, 2);
  ASSERT_EQ(sc_of(*h0->run(1, h0->rw_cmd(true, 0, 8, b0->iova(), 4096))), sc::kSuccess);
  ASSERT_EQ(sc_of(*h1->run(1, h1->rw_cmd(true, 0, 8, b1->iova(), 4096))), sc::kSuccess);
  std::memset(b0->data(), 0, 4096);
  ASSERT_EQ(sc_of(*h0->run(1, h0->rw_cmd(false, 0, 8, b0->iova(), 4096))), sc::kSuccess);
  EXPECT_EQ(check_pattern(b0->data(), 4096, 0, 1), -1);
  // VF 0 cannot address VF 1's slice: its namespace ends at its own slice.
  EXPECT_EQ(sc_of(*h0->run(1, h0->rw_cmd(false, kSlice, 8, b0->iova(), 4096))), sc::kLbaOutOfRange);
}

TEST_P(MultiVf, DmaDomainsAreSeparate) {
  enable_vfs(2, kSlice);
  auto h0 = ready_host(0);
  auto h1 = ready_host(1);
  auto b1 = h1->fn().alloc_dma(4096);
  ASSERT_TRUE(b1.ok());
  std::memset(b1->data(), 0x77, 4096);
  const std::uint64_t faults = vfcfg(0, vc::DMA_FAULTS);
  // VF 0 names an IOVA that is mapped only in VF 1's domain.
  auto c = h0->run(1, h0->rw_cmd(false, 0, 8, b1->iova(), 4096));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(sc_of(*c), sc::kDataTransferError);
  EXPECT_EQ(vfcfg(0, vc::DMA_FAULTS), faults + 1);
  for (std::size_t i = 0; i < 4096; ++i) ASSERT_EQ(b1->data()[i], std::byte{0x77});
}

// Two VFs flood their queues; a lockstep card serves them by weight 3:1.
TEST_P(MultiVf, WeightedArbitration) {
  if (!card_->lockstep()) GTEST_SKIP() << "needs a lockstep card";
  ASSERT_TRUE(card_->set_num_vfs(2).ok());
  enable_vf(0, 0, kSlice, 1, 3);
  enable_vf(1, kSlice, kSlice, 1, 1);
  auto h0 = ready_host(0, 256);
  auto h1 = ready_host(1, 256);
  auto b0 = h0->fn().alloc_dma(4096);
  auto b1 = h1->fn().alloc_dma(4096);
  ASSERT_TRUE(b0.ok() && b1.ok());
  const std::uint64_t c0 = vfcfg(0, vc::CMDS), c1 = vfcfg(1, vc::CMDS);
  for (int i = 0; i < 200; ++i) {
    h0->queue(1, h0->rw_cmd(false, 0, 8, b0->iova(), 4096));
    h1->queue(1, h1->rw_cmd(false, 0, 8, b1->iova(), 4096));
  }
  h0->ring(1);
  h1->ring(1);
  // Run until VF 1 has done 40 commands; VF 0 should have done about 3x as many.
  ASSERT_TRUE(fpga::poll_until(*card_, std::chrono::seconds(1),
                               [&] { return vfcfg(1, vc::CMDS) - c1 >= 40; }));
  const double d0 = static_cast<double>(vfcfg(0, vc::CMDS) - c0);
  const double d1 = static_cast<double>(vfcfg(1, vc::CMDS) - c1);
  EXPECT_NEAR(d0 / d1, 3.0, 0.35) << d0 << " vs " << d1;
}

// A rate limit of 40 MB/s holds a VF to 40 bytes per microsecond of card time.
TEST_P(MultiVf, RateLimit) {
  if (!card_->lockstep()) GTEST_SKIP() << "needs a lockstep card";
  ASSERT_TRUE(card_->set_num_vfs(1).ok());
  enable_vf(0, 0, kSlice, 1, 1, 40);  // 40 MB/s = 40 bytes per microsecond
  auto h = ready_host(0, 256);
  auto b = h->fn().alloc_dma(4096);
  ASSERT_TRUE(b.ok());
  // 250 commands (1 MB) would all finish within the window without the limit.
  for (int i = 0; i < 250; ++i) h->queue(1, h->rw_cmd(false, 0, 8, b->iova(), 4096));
  const std::uint64_t bytes0 = vfcfg(0, vc::BYTES);
  const std::uint64_t t0 = card_->now_ns();
  h->ring(1);
  card_->step(10000);  // 10 ms of card time
  const double mb = static_cast<double>(vfcfg(0, vc::BYTES) - bytes0) / 1e6;
  const double ms = static_cast<double>(card_->now_ns() - t0) / 1e6;
  // 128 KiB burst allowance plus 40 MB/s.
  EXPECT_LE(mb, 0.04 * ms + 0.135);
  EXPECT_GE(mb, 0.04 * ms * 0.8);
}

KEEL_INSTANTIATE_CARD_SUITE(MultiVf);

}  // namespace
}  // namespace keel::testing
