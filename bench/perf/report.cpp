#include "report.h"

#include <cstdio>

namespace keel::perf {

using nlohmann::json;

namespace {

json dir_json(const DirStats& d, double seconds) {
  const Histogram& h = d.lat;
  return {{"io_bytes", d.bytes},
          {"total_ios", d.ios},
          {"bw_bytes", seconds > 0 ? static_cast<double>(d.bytes) / seconds : 0.0},
          {"iops", seconds > 0 ? static_cast<double>(d.ios) / seconds : 0.0},
          {"runtime", static_cast<std::uint64_t>(seconds * 1000)},
          {"lat_ns",
           {{"min", h.min()},
            {"max", h.max()},
            {"mean", h.mean()},
            {"N", h.count()},
            {"percentile",
             {{"50.000000", h.percentile(0.50)},
              {"90.000000", h.percentile(0.90)},
              {"99.000000", h.percentile(0.99)},
              {"99.900000", h.percentile(0.999)}}}}}};
}

Histogram all_lat(const PathResult& r) {
  Histogram h = r.read.lat;
  h.merge(r.write.lat);
  return h;
}

double ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

std::string human(double v) {
  char buf[32];
  if (v >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

}  // namespace

json to_json(const Point& p) {
  json jobs = json::array();
  for (const PathResult& r : p.paths) {
    const Histogram lat = all_lat(r);
    jobs.push_back({{"jobname", r.path},
                    {"path", r.path},
                    {"card", r.card},
                    {"elapsed", r.seconds},
                    {"read", dir_json(r.read, r.seconds)},
                    {"write", dir_json(r.write, r.seconds)},
                    {"iops", r.iops()},
                    {"host_cpu_ns", r.host_cpu_ns},
                    {"host_cpu_ns_per_io", r.cpu_ns_per_io()},
                    {"lat_ns_all",
                     {{"min", lat.min()},
                      {"mean", lat.mean()},
                      {"max", lat.max()},
                      {"p50", lat.percentile(0.5)},
                      {"p90", lat.percentile(0.9)},
                      {"p99", lat.percentile(0.99)},
                      {"p99.9", lat.percentile(0.999)}}},
                    {"verify", {{"blocks", r.verified_blocks}, {"errors", r.verify_errors}}},
                    {"path_switches", r.path_switches},
                    {"vf_returns", r.vf_returns},
                    {"vf_ios", r.vf_ios},
                    {"fallback_ios", r.fallback_ios},
                    {"peak_rss_mib", r.peak_rss_mib}});
    if (r.rtl && r.card_commands > 0) {
      jobs.back()["rtl_card"] = {
          {"commands", r.card_commands},
          {"cycles", r.card_cycles},
          {"clock_mhz", r.clock_mhz},
          {"busy_cycles", r.card_busy_cycles},
          {"cycles_per_cmd", r.cycles_per_cmd()},
          {"busy_cycles_per_cmd", r.busy_cycles_per_cmd()},
          {"projected_iops", r.projected_iops()},
          {"sim_cycles_per_s", static_cast<double>(r.card_cycles) / r.seconds}};
    }
  }
  json out = {{"jobs", jobs},
              {"options",
               {{"rw", to_string(p.config.rw)},
                {"rwmixread", p.config.rwmixread},
                {"bs", p.config.bs},
                {"iodepth", p.config.iodepth},
                {"numjobs", p.config.numjobs},
                {"vfs", p.config.vfs},
                {"runtime_ms", p.config.runtime.count()},
                {"size", p.config.size},
                {"verify", p.config.verify}}}};
  if (p.paths.size() == 2) {
    const PathResult& vf = p.paths[0];
    const PathResult& fb = p.paths[1];
    out["ratios"] = {
        {"iops_vf_over_fallback", ratio(vf.iops(), fb.iops())},
        {"cpu_per_io_vf_over_fallback", ratio(vf.cpu_ns_per_io(), fb.cpu_ns_per_io())},
        {"p99_vf_over_fallback", ratio(static_cast<double>(all_lat(vf).percentile(0.99)),
                                       static_cast<double>(all_lat(fb).percentile(0.99)))}};
  }
  return out;
}

json document(const std::vector<Point>& points, const std::string& sweep_param) {
  json d = {{"fio version", "keel-perf-0.1"}, {"timestamp", std::time(nullptr)}};
  if (points.size() == 1) {
    json one = to_json(points[0]);
    d["global options"] = one["options"];
    d["jobs"] = one["jobs"];
    d["keel"] = {{"ratios", one.contains("ratios") ? one["ratios"] : json::object()}};
    return d;
  }
  json arr = json::array();
  for (const Point& p : points) arr.push_back(to_json(p));
  d["sweep"] = {{"param", sweep_param}, {"points", arr}};
  return d;
}

std::string text_report(const Point& p) {
  std::string out;
  char line[320];
  const Config& c = p.config;
  std::snprintf(line, sizeof line, "%s bs=%u iodepth=%u numjobs=%u vfs=%u%s\n", to_string(c.rw),
                c.bs, c.iodepth, c.numjobs, c.vfs, c.verify ? " verify" : "");
  out += line;
  std::snprintf(line, sizeof line, "%-9s %10s %10s %9s %9s %9s %9s %10s %10s %12s\n", "path",
                "IOPS", "MB/s", "lat min", "mean", "p50", "p99", "p99.9", "max", "cpu ns/IO");
  out += line;
  for (const PathResult& r : p.paths) {
    const Histogram lat = all_lat(r);
    auto us = [](double ns) { return ns / 1000.0; };
    std::snprintf(line, sizeof line,
                  "%-9s %10s %10.1f %7.1fus %7.1fus %7.1fus %7.1fus %8.1fus %8.1fus %12.0f\n",
                  r.path.c_str(), human(r.iops()).c_str(),
                  static_cast<double>(r.read.bytes + r.write.bytes) / r.seconds / 1e6,
                  us(static_cast<double>(lat.min())), us(lat.mean()),
                  us(static_cast<double>(lat.percentile(0.5))),
                  us(static_cast<double>(lat.percentile(0.99))),
                  us(static_cast<double>(lat.percentile(0.999))),
                  us(static_cast<double>(lat.max())), r.cpu_ns_per_io());
    out += line;
    if (r.rtl && r.card_commands > 0) {
      std::snprintf(line, sizeof line,
                    "          RTL card: data mover %.1f cycles/cmd -> card limit %s IOPS at %u "
                    "MHz; clock %.1f cycles/cmd here, simulated at %.2fM cycles/s (the IOPS "
                    "above measure the simulator)\n",
                    r.busy_cycles_per_cmd(), human(r.projected_iops()).c_str(), r.clock_mhz,
                    r.cycles_per_cmd(), static_cast<double>(r.card_cycles) / r.seconds / 1e6);
      out += line;
    }
    if (c.verify) {
      std::snprintf(line, sizeof line, "          verify: %llu blocks checked, %llu errors\n",
                    static_cast<unsigned long long>(r.verified_blocks),
                    static_cast<unsigned long long>(r.verify_errors));
      out += line;
    }
  }
  if (p.paths.size() == 2) {
    const PathResult& vf = p.paths[0];
    const PathResult& fb = p.paths[1];
    std::snprintf(line, sizeof line,
                  "accelerated / fallback: IOPS x%.2f, host CPU per IO x%.2f, p99 latency x%.2f\n",
                  ratio(vf.iops(), fb.iops()), ratio(vf.cpu_ns_per_io(), fb.cpu_ns_per_io()),
                  ratio(static_cast<double>(all_lat(vf).percentile(0.99)),
                        static_cast<double>(all_lat(fb).percentile(0.99))));
    out += line;
  }
  return out;
}

std::string sweep_table(const std::vector<Point>& points, const std::string& param) {
  std::string out;
  char line[200];
  std::snprintf(line, sizeof line, "%-8s %-9s %10s %12s %10s\n", param.c_str(), "path", "IOPS",
                "cpu ns/IO", "p99 us");
  out += line;
  for (const Point& p : points) {
    const std::uint64_t v = param == "iodepth" ? p.config.iodepth
                            : param == "bs"    ? p.config.bs
                                               : p.config.vfs;
    for (const PathResult& r : p.paths) {
      std::snprintf(line, sizeof line, "%-8llu %-9s %10s %12.0f %10.1f\n",
                    static_cast<unsigned long long>(v), r.path.c_str(), human(r.iops()).c_str(),
                    r.cpu_ns_per_io(), static_cast<double>(all_lat(r).percentile(0.99)) / 1000.0);
      out += line;
    }
  }
  return out;
}

}  // namespace keel::perf
