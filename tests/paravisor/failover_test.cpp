// Failover under load: the VF goes away (surprise removal announced by the host or noticed only
// by the driver, FLR, fatal status, stuck commands) while the guest writes; every request completes
// OK, no write is lost or duplicated, traffic moves to the host path and back, and every transition
// is logged with its reason.
#include <chrono>
#include <random>
#include <set>

#include "paravisor_fixture.h"

namespace keel::testing {
namespace {

using vmm::PathState;

enum class Fault { surprise_removal, silent_removal, flr, fatal, stuck };

// Backend, fault, and whether the guest is confidential.
using FailoverParam = std::tuple<std::string, Fault, bool>;

std::string fault_name(const ::testing::TestParamInfo<FailoverParam>& info) {
  static const char* names[] = {"surprise_removal", "silent_removal", "flr", "fatal", "stuck"};
  std::string b = std::get<0>(info.param);
  for (char& c : b) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return b + "_" + names[static_cast<int>(std::get<1>(info.param))] +
         (std::get<2>(info.param) ? "_confidential" : "");
}

class Failover : public ::testing::TestWithParam<FailoverParam>, public ParavisorTest {
 protected:
  void SetUp() override {
    if (!open_backend(std::get<0>(GetParam()))) GTEST_SKIP() << "needs a simulated card";
  }
};

TEST_P(Failover, UnderLoadNothingIsLostOrDuplicated) {
  const Fault fault = std::get<1>(GetParam());
  const bool confidential = std::get<2>(GetParam());
  vmm::ParavisorConfig cfg;
  cfg.confidential = confidential;
  cfg.command_timeout = std::chrono::milliseconds(20);
  cfg.admin_timeout = std::chrono::milliseconds(20);
  cfg.probe_interval = std::chrono::milliseconds(5);
  // Nobody announces this removal and no command may time out: the driver's health check
  // alone must notice the device is gone (and the probe that it is back).
  if (fault == Fault::silent_removal) cfg.command_timeout = std::chrono::hours(1);
  // A card that runs on its own (in another process, the Verilated one ~1M cycles/s) counts
  // the timeout in host time, which a loaded machine stretches: a second there, so that only
  // stuck commands trip it (and the command held back before the fault, below, does not).
  // Admin commands too: a bring-up on the Verilated card under CI's load once took over 20 ms,
  // and the guest that must never leave its VF started on the host path.
  if (!card_->lockstep()) cfg.admin_timeout = std::chrono::seconds(1);
  if (!card_->lockstep() && fault != Fault::silent_removal) {
    cfg.command_timeout = std::chrono::seconds(1);
  }
  make_guests(2, cfg);
  Guest& g = guests_[0];

  // The guest keeps 32 writes in flight over 512 blocks of 4 KiB, each write carrying a
  // version number; the expected final content is the last version written per block.
  constexpr unsigned kBlocks = 512, kDepth = 32, kWrites = 3000;
  const std::uint64_t buf = g.drv->alloc(std::uint64_t{kDepth} * 4096 * 2);
  std::vector<std::uint32_t> version(kBlocks, 0);
  std::map<std::uint16_t, std::pair<unsigned, unsigned>> inflight;  // id -> block, slot
  std::vector<unsigned> free_slots;
  for (unsigned s = 0; s < kDepth * 2; ++s) free_slots.push_back(s);
  std::set<unsigned> busy_blocks;
  std::mt19937 rng(7);
  unsigned issued = 0, completed = 0;
  bool holding = false, faulted = false, restored = false;
  std::uint64_t moved_at_hold = 0;
  auto vf_bytes = [&] { return card_->pf().read64(regs::vfcfg::at(g.vf, regs::vfcfg::BYTES)); };
  fpga::FaultInjector& fi = *card_->faults();
  vmm::GuestCompletion c[64];
  // Bounded by turns of the lockstep card; a turn that leaves the writes only at the host
  // service waits for it (host_progressed).
  for (unsigned turns = 0; completed < kWrites && turns < 3'000'000; ++turns) {
    while (issued < kWrites && inflight.size() < kDepth) {
      unsigned block = rng() % kBlocks;
      if (busy_blocks.count(block) != 0) continue;  // one write per block at a time
      const unsigned slot = free_slots.back();
      free_slots.pop_back();
      const std::uint32_t v = ++version[block];
      fill_pattern(g.drv->host(buf + slot * 4096ull, 4096), 4096, block * 8, v);
      auto id = g.drv->submit(0, blk::kOut, block * 8ull,
                              std::vector<vmm::DataSeg>{{buf + slot * 4096ull, 4096}});
      ASSERT_TRUE(id.ok());
      inflight[*id] = {block, slot};
      busy_blocks.insert(block);
      ++issued;
    }
    g.drv->kick(0);
    turn();
    const unsigned n = g.drv->reap(0, c);
    for (unsigned i = 0; i < n; ++i) {
      ASSERT_EQ(c[i].status, blk::kStatusOk) << "the guest saw an error";
      auto it = inflight.find(c[i].id);
      ASSERT_NE(it, inflight.end());
      busy_blocks.erase(it->second.first);
      free_slots.push_back(it->second.second);
      inflight.erase(it);
      ++completed;
    }
    if (n == 0 && !host_progressed(g)) break;
    // Before the fault, the card holds back the next completion of the VF, and the fault
    // comes once the card has moved data since: a command is then in flight at the fault on
    // every card, lockstep or running on its own (in another process). Stuck commands are in
    // flight by themselves (and found by the timeout a held one would trip).
    if (!holding && completed >= kWrites / 3) {
      holding = true;
      if (fault != Fault::stuck) {
        KEEL_ASSERT_OK(fi.delay_completions(g.vf, 1, std::chrono::seconds(2)));
      }
      moved_at_hold = vf_bytes();
    }
    if (holding && !faulted && (fault == Fault::stuck || vf_bytes() > moved_at_hold)) {
      faulted = true;
      switch (fault) {
        case Fault::surprise_removal:
          KEEL_ASSERT_OK(fi.surprise_remove(g.vf));
          g.pv->vf_removed("hot-remove announced by the host");
          break;
        case Fault::silent_removal: KEEL_ASSERT_OK(fi.surprise_remove(g.vf)); break;
        case Fault::flr: KEEL_ASSERT_OK(card_->vf(g.vf).value()->flr()); break;
        case Fault::fatal: KEEL_ASSERT_OK(fi.raise_fatal(g.vf)); break;
        case Fault::stuck: KEEL_ASSERT_OK(fi.drop_completions(g.vf, 5)); break;
      }
    }
    if (faulted && !restored && g.pv->state() == PathState::fallback) {
      restored = true;
      if (fault == Fault::surprise_removal) {
        KEEL_ASSERT_OK(fi.restore(g.vf));
        g.pv->vf_arrived();
      } else if (fault == Fault::silent_removal) {
        KEEL_ASSERT_OK(fi.restore(g.vf));
      }
    }
  }
  ASSERT_EQ(completed, kWrites);
  // Let the paravisor move back to the VF, then verify every block through the guest.
  for (unsigned t = 0; t < 200'000 && g.pv->state() != PathState::active; ++t) turn();
  EXPECT_EQ(g.pv->state(), PathState::active);
  for (unsigned block = 0; block < kBlocks; ++block) {
    if (version[block] == 0) continue;
    const std::uint64_t rb = buf;
    ASSERT_EQ(run(g, blk::kIn, block * 8ull, {{rb, 4096}}), blk::kStatusOk);
    ASSERT_EQ(check_pattern(g.drv->host(rb, 4096), 4096, block * 8, version[block]), -1)
        << "block " << block << " does not hold version " << version[block];
  }
  const auto k = g.pv->counters();
  EXPECT_EQ(k.errors, 0u);
  EXPECT_EQ(k.to_fallback, 1u);
  EXPECT_EQ(k.to_vf, 1u);
  EXPECT_GT(k.fallback_ios, 0u) << "the host path carried IO";
  if (confidential) {
    // Every transfer bounced: through the DMA pool on the VF, the shared pool on the host path
    // (re-issued writes included), and the host service never saw guest RAM.
    EXPECT_GT(k.bounced, 0u);
    EXPECT_GT(k.pool_bounced, 0u);
    EXPECT_GT(k.reissued, 0u) << "VF commands in flight at the fault went to the host path";
    EXPECT_FALSE(host_maps_guest_ram(g));
    EXPECT_EQ(g.host->regions().size(), 1u);
  } else {
    EXPECT_EQ(k.pool_bounced, 0u);
  }
  const auto log = g.pv->transitions();
  std::vector<PathState> seen;
  for (const auto& t : log) {
    EXPECT_FALSE(t.reason.empty());
    seen.push_back(t.to);
  }
  const std::vector<PathState> want = {PathState::active, PathState::draining, PathState::fallback,
                                       PathState::ready, PathState::active};
  EXPECT_EQ(seen, want);
  // The other guest never noticed.
  EXPECT_EQ(guests_[1].pv->state(), PathState::active);
  EXPECT_EQ(guests_[1].pv->counters().to_fallback, 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, Failover,
                         ::testing::Combine(::testing::ValuesIn(fpga::test_backends()),
                                            ::testing::Values(Fault::surprise_removal,
                                                              Fault::silent_removal, Fault::flr,
                                                              Fault::fatal, Fault::stuck),
                                            ::testing::Values(false)),
                         fault_name);
// Confidential guests: VF IO bounces through the DMA pool, host IO (re-issues included) through
// the pool shared with the host service.
INSTANTIATE_TEST_SUITE_P(Confidential, Failover,
                         ::testing::Combine(::testing::ValuesIn(fpga::test_backends()),
                                            ::testing::Values(Fault::surprise_removal, Fault::flr,
                                                              Fault::stuck),
                                            ::testing::Values(true)),
                         fault_name);

}  // namespace
}  // namespace keel::testing
