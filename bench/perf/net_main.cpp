// keel-perf-net: the network half of keel-perf. See `keel-perf-net --help` and
// docs/performance.md ("Network").
#include <cstdio>
#include <fstream>

#include "net_run.h"

int main(int argc, char** argv) {
  using namespace keel::perf;
  auto c = parse_net_options(argc, argv);
  if (!c) {
    if (c.error().code == keel::Errc::not_found) return 0;  // --help
    std::fprintf(stderr, "keel-perf-net: %s\n", c.error().message.c_str());
    return 2;
  }
  auto bench = NetBench::open(*c);
  if (!bench) {
    std::fprintf(stderr, "keel-perf-net: %s\n", keel::to_string(bench.error()).c_str());
    return 1;
  }
  std::printf(
      "card: %s; 2 guests, window %u, VF receive %s, stream %lld ms (+%lld ms ramp), ping-pong "
      "%lld ms%s%s\n",
      (*bench)->describe().c_str(), c->window, c->rx_copy ? "copied" : "in place",
      static_cast<long long>(c->runtime.count()), static_cast<long long>(c->ramp.count()),
      static_cast<long long>(c->lat_runtime.count()),
      (*bench)->card_rt().empty() ? "" : "; card thread ", (*bench)->card_rt().c_str());
  std::vector<NetPoint> points;
  for (std::uint32_t bs : c->sizes) {
    NetPoint p{bs, {}};
    for (bool vf : {true, false}) {
      if (vf && c->path == PathChoice::fallback) continue;
      if (!vf && c->path == PathChoice::vf) continue;
      auto r = (*bench)->run(*c, vf, bs);
      if (!r) {
        std::fprintf(stderr, "keel-perf-net: path %s, bs %u: %s\n", vf ? "vf" : "fallback", bs,
                     keel::to_string(r.error()).c_str());
        return 1;
      }
      p.paths.push_back(std::move(r).value());
    }
    std::fputs(net_text_report(p).c_str(), stdout);
    std::fflush(stdout);
    points.push_back(std::move(p));
  }
  if (!c->json_path.empty()) {
    std::ofstream out(c->json_path);
    out << net_document(*c, (*bench)->describe(), points).dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "keel-perf-net: cannot write %s\n", c->json_path.c_str());
      return 1;
    }
  }
  // Frames must have gone through on every path: a stream that moved nothing is a failure.
  for (const NetPoint& p : points) {
    for (const NetPathResult& r : p.paths) {
      if (r.stream.frames == 0 || r.latency.rtt.count() == 0 || r.stream.bad_frames != 0) {
        std::fprintf(stderr, "keel-perf-net: path %s, bs %u: %s\n", r.path.c_str(), r.bs,
                     r.stream.bad_frames != 0 ? "bad frames received" : "no frames went through");
        return 1;
      }
    }
  }
  return 0;
}
