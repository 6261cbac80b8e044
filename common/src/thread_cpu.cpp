#include "keel/thread_cpu.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>

namespace keel {

std::uint64_t clock_ns(clockid_t clock) noexcept {
  timespec ts{};
  if (clock_gettime(clock, &ts) != 0) return 0;
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t this_thread_cpu_ns() noexcept { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }

std::uint64_t thread_cpu_ns(pthread_t t) noexcept {
  clockid_t id;
  if (pthread_getcpuclockid(t, &id) != 0) return 0;
  return clock_ns(id);
}

clockid_t thread_cpu_clock_of_tid(int tid) noexcept {
  // Linux ABI: ~tid << 3 | CPUCLOCK_PERTHREAD_MASK (4) | CPUCLOCK_SCHED (2).
  return static_cast<clockid_t>((~static_cast<unsigned>(tid) << 3) | 4u | 2u);
}

void ThreadCpuMeter::start() noexcept {
  clockid_t id;
  if (pthread_getcpuclockid(pthread_self(), &id) == 0) clock_.store(id);
  done_.store(false, std::memory_order_release);
  started_.store(true, std::memory_order_release);
}

void ThreadCpuMeter::finish() noexcept {
  final_ns_.store(this_thread_cpu_ns());
  done_.store(true, std::memory_order_release);
}

std::uint64_t ThreadCpuMeter::ns() const noexcept {
  if (!started_.load(std::memory_order_acquire)) return 0;
  if (done_.load(std::memory_order_acquire)) return final_ns_.load();
  const std::uint64_t ns = clock_ns(clock_.load());
  // Read as 0 once the thread has gone (between its last instruction and finish() landing).
  return ns != 0 ? ns : final_ns_.load();
}

SchedStat thread_schedstat(int tid) noexcept {
  SchedStat s;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", tid);
  std::FILE* f = std::fopen(path, "re");
  if (f == nullptr) return s;
  unsigned long long run = 0, wait = 0, slices = 0;
  if (std::fscanf(f, "%llu %llu %llu", &run, &wait, &slices) == 3) {
    s = SchedStat{run, wait, slices};
  }
  std::fclose(f);
  return s;
}

int this_thread_tid() noexcept { return static_cast<int>(::syscall(SYS_gettid)); }

}  // namespace keel
