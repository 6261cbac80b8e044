#include "options.h"

#include <CLI/CLI.hpp>

#include <cctype>
#include <sstream>

namespace keel::perf {

const char* to_string(Rw rw) {
  switch (rw) {
    case Rw::read: return "read";
    case Rw::write: return "write";
    case Rw::randread: return "randread";
    case Rw::randwrite: return "randwrite";
    case Rw::rw: return "rw";
    case Rw::randrw: return "randrw";
  }
  return "?";
}

const char* const kRwValues = "read, write, randread, randwrite, rw (or readwrite), randrw";

std::optional<Rw> rw_from_string(const std::string& text) {
  if (text == "read") return Rw::read;
  if (text == "write") return Rw::write;
  if (text == "randread") return Rw::randread;
  if (text == "randwrite") return Rw::randwrite;
  if (text == "rw" || text == "readwrite") return Rw::rw;
  if (text == "randrw") return Rw::randrw;
  return std::nullopt;
}

bool is_mixed(Rw rw) { return rw == Rw::rw || rw == Rw::randrw; }
bool is_random(Rw rw) { return rw == Rw::randread || rw == Rw::randwrite || rw == Rw::randrw; }

const char* to_string(PathChoice p) {
  switch (p) {
    case PathChoice::vf: return "vf";
    case PathChoice::fallback: return "fallback";
    case PathChoice::both: return "both";
  }
  return "?";
}

Result<std::uint64_t> parse_size(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0)
    return make_error(Errc::invalid_argument, "'" + text + "' is not a size (e.g. 4k, 1m, 512)");
  std::uint64_t v = 0;
  try {
    v = std::stoull(text.substr(0, i));
  } catch (const std::exception&) {
    return make_error(Errc::invalid_argument, "'" + text + "' is too large");
  }
  std::string unit = text.substr(i);
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (unit.size() > 1 && (unit.ends_with("ib") || unit.ends_with("b"))) {
    unit = unit.substr(0, unit.size() - (unit.ends_with("ib") ? 2 : 1));
  }
  unsigned shift = 0;
  if (unit.empty())
    shift = 0;
  else if (unit == "k")
    shift = 10;
  else if (unit == "m")
    shift = 20;
  else if (unit == "g")
    shift = 30;
  else if (unit == "t")
    shift = 40;
  else
    return make_error(Errc::invalid_argument, "'" + text + "': unknown unit (use k, m, g)");
  if (shift != 0 && v > (~std::uint64_t{0} >> shift)) {
    return make_error(Errc::invalid_argument, "'" + text + "' is too large");
  }
  return v << shift;
}

Result<std::chrono::milliseconds> parse_duration(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  if (i == 0)
    return make_error(Errc::invalid_argument, "'" + text + "' is not a duration (e.g. 10s, 500ms)");
  double v = 0;
  try {
    v = std::stod(text.substr(0, i));
  } catch (const std::exception&) {
    return make_error(Errc::invalid_argument, "'" + text + "' is not a duration");
  }
  const std::string unit = text.substr(i);
  double ms = 0;
  if (unit.empty() || unit == "s")
    ms = v * 1000;
  else if (unit == "ms")
    ms = v;
  else if (unit == "m")
    ms = v * 60000;
  else if (unit == "us")
    ms = v / 1000;
  else
    return make_error(Errc::invalid_argument, "'" + text + "': unknown unit (use ms, s, m)");
  return std::chrono::milliseconds(static_cast<long long>(ms));
}

Result<std::pair<std::uint64_t, std::uint64_t>> parse_rate_iops(const std::string& text) {
  auto one = [](const std::string& v) -> Result<std::uint64_t> {
    if (v.empty()) return std::uint64_t{0};
    if (v.find_first_not_of("0123456789") != std::string::npos) {
      return make_error(Errc::invalid_argument, "'" + v + "' is not a number of IOPS");
    }
    try {
      return static_cast<std::uint64_t>(std::stoull(v));
    } catch (const std::exception&) {
      return make_error(Errc::invalid_argument, "'" + v + "' is too large");
    }
  };
  const auto comma = text.find(',');
  if (comma != std::string::npos && text.find(',', comma + 1) != std::string::npos) {
    return make_error(Errc::invalid_argument, "'" + text + "': use N, R,W, R, or ,W");
  }
  if (comma == std::string::npos) {
    auto n = one(text);
    if (!n) return n.error();
    if (text.empty() || *n == 0) {
      return make_error(Errc::invalid_argument, "'" + text + "': a positive number of IOPS");
    }
    return std::pair{*n, *n};  // fio: one value caps reads and writes, each
  }
  auto r = one(text.substr(0, comma));
  if (!r) return r.error();
  auto w = one(text.substr(comma + 1));
  if (!w) return w.error();
  if (*r == 0 && *w == 0) {
    return make_error(Errc::invalid_argument, "'" + text + "': no positive cap");
  }
  return std::pair{*r, *w};
}

Result<Invocation> parse_options(int argc, const char* const* argv) {
  Invocation inv;
  Config& c = inv.config;
  CLI::App app{
      "keel-perf: IOPS, latency and host CPU per IO of keel's accelerated path (paravisor -> VF) "
      "against the software fallback (paravisor -> host storage service), fio style."};
  std::string rw = "randread", path = "both", bs = "4k", runtime, size, sweep, card_size, ramp,
              rate_iops;
  app.add_option("--card", c.card,
                 "card: model (default), sim (the Verilated RTL card), vfio:<BDF>, xrt:<N>, "
                 "vfio-user:<keel-card run dir>/pf.sock");
  app.add_option("--vfs", c.vfs, "VFs to enable (default: one per job)");
  app.add_option("--path", path, "vf, fallback or both")->capture_default_str();
  app.add_option("--rw", rw,
                 "as fio: read, write (sequential), randread, randwrite (random), rw or "
                 "readwrite (sequential mixed), randrw (random mixed)")
      ->capture_default_str();
  app.add_option("--rwmixread", c.rwmixread, "percent reads for rw and randrw")
      ->capture_default_str();
  app.add_option("--bs", bs, "block size (512 to 128k, multiple of 512)")->capture_default_str();
  app.add_option("--iodepth", c.iodepth, "requests in flight per job")->capture_default_str();
  app.add_option("--numjobs", c.numjobs, "jobs: one guest (paravisor) per job, each on its own VF")
      ->capture_default_str();
  app.add_option("--runtime", runtime, "run for this long per path (e.g. 10s)");
  app.add_option("--ramp_time,--ramp-time", ramp,
                 "as fio: run this long first (e.g. 2s) before counting anything: IOs, "
                 "bandwidth, latency, CPU and keel's counters are from after the ramp");
  app.add_option("--rate_iops,--rate-iops", rate_iops,
                 "as fio: cap each job's IOPS; N caps reads and writes at N each, R,W apart, "
                 "R, reads only, ,W writes only (submissions paced against the clock)");
  app.add_option("--size", size, "bytes per job: IO region, and the amount without --runtime");
  app.add_flag("--verify", c.verify,
               "check every block read and, at the end, every block written; a job that "
               "reads first fills its region with a known pattern (not timed)");
  app.add_option("--json", c.json_path, "write fio-like JSON results to FILE");
  app.add_flag("--card-rt", c.card_rt,
               "run the simulated card's thread (its silicon) at real-time priority "
               "(SCHED_FIFO 1) so a loaded host cannot starve it (needs CAP_SYS_NICE)");
  app.add_option("--image", c.image,
                 "disk image for a simulated card (default: a temp file); with vfio-user, "
                 "keel-card's --image (the fallback path uses it)");
  app.add_option("--card-size", card_size, "storage of a simulated card (default: fits the jobs)");
  app.add_option("--seed", c.seed, "random seed")->capture_default_str();
  app.add_option("--sweep", sweep,
                 "PARAM=V1,V2,...: repeat over iodepth, bs, vfs or rate_iops (offered IOPS "
                 "per direction, as --rate_iops N) (e.g. iodepth=1,4,16,64,256, rate_iops=1k,10k)");
  bool no_progress = false;
  app.add_flag("--no-progress", no_progress, "no live progress line");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return make_error(Errc::not_found, "");
  } catch (const CLI::ParseError& e) {
    return make_error(Errc::invalid_argument, e.what());
  }
  c.progress = !no_progress;
  auto bad = [](const std::string& what) { return make_error(Errc::invalid_argument, what); };
  if (auto r = rw_from_string(rw))
    c.rw = *r;
  else
    return bad("--rw: '" + rw + "' is not one of " + kRwValues);
  if (path == "vf")
    c.path = PathChoice::vf;
  else if (path == "fallback")
    c.path = PathChoice::fallback;
  else if (path == "both")
    c.path = PathChoice::both;
  else
    return bad("--path: '" + path + "' is not one of vf, fallback, both");
  auto b = parse_size(bs);
  if (!b) return bad("--bs: " + b.error().message);
  if (*b < 512 || *b > 128 * 1024 || *b % 512 != 0) {
    return bad("--bs: " + bs + " must be a multiple of 512 between 512 and 128k");
  }
  c.bs = static_cast<std::uint32_t>(*b);
  if (c.iodepth == 0 || c.iodepth > 256) return bad("--iodepth: must be 1 to 256");
  if (c.numjobs == 0 || c.numjobs > 64) return bad("--numjobs: must be 1 to 64");
  if (c.rwmixread > 100) return bad("--rwmixread: a percentage, 0 to 100");
  if (c.vfs == 0) c.vfs = c.numjobs;
  if (c.vfs > 64) return bad("--vfs: at most 64");
  if (c.numjobs > c.vfs) {
    return bad("--numjobs " + std::to_string(c.numjobs) + " needs as many VFs; --vfs is " +
               std::to_string(c.vfs));
  }
  if (!runtime.empty()) {
    auto r = parse_duration(runtime);
    if (!r) return bad("--runtime: " + r.error().message);
    if (r->count() <= 0) return bad("--runtime: must be positive");
    c.runtime = *r;
  }
  if (!ramp.empty()) {
    auto r = parse_duration(ramp);
    if (!r) return bad("--ramp_time: " + r.error().message);
    c.ramp_time = *r;
  }
  if (!rate_iops.empty()) {
    auto r = parse_rate_iops(rate_iops);
    if (!r) return bad("--rate_iops: " + r.error().message);
    c.rate_iops_read = r->first;
    c.rate_iops_write = r->second;
  }
  if (!size.empty()) {
    auto s = parse_size(size);
    if (!s) return bad("--size: " + s.error().message);
    if (*s < c.bs || *s % c.bs != 0) return bad("--size: must be a non-zero multiple of --bs");
    c.size = *s;
  }
  if (c.runtime.count() == 0 && c.size == 0) c.runtime = std::chrono::milliseconds(5000);
  if (c.size == 0) c.size = std::uint64_t{64} << 20;
  if (!card_size.empty()) {
    auto s = parse_size(card_size);
    if (!s) return bad("--card-size: " + s.error().message);
    c.card_mib = *s >> 20;
  }
  if (!sweep.empty()) {
    const auto eq = sweep.find('=');
    if (eq == std::string::npos) return bad("--sweep: use PARAM=V1,V2,... (e.g. iodepth=1,4,16)");
    Sweep s;
    s.param = sweep.substr(0, eq);
    if (s.param != "iodepth" && s.param != "bs" && s.param != "vfs" && s.param != "rate_iops") {
      return bad("--sweep: '" + s.param + "' is not one of iodepth, bs, vfs, rate_iops");
    }
    std::stringstream in(sweep.substr(eq + 1));
    std::string item;
    while (std::getline(in, item, ',')) {
      auto v = parse_size(item);
      if (!v || *v == 0) return bad("--sweep: '" + item + "' is not a positive value");
      s.values.push_back(*v);
    }
    if (s.values.empty()) return bad("--sweep: no values");
    for (std::uint64_t v : s.values) {
      if (s.param == "iodepth" && v > 256) return bad("--sweep: iodepth at most 256");
      if (s.param == "bs" && (v < 512 || v > 128 * 1024 || v % 512 != 0)) {
        return bad("--sweep: bs values must be multiples of 512 from 512 to 128k");
      }
      if (s.param == "vfs" && v > 64) return bad("--sweep: at most 64 VFs");
    }
    inv.sweep = s;
  }
  return inv;
}

}  // namespace keel::perf
