// keel-perf: standing up the stack and running one workload on one path.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "keel/fpga/card.h"
#include "keel/result.h"
#include "keel/stack/stack.h"
#include "options.h"

namespace keel::perf {

using Clock = std::chrono::steady_clock;

/// Log-linear latency histogram: 64 sub-buckets per power of two (under 1.6% error).
class Histogram {
 public:
  void add(std::uint64_t ns) noexcept;
  void merge(const Histogram& o) noexcept;
  std::uint64_t count() const noexcept { return count_; }
  std::uint64_t min() const noexcept { return count_ == 0 ? 0 : min_; }
  std::uint64_t max() const noexcept { return max_; }
  double mean() const noexcept { return count_ == 0 ? 0 : static_cast<double>(sum_) / count_; }
  /// Population standard deviation (fio's).
  double stddev() const noexcept;
  /// Value at or below which `p` (0..1) of the samples lie.
  std::uint64_t percentile(double p) const noexcept;

 private:
  static constexpr unsigned kSub = 64;
  std::array<std::uint64_t, 64 * kSub> buckets_{};
  std::uint64_t count_ = 0, sum_ = 0, min_ = ~std::uint64_t{0}, max_ = 0;
  long double sumsq_ = 0;
};

/// One direction of a job, fio's three latencies: slat from taking the IO (before its buffer is
/// filled) to its request being published on the ring (where the device may take it, before
/// the kick), clat from there to its completion being reaped, lat the two together.
struct DirStats {
  std::uint64_t ios = 0;
  std::uint64_t bytes = 0;
  Histogram slat, clat, lat;
  void merge(const DirStats& o) noexcept;
};

/// fio's --rw for one job: the direction of each IO (by --rwmixread for rw and randrw, drawn
/// per IO) and its block. Sequential jobs walk the region from block 0 and wrap; as fio does
/// (io_u.c, `last_pos[ddir]`), a mixed sequential job (rw) keeps a cursor per direction: its
/// reads walk the region in order and so do its writes.
class IoPattern {
 public:
  struct Io {
    std::uint64_t block = 0;
    bool write = false;
  };
  IoPattern(Rw rw, unsigned rwmixread, std::uint64_t blocks, std::uint64_t seed);
  Io next();
  /// Random jobs: another block for an IO whose block is in flight (sequential ones wait).
  std::uint64_t redraw();

 private:
  Rw rw_;
  unsigned rwmixread_;
  std::uint64_t blocks_;
  std::mt19937_64 rng_;
  std::uint64_t cursor_[2] = {0, 0};  // read, write
};

/// fio's rate_iops for one direction of one job: IO n (from 0) is due at start + n / iops. A job
/// that fell behind (a slow device, a stall) catches up with at most `burst` IOs at once.
class RatePacer {
 public:
  RatePacer() = default;  ///< No cap.
  RatePacer(std::uint64_t iops, Clock::time_point start, unsigned burst);
  bool capped() const noexcept { return iops_ != 0; }
  /// When the next IO may be submitted (any time when not capped).
  Clock::time_point due() const noexcept;
  /// One IO submitted at `now`.
  void take(Clock::time_point now) noexcept;

 private:
  std::uint64_t iops_ = 0;
  Clock::time_point origin_{};
  std::uint64_t n_ = 0;
  unsigned burst_ = 1;
  Clock::time_point at(std::uint64_t n) const noexcept;
};

/// How to wait for a paced submission `gap` away: block in the kernel when the gap is long,
/// poll (with IO in flight, whose completions are timed) or sleep (with none) when short.
enum class PaceWait { none, poll, sleep, interrupt };
PaceWait pace_wait(Clock::duration gap, unsigned inflight) noexcept;

/// What one job counts: fio's ramp_time leaves out every IO taken before `from` (done, counted
/// only as ramp_ios); the others go into read or write with their three latencies.
class Recorder {
 public:
  explicit Recorder(Clock::time_point from) : from_(from) {}
  bool counts(Clock::time_point taken) const noexcept { return taken >= from_; }
  /// An IO taken (before its buffer is filled) at `taken`, published on the ring at
  /// `submitted`, reaped at `done`.
  void complete(bool is_write, std::uint32_t bytes, Clock::time_point taken,
                Clock::time_point submitted, Clock::time_point done) noexcept;
  DirStats read, write;
  std::uint64_t ramp_ios = 0;

 private:
  Clock::time_point from_;
};

struct PathResult {
  std::string path;         ///< "vf" or "fallback"
  double seconds = 0;       ///< Measured: from the end of the ramp to the last completion.
  double ramp_seconds = 0;  ///< --ramp_time as run.
  DirStats read, write;
  std::uint64_t ramp_ios = 0;  ///< IOs done during --ramp_time (not in read, write).
  /// The job threads (the guests submitting and reaping IO, fio's job), measured phase only:
  /// CPU time, context switches (voluntary + involuntary), page faults.
  std::uint64_t job_usr_ns = 0, job_sys_ns = 0, job_ctx = 0, job_majf = 0, job_minf = 0;
  unsigned job_threads = 0;
  std::uint64_t host_cpu_ns = 0;  ///< Paravisor threads + host service threads (incl. io_uring).
  std::uint64_t verify_errors = 0;
  std::uint64_t verified_blocks = 0;
  std::uint64_t path_switches = 0;  ///< Switches from the VF to the host path.
  std::uint64_t vf_returns = 0;     ///< Switches from the host path back to the VF.
  /// What each path carried over the whole run (setup, fill and verify included): NVMe
  /// commands completed on the VF, requests completed by the host service.
  std::uint64_t vf_ios = 0, fallback_ios = 0;
  double peak_rss_mib = 0;
  std::string card;
  /// The card's own clock over the timed phase (PF CMDS and CYCLES counters). Only for the
  /// Verilated RTL card (`rtl`) do cycles mean card clock cycles: its throughput in silicon is
  /// clock_mhz / cycles_per_cmd, whatever speed the host simulates it at.
  bool rtl = false;
  std::uint64_t card_commands = 0;
  std::uint64_t card_cycles = 0;
  std::uint64_t card_busy_cycles = 0;  ///< Data-mover cycles of the commands (VF counters).
  unsigned clock_mhz = 0;
  /// The simulated card's thread (its silicon) over the timed phase, from its schedstat: CPU
  /// it ran and time it was runnable but waited for a CPU. `card_thread` false: no such thread
  /// here (lockstep, a board, a card in another process).
  bool card_thread = false;
  std::uint64_t card_run_ns = 0, card_wait_ns = 0;
  /// --card-rt: whether the card's thread ran at real-time priority ("" when not asked, else
  /// "SCHED_FIFO 1" or why not).
  std::string card_rt;
  /// Share of the time the card's thread wanted a CPU that it spent waiting for one.
  double card_wait_share() const {
    const std::uint64_t want = card_run_ns + card_wait_ns;
    return want > 0 ? static_cast<double>(card_wait_ns) / static_cast<double>(want) : 0;
  }
  /// Starved: it waited for a CPU more than a tenth of the time it wanted one (the host is
  /// loaded; the VF path's figures then measure the host's scheduler, not the path).
  bool card_starved() const { return card_thread && card_wait_share() > 0.10; }

  std::uint64_t ios() const { return read.ios + write.ios; }
  double iops() const { return seconds > 0 ? static_cast<double>(ios()) / seconds : 0; }
  double cpu_ns_per_io() const {
    return ios() > 0 ? static_cast<double>(host_cpu_ns) / static_cast<double>(ios()) : 0;
  }
  double cycles_per_cmd() const {
    return card_commands > 0 ? static_cast<double>(card_cycles) / static_cast<double>(card_commands)
                             : 0;
  }
  /// Data-mover cycles per command: the card's own limit (the mover is shared and serial).
  double busy_cycles_per_cmd() const {
    return card_commands > 0
               ? static_cast<double>(card_busy_cycles) / static_cast<double>(card_commands)
               : 0;
  }
  /// IOPS the card's data mover allows at its clock: the silicon's limit for this workload.
  double projected_iops() const {
    return busy_cycles_per_cmd() > 0 ? clock_mhz * 1e6 / busy_cycles_per_cmd() : 0;
  }
};

/// Live progress: path, fraction done (0..1), IOs so far, seconds so far.
using Progress = std::function<void(const std::string&, double, std::uint64_t, double)>;

/// The card and its image, shared by the paths of one invocation.
class Stack {
 public:
  /// Opens the card (free running), enables config.vfs VFs with an even split of storage.
  /// Errors: from the card and the PF manager; invalid_argument when the fallback is asked of
  /// a real board or the jobs do not fit.
  static Result<std::unique_ptr<Stack>> open(const Config& config);
  ~Stack();

  /// Runs the workload of `config` on one path with one guest per job.
  Result<PathResult> run(const Config& config, bool vf_path, const Progress& progress);
  fpga::Card& card() { return stack_->card(); }
  std::string card_spec() const { return spec_; }

 private:
  Stack() = default;
  std::unique_ptr<keel::stack::Stack> stack_;
  std::string spec_;
  std::string image_;
  bool temp_image_ = false;
  std::uint64_t slice_bytes_ = 0;
};

}  // namespace keel::perf
