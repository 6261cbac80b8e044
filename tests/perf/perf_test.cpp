// keel-perf: option parsing and its errors, the JSON it writes, and a short verified run on
// each path of the model card.
#include <sched.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <vector>

#include "options.h"
#include "report.h"
#include "run.h"

namespace keel::perf {
namespace {

Result<Invocation> parse(std::vector<const char*> args) {
  args.insert(args.begin(), "keel-perf");
  return parse_options(static_cast<int>(args.size()), args.data());
}

std::string error_of(std::vector<const char*> args) {
  auto r = parse(std::move(args));
  return r.ok() ? std::string("<accepted>") : r.error().message;
}

TEST(PerfOptions, Defaults) {
  auto r = parse({});
  ASSERT_TRUE(r.ok());
  const Config& c = r->config;
  EXPECT_EQ(c.rw, Rw::randread);
  EXPECT_EQ(c.bs, 4096u);
  EXPECT_EQ(c.iodepth, 16u);
  EXPECT_EQ(c.path, PathChoice::both);
  EXPECT_EQ(c.numjobs, 1u);
  EXPECT_EQ(c.vfs, 1u);
  EXPECT_EQ(c.runtime.count(), 5000);
  EXPECT_FALSE(r->sweep.has_value());
}

TEST(PerfOptions, FioStyleValues) {
  auto r = parse({"--rw",      "randrw", "--rwmixread", "70", "--bs",   "16k",
                  "--iodepth", "64",     "--numjobs",   "2",  "--vfs",  "4",
                  "--runtime", "500ms",  "--size",      "8m", "--path", "vf",
                  "--verify",  "--json", "/tmp/x.json"});
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Config& c = r->config;
  EXPECT_EQ(c.rw, Rw::randrw);
  EXPECT_EQ(c.rwmixread, 70u);
  EXPECT_EQ(c.bs, 16384u);
  EXPECT_EQ(c.iodepth, 64u);
  EXPECT_EQ(c.numjobs, 2u);
  EXPECT_EQ(c.vfs, 4u);
  EXPECT_EQ(c.runtime.count(), 500);
  EXPECT_EQ(c.size, 8u << 20);
  EXPECT_EQ(c.path, PathChoice::vf);
  EXPECT_TRUE(c.verify);
  EXPECT_EQ(c.json_path, "/tmp/x.json");
}

TEST(PerfOptions, SizesAndDurations) {
  EXPECT_EQ(*parse_size("512"), 512u);
  EXPECT_EQ(*parse_size("4k"), 4096u);
  EXPECT_EQ(*parse_size("4KiB"), 4096u);
  EXPECT_EQ(*parse_size("2M"), 2u << 20);
  EXPECT_EQ(*parse_size("1g"), 1u << 30);
  EXPECT_FALSE(parse_size("k").ok());
  EXPECT_FALSE(parse_size("4q").ok());
  EXPECT_FALSE(parse_size("99999999999999999999").ok());
  EXPECT_EQ(parse_duration("10s")->count(), 10000);
  EXPECT_EQ(parse_duration("250ms")->count(), 250);
  EXPECT_EQ(parse_duration("2")->count(), 2000);
  EXPECT_EQ(parse_duration("1m")->count(), 60000);
  EXPECT_FALSE(parse_duration("soon").ok());
  EXPECT_FALSE(parse_duration("5h").ok());
}

TEST(PerfOptions, ErrorsNameTheOption) {
  EXPECT_NE(error_of({"--rw", "sideways"}).find("--rw"), std::string::npos);
  EXPECT_NE(error_of({"--rw", "sideways"}).find(kRwValues), std::string::npos)
      << "the error lists what is accepted";
  EXPECT_NE(error_of({"--rw", "trim"}).find("--rw"), std::string::npos);
  EXPECT_NE(error_of({"--rw", "RandRead"}).find("--rw"), std::string::npos);
  EXPECT_NE(error_of({"--path", "x"}).find("--path"), std::string::npos);
  EXPECT_NE(error_of({"--bs", "1000"}).find("multiple of 512"), std::string::npos);
  EXPECT_NE(error_of({"--bs", "1m"}).find("--bs"), std::string::npos);
  EXPECT_NE(error_of({"--iodepth", "0"}).find("--iodepth"), std::string::npos);
  EXPECT_NE(error_of({"--iodepth", "1000"}).find("--iodepth"), std::string::npos);
  EXPECT_NE(error_of({"--rwmixread", "101"}).find("--rwmixread"), std::string::npos);
  EXPECT_NE(error_of({"--numjobs", "3", "--vfs", "2"}).find("needs as many VFs"),
            std::string::npos);
  EXPECT_NE(error_of({"--runtime", "fast"}).find("--runtime"), std::string::npos);
  EXPECT_NE(error_of({"--size", "1000"}).find("--size"), std::string::npos);
  EXPECT_NE(error_of({"--sweep", "iodepth"}).find("PARAM=V1"), std::string::npos);
  EXPECT_NE(error_of({"--sweep", "colour=1,2"}).find("colour"), std::string::npos);
  EXPECT_NE(error_of({"--sweep", "bs=100"}).find("multiples of 512"), std::string::npos);
  EXPECT_NE(error_of({"--bogus"}).find("bogus"), std::string::npos);
  EXPECT_NE(error_of({"--iodepth", "many"}).find("iodepth"), std::string::npos);
}

// fio's --rw names, each with fio's meaning.
TEST(PerfOptions, RwAsFio) {
  const std::pair<const char*, Rw> cases[] = {
      {"read", Rw::read},           {"write", Rw::write}, {"randread", Rw::randread},
      {"randwrite", Rw::randwrite}, {"rw", Rw::rw},       {"readwrite", Rw::rw},
      {"randrw", Rw::randrw}};
  for (const auto& [name, rw] : cases) {
    auto r = parse({"--rw", name});
    ASSERT_TRUE(r.ok()) << name << ": " << r.error().message;
    EXPECT_EQ(r->config.rw, rw) << name;
    EXPECT_EQ(is_mixed(rw), rw == Rw::rw || rw == Rw::randrw) << name;
    EXPECT_EQ(is_random(rw), std::string(name).starts_with("rand")) << name;
  }
  EXPECT_STREQ(to_string(Rw::rw), "rw");
  auto eq = parse({"--rw=randwrite"});  // fio's own spelling
  ASSERT_TRUE(eq.ok());
  EXPECT_EQ(eq->config.rw, Rw::randwrite);
}

TEST(PerfOptions, RateIopsAndRampTime) {
  auto r = parse({});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->config.rate_iops_read, 0u);
  EXPECT_EQ(r->config.rate_iops_write, 0u);
  EXPECT_EQ(r->config.ramp_time.count(), 0);
  r = parse({"--rate_iops", "500", "--ramp_time", "2s"});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->config.rate_iops_read, 500u) << "fio: one value caps reads and writes, each";
  EXPECT_EQ(r->config.rate_iops_write, 500u);
  EXPECT_EQ(r->config.ramp_time.count(), 2000);
  r = parse({"--rate-iops", "100,200", "--ramp-time", "250ms", "--rw", "randrw"});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->config.rate_iops_read, 100u);
  EXPECT_EQ(r->config.rate_iops_write, 200u);
  EXPECT_EQ(r->config.ramp_time.count(), 250);
  EXPECT_EQ(*parse_rate_iops("100,"), (std::pair<std::uint64_t, std::uint64_t>{100, 0}));
  EXPECT_EQ(*parse_rate_iops(",300"), (std::pair<std::uint64_t, std::uint64_t>{0, 300}));
  EXPECT_EQ(parse({"--ramp_time", "3"})->config.ramp_time.count(), 3000) << "seconds, as fio";
  for (const char* bad : {"0", "abc", "1,2,3", ",", "-5", "10k"}) {
    EXPECT_NE(error_of({"--rate_iops", bad}).find("--rate_iops"), std::string::npos) << bad;
  }
  EXPECT_NE(error_of({"--ramp_time", "soon"}).find("--ramp_time"), std::string::npos);
}

TEST(PerfOptions, Sweeps) {
  auto r = parse({"--sweep", "iodepth=1,4,16,64,256"});
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->sweep.has_value());
  EXPECT_EQ(r->sweep->param, "iodepth");
  EXPECT_EQ(r->sweep->values, (std::vector<std::uint64_t>{1, 4, 16, 64, 256}));
  r = parse({"--sweep", "bs=512,4k,128k"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->sweep->values, (std::vector<std::uint64_t>{512, 4096, 131072}));
  // The offered rate (CPU per IO at 1k, 10k, 100k IOPS): each point caps as --rate_iops N.
  r = parse({"--sweep", "rate_iops=1000,10000,100000"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->sweep->param, "rate_iops");
  EXPECT_EQ(r->sweep->values, (std::vector<std::uint64_t>{1000, 10000, 100000}));
  Config c = r->config;
  c.rate_iops_read = c.rate_iops_write = 10000;
  EXPECT_EQ(sweep_value(c, "rate_iops"), 10000u);
  EXPECT_EQ(sweep_value(c, "iodepth"), c.iodepth);
}

// The offsets of sequential jobs are sequential: block 0 upwards, wrapping at the region's end.
TEST(PerfPattern, SequentialJobsAreSequential) {
  for (Rw rw : {Rw::read, Rw::write}) {
    IoPattern p(rw, 50, 10, 1);
    for (std::uint64_t i = 0; i < 35; ++i) {
      const IoPattern::Io io = p.next();
      EXPECT_EQ(io.block, i % 10) << to_string(rw) << " IO " << i;
      EXPECT_EQ(io.write, rw == Rw::write);
    }
  }
  // rw: reads and writes interleaved by the mix, each direction walking the region in order
  // (fio keeps a position per direction: io_u.c, last_pos[ddir]).
  IoPattern p(Rw::rw, 50, 100, 7);
  std::uint64_t next[2] = {0, 0};
  unsigned n[2] = {0, 0};
  bool switched = false, last = false;
  for (int i = 0; i < 1000; ++i) {
    const IoPattern::Io io = p.next();
    const unsigned d = io.write ? 1 : 0;
    EXPECT_EQ(io.block, next[d]) << "IO " << i << (io.write ? " (write)" : " (read)");
    next[d] = (next[d] + 1) % 100;
    ++n[d];
    if (i > 0 && io.write != last) switched = true;
    last = io.write;
  }
  EXPECT_GT(n[0], 400u);
  EXPECT_GT(n[1], 400u);
  EXPECT_TRUE(switched) << "reads and writes interleave";
}

TEST(PerfPattern, RandomJobsAreRandomAndInTheRegion) {
  for (Rw rw : {Rw::randread, Rw::randwrite, Rw::randrw}) {
    IoPattern p(rw, 50, 1000, 3);
    std::set<std::uint64_t> seen;
    unsigned in_order = 0;
    std::uint64_t prev = 0;
    for (int i = 0; i < 2000; ++i) {
      const IoPattern::Io io = p.next();
      ASSERT_LT(io.block, 1000u);
      if (i > 0 && io.block == prev + 1) ++in_order;
      prev = io.block;
      seen.insert(io.block);
      if (rw == Rw::randread) {
        EXPECT_FALSE(io.write);
      }
      if (rw == Rw::randwrite) {
        EXPECT_TRUE(io.write);
      }
    }
    EXPECT_LT(in_order, 20u) << to_string(rw);
    EXPECT_GT(seen.size(), 500u) << to_string(rw);
    EXPECT_LT(p.redraw(), 1000u);
  }
}

TEST(PerfPattern, MixRatio) {
  for (Rw rw : {Rw::rw, Rw::randrw}) {
    for (unsigned mix : {0u, 30u, 70u, 100u}) {
      IoPattern p(rw, mix, 4096, 11);
      constexpr int kIos = 100000;
      int reads = 0;
      for (int i = 0; i < kIos; ++i) reads += p.next().write ? 0 : 1;
      EXPECT_NEAR(100.0 * reads / kIos, mix, 1.0) << to_string(rw) << " rwmixread=" << mix;
    }
  }
}

// --rate_iops against a clock the test moves: no sleeping, no wall time.
TEST(PerfRate, PacerSpacesSubmissions) {
  const Clock::time_point t0{std::chrono::seconds(100)};
  using std::chrono::microseconds;
  RatePacer none;
  EXPECT_FALSE(none.capped());
  EXPECT_LE(none.due(), t0);
  RatePacer p(1000, t0, 4);
  ASSERT_TRUE(p.capped());
  EXPECT_EQ(p.due(), t0);
  p.take(t0);
  EXPECT_EQ(p.due(), t0 + microseconds(1000));
  p.take(t0 + microseconds(1000));
  p.take(t0 + microseconds(2500));  // late: the next one's time is still the schedule's
  EXPECT_EQ(p.due(), t0 + microseconds(3000));

  // A job that submits whenever it may, on a clock stepping 10 us: 1000 IOPS, not more.
  RatePacer q(1000, t0, 16);
  unsigned taken = 0;
  for (auto now = t0; now < t0 + std::chrono::seconds(2); now += microseconds(10)) {
    while (q.due() <= now) {
      q.take(now);
      ++taken;
    }
  }
  EXPECT_EQ(taken, 2000u);

  // 250 IOPS, each IO taken when due: after 250 of them the next is due at 1 s (no drift).
  RatePacer r(250, t0, 1);
  for (int i = 0; i < 250; ++i) r.take(std::max(r.due(), t0));
  EXPECT_EQ(r.due(), t0 + std::chrono::seconds(1));
}

TEST(PerfRate, AStallIsCaughtUpByAtMostABurst) {
  const Clock::time_point t0{std::chrono::seconds(5)};
  RatePacer p(1000, t0, 4);
  p.take(t0);
  const auto later = t0 + std::chrono::milliseconds(100);  // 99 IOs behind
  unsigned now_ok = 0;
  while (p.due() <= later && now_ok < 1000) {
    p.take(later);
    ++now_ok;
  }
  EXPECT_EQ(now_ok, 4u) << "a burst of iodepth, not 99";
  EXPECT_EQ(p.due(), later + std::chrono::milliseconds(1));
}

TEST(PerfRate, WaitsBlockWhenTheGapIsLong) {
  using std::chrono::microseconds;
  EXPECT_EQ(pace_wait(Clock::duration::zero(), 3), PaceWait::none);
  EXPECT_EQ(pace_wait(-microseconds(5), 0), PaceWait::none);
  EXPECT_EQ(pace_wait(microseconds(5000), 3), PaceWait::interrupt)
      << "IO in flight: halt until its interrupt or the submission's time";
  EXPECT_EQ(pace_wait(microseconds(5000), 0), PaceWait::sleep);
  EXPECT_EQ(pace_wait(microseconds(200), 0), PaceWait::sleep);
  EXPECT_EQ(pace_wait(microseconds(200), 2), PaceWait::poll)
      << "a short gap with IO in flight: its completion is timed";
}

// --ramp_time: IOs taken before the ramp's end are done but not counted.
TEST(PerfRamp, IosOfTheRampAreNotCounted) {
  using std::chrono::microseconds;
  const Clock::time_point t0{std::chrono::seconds(1)};
  const auto from = t0 + std::chrono::milliseconds(100);
  Recorder rec(from);
  EXPECT_FALSE(rec.counts(t0));
  EXPECT_FALSE(rec.counts(from - microseconds(1)));
  EXPECT_TRUE(rec.counts(from));
  // Taken during the ramp, completed after it: a ramp IO.
  rec.complete(false, 4096, from - microseconds(30), from - microseconds(20),
               from + microseconds(50));
  rec.complete(true, 4096, t0, t0 + microseconds(1), t0 + microseconds(9));
  EXPECT_EQ(rec.ramp_ios, 2u);
  EXPECT_EQ(rec.read.ios + rec.write.ios, 0u);
  EXPECT_EQ(rec.read.clat.count(), 0u);
  // After it: counted, with fio's three latencies.
  rec.complete(false, 4096, from, from + microseconds(2), from + microseconds(12));
  rec.complete(true, 8192, from + microseconds(5), from + microseconds(8),
               from + microseconds(108));
  EXPECT_EQ(rec.ramp_ios, 2u);
  EXPECT_EQ(rec.read.ios, 1u);
  EXPECT_EQ(rec.read.bytes, 4096u);
  EXPECT_EQ(rec.read.slat.max(), 2000u);
  EXPECT_EQ(rec.read.clat.max(), 10000u);
  EXPECT_EQ(rec.read.lat.max(), 12000u);
  EXPECT_EQ(rec.write.ios, 1u);
  EXPECT_EQ(rec.write.bytes, 8192u);
  EXPECT_EQ(rec.write.slat.min(), 3000u);
  EXPECT_EQ(rec.write.clat.min(), 100000u);
  EXPECT_EQ(rec.write.lat.min(), 103000u);
}

TEST(PerfHistogram, Percentiles) {
  Histogram h;
  for (std::uint64_t v = 1; v <= 10000; ++v) h.add(v * 1000);
  EXPECT_EQ(h.count(), 10000u);
  EXPECT_EQ(h.min(), 1000u);
  EXPECT_EQ(h.max(), 10'000'000u);
  EXPECT_NEAR(h.mean(), 5'000'500.0, 1.0);
  EXPECT_NEAR(static_cast<double>(h.percentile(0.5)), 5e6, 5e6 * 0.02);
  EXPECT_NEAR(static_cast<double>(h.percentile(0.99)), 9.9e6, 9.9e6 * 0.02);
  EXPECT_LE(h.percentile(1.0), h.max());
  EXPECT_NEAR(h.stddev(), 2886751.3, 1.0);  // population stddev of 1..10000 us
  Histogram small;
  small.add(7);
  EXPECT_EQ(small.percentile(0.5), 7u);
  EXPECT_EQ(small.stddev(), 0.0);
  EXPECT_EQ(Histogram{}.stddev(), 0.0);
}

// The JSON of a run, checked against fio's layout: keys and their JSON types.
void expect_fio_job(const nlohmann::json& job) {
  using nlohmann::json;
  ASSERT_TRUE(job.is_object());
  EXPECT_TRUE(job["jobname"].is_string());
  EXPECT_TRUE(job["groupid"].is_number_integer());
  EXPECT_EQ(job["error"], 0);
  ASSERT_TRUE(job["job options"].is_object());
  for (const auto& [k, v] : job["job options"].items()) EXPECT_TRUE(v.is_string()) << k;
  EXPECT_EQ(job["job options"]["name"], job["jobname"]);
  for (const char* dir : {"read", "write", "trim"}) {
    const json& d = job[dir];
    ASSERT_TRUE(d.is_object()) << dir;
    for (const char* k : {"io_bytes", "io_kbytes", "bw_bytes", "bw", "runtime", "total_ios"}) {
      EXPECT_TRUE(d[k].is_number_integer()) << dir << "." << k;
    }
    EXPECT_TRUE(d["iops"].is_number()) << dir;
    EXPECT_EQ(d["io_kbytes"].get<std::uint64_t>(), d["io_bytes"].get<std::uint64_t>() / 1024);
    EXPECT_EQ(d["bw"].get<std::uint64_t>(), d["bw_bytes"].get<std::uint64_t>() / 1024)
        << "fio's bw is KiB/s";
    for (const char* lat : {"slat_ns", "clat_ns", "lat_ns"}) {
      for (const char* k : {"min", "max", "N"}) {
        EXPECT_TRUE(d[lat][k].is_number_integer()) << dir << "." << lat << "." << k;
      }
      for (const char* k : {"mean", "stddev"}) {
        EXPECT_TRUE(d[lat][k].is_number()) << dir << "." << lat << "." << k;
      }
    }
    for (const char* k : {"1.000000", "5.000000", "10.000000", "50.000000", "90.000000",
                          "95.000000", "99.000000", "99.900000", "99.990000"}) {
      EXPECT_TRUE(d["clat_ns"]["percentile"][k].is_number_integer()) << dir << " clat " << k;
    }
  }
  for (const char* k : {"usr_cpu", "sys_cpu"}) EXPECT_TRUE(job[k].is_number()) << k;
  for (const char* k : {"ctx", "majf", "minf", "job_runtime", "elapsed"}) {
    EXPECT_TRUE(job[k].is_number_integer()) << k;
  }
  const json& keel = job["keel"];
  for (const char* k :
       {"path_switches", "vf_returns", "vf_ios", "fallback_ios", "host_cpu_ns", "ramp_ios"}) {
    EXPECT_TRUE(keel[k].is_number_integer()) << "keel." << k;
  }
  for (const char* k : {"host_cpu_ns_per_io", "iops", "peak_rss_mib", "elapsed"}) {
    EXPECT_TRUE(keel[k].is_number()) << "keel." << k;
  }
  for (const char* k : {"p50", "p90", "p99", "p99.9"}) EXPECT_TRUE(keel["lat_ns_all"].contains(k));
  EXPECT_TRUE(keel["path"].is_string());
}

PathResult fake_result(const std::string& path) {
  PathResult r;
  r.path = path;
  r.card = "model";
  r.seconds = 2.0;
  r.ramp_seconds = 0.5;
  const auto t = Clock::time_point{std::chrono::seconds(1)};
  Recorder rec(t);
  for (int i = 0; i < 300; ++i) {
    const auto at = t + std::chrono::microseconds(10 * i);
    rec.complete(i % 3 == 0, 4096, at, at + std::chrono::microseconds(1),
                 at + std::chrono::microseconds(20 + i % 50));
  }
  r.read = rec.read;
  r.write = rec.write;
  r.ramp_ios = 17;
  r.host_cpu_ns = 3'000'000;
  r.job_usr_ns = 500'000'000;  // a quarter of 2 s
  r.job_sys_ns = 200'000'000;
  r.job_ctx = 42;
  r.job_threads = 1;
  r.path_switches = 1;
  r.vf_returns = 1;
  r.vf_ios = 250;
  r.fallback_ios = 67;
  return r;
}

TEST(PerfJson, FioLayout) {
  auto inv = parse({"--rw", "randrw", "--rwmixread", "70", "--rate_iops", "1000,500", "--ramp_time",
                    "500ms", "--runtime", "2s"});
  ASSERT_TRUE(inv.ok());
  Point p{inv->config, {fake_result("vf"), fake_result("fallback")}};
  // Through text, as a tool reads the file.
  const auto doc = nlohmann::json::parse(document({p}, "").dump(2));
  EXPECT_EQ(doc["fio version"], "keel-perf-0.1");
  EXPECT_TRUE(doc["timestamp"].is_number_integer());
  EXPECT_TRUE(doc["timestamp_ms"].is_number_integer());
  EXPECT_TRUE(doc["time"].is_string());
  ASSERT_TRUE(doc["global options"].is_object());
  for (const auto& [k, v] : doc["global options"].items()) EXPECT_TRUE(v.is_string()) << k;
  EXPECT_EQ(doc["global options"]["rw"], "randrw");
  EXPECT_EQ(doc["global options"]["rwmixread"], "70");
  EXPECT_EQ(doc["global options"]["rate_iops"], "1000,500");
  EXPECT_EQ(doc["global options"]["ramp_time"], "500ms");
  EXPECT_EQ(doc["global options"]["runtime"], "2000ms");
  ASSERT_TRUE(doc["jobs"].is_array());
  ASSERT_EQ(doc["jobs"].size(), 2u);
  EXPECT_EQ(doc["jobs"][0]["jobname"], "vf");
  EXPECT_EQ(doc["jobs"][1]["jobname"], "fallback");
  EXPECT_NE(doc["jobs"][0]["groupid"], doc["jobs"][1]["groupid"]);
  for (const auto& job : doc["jobs"]) expect_fio_job(job);
  const auto& job = doc["jobs"][0];
  EXPECT_EQ(job["read"]["total_ios"], 200);
  EXPECT_EQ(job["write"]["total_ios"], 100);
  EXPECT_EQ(job["read"]["io_bytes"], 200 * 4096);
  EXPECT_EQ(job["read"]["runtime"], 2000);
  EXPECT_DOUBLE_EQ(job["read"]["iops"].get<double>(), 100.0);
  EXPECT_EQ(job["read"]["bw"], 200 * 4 / 2);
  EXPECT_EQ(job["trim"]["total_ios"], 0);
  EXPECT_EQ(job["read"]["slat_ns"]["max"], 1000);
  EXPECT_GE(job["read"]["clat_ns"]["percentile"]["99.000000"].get<std::uint64_t>(),
            job["read"]["clat_ns"]["percentile"]["50.000000"].get<std::uint64_t>());
  EXPECT_DOUBLE_EQ(job["usr_cpu"].get<double>(), 25.0);
  EXPECT_DOUBLE_EQ(job["sys_cpu"].get<double>(), 10.0);
  EXPECT_EQ(job["ctx"], 42);
  EXPECT_EQ(job["keel"]["ramp_ios"], 17);
  EXPECT_EQ(job["keel"]["path_switches"], 1);
  EXPECT_EQ(job["keel"]["vf_returns"], 1);
  EXPECT_EQ(job["keel"]["rate_iops"], nlohmann::json({1000, 500}));
  EXPECT_EQ(doc["keel"]["options"]["iodepth"], 16);
  EXPECT_TRUE(doc["keel"]["ratios"].contains("iops_vf_over_fallback"));
  EXPECT_NE(text_report(p).find("rate_iops=1000,500"), std::string::npos);
  EXPECT_NE(text_report(p).find("ramp_time=500ms"), std::string::npos);
}

TEST(PerfJson, SweepListsEveryPointsJobs) {
  auto inv = parse({"--sweep", "iodepth=1,8"});
  ASSERT_TRUE(inv.ok());
  std::vector<Point> points;
  for (unsigned qd : {1u, 8u}) {
    Config c = inv->config;
    c.iodepth = qd;
    points.push_back({c, {fake_result("vf"), fake_result("fallback")}});
  }
  const auto doc = document(points, "iodepth");
  ASSERT_EQ(doc["jobs"].size(), 4u);
  EXPECT_EQ(doc["jobs"][0]["jobname"], "vf iodepth=1");
  EXPECT_EQ(doc["jobs"][3]["jobname"], "fallback iodepth=8");
  for (const auto& job : doc["jobs"]) expect_fio_job(job);
  ASSERT_EQ(doc["sweep"]["points"].size(), 2u);
  EXPECT_EQ(doc["sweep"]["param"], "iodepth");
  EXPECT_EQ(doc["sweep"]["points"][1]["options"]["iodepth"], 8);
  EXPECT_EQ(doc["sweep"]["points"][1]["jobs"][0]["keel"]["path"], "vf");
}

// A short verified randrw run on each path, and the JSON keys a fio user expects.
TEST(PerfRun, VerifiedRunOnBothPathsAndItsJson) {
  auto inv = parse({"--card", "model", "--rw", "randrw", "--bs", "4k", "--iodepth", "8", "--size",
                    "2m", "--verify", "--path", "both", "--no-progress"});
  ASSERT_TRUE(inv.ok());
  auto stack = Stack::open(inv->config);
  ASSERT_TRUE(stack.ok()) << to_string(stack.error());
  Point p{inv->config, {}};
  for (bool vf : {true, false}) {
    auto r = (*stack)->run(inv->config, vf, nullptr);
    ASSERT_TRUE(r.ok()) << to_string(r.error());
    EXPECT_EQ(r->path, vf ? "vf" : "fallback");
    EXPECT_EQ(r->ios(), (2u << 20) / 4096) << "--size without --runtime is the amount";
    EXPECT_GT(r->read.ios, 0u);
    EXPECT_GT(r->write.ios, 0u);
    EXPECT_GT(r->verified_blocks, 0u);
    EXPECT_EQ(r->verify_errors, 0u);
    EXPECT_GT(r->host_cpu_ns, 0u);
    EXPECT_EQ(r->path_switches, 0u);
    if (vf) {
      // The free-running model card's thread did the VF path's work: its schedstat is read.
      EXPECT_TRUE(r->card_thread);
      EXPECT_GT(r->card_run_ns, 0u);
      EXPECT_GE(r->card_wait_share(), 0.0);
      EXPECT_LE(r->card_wait_share(), 1.0);
    }
    p.paths.push_back(std::move(r).value());
  }
  const auto doc = document({p}, "");
  ASSERT_TRUE(doc["jobs"][0]["keel"].contains("card_thread"));
  for (const char* k : {"run_ns", "wait_ns", "wait_share", "starved"}) {
    EXPECT_TRUE(doc["jobs"][0]["keel"]["card_thread"].contains(k)) << k;
  }
  EXPECT_EQ(doc["fio version"], "keel-perf-0.1");
  ASSERT_EQ(doc["jobs"].size(), 2u);
  for (const auto& job : doc["jobs"]) {
    for (const char* dir : {"read", "write"}) {
      const auto& d = job[dir];
      for (const char* k : {"io_bytes", "bw_bytes", "iops", "runtime", "total_ios"}) {
        EXPECT_TRUE(d.contains(k)) << dir << "." << k;
      }
      for (const char* k : {"min", "max", "mean"}) EXPECT_TRUE(d["lat_ns"].contains(k)) << k;
      for (const char* k : {"50.000000", "90.000000", "99.000000", "99.900000"}) {
        EXPECT_TRUE(d["clat_ns"]["percentile"].contains(k)) << k;
      }
      EXPECT_GT(d["total_ios"].get<std::uint64_t>(), 0u) << dir;
      EXPECT_GT(d["clat_ns"]["min"].get<std::uint64_t>(), 0u) << dir;
    }
    EXPECT_TRUE(job["keel"].contains("host_cpu_ns_per_io"));
    EXPECT_EQ(job["keel"]["verify"]["errors"], 0);
    expect_fio_job(job);
  }
  for (const char* k :
       {"iops_vf_over_fallback", "cpu_per_io_vf_over_fallback", "p99_vf_over_fallback"}) {
    EXPECT_TRUE(doc["keel"]["ratios"].contains(k)) << k;
    EXPECT_GT(doc["keel"]["ratios"][k].get<double>(), 0.0) << k;
  }
  EXPECT_NE(text_report(p).find("accelerated / fallback"), std::string::npos);
}

// A read-only --verify run verifies: keel-perf fills the region with a known pattern before the
// timed phase, so every read is checked, and it counts what it checked.
TEST(PerfRun, ReadOnlyVerifyChecksEveryRead) {
  for (const char* rw : {"randread", "read"}) {
    auto inv = parse({"--card", "model", "--rw", rw, "--bs", "4k", "--iodepth", "8", "--size", "1m",
                      "--verify", "--path", "both", "--no-progress"});
    ASSERT_TRUE(inv.ok());
    auto stack = Stack::open(inv->config);
    ASSERT_TRUE(stack.ok()) << to_string(stack.error());
    for (bool vf : {true, false}) {
      auto r = (*stack)->run(inv->config, vf, nullptr);
      ASSERT_TRUE(r.ok()) << to_string(r.error());
      EXPECT_EQ(r->read.ios, (1u << 20) / 4096) << rw << " " << r->path;
      EXPECT_EQ(r->write.ios, 0u) << "the prefill is not part of the measured IO";
      EXPECT_GE(r->verified_blocks, r->read.ios) << rw << " " << r->path << ": every read checked";
      EXPECT_EQ(r->verify_errors, 0u);
      EXPECT_NE(text_report({inv->config, {*r}})
                    .find("verify: " + std::to_string(r->verified_blocks) + " blocks checked"),
                std::string::npos);
    }
  }
}

// Sequential and mixed jobs, verified on both paths: rw's reads check what its writes wrote.
TEST(PerfRun, SequentialJobsVerifyOnBothPaths) {
  for (const char* rw : {"rw", "readwrite", "write"}) {
    auto inv = parse({"--card", "model", "--rw", rw, "--bs", "4k", "--iodepth", "8", "--size", "1m",
                      "--verify", "--path", "both", "--no-progress"});
    ASSERT_TRUE(inv.ok());
    auto stack = Stack::open(inv->config);
    ASSERT_TRUE(stack.ok()) << to_string(stack.error());
    for (bool vf : {true, false}) {
      auto r = (*stack)->run(inv->config, vf, nullptr);
      ASSERT_TRUE(r.ok()) << rw << ": " << to_string(r.error());
      EXPECT_EQ(r->ios(), (1u << 20) / 4096) << rw << " " << r->path;
      if (std::string(rw) != "write") {
        EXPECT_GT(r->read.ios, 0u) << rw;
        EXPECT_GT(r->write.ios, 0u) << rw;
      }
      EXPECT_GT(r->verified_blocks, 0u);
      EXPECT_EQ(r->verify_errors, 0u);
    }
  }
}

// --ramp_time runs first and is not counted; --size is the amount after it (as fio). The ramp's
// length on this machine does not matter to what is checked.
TEST(PerfRun, RampIsDoneButNotCounted) {
  auto inv = parse({"--card", "model", "--rw", "randread", "--bs", "4k", "--iodepth", "4", "--size",
                    "256k", "--ramp_time", "30ms", "--path", "vf", "--no-progress"});
  ASSERT_TRUE(inv.ok());
  auto stack = Stack::open(inv->config);
  ASSERT_TRUE(stack.ok()) << to_string(stack.error());
  auto r = (*stack)->run(inv->config, true, nullptr);
  ASSERT_TRUE(r.ok()) << to_string(r.error());
  EXPECT_EQ(r->read.ios, 64u) << "--size counts from the ramp's end";
  EXPECT_EQ(r->read.clat.count(), 64u);
  EXPECT_DOUBLE_EQ(r->ramp_seconds, 0.03);
  EXPECT_GE(r->vf_ios, r->read.ios + r->ramp_ios) << "the ramp's IOs were done";
  const auto doc = document({{inv->config, {*r}}}, "");
  EXPECT_EQ(doc["jobs"][0]["keel"]["ramp_ios"], r->ramp_ios);
  EXPECT_EQ(doc["jobs"][0]["job options"]["ramp_time"], "30ms");
  EXPECT_EQ(doc["jobs"][0]["read"]["total_ios"], 64);
}

// --rate_iops caps a job: the n-th IO goes no earlier than n / rate after the start, so however
// fast or slow this machine is, n IOs take at least (n - 1) / rate.
TEST(PerfRun, RateIopsCapsTheJob) {
  auto inv = parse({"--card", "model", "--rw", "randread", "--bs", "4k", "--iodepth", "8", "--size",
                    "256k", "--rate_iops", "2000", "--path", "both", "--no-progress"});
  ASSERT_TRUE(inv.ok());
  auto stack = Stack::open(inv->config);
  ASSERT_TRUE(stack.ok()) << to_string(stack.error());
  for (bool vf : {true, false}) {
    auto r = (*stack)->run(inv->config, vf, nullptr);
    ASSERT_TRUE(r.ok()) << to_string(r.error());
    EXPECT_EQ(r->read.ios, 64u);
    EXPECT_LE(r->iops(), 2000.0 * 64 / 63) << r->path;
    EXPECT_GE(r->seconds, 63 / 2000.0) << r->path;
  }
}

// --card-rt puts the model card's thread at SCHED_FIFO 1 (root here; without CAP_SYS_NICE the
// run says why not), and the report and JSON say which it was.
TEST(PerfRun, CardRtSaysWhatTheCardThreadGot) {
  auto inv = parse({"--card", "model", "--rw", "randread", "--size", "256k", "--path", "vf",
                    "--card-rt", "--no-progress"});
  ASSERT_TRUE(inv.ok());
  EXPECT_TRUE(inv->config.card_rt);
  auto stack = Stack::open(inv->config);
  ASSERT_TRUE(stack.ok()) << to_string(stack.error());
  auto r = (*stack)->run(inv->config, true, nullptr);
  ASSERT_TRUE(r.ok()) << to_string(r.error());
  sched_param sp{};
  int policy = -1;
  if (r->card_rt == "SCHED_FIFO 1") {
    policy = ::sched_getscheduler((*stack)->card().thread_id());
    EXPECT_EQ(policy, SCHED_FIFO);
    EXPECT_EQ(::sched_getparam((*stack)->card().thread_id(), &sp), 0);
    EXPECT_EQ(sp.sched_priority, 1);
  } else {
    EXPECT_EQ(r->card_rt.rfind("not real-time: ", 0), 0u) << r->card_rt;
  }
  if (r->card_thread) {
    const auto doc = document({{inv->config, {*r}}}, "");
    EXPECT_EQ(doc["jobs"][0]["keel"]["card_thread"]["realtime"], r->card_rt);
  }
}

TEST(PerfRun, DefaultCardIsTheReferenceModel) {
  auto inv = parse({"--size", "256k", "--path", "vf", "--no-progress"});
  ASSERT_TRUE(inv.ok());
  auto stack = Stack::open(inv->config);
  ASSERT_TRUE(stack.ok()) << to_string(stack.error());
  EXPECT_EQ((*stack)->card_spec(), "model");
  auto r = (*stack)->run(inv->config, true, nullptr);
  ASSERT_TRUE(r.ok()) << to_string(r.error());
  EXPECT_FALSE(r->rtl);
  EXPECT_FALSE(document({{inv->config, {*r}}}, "")["jobs"][0]["keel"].contains("rtl_card"))
      << "the model's cycle counter is wall time: no RTL projection from it";
}

// On the Verilated card the run also reports the card's own clock: commands, cycles, the data
// mover's cycles per 4 KiB command (64 beats of 64 bytes at least) and what they project.
TEST(PerfRun, RtlCardReportsCyclesPerCommand) {
  const auto backends = fpga::test_backends();
  if (std::find(backends.begin(), backends.end(), "sim") == backends.end()) {
    GTEST_SKIP() << "this build has no Verilated card";
  }
  auto inv = parse({"--card", "sim", "--path", "vf", "--rw", "randread", "--bs", "4k", "--iodepth",
                    "8", "--size", "128k", "--no-progress"});
  ASSERT_TRUE(inv.ok());
  auto stack = Stack::open(inv->config);
  ASSERT_TRUE(stack.ok()) << to_string(stack.error());
  auto r = (*stack)->run(inv->config, true, nullptr);
  ASSERT_TRUE(r.ok()) << to_string(r.error());
  EXPECT_TRUE(r->rtl);
  EXPECT_GE(r->card_commands, (128u << 10) / 4096) << "every read, and the queues' setup";
  EXPECT_EQ(r->clock_mhz, 250u);
  EXPECT_GE(r->busy_cycles_per_cmd(), 64.0);
  EXPECT_GE(r->cycles_per_cmd(), r->busy_cycles_per_cmd());
  EXPECT_NEAR(r->projected_iops(), 250e6 / r->busy_cycles_per_cmd(), 1.0);
  const auto doc = document({{inv->config, {*r}}}, "");
  const auto& card = doc["jobs"][0]["keel"]["rtl_card"];
  for (const char* k : {"commands", "cycles", "busy_cycles", "clock_mhz", "cycles_per_cmd",
                        "busy_cycles_per_cmd", "projected_iops", "sim_cycles_per_s"}) {
    EXPECT_TRUE(card.contains(k)) << k;
  }
  EXPECT_NE(text_report({inv->config, {*r}}).find("RTL card: data mover"), std::string::npos);
}

TEST(PerfRun, FallbackIsRefusedOnARealBoard) {
  auto inv = parse({"--card", "vfio:0000:3b:00.1", "--path", "both"});
  ASSERT_TRUE(inv.ok());
  auto stack = Stack::open(inv->config);
  ASSERT_FALSE(stack.ok());
  EXPECT_NE(stack.error().message.find("--path vf"), std::string::npos);
}

}  // namespace
}  // namespace keel::perf
