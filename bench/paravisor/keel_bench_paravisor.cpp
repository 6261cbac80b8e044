// keel_bench_paravisor: 4 KiB random reads and writes through the in-process virtio-blk guest,
// on the accelerated path (path=vf: paravisor -> VF -> free-running model card) and on the
// software fallback (path=fallback: paravisor -> host storage service -> io_uring), in one run.
//
// Counters:
//   iops           guest requests completed per second
//   cpu_ns_per_io  host-side CPU per request: paravisor worker threads (which run the NVMe
//                  driver) plus the host storage service thread and its io_uring kernel
//                  workers (thread CPU time). The card
//                  thread is silicon and the guest driver thread is the guest: neither counts.
//   p50_us/p99_us  request latency seen by the guest
//   peak_rss_mib   peak resident memory of the process
//   card_wait_pct  of the time the model card's thread (the silicon) wanted a CPU, the share
//                  it waited for one (schedstat): over 10 means the host was too loaded for
//                  the vf figures to measure the path
//
// BM_IdleBackend/path=vf|fallback (issue 15, "quiet guests cost nothing"): a guest attached
// and doing no IO for 2 s; idle_cpu_pct is the whole process's CPU (paravisor workers, host
// service, the model card's thread) over that time, in percent of one core.
//
// BM_KeepaliveUpgrade/queues:N (issue 14): the paravisor handed over to a new one in the same
// process, the VF kept running (NVMe keepalive), under 4 KiB reads at QD 32 on each of N
// queues, one hand-over per iteration. What a keel-vhost-blk upgrade does but for the process
// and the vhost-user session: stop(true) (requests in flight complete), save() and encoding,
// the arena handed over and adopted, decoding, a new paravisor taking the controller and its
// queue pairs over, the guest's rings given to it at their last_avail, start().
//   save_us        stop + save + encode + arena hand-over (median)
//   restore_us     adopt + decode + create (take-over) + rings + start (median)
//   blackout_us    the longest gap between two guest completions around the hand-over
//                  (median and max_blackout_us over the iterations)
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "keel/drivers/nvme/saved_state.h"
#include "keel/fpga/dma_arena.h"
#include "keel/stack/stack.h"
#include "keel/thread_cpu.h"
#include "keel/vmm/guest_driver.h"

namespace {

namespace vmm = keel::vmm;
namespace blk = keel::virtio::blk;

constexpr std::uint64_t kDiskBytes = 256ull << 20;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "keel_bench_paravisor: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T must(keel::Result<T> r, const char* what) {
  if (!r.ok()) die(std::string(what) + ": " + keel::to_string(r.error()));
  return std::move(r).value();
}

// The free-running model card on `image`, its one VF enabled with `queues` IO queue pairs.
std::unique_ptr<keel::stack::Stack> open_model_card(const std::string& image, unsigned queues) {
  keel::stack::StackConfig sc;
  sc.card = "model";
  sc.card_options.image_path = image;
  sc.card_options.storage_bytes = kDiskBytes;
  sc.card_options.lockstep = false;
  sc.vfs.count = 1;
  sc.vfs.queues = queues;
  auto stack = must(keel::stack::Stack::open_card(sc), "card");
  if (auto st = stack->discover_pf(); !st.ok()) die("PF manager: " + keel::to_string(st.error()));
  if (auto st = stack->enable_vfs(); !st.ok()) die(keel::to_string(st.error()));
  return stack;
}

struct Rig {
  std::string image;
  std::unique_ptr<keel::stack::Stack> stack;
  std::unique_ptr<vmm::GuestMemory> mem;
  std::unique_ptr<vmm::HostStorageService> host;
  std::unique_ptr<vmm::Paravisor> pv;
  std::unique_ptr<vmm::GuestDriver> guest;

  explicit Rig(bool vf_path) {
    // The image lives in /dev/shm when there is one: both paths then measure keel, not the
    // disk under /tmp.
    image = keel::stack::scratch_image_path("bench-pv");
    stack = open_model_card(image, 1);
    mem = must(vmm::GuestMemory::create(64ull << 20), "guest memory");
    keel::stack::DiskSpec disk;
    disk.base_offset = 0;
    disk.length = kDiskBytes;
    host = must(stack->start_host_service(stack->host_config(*mem, disk)), "host service");
    vmm::ParavisorConfig cfg;
    cfg.threads = true;
    cfg.capacity_sectors = kDiskBytes / 512;
    keel::fpga::Function* vf = vf_path ? must(stack->vf(0), "VF") : nullptr;
    pv = must(stack->create_paravisor(vf, *mem, *host, cfg), "paravisor");
    guest = must(vmm::GuestDriver::attach(*pv, *mem, 1, 256, 1u << 20), "guest driver");
    if (auto st = pv->start(); !st.ok()) die(keel::to_string(st.error()));
  }
  ~Rig() {
    pv->stop();
    guest.reset();
    pv.reset();
    host.reset();
    stack.reset();
    std::filesystem::remove(image);
  }
};

void BM_Guest4k(benchmark::State& state, bool vf_path, bool write) {
  const unsigned qd = static_cast<unsigned>(state.range(0));
  Rig rig(vf_path);
  vmm::GuestDriver& g = *rig.guest;
  const std::uint64_t buf = g.alloc(std::uint64_t{qd} * 4096);
  std::memset(g.host(buf, std::uint64_t{qd} * 4096), 0x5A, std::uint64_t{qd} * 4096);
  std::mt19937_64 rng(3);
  const std::uint64_t blocks = kDiskBytes / 4096;
  std::vector<std::chrono::steady_clock::time_point> started(256);
  std::vector<unsigned> slot_of(256);
  std::vector<double> lat_us;
  lat_us.reserve(1 << 20);
  auto submit = [&](unsigned slot) {
    const vmm::DataSeg seg{buf + slot * 4096ull, 4096};
    auto id = g.submit(0, write ? blk::kOut : blk::kIn, (rng() % blocks) * 8, {&seg, 1});
    if (!id.ok()) die("submit: " + keel::to_string(id.error()));
    started[*id] = std::chrono::steady_clock::now();
    slot_of[*id] = slot;
  };
  for (unsigned s = 0; s < qd; ++s) submit(s);
  g.kick(0);
  vmm::GuestCompletion done[256];
  std::uint64_t ios = 0;
  const std::uint64_t cpu0 =
      rig.pv->worker_cpu_ns() + rig.host->thread_cpu_ns() + rig.host->io_worker_cpu_ns();
  const int card_tid = rig.stack->card().thread_id();
  const keel::SchedStat card0 = keel::thread_schedstat(card_tid);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const unsigned n = g.reap(0, done);
    const auto now = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < n; ++i) {
      if (done[i].status != blk::kStatusOk) die("request failed");
      lat_us.push_back(
          std::chrono::duration<double, std::micro>(now - started[done[i].id]).count());
      submit(slot_of[done[i].id]);
    }
    if (n > 0) {
      g.kick(0);
    } else {
      g.wait(0, 10);  // the guest halts until its interrupt, as a vCPU would
    }
    ios += n;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::uint64_t cpu =
      rig.pv->worker_cpu_ns() + rig.host->thread_cpu_ns() + rig.host->io_worker_cpu_ns() - cpu0;
  const keel::SchedStat card1 = keel::thread_schedstat(card_tid);
  const double card_want =
      static_cast<double>((card1.run_ns - card0.run_ns) + (card1.wait_ns - card0.wait_ns));
  std::sort(lat_us.begin(), lat_us.end());
  auto pct = [&](double p) {
    return lat_us.empty() ? 0.0 : lat_us[static_cast<std::size_t>(p * (lat_us.size() - 1))];
  };
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const auto c = rig.pv->counters();
  if (vf_path && c.fallback_ios != 0) die("path=vf used the fallback");
  state.counters["iops"] = static_cast<double>(ios) / secs;
  state.counters["cpu_ns_per_io"] =
      static_cast<double>(cpu) / static_cast<double>(std::max<std::uint64_t>(ios, 1));
  state.counters["p50_us"] = pct(0.50);
  state.counters["p99_us"] = pct(0.99);
  state.counters["notifications_per_io"] =
      static_cast<double>(c.notifications) /
      static_cast<double>(std::max<std::uint64_t>(c.requests, 1));
  state.counters["peak_rss_mib"] = static_cast<double>(ru.ru_maxrss) / 1024.0;
  if (vf_path && card_want > 0) {
    state.counters["card_wait_pct"] =
        100.0 * static_cast<double>(card1.wait_ns - card0.wait_ns) / card_want;
  }
}

void BM_IdleBackend(benchmark::State& state, bool vf_path) {
  Rig rig(vf_path);
  double pct = 0;
  for (auto _ : state) {
    const std::uint64_t cpu0 = keel::clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(2));  // the guest is quiet
    const double wall_ns =
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    pct = 100.0 * static_cast<double>(keel::clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / wall_ns;
  }
  state.counters["idle_cpu_pct"] = pct;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void BM_KeepaliveUpgrade(benchmark::State& state) {
  const unsigned queues = static_cast<unsigned>(state.range(0));
  constexpr unsigned kQd = 32;
  const std::string image = keel::stack::scratch_image_path("bench-keepalive");
  auto stack = open_model_card(image, queues);
  keel::fpga::Function* vf = must(stack->vf(0), "VF");
  auto mem = must(vmm::GuestMemory::create(64ull << 20), "guest memory");
  keel::stack::DiskSpec disk;
  disk.length = kDiskBytes;
  auto host = must(stack->start_host_service(stack->host_config(*mem, disk)), "host service");
  // As keel-vhost-blk places it: clear of guest RAM and of alloc_dma()'s 2^52.
  auto arena =
      must(keel::fpga::DmaArena::create(*vf, std::size_t{queues} * (16u << 20) + (1u << 20),
                                        keel::fpga::Iova{1} << 47),
           "DMA arena");
  std::shared_ptr<void> first_view;  // the in-process card DMAs through the first mapping
  vmm::ParavisorConfig cfg;
  cfg.threads = true;
  cfg.queues = queues;
  cfg.capacity_sectors = kDiskBytes / 512;
  cfg.arena = arena.get();
  auto pv = must(stack->create_paravisor(vf, *mem, *host, cfg), "paravisor");
  auto guest = must(vmm::GuestDriver::attach(*pv, *mem, queues, 256, 1u << 20), "guest driver");
  if (auto st = pv->start(); !st.ok()) die(keel::to_string(st.error()));

  // The guest, on its own thread (a vCPU): QD 32 reads per queue, resubmitted on completion;
  // while `measuring`, the longest gap between two completions on any queue.
  using Clock = std::chrono::steady_clock;
  std::atomic<bool> quit{false}, measuring{false};
  std::vector<std::atomic<std::uint64_t>> completed(queues);  // per queue
  std::atomic<std::int64_t> max_gap_ns{0};
  std::atomic<bool> failed{false};
  std::thread vcpu([&] {
    const std::uint64_t buf = guest->alloc(std::uint64_t{queues} * kQd * 4096);
    std::mt19937_64 rng(7);
    const std::uint64_t blocks = kDiskBytes / 4096;
    auto submit = [&](unsigned q, unsigned slot) {
      const vmm::DataSeg seg{buf + (q * kQd + slot) * 4096ull, 4096};
      auto id = guest->submit(q, blk::kIn, (rng() % blocks) * 8, {&seg, 1});
      if (!id.ok()) die("submit: " + keel::to_string(id.error()));
      return *id;
    };
    std::vector<std::vector<unsigned>> slot_of(queues, std::vector<unsigned>(256));
    for (unsigned q = 0; q < queues; ++q) {
      for (unsigned s = 0; s < kQd; ++s) slot_of[q][submit(q, s)] = s;
      guest->kick(q);
    }
    vmm::GuestCompletion done[256];
    Clock::time_point last = Clock::now();
    bool was_measuring = false;
    while (!quit.load(std::memory_order_acquire)) {
      unsigned got = 0;
      for (unsigned q = 0; q < queues; ++q) {
        const unsigned n = guest->reap(q, done);
        for (unsigned i = 0; i < n; ++i) {
          if (done[i].status != blk::kStatusOk) failed = true;
          const unsigned s = slot_of[q][done[i].id];
          slot_of[q][submit(q, s)] = s;
        }
        if (n > 0) guest->kick(q);
        completed[q].fetch_add(n, std::memory_order_release);
        got += n;
      }
      if (got == 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
        continue;
      }
      const Clock::time_point now = Clock::now();
      const bool m = measuring.load(std::memory_order_acquire);
      if (m && was_measuring) {
        const std::int64_t gap = std::chrono::nanoseconds(now - last).count();
        if (gap > max_gap_ns.load()) max_gap_ns.store(gap);
      }
      was_measuring = m;
      last = now;
    }
  });

  // Until every queue has completed `n` more requests.
  auto wait_for = [&](std::uint64_t n) {
    std::vector<std::uint64_t> target(queues);
    for (unsigned q = 0; q < queues; ++q) target[q] = completed[q].load() + n;
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    for (unsigned q = 0; q < queues; ++q) {
      while (completed[q].load() < target[q]) {
        if (Clock::now() > deadline) die("the guest's IO stopped");
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  };
  std::vector<double> save_us, restore_us, blackout_us;
  wait_for(kQd * 8);  // steady load
  for (auto _ : state) {
    max_gap_ns = 0;
    measuring = true;
    wait_for(kQd * 2);  // completions before the hand-over count too
    const auto t0 = Clock::now();
    pv->stop(true);
    auto saved = must(pv->save(), "save");
    const std::vector<std::byte> blob = keel::drivers::nvme::encode(saved);
    auto h = must(arena->hand_over(), "arena hand-over");
    const auto t1 = Clock::now();
    std::vector<std::uint16_t> last_avail(queues);
    for (unsigned q = 0; q < queues; ++q) last_avail[q] = pv->last_avail(q);
    pv.reset();
    if (!first_view) first_view = h.old_view;
    const auto t2 = Clock::now();
    arena = must(keel::fpga::DmaArena::adopt(*vf, std::move(h)), "arena adopt");
    const auto state_in = must(keel::drivers::nvme::decode(blob), "decode");
    cfg.arena = arena.get();
    cfg.restore = &state_in;
    pv = must(stack->create_paravisor(vf, *mem, *host, cfg), "paravisor take-over");
    cfg.restore = nullptr;
    if (auto st = guest->rebind(*pv, last_avail); !st.ok()) die(keel::to_string(st.error()));
    if (auto st = pv->start(); !st.ok()) die(keel::to_string(st.error()));
    const auto t3 = Clock::now();
    wait_for(kQd * 2);  // IO flows again on every queue
    measuring = false;
    if (pv->counters().kept_queue_pairs != queues) die("a queue pair was not taken over");
    if (pv->state() != vmm::PathState::active) die("the VF path is not active after the take-over");
    save_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    restore_us.push_back(std::chrono::duration<double, std::micro>(t3 - t2).count());
    blackout_us.push_back(static_cast<double>(max_gap_ns.load()) / 1000.0);
  }
  quit = true;
  vcpu.join();
  if (failed) die("a guest request failed");
  state.counters["save_us"] = median(save_us);
  state.counters["restore_us"] = median(restore_us);
  state.counters["blackout_us"] = median(blackout_us);
  state.counters["max_blackout_us"] =
      blackout_us.empty() ? 0 : *std::max_element(blackout_us.begin(), blackout_us.end());
  pv->stop();
  guest.reset();
  pv.reset();
  arena.reset();
  host.reset();
  stack.reset();
  std::filesystem::remove(image);
}

void register_all() {
  for (bool vf : {true, false}) {
    const std::string name = std::string("BM_IdleBackend/path=") + (vf ? "vf" : "fallback");
    benchmark::RegisterBenchmark(name.c_str(), BM_IdleBackend, vf)
        ->Iterations(1)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("BM_KeepaliveUpgrade", BM_KeepaliveUpgrade)
      ->ArgName("queues")
      ->Arg(1)
      ->Arg(4)
      ->Arg(8)
      ->Iterations(20)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  for (bool vf : {true, false}) {
    for (bool write : {false, true}) {
      const std::string name = std::string("BM_Guest4k/") + (write ? "randwrite" : "randread") +
                               "/path=" + (vf ? "vf" : "fallback");
      benchmark::RegisterBenchmark(name.c_str(), BM_Guest4k, vf, write)
          ->ArgName("qd")
          ->Arg(1)
          ->Arg(32)
          ->MinTime(0.5)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
