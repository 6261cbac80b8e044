// keel_bench_driver: the NVMe VF driver on the free-running reference card. BM_RandRead4k:
// 4 KiB random reads at several queue depths with 1 and 2 queue pairs, all owned by the
// benchmark thread. Counters:
//   iops                  completed reads per second (wall time)
//   cpu_ns_per_io         host thread CPU per IO, excluding idle polling (polls that found
//                         nothing, at their cost calibrated in the same run)
//   thread_cpu_ns_per_io  all host thread CPU per IO, idle polling included
//   doorbells_per_io      SQ doorbell writes per IO (batching)
//   idle_polls_per_io     polls that found nothing, per IO
//   peak_rss_mib          peak resident memory of the process
// BM_NullDriver: the same loop on the null function (fpga::NullFunction), which completes the
// commands inside the SQ doorbell write, in the benchmark thread: the driver alone, plus the
// null device's few nanoseconds per command (timed:1 measures them). Counters:
//   cpu_ns_per_io         thread CPU per IO, all of it (the device's share included)
//   device_ns_per_io      timed:1 only: time inside IO doorbell writes (TSC) per IO
//   driver_ns_per_io      timed:1 only: cpu_ns_per_io - device_ns_per_io
//   sq_doorbells_per_io   SQ tail doorbell writes per IO (one per reap-and-resubmit batch)
//   cq_doorbells_per_io   CQ head doorbell writes per IO
//   idle_polls_per_io     polls that found nothing, per IO (0: the device never lags)
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <random>
#include <vector>

#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/queue_pair.h"
#include "keel/drivers/nvme/saved_state.h"
#include "keel/fpga/null_function.h"
#include "keel/stack/stack.h"
#include "keel/thread_cpu.h"

namespace {

namespace drv = keel::drivers::nvme;

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "keel_bench_driver: %s\n", what.c_str());
  std::exit(1);
}

struct Rig {
  std::unique_ptr<keel::stack::Stack> stack;
  std::unique_ptr<drv::Controller> ctrl;
  std::vector<std::unique_ptr<drv::QueuePair>> qps;
  keel::fpga::DmaBuffer buf;

  Rig(unsigned nqp, unsigned qd) {
    keel::stack::StackConfig sc;
    sc.card = "model";
    sc.card_options.lockstep = false;
    sc.card_options.storage_bytes = 256ull << 20;
    sc.vfs.count = 1;
    sc.vfs.queues = nqp;
    auto s = keel::stack::Stack::open(sc);
    if (!s) die(keel::to_string(s.error()));
    stack = std::move(s).value();
    keel::fpga::Function& vf = **stack->vf(0);
    auto ctl = stack->open_controller(vf);
    if (!ctl) die(keel::to_string(ctl.error()));
    ctrl = std::move(ctl).value();
    for (unsigned q = 0; q < nqp; ++q) {
      auto qp = ctrl->create_queue_pair({.entries = static_cast<std::uint16_t>(qd + 1)});
      if (!qp) die(keel::to_string(qp.error()));
      qps.push_back(std::move(qp).value());
    }
    auto b = vf.alloc_dma(std::size_t{qd} * nqp * 4096);
    if (!b) die(keel::to_string(b.error()));
    buf = std::move(b).value();
  }
  ~Rig() {
    qps.clear();
    buf.reset();
    ctrl.reset();
  }
};

void BM_RandRead4k(benchmark::State& state) {
  const unsigned qd = static_cast<unsigned>(state.range(0));
  const unsigned nqp = static_cast<unsigned>(state.range(1));
  const unsigned per_qp = std::max(1u, qd / nqp);
  Rig rig(nqp, per_qp);
  const std::uint64_t blocks = rig.ctrl->block_count() / 8;  // 4 KiB units
  std::mt19937_64 rng(1);
  auto submit = [&](unsigned q, std::uint64_t slot) {
    const drv::Segment seg{rig.buf.iova() + (q * per_qp + slot) * 4096, 4096};
    const drv::IoStatus st = rig.qps[q]->read((rng() % blocks) * 8, 8, {&seg, 1}, slot);
    if (!st.ok()) die("submit: " + drv::to_string(st));
  };
  for (unsigned q = 0; q < nqp; ++q) {
    for (unsigned s = 0; s < per_qp; ++s) submit(q, s);
    rig.qps[q]->commit();
  }
  drv::Completion done[256];
  std::uint64_t ios = 0;
  const std::uint64_t cpu0 = keel::this_thread_cpu_ns();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    for (unsigned q = 0; q < nqp; ++q) {
      const unsigned n = rig.qps[q]->poll(done);

      for (unsigned i = 0; i < n; ++i) {
        if (!done[i].status.ok()) die("read failed: " + drv::to_string(done[i].status));
        submit(q, done[i].tag);
      }
      rig.qps[q]->commit();
      ios += n;
    }
  }
  const std::uint64_t cpu = keel::this_thread_cpu_ns() - cpu0;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::uint64_t idle = 0, doorbells = 0;
  for (const auto& qp : rig.qps) {
    idle += qp->stats().idle_polls;
    doorbells += qp->stats().doorbells;
  }
  // Drain, then calibrate what an idle poll costs on an empty queue pair in this run.
  for (unsigned q = 0; q < nqp; ++q) {
    while (rig.qps[q]->outstanding() > 0) rig.qps[q]->wait(done, std::chrono::seconds(5));
  }
  constexpr unsigned kCal = 200000;
  const std::uint64_t cal0 = keel::this_thread_cpu_ns();
  for (unsigned i = 0; i < kCal; ++i) benchmark::DoNotOptimize(rig.qps[0]->poll(done));
  const double idle_cost = static_cast<double>(keel::this_thread_cpu_ns() - cal0) / kCal;
  const double busy =
      std::max(0.0, static_cast<double>(cpu) - idle_cost * static_cast<double>(idle));
  const double n = static_cast<double>(std::max<std::uint64_t>(ios, 1));
  state.counters["iops"] = static_cast<double>(ios) / secs;
  state.counters["cpu_ns_per_io"] = busy / n;
  state.counters["thread_cpu_ns_per_io"] = static_cast<double>(cpu) / n;
  state.counters["doorbells_per_io"] = static_cast<double>(doorbells) / n;
  state.counters["idle_polls_per_io"] = static_cast<double>(idle) / n;
  state.counters["idle_poll_ns"] = idle_cost;
  state.counters["peak_rss_mib"] = peak_rss_mib();
  state.SetItemsProcessed(static_cast<std::int64_t>(ios));
}

BENCHMARK(BM_RandRead4k)
    ->ArgNames({"qd", "qps"})
    ->Args({1, 1})
    ->Args({32, 1})
    ->Args({128, 1})
    ->Args({1, 2})
    ->Args({32, 2})
    ->Args({128, 2})
    ->MinTime(0.5)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// The driver alone: 4 KiB reads on the null function, `qd` in flight over `qps` queue pairs
// owned by the benchmark thread, each reap resubmitted as one batch (one SQ doorbell per queue
// pair per turn; the driver writes the CQ head lazily, see QueuePair::poll).
void BM_NullDriver(benchmark::State& state) {
  const unsigned qd = static_cast<unsigned>(state.range(0));
  const unsigned nqp = static_cast<unsigned>(state.range(1));
  const bool timed = state.range(2) != 0;
  const unsigned per_qp = std::max(1u, qd / nqp);
  keel::fpga::NullFunctionConfig nc;
  nc.io_queues = static_cast<std::uint16_t>(nqp);
  nc.measure_device_time = timed;
  keel::fpga::NullFunction fn(nc);
  auto c = drv::Controller::open(fn, keel::steady_clock(), fn);
  if (!c) die(keel::to_string(c.error()));
  std::unique_ptr<drv::Controller> ctrl = std::move(c).value();
  std::vector<std::unique_ptr<drv::QueuePair>> qps;
  for (unsigned q = 0; q < nqp; ++q) {
    auto qp = ctrl->create_queue_pair({.entries = 256});
    if (!qp) die(keel::to_string(qp.error()));
    qps.push_back(std::move(qp).value());
  }
  auto b = fn.alloc_dma(std::size_t{per_qp} * nqp * 4096);
  if (!b) die(keel::to_string(b.error()));
  keel::fpga::DmaBuffer buf = std::move(b).value();
  const std::uint64_t lba_mask = (ctrl->block_count() / 8 - 1) * 8;  // 4 KiB units, a power of 2
  std::uint64_t lba = 0;
  auto submit = [&](unsigned q, std::uint64_t slot) {
    const drv::Segment seg{buf.iova() + (q * per_qp + slot) * 4096, 4096};
    lba = (lba + 8) & lba_mask;
    const drv::IoStatus st = qps[q]->read(lba, 8, {&seg, 1}, slot);
    if (!st.ok()) die("submit: " + drv::to_string(st));
  };
  for (unsigned q = 0; q < nqp; ++q) {
    for (unsigned s = 0; s < per_qp; ++s) submit(q, s);
    qps[q]->commit();
  }
  const keel::fpga::NullFunction::Stats s0 = fn.stats();
  const double dev0 = fn.device_ns();
  drv::Completion done[256];
  std::uint64_t ios = 0;
  const std::uint64_t cpu0 = keel::this_thread_cpu_ns();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    for (unsigned q = 0; q < nqp; ++q) {
      drv::QueuePair& qp = *qps[q];
      const unsigned n = qp.poll(done);
      for (unsigned i = 0; i < n; ++i) {
        if (!done[i].status.ok()) die("read failed: " + drv::to_string(done[i].status));
        submit(q, done[i].tag);
      }
      qp.commit();
      ios += n;
    }
  }
  const std::uint64_t cpu = keel::this_thread_cpu_ns() - cpu0;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const keel::fpga::NullFunction::Stats s1 = fn.stats();
  const double dev = fn.device_ns() - dev0;
  std::uint64_t idle = 0;
  for (const auto& qp : qps) idle += qp->stats().idle_polls;
  for (auto& qp : qps) {
    while (qp->outstanding() > 0) qp->wait(done, std::chrono::seconds(1));
  }
  const double n = static_cast<double>(std::max<std::uint64_t>(ios, 1));
  const double cpu_per_io = static_cast<double>(cpu) / n;
  state.counters["iops"] = static_cast<double>(ios) / secs;
  state.counters["cpu_ns_per_io"] = cpu_per_io;
  if (timed) {
    state.counters["device_ns_per_io"] = dev / n;
    state.counters["driver_ns_per_io"] = cpu_per_io - dev / n;
  }
  state.counters["sq_doorbells_per_io"] =
      static_cast<double>(s1.sq_doorbells - s0.sq_doorbells) / n;
  state.counters["cq_doorbells_per_io"] =
      static_cast<double>(s1.cq_doorbells - s0.cq_doorbells) / n;
  state.counters["idle_polls_per_io"] = static_cast<double>(idle) / n;
  state.SetItemsProcessed(static_cast<std::int64_t>(ios));
  qps.clear();
  buf.reset();
  ctrl.reset();
}

BENCHMARK(BM_NullDriver)
    ->ArgNames({"qd", "qps", "timed"})
    ->ArgsProduct({{1, 32, 128}, {1, 2}, {0, 1}})
    ->MinTime(0.5)
    ->UseRealTime()
    ->Unit(benchmark::kNanosecond);

// NVMe keepalive (servicing): the driver's hand-over of a running controller with `qps` queue
// pairs, 32 reads in flight on each, to a new set of driver objects. Timed per iteration:
//   save_us     every QueuePair::save, Controller::save, DmaArena::hand_over and encode()
//   restore_us  decode(), DmaArena::adopt, Controller::restore and every restore_queue_pair
// (the old objects' destruction in between is not timed: a process would just exit). The
// reads left in flight then complete on the restored queue pairs before the next iteration.
void BM_KeepaliveHandOver(benchmark::State& state) {
  const unsigned nqp = static_cast<unsigned>(state.range(0));
  constexpr unsigned kQd = 32;
  keel::stack::StackConfig sc;
  sc.card = "model";
  sc.card_options.lockstep = false;
  sc.card_options.storage_bytes = 256ull << 20;
  sc.card_options.max_ioq_per_vf = 8;
  sc.vfs.count = 1;
  sc.vfs.queues = nqp;
  auto s = keel::stack::Stack::open(sc);
  if (!s) die(keel::to_string(s.error()));
  auto stack = std::move(s).value();
  keel::fpga::Function& vf = **stack->vf(0);
  auto a = keel::fpga::DmaArena::create(vf, 16u << 20, keel::fpga::Iova{1} << 44);
  if (!a) die(keel::to_string(a.error()));
  std::unique_ptr<keel::fpga::DmaArena> arena = std::move(a).value();
  std::vector<std::shared_ptr<void>> views;  // the card DMAs through the first one
  drv::ControllerConfig cc;
  cc.arena = arena.get();
  auto c = drv::Controller::open(vf, stack->card(), stack->card(), cc);
  if (!c) die(keel::to_string(c.error()));
  std::unique_ptr<drv::Controller> ctrl = std::move(c).value();
  std::vector<std::unique_ptr<drv::QueuePair>> qps;
  for (unsigned q = 0; q < nqp; ++q) {
    auto qp = ctrl->create_queue_pair({.entries = kQd + 1});
    if (!qp) die(keel::to_string(qp.error()));
    qps.push_back(std::move(qp).value());
  }
  auto b = vf.alloc_dma(std::size_t{kQd} * nqp * 4096);
  if (!b) die(keel::to_string(b.error()));
  keel::fpga::DmaBuffer buf = std::move(b).value();
  const std::uint64_t blocks = ctrl->block_count() / 8;
  std::mt19937_64 rng(1);
  drv::Completion done[64];
  double save_s = 0, restore_s = 0;
  std::uint64_t crossed = 0;
  using Clock = std::chrono::steady_clock;
  for (auto _ : state) {
    for (unsigned q = 0; q < nqp; ++q) {
      for (unsigned i = 0; i < kQd; ++i) {
        const drv::Segment seg{buf.iova() + (q * kQd + i) * 4096, 4096};
        if (!qps[q]->read((rng() % blocks) * 8, 8, {&seg, 1}, i).ok()) die("submit");
      }
      qps[q]->commit();
    }
    const auto t0 = Clock::now();
    drv::SavedDriver saved;
    saved.queue_pairs.resize(nqp);
    for (unsigned q = 0; q < nqp; ++q) {
      if (!qps[q]->save(saved.queue_pairs[q]).ok()) die("save");
    }
    if (!ctrl->save(saved.controller).ok()) die("controller save");
    auto h = arena->hand_over();
    if (!h) die("hand over");
    const std::vector<std::byte> blob = drv::encode(saved);
    const auto t1 = Clock::now();
    for (const auto& q : saved.queue_pairs) {
      for (const auto& sl : q.slots) crossed += sl.busy ? 1 : 0;
    }
    qps.clear();
    ctrl.reset();
    arena.reset();
    if (views.empty()) views.push_back(h->old_view);
    const auto t2 = Clock::now();
    auto d = drv::decode(blob);
    if (!d) die(keel::to_string(d.error()));
    auto adopted = keel::fpga::DmaArena::adopt(vf, std::move(h).value());
    if (!adopted) die(keel::to_string(adopted.error()));
    arena = std::move(adopted).value();
    cc.arena = arena.get();
    auto r = drv::Controller::restore(vf, stack->card(), stack->card(), d->controller, cc);
    if (!r) die(keel::to_string(r.error()));
    ctrl = std::move(r).value();
    for (const auto& q : d->queue_pairs) {
      auto qp = ctrl->restore_queue_pair(q);
      if (!qp) die(keel::to_string(qp.error()));
      qps.push_back(std::move(qp).value());
    }
    const auto t3 = Clock::now();
    save_s += std::chrono::duration<double>(t1 - t0).count();
    restore_s += std::chrono::duration<double>(t3 - t2).count();
    state.SetIterationTime(std::chrono::duration<double>((t1 - t0) + (t3 - t2)).count());
    for (unsigned q = 0; q < nqp; ++q) {
      while (qps[q]->outstanding() > 0) {
        const unsigned n = qps[q]->wait(done, std::chrono::seconds(5));
        if (n == 0) die("reads stalled after the restore");
        for (unsigned i = 0; i < n; ++i) {
          if (!done[i].status.ok()) die("read failed: " + drv::to_string(done[i].status));
        }
      }
    }
  }
  const double n = static_cast<double>(std::max<std::int64_t>(state.iterations(), 1));
  state.counters["save_us"] = save_s / n * 1e6;
  state.counters["restore_us"] = restore_s / n * 1e6;
  state.counters["in_flight_at_save"] = static_cast<double>(crossed) / n;
  qps.clear();
  ctrl.reset();
  buf.reset();
  arena.reset();
}

BENCHMARK(BM_KeepaliveHandOver)
    ->ArgNames({"qps"})
    ->Arg(1)
    ->Arg(4)
    ->Arg(8)
    ->Iterations(200)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
