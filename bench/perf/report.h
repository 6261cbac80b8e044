// keel-perf output: the human table and fio-like JSON.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "options.h"
#include "run.h"

namespace keel::perf {

/// One point: the configuration and its per-path results (1 or 2 paths).
struct Point {
  Config config;
  std::vector<PathResult> paths;
};

inline constexpr const char* kFioVersion = "keel-perf-0.1";

/// One point: {"jobs": [one fio job per path], "options": keel's, "ratios": vf over fallback}.
/// Jobs are named after their path plus `jobname_suffix`, groupids from `first_groupid`.
nlohmann::json to_json(const Point& p, const std::string& jobname_suffix = "",
                       unsigned first_groupid = 0);
/// fio's JSON layout: {"fio version", "timestamp", "timestamp_ms", "time", "global options",
/// "jobs": [...], "keel": {...}}; each job is fio's (jobname, groupid, error, "job options",
/// read/write/trim with io_bytes, bw, iops, runtime, total_ios, slat_ns, clat_ns, lat_ns;
/// usr_cpu, sys_cpu, ctx) with keel's own figures in its "keel" object. A sweep adds
/// "sweep": {"param", "points": [to_json per point]} and lists every point's jobs in "jobs".
nlohmann::json document(const std::vector<Point>& points, const std::string& sweep_param);
/// The table a person reads.
std::string text_report(const Point& p);
/// One line per sweep point.
/// The swept parameter's value in `c` (iodepth, bs, vfs, or rate_iops: the read cap).
std::uint64_t sweep_value(const Config& c, const std::string& param);

std::string sweep_table(const std::vector<Point>& points, const std::string& param);

}  // namespace keel::perf
