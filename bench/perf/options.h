// keel-perf options: fio-style, parsed and validated into a Config.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "keel/result.h"

namespace keel::perf {

/// fio's --rw: read and write sequential, randread and randwrite random; rw (alias readwrite)
/// mixed sequential, randrw mixed random (the mix by --rwmixread).
enum class Rw { read, write, randread, randwrite, rw, randrw };
enum class PathChoice { vf, fallback, both };

/// One run of the workload. Every member has a default.
struct Config {
  std::string card;  ///< Empty: the simulated card when built, else the model.
  unsigned vfs = 0;  ///< VFs to enable; 0: one per job.
  PathChoice path = PathChoice::both;
  Rw rw = Rw::randread;
  unsigned rwmixread = 50;  ///< Percent reads for rw and randrw.
  std::uint32_t bs = 4096;  ///< Block size in bytes (multiple of 512).
  unsigned iodepth = 16;
  unsigned numjobs = 1;
  std::chrono::milliseconds runtime{0};  ///< 0: run until `size` is done.
  /// fio's ramp_time: run this long first, without counting (IOs, latency, CPU, counters).
  std::chrono::milliseconds ramp_time{0};
  /// fio's rate_iops: caps on IOPS per job, reads and writes apart; 0: no cap.
  std::uint64_t rate_iops_read = 0, rate_iops_write = 0;
  std::uint64_t size = 0;  ///< Bytes per job: IO region and, without runtime, amount.
  bool verify = false;
  std::string json_path;
  std::string image;           ///< Disk image; empty: a temporary file.
  std::uint64_t card_mib = 0;  ///< Card storage; 0: derived from jobs and size.
  std::uint32_t seed = 1;
  bool progress = true;  ///< Live line on a terminal.
  /// The simulated card's thread (its silicon) at real-time priority (SCHED_FIFO 1), so that a
  /// loaded host's other threads never make it wait for a CPU, as they cannot make a card's
  /// silicon wait. Needs CAP_SYS_NICE; without it the run says so and goes on.
  bool card_rt = false;
};

/// A sweep: one parameter over several values ("iodepth", "bs" or "vfs").
struct Sweep {
  std::string param;
  std::vector<std::uint64_t> values;
};

struct Invocation {
  Config config;
  std::optional<Sweep> sweep;
};

/// Parses argv. Errors: invalid_argument naming the option and what is wrong. --help prints
/// usage and returns an error with code not_found and empty message.
Result<Invocation> parse_options(int argc, const char* const* argv);

/// "4k" -> 4096, "1m" -> 1048576, "512" -> 512 (fio's suffixes, powers of 1024).
Result<std::uint64_t> parse_size(const std::string& text);
/// "10s", "500ms", "2m", "3" (seconds).
Result<std::chrono::milliseconds> parse_duration(const std::string& text);

/// "N" (reads and writes each capped at N, as fio), "R,W", "R," (reads only), ",W" (writes only).
Result<std::pair<std::uint64_t, std::uint64_t>> parse_rate_iops(const std::string& text);

const char* to_string(Rw rw);
/// True for rw and randrw; random: randread, randwrite, randrw.
bool is_mixed(Rw rw);
bool is_random(Rw rw);
/// The value fio's --rw accepts, or nullopt.
std::optional<Rw> rw_from_string(const std::string& text);
/// The list an error message gives.
extern const char* const kRwValues;
const char* to_string(PathChoice p);

}  // namespace keel::perf
