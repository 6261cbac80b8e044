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

nlohmann::json to_json(const Point& p);
/// fio-like document: {"fio version", "global options", "jobs": [...], "keel": {...}}.
nlohmann::json document(const std::vector<Point>& points, const std::string& sweep_param);
/// The table a person reads.
std::string text_report(const Point& p);
/// One line per sweep point.
std::string sweep_table(const std::vector<Point>& points, const std::string& param);

}  // namespace keel::perf
