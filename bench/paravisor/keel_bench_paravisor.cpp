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
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "keel/stack/stack.h"
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
    keel::stack::StackConfig sc;
    sc.card = "model";
    sc.card_options.image_path = image;
    sc.card_options.storage_bytes = kDiskBytes;
    sc.card_options.lockstep = false;
    sc.vfs.count = 1;
    sc.vfs.queues = 1;
    stack = must(keel::stack::Stack::open_card(sc), "card");
    if (auto st = stack->discover_pf(); !st.ok()) die("PF manager: " + keel::to_string(st.error()));
    if (auto st = stack->enable_vfs(); !st.ok()) die(keel::to_string(st.error()));
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
}

void register_all() {
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
