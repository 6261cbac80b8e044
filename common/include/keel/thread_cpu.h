// keel/thread_cpu.h - CPU time of threads, the figure keel's benchmarks quote per IO.
//
// Wall time on a shared 2-core machine says little; the CPU a thread burnt says what the
// path costs. Read one way everywhere: the thread's own CPU-time clock.
#pragma once

#include <pthread.h>
#include <time.h>

#include <atomic>
#include <cstdint>

namespace keel {

/// Reads `clock` in nanoseconds; 0 when it cannot be read (e.g. its thread has exited).
std::uint64_t clock_ns(clockid_t clock) noexcept;
/// CPU time the calling thread has used so far, in nanoseconds.
std::uint64_t this_thread_cpu_ns() noexcept;
/// CPU time thread `t` (of this process, still running) has used; 0 when it cannot be read.
std::uint64_t thread_cpu_ns(pthread_t t) noexcept;
/// The CPU-time clock of kernel thread `tid` of this process (as pthread_getcpuclockid builds
/// it), for threads keel did not create, such as the kernel's io_uring workers.
clockid_t thread_cpu_clock_of_tid(int tid) noexcept;

/// What the scheduler did for kernel thread `tid` of this process
/// (/proc/self/task/<tid>/schedstat): time on a CPU, time runnable but waiting for one (the
/// run queue), and timeslices. Zeros when it cannot be read (the thread has exited, or the
/// kernel has no schedstats).
struct SchedStat {
  std::uint64_t run_ns = 0;
  std::uint64_t wait_ns = 0;
  std::uint64_t timeslices = 0;
};
SchedStat thread_schedstat(int tid) noexcept;
/// The calling thread's kernel thread id.
int this_thread_tid() noexcept;

/// The CPU time of one worker thread, readable from any thread while it runs and after it
/// ends. The worker calls start() first and finish() last.
class ThreadCpuMeter {
 public:
  /// On the measured thread, when it starts.
  void start() noexcept;
  /// On the measured thread, just before it returns: ns() keeps this figure from now on.
  void finish() noexcept;
  /// CPU time the thread has used (0 before start(); its final figure after finish()).
  std::uint64_t ns() const noexcept;

 private:
  std::atomic<bool> started_{false};
  std::atomic<bool> done_{false};
  std::atomic<clockid_t> clock_{CLOCK_THREAD_CPUTIME_ID};
  std::atomic<std::uint64_t> final_ns_{0};
};

}  // namespace keel
