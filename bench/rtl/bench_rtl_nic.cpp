// keel_bench_rtl's NIC half: the Verilated card's NIC (keel_nic) moving bursts of frames from
// NIC VF 0 to NIC VF 1 through its embedded switch, in card cycles (250 MHz). A lockstep card
// with a minimal host: TX descriptors and RX buffers posted up front, one TX doorbell, the card
// run until the last RX completion shows in host memory (read without an MMIO, so nothing but
// the frames moves the card). Deterministic: the same RTL gives the same count.
//
// Counters
//   cycles_per_frame        card cycles per frame (doorbell to the last RX completion)
//   bytes_per_cycle         frame bytes per card cycle
//   frames_per_cycle        frames per card cycle
//   projected_gbit_250mhz   bytes_per_cycle * 8 * 250e6 / 1e9
//   projected_mfps_250mhz   frames_per_cycle * 250 (millions of frames per second)
//   mana_200g_ratio         projected_gbit_250mhz / 200 (MANA's 200 Gbit/s per VM)
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstring>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/nic.h"
#include "keel/fpga/sim/sim_card.h"
#include "keel/wire/knic.h"

namespace {

using keel::fpga::DmaBuffer;
using keel::fpga::Function;
namespace knic = keel::knic;
namespace nv = keel::regs::nicvfcfg;
namespace nr = keel::regs::nic;
namespace nq = keel::regs::nicq;

constexpr unsigned kLog2 = 8;
constexpr unsigned kSize = 1u << kLog2;
constexpr unsigned kFrames = 200;  // a burst: fits the rings (size - 1)
constexpr std::size_t kBuf = 2048;

struct Rings {
  DmaBuffer tx, tx_cq, rx, rx_cq, bufs;
};

DmaBuffer must(keel::Result<DmaBuffer> b) {
  if (!b) std::abort();
  std::memset(b->data(), 0, b->size());
  return std::move(b).value();
}

Rings start(Function& vf) {
  Rings r{must(vf.alloc_dma(16 * kSize)), must(vf.alloc_dma(16 * kSize)),
          must(vf.alloc_dma(16 * kSize)), must(vf.alloc_dma(16 * kSize)),
          must(vf.alloc_dma(kBuf * kSize))};
  vf.write32(nr::CTRL, nr::CTRL_ENABLE_MASK);
  vf.write64(nq::at(0, nq::TX_BASE), r.tx.iova());
  vf.write64(nq::at(0, nq::TX_CQ_BASE), r.tx_cq.iova());
  vf.write64(nq::at(0, nq::RX_BASE), r.rx.iova());
  vf.write64(nq::at(0, nq::RX_CQ_BASE), r.rx_cq.iova());
  vf.write32(nq::at(0, nq::CFG), kLog2 | kLog2 << nq::CFG_RX_LOG2_SHIFT |
                                     static_cast<std::uint32_t>(nq::CFG_ENABLE_MASK));
  return r;
}

/// Card cycles of one burst of kFrames frames of `bytes` bytes, VF 0 to VF 1 (0: it failed).
std::uint64_t burst_cycles(std::size_t bytes) {
  keel::fpga::sim::SimConfig cfg;
  cfg.card.storage_bytes = 8ull << 20;
  cfg.card.max_vfs = 2;
  cfg.card.max_ioq_per_vf = 1;
  cfg.card.lockstep = true;
  auto made = keel::fpga::sim::SimCard::create(cfg);
  if (!made) return 0;
  auto& card = **made;
  keel::fpga::NicCard* nic = card.nic();
  if (nic == nullptr || !nic->set_num_vfs(2).ok()) return 0;
  const knic::Mac mac[2] = {{2, 0, 0, 0, 0x30, 0}, {2, 0, 0, 0, 0x30, 1}};
  for (unsigned v = 0; v < 2; ++v) {
    nic->pf().write32(nv::at(v, nv::MAC_LO), knic::mac_lo(mac[v]));
    nic->pf().write32(nv::at(v, nv::MAC_HI), knic::mac_hi(mac[v]));
    nic->pf().write32(nv::at(v, nv::CTRL), nv::CTRL_ENABLE_MASK);
  }
  Function& a = **nic->vf(0);
  Function& b = **nic->vf(1);
  Rings tx = start(a), rx = start(b);
  for (unsigned i = 0; i < kSize - 1; ++i) {
    const knic::RxDesc d{rx.bufs.iova() + i * kBuf, static_cast<std::uint16_t>(kBuf), 0, 0};
    std::memcpy(rx.rx.data() + 16 * i, &d, sizeof d);
  }
  b.write32(nq::at(0, nq::RX_TAIL), kSize - 1);
  for (unsigned i = 0; i < kFrames; ++i) {
    std::byte* f = tx.bufs.data() + i * kBuf;
    std::memset(f, static_cast<int>(i), bytes);
    std::memcpy(f, mac[1].data(), 6);
    std::memcpy(f + 6, mac[0].data(), 6);
    const knic::TxDesc d{tx.bufs.iova() + i * kBuf, static_cast<std::uint16_t>(bytes), 0, 0};
    std::memcpy(tx.tx.data() + 16 * i, &d, sizeof d);
  }
  std::atomic_thread_fence(std::memory_order_release);
  a.write32(nq::at(0, nq::TX_TAIL), kFrames);
  const std::uint64_t t0 = card.stats().cycles;
  const auto* last = reinterpret_cast<const std::atomic<std::uint32_t>*>(rx.rx_cq.data() +
                                                                         16 * (kFrames - 1) + 12);
  auto arrived = [&] { return ((last->load(std::memory_order_acquire) >> 24) & 1) != 0; };
  for (unsigned i = 0; i < 1'000'000 && !arrived(); ++i) card.run_cycles(4);
  return arrived() ? card.stats().cycles - t0 : 0;
}

void BM_NicFramesVfToVf(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  std::uint64_t cycles = 0, frames = 0;
  for (auto _ : state) {
    const std::uint64_t c = burst_cycles(bytes);
    if (c == 0) {
      state.SkipWithError("the burst did not arrive (no NIC on this card, or a stall)");
      return;
    }
    cycles += c;
    frames += kFrames;
  }
  const double cpf = static_cast<double>(cycles) / static_cast<double>(frames);
  state.counters["cycles_per_frame"] = cpf;
  state.counters["bytes_per_cycle"] = static_cast<double>(bytes) / cpf;
  state.counters["frames_per_cycle"] = 1.0 / cpf;
  state.counters["projected_gbit_250mhz"] = static_cast<double>(bytes) / cpf * 8 * 250e6 / 1e9;
  state.counters["projected_mfps_250mhz"] = 250.0 / cpf;
  state.counters["mana_200g_ratio"] = static_cast<double>(bytes) / cpf * 8 * 250e6 / 1e9 / 200;
}
BENCHMARK(BM_NicFramesVfToVf)->Arg(1500)->Arg(64)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
