// keel-perf: the IOPS tool. See `keel-perf --help` and docs/performance.md.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "options.h"
#include "report.h"
#include "run.h"

int main(int argc, char** argv) {
  using namespace keel::perf;
  auto inv = parse_options(argc, argv);
  if (!inv) {
    if (inv.error().code == keel::Errc::not_found) return 0;  // --help
    std::fprintf(stderr, "keel-perf: %s\n", inv.error().message.c_str());
    return 2;
  }
  const bool tty = isatty(STDERR_FILENO) != 0 && inv->config.progress;
  Progress progress;
  if (tty) {
    progress = [](const std::string& path, double frac, std::uint64_t ios, double secs) {
      std::fprintf(stderr, "\r[%-8s] %3.0f%%  %llu IOs  %.0f IOPS   ", path.c_str(), frac * 100,
                   static_cast<unsigned long long>(ios),
                   secs > 0 ? static_cast<double>(ios) / secs : 0.0);
    };
  }
  std::vector<Config> configs;
  std::string sweep_param;
  if (inv->sweep) {
    sweep_param = inv->sweep->param;
    for (std::uint64_t v : inv->sweep->values) {
      Config c = inv->config;
      if (sweep_param == "iodepth") c.iodepth = static_cast<unsigned>(v);
      if (sweep_param == "bs") c.bs = static_cast<std::uint32_t>(v);
      if (sweep_param == "rate_iops") c.rate_iops_read = c.rate_iops_write = v;  // fio: each
      if (sweep_param == "vfs") {
        c.vfs = static_cast<unsigned>(v);
        c.numjobs = c.vfs;
      }
      if (c.size % c.bs != 0) c.size -= c.size % c.bs;
      configs.push_back(c);
    }
  } else {
    configs.push_back(inv->config);
  }
  std::vector<Point> points;
  for (const Config& c : configs) {
    auto stack = Stack::open(c);
    if (!stack) {
      std::fprintf(stderr, "keel-perf: %s\n", keel::to_string(stack.error()).c_str());
      return 1;
    }
    if (points.empty()) std::printf("card: %s\n", (*stack)->card().describe().c_str());
    Point p{c, {}};
    for (bool vf : {true, false}) {
      if (vf && c.path == PathChoice::fallback) continue;
      if (!vf && c.path == PathChoice::vf) continue;
      auto r = (*stack)->run(c, vf, progress);
      if (tty) std::fprintf(stderr, "\r%*s\r", 60, "");
      if (!r) {
        std::fprintf(stderr, "keel-perf: %s\n", keel::to_string(r.error()).c_str());
        return 1;
      }
      p.paths.push_back(std::move(r).value());
    }
    if (!inv->sweep) std::fputs(text_report(p).c_str(), stdout);
    points.push_back(std::move(p));
  }
  if (inv->sweep) std::fputs(sweep_table(points, sweep_param).c_str(), stdout);
  if (!inv->config.json_path.empty()) {
    std::ofstream out(inv->config.json_path);
    out << document(points, sweep_param).dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "keel-perf: cannot write %s\n", inv->config.json_path.c_str());
      return 1;
    }
  }
  for (const Point& p : points) {
    for (const PathResult& r : p.paths) {
      if (inv->sweep && p.config.verify) {  // (a single run's report has its own verify line)
        std::printf("verify %s=%llu path %s: %llu blocks checked, %llu errors\n",
                    sweep_param.c_str(),
                    static_cast<unsigned long long>(sweep_value(p.config, sweep_param)),
                    r.path.c_str(), static_cast<unsigned long long>(r.verified_blocks),
                    static_cast<unsigned long long>(r.verify_errors));
      }
      if (r.verify_errors != 0) {
        std::fprintf(stderr, "keel-perf: %llu verify errors on path %s\n",
                     static_cast<unsigned long long>(r.verify_errors), r.path.c_str());
        return 1;
      }
    }
  }
  return 0;
}
