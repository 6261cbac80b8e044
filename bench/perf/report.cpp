#include "report.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace keel::perf {

using nlohmann::json;

namespace {

// fio's default completion-latency percentiles, keyed as fio writes them.
constexpr double kPercentiles[] = {1,  5,  10, 20, 30,   40,   50,    60,   70,
                                   80, 90, 95, 99, 99.5, 99.9, 99.95, 99.99};

json percentiles(const Histogram& h) {
  json p = json::object();
  for (double q : kPercentiles) {
    char key[16];
    std::snprintf(key, sizeof key, "%.6f", q);
    p[key] = h.percentile(q / 100.0);
  }
  return p;
}

json lat_json(const Histogram& h, bool with_percentiles) {
  json j = {{"min", h.min()},
            {"max", h.max()},
            {"mean", h.mean()},
            {"stddev", h.stddev()},
            {"N", h.count()}};
  if (with_percentiles) j["percentile"] = percentiles(h);
  return j;
}

// fio's read/write/trim object: bw in KiB/s, runtime in ms, latencies in ns.
json dir_json(const DirStats& d, double seconds) {
  const double bw_bytes = seconds > 0 ? static_cast<double>(d.bytes) / seconds : 0.0;
  return {{"io_bytes", d.bytes},
          {"io_kbytes", d.bytes >> 10},
          {"bw_bytes", static_cast<std::uint64_t>(bw_bytes)},
          {"bw", static_cast<std::uint64_t>(bw_bytes / 1024.0)},
          {"iops", seconds > 0 ? static_cast<double>(d.ios) / seconds : 0.0},
          {"runtime", d.ios > 0 ? static_cast<std::uint64_t>(seconds * 1000) : 0},
          {"total_ios", d.ios},
          {"short_ios", 0},
          {"drop_ios", 0},
          {"slat_ns", lat_json(d.slat, false)},
          {"clat_ns", lat_json(d.clat, true)},
          {"lat_ns", lat_json(d.lat, true)}};
}

std::string ms_string(std::chrono::milliseconds ms) { return std::to_string(ms.count()) + "ms"; }

// fio's options as fio writes them: strings.
json fio_options(const Config& c) {
  json o = {{"rw", to_string(c.rw)},
            {"bs", std::to_string(c.bs)},
            {"iodepth", std::to_string(c.iodepth)},
            {"numjobs", std::to_string(c.numjobs)},
            {"size", std::to_string(c.size)}};
  if (is_mixed(c.rw)) o["rwmixread"] = std::to_string(c.rwmixread);
  if (c.runtime.count() > 0) {
    o["runtime"] = ms_string(c.runtime);
    o["time_based"] = "1";  // keel-perf runs the whole --runtime, as fio's time_based
  }
  if (c.ramp_time.count() > 0) o["ramp_time"] = ms_string(c.ramp_time);
  if (c.rate_iops_read != 0 || c.rate_iops_write != 0) {
    auto v = [](std::uint64_t n) { return n != 0 ? std::to_string(n) : std::string(); };
    o["rate_iops"] = c.rate_iops_read == c.rate_iops_write
                         ? v(c.rate_iops_read)
                         : v(c.rate_iops_read) + "," + v(c.rate_iops_write);
  }
  if (c.verify) o["verify"] = "pattern";
  return o;
}

// keel-perf's own options, as numbers (what keel's tools read).
json keel_options(const Config& c) {
  return {{"rw", to_string(c.rw)},
          {"rwmixread", c.rwmixread},
          {"bs", c.bs},
          {"iodepth", c.iodepth},
          {"numjobs", c.numjobs},
          {"vfs", c.vfs},
          {"runtime_ms", c.runtime.count()},
          {"ramp_time_ms", c.ramp_time.count()},
          {"rate_iops", {c.rate_iops_read, c.rate_iops_write}},
          {"size", c.size},
          {"verify", c.verify}};
}

// Completion latency of reads and writes together: the figure keel quotes.
Histogram all_lat(const PathResult& r) {
  Histogram h = r.read.clat;
  h.merge(r.write.clat);
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

json to_json(const Point& p, const std::string& jobname_suffix, unsigned first_groupid) {
  json jobs = json::array();
  for (const PathResult& r : p.paths) {
    const Histogram lat = all_lat(r);
    const double cpu_ns = r.seconds * 1e9 * std::max(1u, r.job_threads);
    auto pct = [&](std::uint64_t ns) {
      return cpu_ns > 0 ? 100.0 * static_cast<double>(ns) / cpu_ns : 0.0;
    };
    const std::string name = r.path + jobname_suffix;
    json opts = fio_options(p.config);
    opts["name"] = name;
    json keel = {{"path", r.path},
                 {"card", r.card},
                 {"elapsed", r.seconds},
                 {"ramp_seconds", r.ramp_seconds},
                 {"ramp_ios", r.ramp_ios},
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
                 {"peak_rss_mib", r.peak_rss_mib},
                 {"rate_iops", {p.config.rate_iops_read, p.config.rate_iops_write}},
                 {"job_threads", r.job_threads}};
    if (r.card_thread) {
      keel["card_thread"] = {{"run_ns", r.card_run_ns},
                             {"wait_ns", r.card_wait_ns},
                             {"wait_share", r.card_wait_share()},
                             {"starved", r.card_starved()},
                             {"realtime", r.card_rt}};
    }
    if (r.rtl && r.card_commands > 0) {
      keel["rtl_card"] = {{"commands", r.card_commands},
                          {"cycles", r.card_cycles},
                          {"clock_mhz", r.clock_mhz},
                          {"busy_cycles", r.card_busy_cycles},
                          {"cycles_per_cmd", r.cycles_per_cmd()},
                          {"busy_cycles_per_cmd", r.busy_cycles_per_cmd()},
                          {"projected_iops", r.projected_iops()},
                          {"sim_cycles_per_s", static_cast<double>(r.card_cycles) / r.seconds}};
    }
    const auto runtime_ms = static_cast<std::uint64_t>(r.seconds * 1000);
    jobs.push_back({{"jobname", name},
                    {"groupid", first_groupid + jobs.size()},
                    {"error", 0},
                    {"eta", 0},
                    {"elapsed", static_cast<std::uint64_t>(r.seconds + r.ramp_seconds + 0.5)},
                    {"job options", opts},
                    {"read", dir_json(r.read, r.seconds)},
                    {"write", dir_json(r.write, r.seconds)},
                    {"trim", dir_json(DirStats{}, 0)},
                    {"job_runtime", runtime_ms},
                    {"usr_cpu", pct(r.job_usr_ns)},
                    {"sys_cpu", pct(r.job_sys_ns)},
                    {"ctx", r.job_ctx},
                    {"majf", r.job_majf},
                    {"minf", r.job_minf},
                    {"keel", keel}});
  }
  json out = {{"jobs", jobs}, {"options", keel_options(p.config)}};
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

std::uint64_t sweep_value(const Config& c, const std::string& param) {
  if (param == "iodepth") return c.iodepth;
  if (param == "bs") return c.bs;
  if (param == "rate_iops") return c.rate_iops_read;
  return c.vfs;
}

json document(const std::vector<Point>& points, const std::string& sweep_param) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  char when[64] = "";
  std::tm tm{};
  if (localtime_r(&t, &tm) != nullptr)
    std::strftime(when, sizeof when, "%a %b %e %H:%M:%S %Y", &tm);
  json d = {{"fio version", kFioVersion},
            {"timestamp", static_cast<std::int64_t>(t)},
            {"timestamp_ms",
             std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count()},
            {"time", when},
            {"global options", points.empty() ? json::object() : fio_options(points[0].config)}};
  if (points.size() == 1 && sweep_param.empty()) {
    json one = to_json(points[0]);
    d["jobs"] = one["jobs"];
    d["keel"] = {{"options", one["options"]},
                 {"ratios", one.contains("ratios") ? one["ratios"] : json::object()}};
    return d;
  }
  // A sweep: every point's paths are jobs too (jobname "vf iodepth=16"), and the points as
  // keel's tools read them.
  json all = json::array();
  json arr = json::array();
  for (const Point& p : points) {
    const std::uint64_t v = sweep_value(p.config, sweep_param);
    json one =
        to_json(p, " " + sweep_param + "=" + std::to_string(v), static_cast<unsigned>(all.size()));
    for (const auto& j : one["jobs"]) all.push_back(j);
    arr.push_back(std::move(one));
  }
  d["jobs"] = all;
  d["sweep"] = {{"param", sweep_param}, {"points", arr}};
  d["keel"] = {{"sweep_param", sweep_param}};
  return d;
}

std::string text_report(const Point& p) {
  std::string out;
  char line[320];
  const Config& c = p.config;
  std::snprintf(line, sizeof line, "%s bs=%u iodepth=%u numjobs=%u vfs=%u%s", to_string(c.rw), c.bs,
                c.iodepth, c.numjobs, c.vfs, c.verify ? " verify" : "");
  out += line;
  if (is_mixed(c.rw)) out += " rwmixread=" + std::to_string(c.rwmixread);
  if (c.ramp_time.count() > 0) out += " ramp_time=" + ms_string(c.ramp_time);
  if (c.rate_iops_read != 0 || c.rate_iops_write != 0) {
    out += " rate_iops=" + fio_options(c)["rate_iops"].get<std::string>() + " (per job)";
  }
  out += "\n";
  std::snprintf(line, sizeof line, "%-9s %10s %10s %9s %9s %9s %9s %10s %10s %12s\n", "path",
                "IOPS", "MB/s", "clat min", "mean", "p50", "p99", "p99.9", "max", "cpu ns/IO");
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
    if (r.card_thread) {
      std::snprintf(line, sizeof line,
                    "          card thread%s%s: ran %.1f ms, waited %.1f ms for a CPU (%.0f%% of "
                    "the time it wanted one)%s\n",
                    r.card_rt.empty() ? "" : ", ", r.card_rt.c_str(),
                    static_cast<double>(r.card_run_ns) / 1e6,
                    static_cast<double>(r.card_wait_ns) / 1e6, 100.0 * r.card_wait_share(),
                    r.card_starved() ? ": WARNING, the simulated card was starved (the host is "
                                       "loaded): this path's figures measure the scheduler"
                                     : "");
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
    const std::uint64_t v = sweep_value(p.config, param);
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
