// Card cycles of the RTL NIC's data path (keel_nic): a burst of frames from NIC VF 0 to NIC VF 1
// on a lockstep simulated card, timed in card clock cycles from the TX doorbell to the last RX
// completion in host memory (read without an MMIO, so nothing but the frames moves the card).
// Deterministic: the same RTL and shell latencies give the same count. The numbers are in
// docs/performance.md ("RTL NIC"); the test keeps a floor under them.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstring>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/nic.h"
#include "keel/fpga/sim/sim_card.h"
#include "keel/wire/knic.h"

namespace keel::testing {
namespace {

namespace nv = regs::nicvfcfg;
namespace nr = regs::nic;
namespace nq = regs::nicq;

constexpr unsigned kLog2 = 8;
constexpr unsigned kSize = 1u << kLog2;
constexpr unsigned kFrames = 200;
constexpr std::size_t kBuf = 2048;

struct Rings {
  fpga::DmaBuffer tx, tx_cq, rx, rx_cq, bufs;
};

Rings start(fpga::Function& vf) {
  Rings r;
  r.tx = std::move(vf.alloc_dma(16 * kSize)).value();
  r.tx_cq = std::move(vf.alloc_dma(16 * kSize)).value();
  r.rx = std::move(vf.alloc_dma(16 * kSize)).value();
  r.rx_cq = std::move(vf.alloc_dma(16 * kSize)).value();
  r.bufs = std::move(vf.alloc_dma(kBuf * kSize)).value();
  for (auto* b : {&r.tx, &r.tx_cq, &r.rx, &r.rx_cq}) std::memset(b->data(), 0, b->size());
  vf.write32(nr::CTRL, nr::CTRL_ENABLE_MASK);
  vf.write64(nq::at(0, nq::TX_BASE), r.tx.iova());
  vf.write64(nq::at(0, nq::TX_CQ_BASE), r.tx_cq.iova());
  vf.write64(nq::at(0, nq::RX_BASE), r.rx.iova());
  vf.write64(nq::at(0, nq::RX_CQ_BASE), r.rx_cq.iova());
  vf.write32(nq::at(0, nq::CFG), kLog2 | kLog2 << nq::CFG_RX_LOG2_SHIFT |
                                     static_cast<std::uint32_t>(nq::CFG_ENABLE_MASK));
  return r;
}

/// Cycles per frame of a burst of kFrames frames of `bytes` bytes, VF 0 to VF 1.
double cycles_per_frame(std::size_t bytes) {
  fpga::sim::SimConfig cfg;
  cfg.card.storage_bytes = 8ull << 20;
  cfg.card.max_vfs = 2;
  cfg.card.max_ioq_per_vf = 1;
  cfg.card.lockstep = true;
  auto made = fpga::sim::SimCard::create(cfg);
  EXPECT_TRUE(made.ok());
  if (!made.ok()) return 0;
  auto& card = **made;
  fpga::NicCard& nic = *card.nic();
  EXPECT_TRUE(nic.set_num_vfs(2).ok());
  const knic::Mac mac[2] = {{2, 0, 0, 0, 0x30, 0}, {2, 0, 0, 0, 0x30, 1}};
  for (unsigned v = 0; v < 2; ++v) {
    nic.pf().write32(nv::at(v, nv::MAC_LO), knic::mac_lo(mac[v]));
    nic.pf().write32(nv::at(v, nv::MAC_HI), knic::mac_hi(mac[v]));
    nic.pf().write32(nv::at(v, nv::CTRL), nv::CTRL_ENABLE_MASK);
  }
  fpga::Function& a = **nic.vf(0);
  fpga::Function& b = **nic.vf(1);
  Rings tx = start(a), rx = start(b);
  for (unsigned i = 0; i < kSize - 1; ++i) {
    knic::RxDesc d{rx.bufs.iova() + i * kBuf, static_cast<std::uint16_t>(kBuf), 0, 0};
    std::memcpy(rx.rx.data() + 16 * i, &d, sizeof d);
  }
  b.write32(nq::at(0, nq::RX_TAIL), kSize - 1);
  for (unsigned i = 0; i < kFrames; ++i) {
    std::byte* f = tx.bufs.data() + i * kBuf;
    std::memset(f, static_cast<int>(i), bytes);
    std::memcpy(f, mac[1].data(), 6);
    std::memcpy(f + 6, mac[0].data(), 6);
    knic::TxDesc d{tx.bufs.iova() + i * kBuf, static_cast<std::uint16_t>(bytes), 0, 0};
    std::memcpy(tx.tx.data() + 16 * i, &d, sizeof d);
  }
  std::atomic_thread_fence(std::memory_order_release);
  a.write32(nq::at(0, nq::TX_TAIL), kFrames);
  const std::uint64_t t0 = card.stats().cycles;
  const auto* last = reinterpret_cast<const std::atomic<std::uint32_t>*>(rx.rx_cq.data() +
                                                                         16 * (kFrames - 1) + 12);
  for (unsigned i = 0; i < 1'000'000 && ((last->load(std::memory_order_acquire) >> 24) & 1) == 0;
       ++i) {
    card.run_cycles(4);
  }
  const std::uint64_t cycles = card.stats().cycles - t0;
  EXPECT_NE((last->load() >> 24) & 1, 0u) << "the burst did not arrive";
  return static_cast<double>(cycles) / kFrames;
}

TEST(NicCycles, BurstsOfFramesVfToVf) {
  const double big = cycles_per_frame(1500);
  const double small = cycles_per_frame(64);
  std::printf("RTL NIC, 64-bit data path, VF to VF, store and forward, one frame at a time:\n");
  std::printf("  1500-byte frames: %.1f cycles/frame = %.2f bytes/cycle (%.2f Gbit/s at 250 MHz)\n",
              big, 1500 / big, 1500 / big * 250e6 * 8 / 1e9);
  std::printf(
      "  64-byte frames:   %.1f cycles/frame = %.4f frames/cycle (%.2f Mframes/s at 250 MHz)\n",
      small, 1 / small, 250.0 / small);
  // Floors well under the measured numbers (docs/performance.md): a regression shows here.
  EXPECT_GT(1500 / big, 2.5);
  EXPECT_GT(1 / small, 0.006);
}

}  // namespace
}  // namespace keel::testing
