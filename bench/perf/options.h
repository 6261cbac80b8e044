// keel-perf options: fio-style, parsed and validated into a Config.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "keel/result.h"

namespace keel::perf {

enum class Rw { read, write, randread, randwrite, randrw };
enum class PathChoice { vf, fallback, both };

/// One run of the workload. Every member has a default.
struct Config {
  std::string card;  ///< Empty: the simulated card when built, else the model.
  unsigned vfs = 0;  ///< VFs to enable; 0: one per job.
  PathChoice path = PathChoice::both;
  Rw rw = Rw::randread;
  unsigned rwmixread = 50;  ///< Percent reads for randrw.
  std::uint32_t bs = 4096;  ///< Block size in bytes (multiple of 512).
  unsigned iodepth = 16;
  unsigned numjobs = 1;
  std::chrono::milliseconds runtime{0};  ///< 0: run until `size` is done.
  std::uint64_t size = 0;                ///< Bytes per job: IO region and, without runtime, amount.
  bool verify = false;
  std::string json_path;
  std::string image;           ///< Disk image; empty: a temporary file.
  std::uint64_t card_mib = 0;  ///< Card storage; 0: derived from jobs and size.
  std::uint32_t seed = 1;
  bool progress = true;  ///< Live line on a terminal.
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

const char* to_string(Rw rw);
const char* to_string(PathChoice p);

}  // namespace keel::perf
