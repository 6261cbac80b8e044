#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "keel/thread_cpu.h"
#include "keel/vmm/guest_driver.h"

namespace keel::perf {

namespace vmm = keel::vmm;
namespace blk = keel::virtio::blk;

// ---------------------------------------------------------------- stack

namespace {

bool simulated(const std::string& spec) { return spec == "model" || spec == "sim"; }

std::uint64_t rss_peak_kib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::uint64_t>(ru.ru_maxrss);
}

}  // namespace

Result<std::unique_ptr<Stack>> Stack::open(const Config& config) {
  std::unique_ptr<Stack> s(new Stack());
  s->spec_ = config.card;
  // The default is the C++ reference card running free: host software at full speed. The
  // Verilated card (sim) runs about a million card cycles per second, so its IOPS measure the
  // simulator; on it keel-perf also reports card cycles per command and the IOPS they project.
  if (s->spec_.empty()) s->spec_ = "model";
  // A card served by keel-card in another process: its image is the one keel-card was
  // started with (--image), which the fallback path reads and writes too.
  if (!simulated(s->spec_) && config.image.empty() && config.path != PathChoice::vf) {
    return make_error(Errc::invalid_argument,
                      "the fallback path needs the storage behind the VF's namespace, which "
                      "only a simulated card (sim, model) has here: --image keel-card's image "
                      "for vfio-user, the PF's namespace (/dev/nvme0n1) for a VF of an NVMe "
                      "SSD; or --path vf on " +
                          s->spec_);
  }
  const std::uint64_t slice_mib = ((config.size + (1u << 20) - 1) >> 20) + 1;
  const std::uint64_t card_mib = config.card_mib != 0 ? config.card_mib : slice_mib * config.vfs;
  keel::stack::StackConfig sc;
  sc.card = s->spec_;
  sc.card_options.lockstep = false;
  sc.card_options.max_vfs = std::max(8u, config.vfs);
  sc.card_options.storage_bytes = card_mib << 20;
  sc.vfs.count = config.vfs;
  sc.vfs.queues = 1;
  sc.vfs.disable_first = true;
  if (!simulated(s->spec_)) {
    s->image_ = config.image;  // the host path's storage (a real card ignores image_path)
    sc.card_options.image_path = s->image_;
  } else {
    if (config.image.empty()) {
      s->image_ = keel::stack::scratch_image_path("perf");
      s->temp_image_ = true;
    } else {
      s->image_ = config.image;
    }
    sc.card_options.image_path = s->image_;
  }
  auto stack = keel::stack::Stack::open_card(sc);
  if (!stack) return stack.error();
  s->stack_ = std::move(stack).value();
  if (!s->stack_->card().owns_pf()) {
    // One function (a VF handed to this process): its namespace is the job's whole region;
    // the host path reaches the same blocks through --image from its start.
    if (config.vfs != 1) {
      return make_error(Errc::invalid_argument,
                        s->spec_ + " is one function: one job (--numjobs 1, --vfs 1)");
    }
    // The guest's disk is the whole namespace: the host path's storage says how big.
    const int fd = ::open(s->image_.c_str(), O_RDONLY | O_CLOEXEC);
    const off_t end = fd >= 0 ? ::lseek(fd, 0, SEEK_END) : -1;
    if (fd >= 0) ::close(fd);
    if (end <= 0) {
      return make_error(Errc::invalid_argument,
                        "--image " + s->image_ + ": cannot tell its size (the VF's namespace)");
    }
    s->slice_bytes_ = static_cast<std::uint64_t>(end);
    if (config.size > s->slice_bytes_) {
      return make_error(
          Errc::invalid_argument,
          "--size does not fit the namespace (" + std::to_string(s->slice_bytes_ >> 20) + " MiB)");
    }
    return s;
  }
  if (Status st = s->stack_->discover_pf(); !st.ok()) return st.error();
  const std::uint64_t lbas = s->stack_->pf().info().storage_lbas / config.vfs;
  s->slice_bytes_ = lbas * 512;
  if (config.size > s->slice_bytes_) {
    return make_error(Errc::invalid_argument,
                      "--size " + std::to_string(config.size >> 20) + " MiB does not fit a VF's " +
                          std::to_string(s->slice_bytes_ >> 20) + " MiB slice of the card");
  }
  // Disables what a real board still has enabled, then an even split of its storage.
  if (Status st = s->stack_->enable_vfs(); !st.ok()) return st.error();
  return s;
}

Stack::~Stack() {
  stack_.reset();
  if (temp_image_) std::filesystem::remove(image_);
}

namespace {

struct Job {
  std::unique_ptr<vmm::GuestMemory> mem;
  std::unique_ptr<vmm::HostStorageService> host;
  std::unique_ptr<vmm::Paravisor> pv;
  std::unique_ptr<vmm::GuestDriver> drv;
  Recorder rec{Clock::time_point{}};
  std::atomic<std::uint64_t> done{0};
  std::uint64_t verify_errors = 0, verified = 0;
  std::vector<std::uint32_t> version;  // per block: last version written (--verify)
  std::uint64_t buf = 0;               // guest buffers
  std::string error;
  struct {
    std::uint64_t usr_ns = 0, sys_ns = 0, ctx = 0, majf = 0, minf = 0;
  } usage;
};

// Every 512-byte sector: 16 bytes of header (sector, version, job), then bytes derived from them.
void fill_block(std::byte* p, std::uint32_t bytes, std::uint64_t sector, std::uint32_t version,
                std::uint32_t job) {
  for (std::uint32_t off = 0; off < bytes; off += 512, ++sector) {
    const std::uint64_t hdr[2] = {sector, (std::uint64_t{version} << 32) | job};
    std::memcpy(p + off, hdr, sizeof hdr);
    std::uint64_t x = sector * 0x9E3779B97F4A7C15ull ^ version ^ (std::uint64_t{job} << 48);
    for (std::uint32_t i = 16; i < 512; i += 8) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      std::memcpy(p + off + i, &x, 8);
    }
  }
}

bool check_block(const std::byte* p, std::uint32_t bytes, std::uint64_t sector,
                 std::uint32_t version, std::uint32_t job) {
  std::byte expect[512];
  for (std::uint32_t off = 0; off < bytes; off += 512, ++sector) {
    fill_block(expect, 512, sector, version, job);
    if (std::memcmp(p + off, expect, 512) != 0) return false;
  }
  return true;
}

struct ThreadUsage {
  std::uint64_t usr_ns = 0, sys_ns = 0, ctx = 0, majf = 0, minf = 0;
};

ThreadUsage thread_usage() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  auto ns = [](const timeval& t) {
    return static_cast<std::uint64_t>(t.tv_sec) * 1'000'000'000u +
           static_cast<std::uint64_t>(t.tv_usec) * 1000u;
  };
  return {ns(ru.ru_utime), ns(ru.ru_stime),
          static_cast<std::uint64_t>(ru.ru_nvcsw) + static_cast<std::uint64_t>(ru.ru_nivcsw),
          static_cast<std::uint64_t>(ru.ru_majflt), static_cast<std::uint64_t>(ru.ru_minflt)};
}

// One job: `measure_from` is the end of --ramp_time (the start without it), `deadline` the end of
// a timed run; without --runtime the job does `amount` bytes after the ramp.
void run_job(Job& j, const Config& c, unsigned index, Clock::time_point start,
             Clock::time_point measure_from, Clock::time_point deadline, std::uint64_t amount) {
  vmm::GuestDriver& g = *j.drv;
  const std::uint32_t bs = c.bs;
  const std::uint64_t blocks = c.size / bs;
  const std::uint64_t buf = j.buf = g.alloc(std::uint64_t{c.iodepth} * bs);
  std::vector<std::uint32_t>& version = j.version;  // sized (and prefilled) by prefill_job()
  std::vector<bool> busy(blocks, false);
  struct Slot {
    std::uint64_t block = 0;
    bool write = false;
    Clock::time_point taken, submitted;
  };
  std::vector<Slot> slots(c.iodepth);
  std::vector<unsigned> free_slots;
  for (unsigned s = c.iodepth; s-- > 0;) free_slots.push_back(s);
  std::vector<int> slot_of(65536, -1);
  IoPattern pattern(c.rw, c.rwmixread, blocks, c.seed * 7919 + index);
  std::optional<IoPattern::Io> pending;  // taken from the pattern, not yet submitted
  RatePacer pace[2] = {
      c.rate_iops_read ? RatePacer(c.rate_iops_read, start, c.iodepth) : RatePacer(),
      c.rate_iops_write ? RatePacer(c.rate_iops_write, start, c.iodepth) : RatePacer()};
  Recorder& rec = j.rec;
  const bool timed = c.runtime.count() > 0;
  bool measuring = false;
  ThreadUsage u0;
  std::uint64_t issued_bytes = 0;  // measured IOs only
  unsigned inflight = 0;
  vmm::GuestCompletion done[256];
  for (;;) {
    auto now = Clock::now();
    if (!measuring && now >= measure_from) {
      measuring = true;
      u0 = thread_usage();
    }
    const bool time_up = timed ? now >= deadline : issued_bytes >= amount;
    Clock::time_point paced_until = Clock::time_point::min();
    while (!time_up && !free_slots.empty() && (timed || issued_bytes < amount)) {
      if (!pending) pending = pattern.next();
      // An IO on this block is in flight. Random: another block. Sequential: in order; with
      // --verify after it (a read racing a write of its block reads either), without it at once
      // (fio's default: rw's reads follow its writes through the same blocks).
      if (busy[pending->block] && (c.verify || is_random(c.rw))) {
        if (!is_random(c.rw)) break;
        for (int tries = 0; tries < 8 && busy[pending->block]; ++tries) {
          pending->block = pattern.redraw();
        }
        if (busy[pending->block]) break;
      }
      RatePacer& p = pace[pending->write ? 1 : 0];
      if (p.capped()) {
        now = Clock::now();
        if (now < p.due()) {
          paced_until = p.due();
          break;
        }
        p.take(now);
      }
      const unsigned s = free_slots.back();
      free_slots.pop_back();
      Slot& sl = slots[s];
      sl.block = pending->block;
      sl.write = pending->write;
      pending.reset();
      sl.taken = Clock::now();
      const std::uint64_t sector = sl.block * (bs / 512);
      std::byte* mem = g.host(buf + std::uint64_t{s} * bs, bs);
      if (sl.write) {
        const std::uint32_t v = c.verify ? ++version[sl.block] : 1;
        fill_block(mem, bs, sector, v, index);
      }
      const vmm::DataSeg seg{buf + std::uint64_t{s} * bs, bs};
      auto id = g.submit(0, sl.write ? blk::kOut : blk::kIn, sector, {&seg, 1});
      if (!id) {
        j.error = "submit: " + to_string(id.error());
        return;
      }
      slot_of[*id] = static_cast<int>(s);
      sl.submitted = Clock::now();  // published: the device may take it from here
      busy[sl.block] = true;
      ++inflight;
      if (rec.counts(sl.taken)) issued_bytes += bs;
    }
    g.kick(0);
    if (inflight == 0 && time_up) break;
    const unsigned n = g.reap(0, done);
    now = Clock::now();
    for (unsigned i = 0; i < n; ++i) {
      const int s = slot_of[done[i].id];
      if (s < 0) {
        j.error = "completion for an unknown request";
        return;
      }
      Slot& sl = slots[static_cast<unsigned>(s)];
      if (done[i].status != blk::kStatusOk) {
        j.error = "request failed with virtio-blk status " + std::to_string(done[i].status);
        return;
      }
      rec.complete(sl.write, bs, sl.taken, sl.submitted, now);
      if (c.verify && !sl.write && version[sl.block] != 0) {
        ++j.verified;
        if (!check_block(g.host(buf + std::uint64_t(s) * bs, bs), bs, sl.block * (bs / 512),
                         version[sl.block], index)) {
          ++j.verify_errors;
        }
      }
      busy[sl.block] = false;
      free_slots.push_back(static_cast<unsigned>(s));
      --inflight;
      j.done.fetch_add(1, std::memory_order_relaxed);
    }
    if (n > 0) continue;
    // Nothing reaped. Paced (--rate_iops): wait for the next IO's time, blocking in the kernel
    // when it is a millisecond or more away; else halt until the device's interrupt, as a
    // vCPU does.
    if (paced_until != Clock::time_point::min() && !free_slots.empty()) {
      if (!measuring && paced_until > measure_from) paced_until = measure_from;
      if (timed && paced_until > deadline) paced_until = deadline;
      const auto gap = paced_until - now;
      switch (pace_wait(gap, inflight)) {
        case PaceWait::none:
        case PaceWait::poll: break;
        case PaceWait::sleep: std::this_thread::sleep_until(paced_until); break;
        case PaceWait::interrupt:
          g.wait(0, static_cast<int>(std::min<std::int64_t>(
                        5, std::chrono::duration_cast<std::chrono::milliseconds>(gap).count())));
          break;
      }
      continue;
    }
    if (inflight > 0 || !time_up) g.wait(0, 5);
  }
  if (!measuring) u0 = thread_usage();  // ended within the ramp: nothing measured
  const ThreadUsage u1 = thread_usage();
  j.usage = {u1.usr_ns - u0.usr_ns, u1.sys_ns - u0.sys_ns, u1.ctx - u0.ctx, u1.majf - u0.majf,
             u1.minf - u0.minf};
}

bool reads(Rw rw) { return rw != Rw::write && rw != Rw::randwrite; }

// --verify, before the timed phase: a job that reads first writes its whole region with a known
// pattern (version 1 of every block), so every read of the timed phase is checked against it.
// Without it a read-only job would check nothing. Writes of up to kPrefillBytes, a few in flight.
void prefill_job(Job& j, const Config& c, unsigned index) {
  const std::uint64_t blocks = c.size / c.bs;
  j.version.assign(c.verify ? blocks : 0, 0);
  if (!c.verify || !reads(c.rw)) return;
  constexpr std::uint64_t kPrefillBytes = 64 * 1024;
  constexpr unsigned kDepth = 8;
  constexpr int kMaxIdleWaits = 2000;  // 5 ms each: 10 s without a completion is a failure
  vmm::GuestDriver& g = *j.drv;
  const std::uint64_t per = std::max<std::uint64_t>(1, kPrefillBytes / c.bs);  // blocks per write
  const std::uint64_t chunk = per * c.bs;
  const std::uint64_t buf = g.alloc(chunk * kDepth);
  std::vector<unsigned> free_slots;
  for (unsigned s = kDepth; s-- > 0;) free_slots.push_back(s);
  std::vector<int> slot_of(65536, -1);
  std::uint64_t next = 0;
  unsigned inflight = 0;
  int idle = 0;
  vmm::GuestCompletion done[kDepth];
  while (next < blocks || inflight > 0) {
    while (next < blocks && !free_slots.empty()) {
      const unsigned s = free_slots.back();
      free_slots.pop_back();
      const std::uint64_t n = std::min(per, blocks - next);
      const std::uint64_t sector = next * (c.bs / 512);
      const auto bytes = static_cast<std::uint32_t>(n * c.bs);
      fill_block(g.host(buf + s * chunk, bytes), bytes, sector, 1, index);
      const vmm::DataSeg seg{buf + s * chunk, bytes};
      auto id = g.submit(0, blk::kOut, sector, {&seg, 1});
      if (!id) {
        j.error = "verify prefill submit: " + to_string(id.error());
        return;
      }
      slot_of[*id] = static_cast<int>(s);
      next += n;
      ++inflight;
    }
    g.kick(0);
    const unsigned n = g.reap(0, done);
    for (unsigned i = 0; i < n; ++i) {
      const int s = slot_of[done[i].id];
      if (s < 0 || done[i].status != blk::kStatusOk) {
        j.error = "verify prefill write failed (virtio-blk status " +
                  std::to_string(done[i].status) + ")";
        return;
      }
      slot_of[done[i].id] = -1;
      free_slots.push_back(static_cast<unsigned>(s));
      --inflight;
    }
    if (n > 0) {
      idle = 0;
      continue;
    }
    if (++idle > kMaxIdleWaits) {
      j.error = "verify prefill: no completion for 10 s";
      return;
    }
    g.wait(0, 5);
  }
  std::fill(j.version.begin(), j.version.end(), 1u);
}

// --verify, after the timed phase: read back every block the job wrote (the prefill included).
void verify_job(Job& j, const Config& c, unsigned index) {
  if (!c.verify || !j.error.empty()) return;
  vmm::GuestDriver& g = *j.drv;
  const std::uint32_t bs = c.bs;
  const std::uint64_t buf = j.buf;
  const std::vector<std::uint32_t>& version = j.version;
  vmm::GuestCompletion done[4];
  for (std::uint64_t block = 0; block < version.size(); ++block) {
    if (version[block] == 0) continue;
    const vmm::DataSeg seg{buf, bs};
    auto id = g.submit(0, blk::kIn, block * (bs / 512), {&seg, 1});
    if (!id) {
      j.error = "verify submit: " + to_string(id.error());
      return;
    }
    g.kick(0);
    unsigned n = 0;
    for (int t = 0; n == 0 && t < 2000; ++t) {
      n = g.reap(0, done);
      if (n == 0) g.wait(0, 5);
    }
    if (n == 0 || done[0].status != blk::kStatusOk) {
      j.error = "verify read of block " + std::to_string(block) + " failed";
      return;
    }
    ++j.verified;
    if (!check_block(g.host(buf, bs), bs, block * (bs / 512), version[block], index)) {
      ++j.verify_errors;
    }
  }
}

}  // namespace

Result<PathResult> Stack::run(const Config& c, bool vf_path, const Progress& progress) {
  PathResult r;
  r.path = vf_path ? "vf" : "fallback";
  r.card = stack_->card().describe();
  std::vector<std::unique_ptr<Job>> jobs;
  for (unsigned i = 0; i < c.numjobs; ++i) {
    auto j = std::make_unique<Job>();
    auto mem = vmm::GuestMemory::create(
        std::max<std::uint64_t>(64ull << 20, std::uint64_t{c.iodepth} * c.bs * 2 + (16u << 20)));
    if (!mem) return mem.error();
    j->mem = std::move(mem).value();
    vmm::ParavisorConfig pc;
    pc.threads = true;
    pc.max_queue_size = 1024;
    pc.capacity_sectors = slice_bytes_ / 512;
    keel::stack::DiskSpec disk;
    if (vf_path) disk.vf = i;
    disk.base_offset = i * slice_bytes_;
    disk.length = slice_bytes_;
    if (image_.empty()) {
      return make_error(Errc::invalid_argument, "a real board has no host path here");
    }
    auto d = stack_->assemble(*j->mem, disk, pc);
    if (!d) return d.error();
    j->host = std::move(d->host);
    j->pv = std::move(d->paravisor);
    if (vf_path && j->pv->state() != vmm::PathState::active) {
      return make_error(Errc::device_error, "VF " + std::to_string(i) + " did not come up");
    }
    // Each request takes 3 descriptors (header, data, status): size the ring for iodepth.
    const auto ring = static_cast<std::uint16_t>(std::bit_ceil(std::max(64u, 3 * c.iodepth)));
    auto drv = vmm::GuestDriver::attach(*j->pv, *j->mem, 1, ring, 1u << 20);
    if (!drv) return drv.error();
    j->drv = std::move(drv).value();
    if (Status st = j->pv->start(); !st.ok()) return st.error();
    jobs.push_back(std::move(j));
  }
  {  // --verify: the prefill, outside the measured phase
    std::vector<std::thread> fill;
    for (unsigned i = 0; i < jobs.size(); ++i) {
      fill.emplace_back([&, i] { prefill_job(*jobs[i], c, i); });
    }
    for (auto& t : fill) t.join();
    for (auto& j : jobs) {
      if (!j->error.empty()) return make_error(Errc::io_error, "path " + r.path + ": " + j->error);
    }
  }
  auto cpu_now = [&] {
    std::uint64_t n = 0;
    for (const auto& j : jobs) {
      n += j->pv->worker_cpu_ns();
      if (j->host) n += j->host->thread_cpu_ns() + j->host->io_worker_cpu_ns();
    }
    return n;
  };
  const std::uint64_t amount = c.size;
  // A card of one function (a VF through VFIO) has no PF here: no card counters.
  sriov::PfManager* pm = stack_->card().owns_pf() ? &stack_->pf() : nullptr;
  r.rtl = spec_ == "sim";
  r.clock_mhz = pm != nullptr ? pm->info().clock_mhz : 0;
  auto busy_now = [&] {
    std::uint64_t n = 0;
    if (pm == nullptr) return n;
    for (const auto& v : pm->vfs()) n += v.counters.busy_cycles;
    return n;
  };
  // Everything keel counts is read when the ramp ends (at the start without --ramp_time).
  std::uint64_t cpu0 = 0, switches0 = 0, returns0 = 0, busy0 = 0;
  sriov::CardCounters k0{};
  const int card_tid = stack_->card().thread_id();
  if (c.card_rt && card_tid >= 0) {
    sched_param sp{};
    sp.sched_priority = 1;
    r.card_rt = ::sched_setscheduler(card_tid, SCHED_FIFO, &sp) == 0
                    ? "SCHED_FIFO 1"
                    : std::string("not real-time: ") + std::strerror(errno);
  }
  SchedStat card0{};
  auto sample = [&] {
    cpu0 = cpu_now();
    if (card_tid >= 0) card0 = thread_schedstat(card_tid);
    switches0 = returns0 = 0;
    for (const auto& j : jobs) {
      const vmm::ParavisorCounters k = j->pv->counters();
      switches0 += k.to_fallback;
      returns0 += k.to_vf;
    }
    k0 = pm != nullptr ? pm->counters() : sriov::CardCounters{};
    busy0 = busy_now();
  };
  const auto t0 = Clock::now();
  const auto measure_from = t0 + c.ramp_time;
  const auto deadline = measure_from + c.runtime;
  r.ramp_seconds = std::chrono::duration<double>(c.ramp_time).count();
  for (auto& j : jobs) j->rec = Recorder(measure_from);
  if (c.ramp_time.count() == 0) sample();
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] { run_job(*jobs[i], c, i, t0, measure_from, deadline, amount); });
  }
  if (c.ramp_time.count() > 0) {
    std::this_thread::sleep_until(measure_from);
    sample();
  }
  // Progress from this thread while the jobs run.
  const double expect_ios = static_cast<double>(amount / c.bs) * jobs.size();
  const double total_ms = static_cast<double>((c.ramp_time + c.runtime).count());
  std::atomic<bool> finished{false};
  std::thread watcher([&] {
    while (!finished.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      std::uint64_t n = 0;
      for (const auto& j : jobs) n += j->done.load(std::memory_order_relaxed);
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      const double frac =
          c.runtime.count() > 0 ? secs * 1000.0 / total_ms : static_cast<double>(n) / expect_ios;
      if (progress && !finished.load()) progress(r.path, std::min(frac, 1.0), n, secs);
    }
  });
  for (auto& t : threads) t.join();
  const auto t1 = Clock::now();  // before the watcher's join, which can take its 250 ms tick
  finished.store(true);
  watcher.join();
  r.seconds = t1 > measure_from ? std::chrono::duration<double>(t1 - measure_from).count() : 0;
  r.host_cpu_ns = cpu_now() - cpu0;
  if (card_tid >= 0) {
    const SchedStat card1 = thread_schedstat(card_tid);
    r.card_thread = card1.run_ns > 0 && card1.run_ns + card1.wait_ns > card0.run_ns + card0.wait_ns;
    r.card_run_ns = card1.run_ns - card0.run_ns;
    r.card_wait_ns = card1.wait_ns - card0.wait_ns;
  }
  const sriov::CardCounters k1 = pm != nullptr ? pm->counters() : sriov::CardCounters{};
  r.card_commands = k1.commands - k0.commands;
  r.card_cycles = k1.cycles - k0.cycles;
  r.card_busy_cycles = busy_now() - busy0;
  threads.clear();
  for (unsigned i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] { verify_job(*jobs[i], c, i); });
  }
  for (auto& t : threads) t.join();
  for (auto& j : jobs) {
    if (!j->error.empty())
      return make_error(Errc::io_error, "job on path " + r.path + ": " + j->error);
    r.read.merge(j->rec.read);
    r.write.merge(j->rec.write);
    r.ramp_ios += j->rec.ramp_ios;
    r.job_usr_ns += j->usage.usr_ns;
    r.job_sys_ns += j->usage.sys_ns;
    r.job_ctx += j->usage.ctx;
    r.job_majf += j->usage.majf;
    r.job_minf += j->usage.minf;
    ++r.job_threads;
    r.verify_errors += j->verify_errors;
    r.verified_blocks += j->verified;
    const vmm::ParavisorCounters k = j->pv->counters();
    r.path_switches += k.to_fallback;
    r.vf_returns += k.to_vf;
    r.vf_ios += k.vf_ios;
    r.fallback_ios += k.fallback_ios;
    j->pv->stop();
  }
  r.path_switches -= switches0;
  r.vf_returns -= returns0;
  if (c.verify && r.verified_blocks == 0) {
    return make_error(Errc::io_error, "--verify on path " + r.path +
                                          " checked no block: nothing was written or read");
  }
  r.peak_rss_mib = static_cast<double>(rss_peak_kib()) / 1024.0;
  for (auto& j : jobs) {
    j->drv.reset();
    j->pv.reset();
    j->host.reset();
  }
  return r;
}

}  // namespace keel::perf
