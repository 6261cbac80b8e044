// keel-perf-net: options, the text a person reads and the JSON.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <sstream>

#include "net_run.h"

namespace keel::perf {

using nlohmann::json;

Result<NetConfig> parse_net_options(int argc, const char* const* argv) {
  NetConfig c;
  CLI::App app{
      "keel-perf-net: frames/s, Gbit/s, round-trip latency and host CPU per frame of keel's "
      "virtio-net accelerated path (paravisor -> NIC VF of the model card) against the "
      "software fallback (paravisor -> host software switch), two in-process guests."};
  std::string path = "both", sizes = "64,1500", runtime, ramp, lat_runtime;
  app.add_option("--path", path, "vf, fallback or both")->capture_default_str();
  app.add_option("--bs", sizes,
                 "frame sizes, a list: bytes on the wire without FCS, Ethernet header included "
                 "(22 to 1518)")
      ->capture_default_str();
  app.add_option("--runtime", runtime, "stream measured for this long per path and size (3s)");
  app.add_option("--ramp_time,--ramp-time", ramp, "stream before measuring (300ms)");
  app.add_option("--lat-runtime", lat_runtime, "ping-pong for this long per path and size (1s)");
  app.add_option("--window", c.window, "stream: frames sent and not yet received, at most")
      ->capture_default_str();
  app.add_option("--json", c.json_path, "write JSON results to FILE");
  app.add_flag("--rx-copy", c.rx_copy,
               "VF path: the paravisor receives into the driver's buffers and copies to the "
               "guest (default: the card writes into the guest's buffers)");
  app.add_flag("--card-rt", c.card_rt,
               "the model card's thread (its silicon) at SCHED_FIFO 1 (needs CAP_SYS_NICE)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return make_error(Errc::not_found, "");
  } catch (const CLI::ParseError& e) {
    return make_error(Errc::invalid_argument, e.what());
  }
  auto bad = [](const std::string& what) { return make_error(Errc::invalid_argument, what); };
  if (path == "vf")
    c.path = PathChoice::vf;
  else if (path == "fallback")
    c.path = PathChoice::fallback;
  else if (path == "both")
    c.path = PathChoice::both;
  else
    return bad("--path: '" + path + "' is not one of vf, fallback, both");
  c.sizes.clear();
  std::stringstream in(sizes);
  std::string item;
  while (std::getline(in, item, ',')) {
    auto v = parse_size(item);
    if (!v) return bad("--bs: " + v.error().message);
    if (*v < 22 || *v > 1518) return bad("--bs: " + item + " is not 22 to 1518 bytes");
    c.sizes.push_back(static_cast<std::uint32_t>(*v));
  }
  if (c.sizes.empty()) return bad("--bs: no sizes");
  for (auto [text, out, name] :
       {std::tuple{&runtime, &c.runtime, "--runtime"}, std::tuple{&ramp, &c.ramp, "--ramp_time"},
        std::tuple{&lat_runtime, &c.lat_runtime, "--lat-runtime"}}) {
    if (text->empty()) continue;
    auto d = parse_duration(*text);
    if (!d) return bad(std::string(name) + ": " + d.error().message);
    *out = *d;
  }
  if (c.runtime.count() <= 0) return bad("--runtime: must be positive");
  if (c.window == 0 || c.window > 200) return bad("--window: 1 to 200");
  return c;
}

namespace {

double ratio(double a, double b) { return b > 0 ? a / b : 0; }

std::string human(double v) {
  char b[32];
  if (v >= 1e6)
    std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
  else
    std::snprintf(b, sizeof b, "%.0f", v);
  return b;
}

double us(std::uint64_t ns) { return static_cast<double>(ns) / 1000.0; }

json cpu_json(const NetCpu& c) {
  return {{"paravisors_ns", c.paravisors_ns},
          {"switch_ns", c.switch_ns},
          {"host_ns", c.host_ns()},
          {"guests_ns", c.guests_ns}};
}

json path_json(const NetPathResult& r) {
  const NetStream& s = r.stream;
  const Histogram& h = r.latency.rtt;
  const std::uint64_t want = s.card_run_ns + s.card_wait_ns;
  json causes = json::object();
  for (const auto& [name, n] : s.card_drop_causes) causes[name] = n;
  const json drops = {{"card", s.card_drops},
                      {"card_causes", causes},
                      {"switch", s.switch_drops},
                      {"paravisor", s.paravisor_drops}};
  return {{"path", r.path},
          {"bs", r.bs},
          {"stream",
           {{"seconds", s.seconds},
            {"frames", s.frames},
            {"frames_per_s", r.fps()},
            {"gbit_per_s", r.gbps()},
            {"sent", s.sent},
            {"received", s.received},
            {"lost", s.lost()},
            {"written_off", s.written_off},
            {"bad_frames", s.bad_frames},
            {"drops", drops},
            {"cpu", cpu_json(s.cpu)},
            {"host_cpu_ns_per_frame", r.host_ns_per_frame()},
            {"paravisor_cpu_ns_per_frame", r.per_frame(s.cpu.paravisors_ns)},
            {"switch_cpu_ns_per_frame", r.per_frame(s.cpu.switch_ns)},
            {"guest_cpu_ns_per_frame", r.guest_ns_per_frame()},
            {"card_thread",
             {{"run_ns", s.card_run_ns},
              {"wait_ns", s.card_wait_ns},
              {"wait_share", want > 0 ? static_cast<double>(s.card_wait_ns) / want : 0.0}}}}},
          {"latency",
           {{"seconds", r.latency.seconds},
            {"round_trips", h.count()},
            {"timeouts", r.latency.timeouts},
            {"rtt_ns",
             {{"min", h.min()},
              {"mean", h.mean()},
              {"p50", h.percentile(0.5)},
              {"p90", h.percentile(0.9)},
              {"p99", h.percentile(0.99)},
              {"p99.9", h.percentile(0.999)},
              {"max", h.max()}}},
            {"cpu", cpu_json(r.latency.cpu)},
            {"host_cpu_ns_per_round_trip", r.host_ns_per_rtt()}}}};
}

struct Ratios {
  double fps, cpu, guest, p50, p99, max, cpu_rtt;
};

Ratios ratios(const NetPathResult& v, const NetPathResult& f) {
  auto p = [](const NetPathResult& r, double q) {
    return static_cast<double>(r.latency.rtt.percentile(q));
  };
  return {ratio(v.fps(), f.fps()),
          ratio(v.host_ns_per_frame(), f.host_ns_per_frame()),
          ratio(v.guest_ns_per_frame(), f.guest_ns_per_frame()),
          ratio(p(v, 0.5), p(f, 0.5)),
          ratio(p(v, 0.99), p(f, 0.99)),
          ratio(static_cast<double>(v.latency.rtt.max()), static_cast<double>(f.latency.rtt.max())),
          ratio(v.host_ns_per_rtt(), f.host_ns_per_rtt())};
}

}  // namespace

std::string net_text_report(const NetPoint& p) {
  std::string out;
  char line[400];
  std::snprintf(line, sizeof line,
                "bs=%u (frame bytes, no FCS)\n%-9s %10s %8s %7s %12s %12s %9s %9s %9s %11s\n", p.bs,
                "path", "frames/s", "Gbit/s", "lost", "host ns/fr", "guest ns/fr", "rtt p50", "p99",
                "max", "host us/rtt");
  out += line;
  for (const NetPathResult& r : p.paths) {
    const NetStream& s = r.stream;
    const Histogram& h = r.latency.rtt;
    std::snprintf(
        line, sizeof line, "%-9s %10s %8.3f %7llu %12.0f %12.0f %7.1fus %7.1fus %7.1fus %11.1f\n",
        r.path.c_str(), human(r.fps()).c_str(), r.gbps(), static_cast<unsigned long long>(s.lost()),
        r.host_ns_per_frame(), r.guest_ns_per_frame(), us(h.percentile(0.5)),
        us(h.percentile(0.99)), us(h.max()), r.host_ns_per_rtt() / 1000.0);
    out += line;
    const std::uint64_t want = s.card_run_ns + s.card_wait_ns;
    const double share = want > 0 ? 100.0 * static_cast<double>(s.card_wait_ns) / want : 0.0;
    std::string causes;
    for (const auto& [name, n] : s.card_drop_causes) {
      causes += (causes.empty() ? " (" : ", ") + name + " " + std::to_string(n);
    }
    if (!causes.empty()) causes += ")";
    std::snprintf(
        line, sizeof line,
        "          stream: %llu frames in %.2fs; sent %llu, received %llu; drops: card %llu%s, "
        "switch %llu, paravisor %llu%s\n"
        "          host CPU: paravisors %.0f ns/frame, switch %.0f ns/frame; card thread: ran "
        "%.1f ms, waited %.1f ms for a CPU (%.0f%%)%s\n"
        "          ping-pong: %llu round trips in %.2fs, min %.1fus mean %.1fus, %llu timeouts\n",
        static_cast<unsigned long long>(s.frames), s.seconds,
        static_cast<unsigned long long>(s.sent), static_cast<unsigned long long>(s.received),
        static_cast<unsigned long long>(s.card_drops), causes.c_str(),
        static_cast<unsigned long long>(s.switch_drops),
        static_cast<unsigned long long>(s.paravisor_drops), s.bad_frames != 0 ? ", BAD FRAMES" : "",
        r.per_frame(s.cpu.paravisors_ns), r.per_frame(s.cpu.switch_ns),
        static_cast<double>(s.card_run_ns) / 1e6, static_cast<double>(s.card_wait_ns) / 1e6, share,
        share > 10 ? ": WARNING, the simulated card was starved" : "",
        static_cast<unsigned long long>(h.count()), r.latency.seconds, us(h.min()),
        h.mean() / 1000.0, static_cast<unsigned long long>(r.latency.timeouts));
    out += line;
  }
  if (p.paths.size() == 2) {
    const Ratios q = ratios(p.paths[0], p.paths[1]);
    std::snprintf(line, sizeof line,
                  "vf / fallback: frames/s x%.2f, Gbit/s x%.2f, host CPU per frame x%.2f, guest "
                  "CPU per frame x%.2f, rtt p50 x%.2f, p99 x%.2f, max x%.2f, host CPU per round "
                  "trip x%.2f\n",
                  q.fps, q.fps, q.cpu, q.guest, q.p50, q.p99, q.max, q.cpu_rtt);
    out += line;
  }
  return out;
}

json net_document(const NetConfig& c, const std::string& card,
                  const std::vector<NetPoint>& points) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  char when[64] = "";
  std::tm tm{};
  if (localtime_r(&t, &tm) != nullptr)
    std::strftime(when, sizeof when, "%a %b %e %H:%M:%S %Y", &tm);
  json sizes = json::array();
  for (std::uint32_t s : c.sizes) sizes.push_back(s);
  json d = {{"tool", "keel-perf-net"},
            {"timestamp", static_cast<std::int64_t>(t)},
            {"time", when},
            {"card", card},
            {"options",
             {{"path", to_string(c.path)},
              {"bs", sizes},
              {"runtime_ms", c.runtime.count()},
              {"ramp_ms", c.ramp.count()},
              {"lat_runtime_ms", c.lat_runtime.count()},
              {"window", c.window},
              {"card_rt", c.card_rt},
              {"rx", c.rx_copy ? "copy" : "zero-copy"}}}};
  json pts = json::array(), jobs = json::array();
  for (const NetPoint& p : points) {
    json paths = json::array();
    for (const NetPathResult& r : p.paths) {
      json j = path_json(r);
      paths.push_back(j);
      j["jobname"] = r.path + " bs=" + std::to_string(r.bs);
      jobs.push_back(std::move(j));
    }
    json pt = {{"bs", p.bs}, {"paths", paths}};
    if (p.paths.size() == 2) {
      const Ratios q = ratios(p.paths[0], p.paths[1]);
      pt["ratios"] = {{"frames_per_s_vf_over_fallback", q.fps},
                      {"gbit_per_s_vf_over_fallback", q.fps},
                      {"host_cpu_per_frame_vf_over_fallback", q.cpu},
                      {"guest_cpu_per_frame_vf_over_fallback", q.guest},
                      {"rtt_p50_vf_over_fallback", q.p50},
                      {"rtt_p99_vf_over_fallback", q.p99},
                      {"rtt_max_vf_over_fallback", q.max},
                      {"host_cpu_per_round_trip_vf_over_fallback", q.cpu_rtt}};
    }
    pts.push_back(std::move(pt));
  }
  d["points"] = pts;
  d["jobs"] = jobs;
  return d;
}

}  // namespace keel::perf
