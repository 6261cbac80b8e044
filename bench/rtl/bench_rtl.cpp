// keel_bench_rtl: the Verilated keel card under load, in card cycles.
//
// A lockstep card driven by a minimal host (SQEs in DMA memory, doorbells through the shell's
// MMIO, completions polled): throughput of 4 KiB random reads and writes at QD 32 per VF on 1
// and 4 VFs, the QoS arbiter's weighted shares, and the latency a QD 1 VF sees beside a
// flooding neighbour. All figures are card cycles (250 MHz), so they do not depend on how fast
// this machine simulates; sim_cycles_per_s says how fast it does.
//
// Counters
//   cycles_per_cmd          card cycles per completed command (steady state, whole card)
//   bytes_per_cycle         data bytes per cycle on the host-DMA port
//   projected_iops_250mhz   250e6 / cycles_per_cmd
//   sim_cycles_per_s        simulated (evaluated) card cycles per second of wall time
//   share_error             largest relative deviation of a VF's share from its weight share
//   vf1_latency_inflation   VF1's mean QD 1 latency beside the flood / alone
#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/sim/sim_card.h"
#include "keel/thread_cpu.h"
#include "keel/wire/nvme.h"

namespace {

using keel::fpga::DmaBuffer;
using keel::fpga::Function;
using keel::fpga::sim::SimCard;
using keel::fpga::sim::SimConfig;
namespace nv = keel::regs::nvme;
namespace vc = keel::regs::vfcfg;

constexpr std::uint32_t kPage = 4096;
constexpr std::uint64_t kSliceLbas = 8 * 1024;  // 4 MiB per VF (warm in the page cache)

// One queue pair of one VF, driven directly.
struct Qp {
  Function* fn = nullptr;
  std::uint16_t qid = 0;
  std::uint16_t entries = 0;
  DmaBuffer sq, cq, data;
  std::uint16_t tail = 0, head = 0;
  bool phase = true;
  std::uint16_t next_cid = 0;
  std::vector<std::uint64_t> issued_at;  // per CID: cycle of submission
};

struct Rig {
  std::unique_ptr<SimCard> card;
  std::vector<Qp> admin, io;  // per VF
  std::mt19937_64 rng{42};
};

std::uint64_t cycles(Rig& r) { return r.card->stats().cycles; }

void sqe_write(Qp& q, const keel::nvme::Sqe& s) {
  std::memcpy(q.sq.data() + std::size_t{q.tail} * 64, &s, 64);
  q.tail = static_cast<std::uint16_t>((q.tail + 1) % q.entries);
}

void ring(Qp& q) { q.fn->write32(keel::regs::NVME_DOORBELL_BASE + 8u * q.qid, q.tail); }

// Reaps every posted completion; returns how many, and their CIDs in `cids`.
unsigned reap(Qp& q, std::vector<std::uint16_t>* cids = nullptr) {
  unsigned n = 0;
  for (;;) {
    keel::nvme::Cqe c;
    std::memcpy(&c, q.cq.data() + std::size_t{q.head} * 16, 16);
    if (keel::nvme::cqe_phase(c) != q.phase) break;
    if (cids != nullptr) cids->push_back(c.cid);
    q.head = static_cast<std::uint16_t>(q.head + 1);
    if (q.head == q.entries) {
      q.head = 0;
      q.phase = !q.phase;
    }
    ++n;
  }
  if (n != 0) q.fn->write32(keel::regs::NVME_DOORBELL_BASE + 8u * q.qid + 4, q.head);
  return n;
}

// Runs the card until `q` has a completion (bounded); returns the CQE.
bool wait_one(Rig& r, Qp& q, keel::nvme::Cqe* out) {
  for (int i = 0; i < 1'000'000; ++i) {
    keel::nvme::Cqe c;
    std::memcpy(&c, q.cq.data() + std::size_t{q.head} * 16, 16);
    if (keel::nvme::cqe_phase(c) == q.phase) {
      *out = c;
      q.head = static_cast<std::uint16_t>((q.head + 1) % q.entries);
      if (q.head == 0) q.phase = !q.phase;
      q.fn->write32(keel::regs::NVME_DOORBELL_BASE + 8u * q.qid + 4, q.head);
      return true;
    }
    r.card->run_cycles(4);
  }
  return false;
}

bool admin_run(Rig& r, Qp& a, keel::nvme::Sqe s) {
  s.cid = a.next_cid++;
  sqe_write(a, s);
  ring(a);
  keel::nvme::Cqe c;
  return wait_one(r, a, &c) && keel::nvme::cqe_status(c) == 0;
}

Qp make_queue(Function& fn, std::uint16_t qid, std::uint16_t entries) {
  Qp q;
  q.fn = &fn;
  q.qid = qid;
  q.entries = entries;
  q.sq = std::move(fn.alloc_dma(std::max<std::size_t>(kPage, entries * 64u)).value());
  q.cq = std::move(fn.alloc_dma(std::max<std::size_t>(kPage, entries * 16u)).value());
  q.data = std::move(fn.alloc_dma(std::size_t{entries} * kPage).value());
  q.issued_at.assign(65536, 0);
  return q;
}

// A card with `vfs` VFs (weights as given), each with one IO queue pair of `entries`.
Rig make_rig(unsigned vfs, const std::vector<unsigned>& weights, std::uint16_t entries) {
  Rig r;
  SimConfig cfg;
  cfg.card.storage_bytes = std::uint64_t{vfs} * kSliceLbas * 512;
  cfg.card.max_vfs = 4;
  cfg.card.max_ioq_per_vf = 1;
  cfg.card.lockstep = true;
  r.card = std::move(SimCard::create(cfg).value());
  (void)r.card->set_num_vfs(vfs);
  Function& pf = r.card->pf();
  for (unsigned v = 0; v < vfs; ++v) {
    pf.write32(vc::at(v, vc::IOQ), 1);
    pf.write32(vc::at(v, vc::QOS), v < weights.size() ? weights[v] : 1);
    pf.write64(vc::at(v, vc::SLICE_BASE), v * kSliceLbas);
    pf.write64(vc::at(v, vc::SLICE_LBAS), kSliceLbas);
    pf.write32(vc::at(v, vc::CTRL), 1);
    Function& fn = *r.card->vf(v).value();
    Qp a = make_queue(fn, 0, 16);
    fn.write32(nv::AQA, (15u << 16) | 15u);
    fn.write64(nv::ASQ, a.sq.iova());
    fn.write64(nv::ACQ, a.cq.iova());
    fn.write32(nv::CC, 1u | (6u << 16) | (4u << 20));
    for (int i = 0; i < 1000 && (fn.read32(nv::CSTS) & 1u) == 0; ++i) r.card->run_cycles(16);
    Qp q = make_queue(fn, 1, entries);
    keel::nvme::Sqe c{};
    c.opc = keel::nvme::admin::kCreateCq;
    c.prp1 = q.cq.iova();
    c.cdw10 = (std::uint32_t{entries - 1u} << 16) | 1u;
    c.cdw11 = 1;
    (void)admin_run(r, a, c);
    keel::nvme::Sqe s{};
    s.opc = keel::nvme::admin::kCreateSq;
    s.prp1 = q.sq.iova();
    s.cdw10 = (std::uint32_t{entries - 1u} << 16) | 1u;
    s.cdw11 = (1u << 16) | 1u;
    (void)admin_run(r, a, s);
    r.admin.push_back(std::move(a));
    r.io.push_back(std::move(q));
  }
  return r;
}

// Queues one 4 KiB command at a random LBA of the VF's slice, into data page `slot`.
void submit_4k(Rig& r, Qp& q, bool write) {
  keel::nvme::Sqe s{};
  s.opc = write ? keel::nvme::io::kWrite : keel::nvme::io::kRead;
  s.nsid = 1;
  const std::uint64_t lba = (r.rng() % (kSliceLbas / 8)) * 8;
  s.cdw10 = static_cast<std::uint32_t>(lba);
  s.cdw11 = static_cast<std::uint32_t>(lba >> 32);
  s.cdw12 = 7;
  s.cid = q.next_cid++;
  s.prp1 = q.data.iova() + std::size_t{q.tail} * kPage;  // page of this SQ slot
  q.issued_at[s.cid] = cycles(r);
  sqe_write(q, s);
}

double wall_seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// CPU time of this thread (the one clocking the lockstep card), in seconds.
double thread_cpu_seconds() { return static_cast<double>(keel::this_thread_cpu_ns()) * 1e-9; }

long peak_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// 4 KiB random reads or writes at QD 32 per VF.
void BM_Random4K(benchmark::State& state) {
  const unsigned vfs = static_cast<unsigned>(state.range(0));
  const bool write = state.range(1) != 0;
  constexpr unsigned kQd = 32;
  Rig r = make_rig(vfs, {}, 64);
  for (auto& q : r.io) {
    for (unsigned i = 0; i < kQd; ++i) submit_4k(r, q, write);
    ring(q);
  }
  // Warm up to steady state. Every loop is bounded: a card that stops completing commands
  // ends the benchmark with an error instead of a hang.
  bool stuck = false;
  auto pump = [&](std::uint64_t target) {
    std::uint64_t done = 0;
    for (std::uint64_t spins = 0; done < target; ++spins) {
      if (spins > target * 1000) {
        stuck = true;
        break;
      }
      r.card->run_cycles(64);
      for (auto& q : r.io) {
        const unsigned n = reap(q);
        if (n == 0) continue;
        done += n;
        for (unsigned i = 0; i < n; ++i) submit_4k(r, q, write);
        ring(q);
      }
    }
    return done;
  };
  pump(256);
  const auto s0 = r.card->stats();
  std::uint64_t done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = thread_cpu_seconds();
  for (auto _ : state) done += pump(1024);
  const double secs = wall_seconds(t0);
  const double cpu = thread_cpu_seconds() - c0;
  if (stuck) {
    state.SkipWithError("the card stopped completing commands");
    return;
  }
  const auto s1 = r.card->stats();
  const double cyc = static_cast<double>(s1.cycles - s0.cycles);
  const double cpc = cyc / static_cast<double>(done);
  state.counters["cycles_per_cmd"] = cpc;
  state.counters["bytes_per_cycle"] =
      static_cast<double>(s1.host_data_bytes - s0.host_data_bytes) / cyc;
  state.counters["projected_iops_250mhz"] = 250e6 / cpc;
  // Simulation speed: evaluated cycles per second of the simulating thread's CPU time (the
  // machine is shared; wall time is reported beside it).
  const double evaluated =
      static_cast<double>((s1.cycles - s1.skipped_cycles) - (s0.cycles - s0.skipped_cycles));
  state.counters["sim_cycles_per_s"] = evaluated / cpu;
  state.counters["sim_cycles_per_wall_s"] = evaluated / secs;
  state.counters["peak_rss_mib"] = static_cast<double>(peak_rss_kib()) / 1024.0;
  state.SetItemsProcessed(static_cast<std::int64_t>(done));
}
BENCHMARK(BM_Random4K)
    ->ArgNames({"vfs", "write"})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Args({4, 0})
    ->Args({4, 1})
    ->Iterations(8)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// VF0 and VF1 flooding at QD 128 with weights 3:1.
void BM_QosShare(benchmark::State& state) {
  constexpr unsigned kQd = 128;
  const std::vector<unsigned> weights{3, 1};
  Rig r = make_rig(2, weights, 256);
  for (auto& q : r.io) {
    for (unsigned i = 0; i < kQd; ++i) submit_4k(r, q, false);
    ring(q);
  }
  std::vector<std::uint64_t> per_vf(2, 0);
  bool stuck = false;
  auto pump = [&](std::uint64_t target, bool count) {
    std::uint64_t done = 0;
    for (std::uint64_t spins = 0; done < target; ++spins) {
      if (spins > target * 1000) {
        stuck = true;
        break;
      }
      r.card->run_cycles(64);
      for (unsigned v = 0; v < 2; ++v) {
        Qp& q = r.io[v];
        const unsigned n = reap(q);
        if (n == 0) continue;
        done += n;
        if (count) per_vf[v] += n;
        for (unsigned i = 0; i < n; ++i) submit_4k(r, q, false);
        ring(q);
      }
    }
  };
  pump(512, false);
  for (auto _ : state) pump(2048, true);
  if (stuck) {
    state.SkipWithError("the card stopped completing commands");
    return;
  }
  const double total = static_cast<double>(per_vf[0] + per_vf[1]);
  double err = 0;
  for (unsigned v = 0; v < 2; ++v) {
    const double want = static_cast<double>(weights[v]) / 4.0;
    const double got = static_cast<double>(per_vf[v]) / total;
    err = std::max(err, std::abs(got - want) / want);
  }
  state.counters["share_error"] = err;
  state.counters["vf0_share"] = static_cast<double>(per_vf[0]) / total;
  state.counters["vf1_share"] = static_cast<double>(per_vf[1]) / total;
}
BENCHMARK(BM_QosShare)->Iterations(4)->UseRealTime()->Unit(benchmark::kMillisecond);

// VF1 at QD 1 alone, then beside VF0 flooding at QD 128, equal weights.
void BM_QosLatency(benchmark::State& state) {
  constexpr unsigned kSamples = 200;
  double inflation = 0, alone_mean = 0, busy_mean = 0;
  for (auto _ : state) {
    Rig r = make_rig(2, {1, 1}, 256);
    auto measure = [&](bool flood) {
      Qp& q1 = r.io[1];
      Qp& q0 = r.io[0];
      if (flood) {
        for (unsigned i = 0; i < 128; ++i) submit_4k(r, q0, false);
        ring(q0);
        r.card->run_cycles(20'000);  // the neighbour's queue is full and streaming
      }
      std::uint64_t sum = 0;
      for (unsigned n = 0; n < kSamples; ++n) {
        submit_4k(r, q1, false);
        ring(q1);
        const std::uint64_t t0 = cycles(r);
        for (unsigned spin = 0;; ++spin) {
          if (spin > 1'000'000) return -1.0;  // the card stopped: reported below
          r.card->run_cycles(2);
          keel::nvme::Cqe c;
          std::memcpy(&c, q1.cq.data() + std::size_t{q1.head} * 16, 16);
          if (keel::nvme::cqe_phase(c) == q1.phase) break;
          if (flood && spin % 16 == 0) {
            const unsigned k = reap(q0);
            for (unsigned i = 0; i < k; ++i) submit_4k(r, q0, false);
            if (k != 0) ring(q0);
          }
        }
        sum += cycles(r) - t0;
        (void)reap(q1);
      }
      return static_cast<double>(sum) / kSamples;
    };
    alone_mean = measure(false);
    busy_mean = measure(true);
    if (alone_mean <= 0 || busy_mean <= 0) {
      state.SkipWithError("the card stopped completing commands");
      return;
    }
    inflation = busy_mean / alone_mean;
  }
  state.counters["vf1_latency_inflation"] = inflation;
  state.counters["vf1_alone_cycles"] = alone_mean;
  state.counters["vf1_beside_flood_cycles"] = busy_mean;
}
BENCHMARK(BM_QosLatency)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
