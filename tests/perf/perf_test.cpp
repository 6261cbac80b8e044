// keel-perf: option parsing and its errors, the JSON it writes, and a short verified run on
// each path of the model card.
#include <gtest/gtest.h>

#include <algorithm>
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

TEST(PerfOptions, Sweeps) {
  auto r = parse({"--sweep", "iodepth=1,4,16,64,256"});
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->sweep.has_value());
  EXPECT_EQ(r->sweep->param, "iodepth");
  EXPECT_EQ(r->sweep->values, (std::vector<std::uint64_t>{1, 4, 16, 64, 256}));
  r = parse({"--sweep", "bs=512,4k,128k"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->sweep->values, (std::vector<std::uint64_t>{512, 4096, 131072}));
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
  Histogram small;
  small.add(7);
  EXPECT_EQ(small.percentile(0.5), 7u);
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
    p.paths.push_back(std::move(r).value());
  }
  const auto doc = document({p}, "");
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
        EXPECT_TRUE(d["lat_ns"]["percentile"].contains(k)) << k;
      }
    }
    EXPECT_TRUE(job.contains("host_cpu_ns_per_io"));
    EXPECT_EQ(job["verify"]["errors"], 0);
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

TEST(PerfRun, DefaultCardIsTheReferenceModel) {
  auto inv = parse({"--size", "256k", "--path", "vf", "--no-progress"});
  ASSERT_TRUE(inv.ok());
  auto stack = Stack::open(inv->config);
  ASSERT_TRUE(stack.ok()) << to_string(stack.error());
  EXPECT_EQ((*stack)->card_spec(), "model");
  auto r = (*stack)->run(inv->config, true, nullptr);
  ASSERT_TRUE(r.ok()) << to_string(r.error());
  EXPECT_FALSE(r->rtl);
  EXPECT_FALSE(document({{inv->config, {*r}}}, "")["jobs"][0].contains("rtl_card"))
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
  const auto& card = doc["jobs"][0]["rtl_card"];
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
