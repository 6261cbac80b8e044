// The worker's data path against hostile request shapes (issue 10): sub-requests bounded by
// construction, per-request limits, pausing under a busy guest, guest RAM at 64 GiB and
// descriptors that cross memory regions. On model and sim, VF path and host path.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <map>

#include "keel/fpga/model/model_card.h"
#include "keel/vmm/blk_split.h"
#include "paravisor_fixture.h"

namespace keel::testing {
namespace {

namespace virtio = keel::virtio;

class DataPath : public ::testing::TestWithParam<std::string>, public ParavisorTest {
 protected:
  void SetUp() override {
    if (!open_backend(GetParam()))
      GTEST_SKIP() << "needs a simulated card (the host path uses its image)";
  }

  struct Done {
    std::uint8_t status = 0xFF;
    std::uint32_t len = 0;
  };

  /// Publishes a hand-made chain [header][data...][status] at descriptors first.. (head =
  /// first), kicks, and runs until its used entry arrives (bounded). The status is read from
  /// the chain's own status byte.
  Done raw(Guest& g, std::uint32_t type, std::uint64_t sector,
           const std::vector<vmm::DataSeg>& data, bool device_writes, std::uint16_t first) {
    const std::uint64_t hdr = g.drv->alloc(64);
    const virtio::blk::OutHeader h{type, 0, sector};
    std::memcpy(g.drv->host(hdr, 16), &h, 16);
    *g.drv->host(hdr + 16, 1) = std::byte{0xEE};
    std::vector<virtio::Desc> chain;
    auto idx = [&](std::size_t k) { return static_cast<std::uint16_t>(first + k); };
    chain.push_back({hdr, 16, virtio::kDescNext, idx(1)});
    for (const auto& d : data) {
      chain.push_back(
          {d.gpa, d.len,
           static_cast<std::uint16_t>(virtio::kDescNext | (device_writes ? virtio::kDescWrite : 0)),
           idx(chain.size() + 1)});
    }
    chain.push_back({hdr + 16, 1, virtio::kDescWrite, 0});
    g.drv->publish_raw(0, chain, first, first);
    g.drv->kick(0);
    for (unsigned t = 0; t < 200'000 && done_.count(first) == 0; ++t) reap_turn(g);
    EXPECT_EQ(done_.count(first), 1u) << "the request did not complete";
    Done d = done_[first];
    d.status = static_cast<std::uint8_t>(*g.drv->host(hdr + 16, 1));
    done_.erase(first);
    return d;
  }

  void reap_turn(Guest& g) {
    turn();
    vmm::GuestCompletion c[64];
    const unsigned n = g.drv->reap(0, c);
    for (unsigned i = 0; i < n; ++i) {
      EXPECT_EQ(done_.count(c[i].id), 0u) << "request " << c[i].id << " completed twice";
      done_[c[i].id] = Done{c[i].status, c[i].len};
    }
  }

  /// Copies to or from guest memory a region at a time (a buffer may cross into the next).
  static void copy(vmm::GuestMemory& mem, std::uint64_t gpa, std::byte* buf, std::size_t n,
                   bool to_guest) {
    for (std::size_t off = 0; off < n;) {
      const std::size_t take = std::min<std::uint64_t>(n - off, vmm::region_run(mem, gpa + off));
      std::byte* p = mem.translate(gpa + off, take);
      ASSERT_NE(p, nullptr);
      if (to_guest) {
        std::memcpy(p, buf + off, take);
      } else {
        std::memcpy(buf + off, p, take);
      }
      off += take;
    }
  }

  /// Writes a pattern at `sector` from `wgpa` and reads it back through `rgpa`.
  void verify(Guest& g, std::uint64_t sector, std::uint64_t wgpa, std::uint64_t rgpa,
              std::uint32_t bytes, std::uint32_t seed) {
    std::vector<std::byte> pattern(bytes), back(bytes);
    fill_pattern(pattern.data(), bytes, sector, seed);
    copy(*g.mem, wgpa, pattern.data(), bytes, true);
    copy(*g.mem, rgpa, back.data(), bytes, true);  // zeroes
    ASSERT_EQ(run(g, blk::kOut, sector, {{wgpa, bytes}}), blk::kStatusOk);
    ASSERT_EQ(run(g, blk::kIn, sector, {{rgpa, bytes}}), blk::kStatusOk);
    copy(*g.mem, rgpa, back.data(), bytes, false);
    EXPECT_EQ(check_pattern(back.data(), bytes, sector, seed), -1);
  }

  std::map<std::uint16_t, Done> done_;
};

// Issue 10 item 1: 125 one-byte descriptors and one of 387 bytes made one sub-request of 126
// segments, copied into a 34-entry array on the stack (SIGSEGV on the host path). A sector
// spread over more descriptors than a sub-request takes now fails alone with IOERR.
TEST_P(DataPath, ASectorOver126DescriptorsFailsAloneOnEitherPath) {
  make_guests(2, {}, 32u << 20, /*vf_guests=*/1);  // guest 0 on its VF, guest 1 host path only
  for (Guest& g : guests_) {
    const std::uint64_t buf = g.drv->alloc(8192);
    std::vector<vmm::DataSeg> segs;
    for (std::uint64_t i = 0; i < 125; ++i) segs.push_back({buf + 2 * i, 1});
    segs.push_back({buf + 4096, 387});
    EXPECT_EQ(run(g, blk::kOut, 8, segs), blk::kStatusIoErr);
    EXPECT_EQ(run(g, blk::kIn, 8, segs), blk::kStatusIoErr);
    EXPECT_GE(g.pv->counters().bad_requests, 2u);
    EXPECT_FALSE(g.pv->needs_reset());
    // The same bytes in whole sectors still work, and so does everything after.
    const std::uint64_t w = g.drv->alloc(4096), r = g.drv->alloc(4096);
    verify(g, 8, w, r, 4096, 3);
  }
  EXPECT_EQ(guests_[0].pv->state(), vmm::PathState::active);
  EXPECT_GT(guests_[0].pv->counters().vf_ios, 0u);
  EXPECT_GT(guests_[1].pv->counters().fallback_ios, 0u);
}

// Whole-sector pieces, more of them than one sub-request takes (32): cut into several subs,
// every byte where it belongs, on both paths.
TEST_P(DataPath, ManySmallSectorPiecesAreCutIntoSubRequests) {
  make_guests(2, {}, 32u << 20, 1);
  for (Guest& g : guests_) {
    const std::uint64_t wb = g.drv->alloc(126 * 1024), rb = g.drv->alloc(126 * 1024);
    std::vector<vmm::DataSeg> w, r;
    for (std::uint64_t i = 0; i < 126; ++i) {  // 512 bytes at the start of each KiB: gaps
      w.push_back({wb + 1024 * i, 512});
      r.push_back({rb + 1024 * i, 512});
    }
    std::vector<std::byte> pattern(126 * 512);
    fill_pattern(pattern.data(), pattern.size(), 40, 9);
    for (std::size_t i = 0; i < w.size(); ++i)
      std::memcpy(g.drv->host(w[i].gpa, 512), pattern.data() + 512 * i, 512);
    ASSERT_EQ(run(g, blk::kOut, 40, w), blk::kStatusOk);
    ASSERT_EQ(run(g, blk::kIn, 40, r), blk::kStatusOk);
    for (std::size_t i = 0; i < r.size(); ++i) {
      ASSERT_EQ(std::memcmp(g.drv->host(r[i].gpa, 512), pattern.data() + 512 * i, 512), 0)
          << "piece " << i;
    }
  }
}

// Issue 10 item 2: one request could make the worker do gigabytes of IO (126 descriptors of
// 72 MiB aliasing one buffer) and wrap its sub-request counter. size_max and the per-request
// byte limit refuse it before any IO; the guest's other requests carry on.
TEST_P(DataPath, RequestsPastSizeMaxOrTheByteLimitFailWithoutIo) {
  vmm::ParavisorConfig cfg;
  cfg.max_request_bytes = 4u << 20;  // below seg_max x size_max: the byte limit must hold
  make_guests(1, cfg, 96u << 20);
  Guest& g = guests_[0];
  const auto feats = g.pv->device_features();
  EXPECT_NE(feats & keel::virtio::bit(keel::virtio::feature::kBlkSizeMax), 0u);
  EXPECT_EQ(g.pv->config_space().size_max, cfg.size_max);

  const std::uint64_t big = g.drv->alloc(72u << 20);
  const auto before = g.pv->counters();
  // Two 8 MiB descriptors: the whole 16 MiB disk, but past size_max; a write of the guest's
  // is in flight beside it and completes.
  const std::uint64_t small = g.drv->alloc(4096);
  auto other = g.drv->submit(0, blk::kOut, 64, std::vector<vmm::DataSeg>{{small, 4096}});
  ASSERT_TRUE(other.ok());
  std::vector<vmm::DataSeg> two(2, vmm::DataSeg{big, 8u << 20});
  EXPECT_EQ(raw(g, blk::kIn, 0, two, true, 64).status, blk::kStatusIoErr);
  for (unsigned t = 0; t < 200'000 && done_.count(*other) == 0; ++t) reap_turn(g);
  ASSERT_EQ(done_.count(*other), 1u);
  EXPECT_EQ(done_[*other].status, blk::kStatusOk);
  done_.clear();
  // 126 x 72 MiB, every descriptor the same guest memory.
  std::vector<vmm::DataSeg> huge(126, vmm::DataSeg{big, 72u << 20});
  EXPECT_EQ(raw(g, blk::kIn, 0, huge, true, 0).status, blk::kStatusIoErr);
  // 40 descriptors of size_max (128 KiB) aliasing: 5 MiB, past max_request_bytes (4 MiB).
  std::vector<vmm::DataSeg> many(40, vmm::DataSeg{big, cfg.size_max});
  EXPECT_EQ(raw(g, blk::kOut, 0, many, false, 0).status, blk::kStatusIoErr);
  const auto after = g.pv->counters();
  EXPECT_EQ(after.vf_ios, before.vf_ios + 1) << "IO for the other write only";
  EXPECT_EQ(after.fallback_ios, before.fallback_ios);
  EXPECT_EQ(after.bad_requests, before.bad_requests + 3);
  // Exactly the limit: 32 x 128 KiB = 4 MiB, and used.len counts every byte and the status.
  std::vector<vmm::DataSeg> limit(32, vmm::DataSeg{big, cfg.size_max});
  const Done d = raw(g, blk::kIn, 0, limit, true, 0);
  EXPECT_EQ(d.status, blk::kStatusOk);
  EXPECT_EQ(d.len, cfg.max_request_bytes + 1);
  EXPECT_FALSE(g.pv->needs_reset());
}

// The defaults are consistent: the largest request a guest can build from what the device
// advertises (seg_max descriptors of size_max bytes) is within max_request_bytes, so an ordinary
// guest never gets IOERR from the byte limit (a Linux guest with max_sectors_kb raised would).
TEST_P(DataPath, TheLargestAdvertisedRequestIsServed) {
  vmm::ParavisorConfig cfg;
  make_guests(1, cfg, 96u << 20);
  Guest& g = guests_[0];
  const auto& cs = g.pv->config_space();
  ASSERT_LE(std::uint64_t{cs.seg_max} * cs.size_max, cfg.max_request_bytes);
  const std::uint64_t buf = g.drv->alloc(std::uint64_t{cs.seg_max} * cs.size_max);
  std::vector<vmm::DataSeg> segs;
  for (std::uint64_t i = 0; i < cs.seg_max; ++i)
    segs.push_back({buf + i * cs.size_max, cs.size_max});
  const Done d = raw(g, blk::kIn, 0, segs, true, 0);
  EXPECT_EQ(d.status, blk::kStatusOk);
  EXPECT_EQ(d.len, std::uint64_t{cs.seg_max} * cs.size_max + 1);
}

TEST_P(DataPath, MoreDataDescriptorsThanSegMaxFail) {
  vmm::ParavisorConfig cfg;
  cfg.seg_max = 8;
  make_guests(1, cfg);
  Guest& g = guests_[0];
  const std::uint64_t buf = g.drv->alloc(9 * 4096);
  std::vector<vmm::DataSeg> nine, eight;
  for (std::uint64_t i = 0; i < 9; ++i) nine.push_back({buf + 4096 * i, 4096});
  eight.assign(nine.begin(), nine.end() - 1);
  EXPECT_EQ(g.pv->config_space().seg_max, 8u);
  EXPECT_EQ(run(g, blk::kOut, 0, nine), blk::kStatusIoErr);
  EXPECT_EQ(run(g, blk::kOut, 0, eight), blk::kStatusOk);
  EXPECT_EQ(g.pv->counters().bad_requests, 1u);
}

// Issue 10 item 7: stop() (GET_VRING_BASE) took new requests while it waited, so a busy guest
// held every pause for seconds. It now takes none: what was available but not taken stays in
// the ring (last_avail does not move) and runs once the queue runs again.
TEST_P(DataPath, StopTakesNoNewRequests) {
  make_guests(1);
  Guest& g = guests_[0];
  const std::uint64_t buf = g.drv->alloc(4 * 4096);
  std::vector<std::uint16_t> ids;
  for (std::uint64_t i = 0; i < 4; ++i) {
    auto id = g.drv->submit(0, blk::kOut, 8 * i, std::vector<vmm::DataSeg>{{buf + 4096 * i, 4096}});
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  g.drv->kick(0);

  g.pv->stop();

  EXPECT_EQ(g.pv->last_avail(0), 0) << "stop() consumed requests made available after it began";
  vmm::GuestCompletion c[8];
  EXPECT_EQ(g.drv->reap(0, c), 0u);
  const auto st = await(g, ids);
  for (std::uint16_t id : ids) EXPECT_EQ(st.at(id), blk::kStatusOk);
  EXPECT_EQ(g.pv->last_avail(0), 4);
}

// When the bound runs out with a request still on a VF that does not answer, the request is
// not reported consumed: last_avail moves back before it, and it runs (once) when the queue
// runs again. Before, the queue pair was dropped and GET_VRING_BASE counted it as done.
TEST_P(DataPath, AnUnfinishedRequestAtTheBoundGoesBackToTheRing) {
  vmm::ParavisorConfig cfg;
  cfg.command_timeout = std::chrono::seconds(30);
  cfg.quiesce_timeout = std::chrono::milliseconds(5);
  make_guests(1, cfg);
  Guest& g = guests_[0];
  const std::uint64_t w = g.drv->alloc(4096), r = g.drv->alloc(4096);
  verify(g, 0, w, r, 4096, 1);  // requests 1 and 2 complete
  ASSERT_TRUE(card_->faults()->drop_completions(0, 1).ok());
  fill_pattern(g.drv->host(w, 4096), 4096, 64, 2);
  auto id = g.drv->submit(0, blk::kOut, 64, std::vector<vmm::DataSeg>{{w, 4096}});
  ASSERT_TRUE(id.ok());
  g.drv->kick(0);
  for (int i = 0; i < 200; ++i) turn();  // taken, on the VF, its completion dropped
  ASSERT_EQ(g.pv->last_avail(0), 3);

  g.pv->stop();

  EXPECT_EQ(g.pv->last_avail(0), 2) << "the unfinished write is not reported consumed";
  EXPECT_EQ(g.pv->counters().given_back, 1u);
  vmm::GuestCompletion c[4];
  EXPECT_EQ(g.drv->reap(0, c), 0u) << "no used entry for a request given back";
  const auto st = await(g, {*id});
  EXPECT_EQ(st.at(*id), blk::kStatusOk);
  std::memset(g.drv->host(r, 4096), 0, 4096);
  ASSERT_EQ(run(g, blk::kIn, 64, {{r, 4096}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(g.drv->host(r, 4096), 4096, 64, 2), -1);
  EXPECT_EQ(g.pv->counters().requests, 4u) << "the write completed exactly once";
}

// One unfinished request followed by a completed one cannot go back without replaying the
// completed one: it fails with IOERR (the guest sees an error, nothing is silently lost).
TEST_P(DataPath, AnUnfinishedRequestBeforeACompletedOneFailsAtTheBound) {
  vmm::ParavisorConfig cfg;
  cfg.command_timeout = std::chrono::seconds(30);
  cfg.quiesce_timeout = std::chrono::milliseconds(5);
  make_guests(1, cfg);
  Guest& g = guests_[0];
  const std::uint64_t a = g.drv->alloc(4096), b = g.drv->alloc(4096);
  ASSERT_EQ(run(g, blk::kOut, 16, {{a, 4096}}), blk::kStatusOk);  // the queue pair is up
  ASSERT_TRUE(card_->faults()->drop_completions(0, 1).ok());
  auto stuck = g.drv->submit(0, blk::kOut, 0, std::vector<vmm::DataSeg>{{a, 4096}});
  ASSERT_TRUE(stuck.ok());
  g.drv->kick(0);
  for (int i = 0; i < 50; ++i) turn();
  EXPECT_EQ(run(g, blk::kOut, 8, {{b, 4096}}), blk::kStatusOk);

  g.pv->stop();

  EXPECT_EQ(g.pv->last_avail(0), 3);
  EXPECT_EQ(g.pv->counters().given_back, 0u);
  vmm::GuestCompletion c[4];
  ASSERT_EQ(g.drv->reap(0, c), 1u);
  EXPECT_EQ(c[0].id, *stuck);
  EXPECT_EQ(c[0].status, blk::kStatusIoErr);
}

// Issue 10 items 9 and 10: guest RAM at 64 GiB (where the driver's own DMA buffers were) and a
// descriptor crossing from one memory region into the next one.
class HighMemory : public DataPath {
 protected:
  /// Guest memory: 16 MiB at GPA 0 (rings), and two adjacent 16 MiB regions at 64 GiB.
  void make_high_guest(bool with_vf, std::uint64_t high = kHigh) {
    stack::VfPlan plan;
    plan.disable_first = true;  // a card in another process keeps the last test's VFs
    plan.resources.resize(1);
    plan.resources[0].queues = 1;
    plan.resources[0].slice_lbas = kSliceLbas;
    KEEL_ASSERT_OK(stack_->enable_vfs(plan));
    Guest g;
    g.mem = vmm::GuestMemory::empty();
    vmm::HostServiceConfig hc;
    hc.image_path = image_;
    hc.length = kSliceLbas * 512;
    std::uint64_t user = std::uint64_t{1} << 44;  // the front end's addresses: anywhere apart
    for (std::uint64_t gpa : {std::uint64_t{0}, high, high + kRegion}) {
      const int fd = memfd_create("keel-test-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(ftruncate(fd, kRegion), 0);
      ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
      KEEL_ASSERT_OK(g.mem->add_region(fd, 0, gpa, kRegion, user));
      user += kRegion;
      hc.regions.push_back({fd, 0, gpa, kRegion});
    }
    auto host = vmm::HostStorageService::start(hc);
    KEEL_ASSERT_OK(host);
    g.host = std::move(host).value();
    vmm::ParavisorConfig cfg;
    cfg.capacity_sectors = kSliceLbas;
    auto vf = card_->vf(0);
    KEEL_ASSERT_OK(vf);
    auto pv = stack_->create_paravisor(with_vf ? *vf : nullptr, *g.mem, *g.host, cfg);
    KEEL_ASSERT_OK(pv);
    g.pv = std::move(pv).value();
    auto drv = vmm::GuestDriver::attach(*g.pv, *g.mem, 1, 128, 1u << 20);
    KEEL_ASSERT_OK(drv);
    g.drv = std::move(drv).value();
    guests_.push_back(std::move(g));
  }

  static constexpr std::uint64_t kHigh = 64ull << 30;
  static constexpr std::uint64_t kRegion = 16u << 20;
};

TEST_P(HighMemory, AGuestWithRamAt64GiBGetsItsVf) {
  make_high_guest(true);
  Guest& g = guests_[0];
  EXPECT_EQ(g.pv->state(), vmm::PathState::active) << "the VF was refused";
  verify(g, 16, kHigh + 8192, kHigh + kRegion + 65536, 65536, 1);
  const auto c = g.pv->counters();
  EXPECT_GT(c.vf_ios, 0u);
  EXPECT_EQ(c.fallback_ios, 0u);
  EXPECT_EQ(c.errors, 0u);
}

// Guest RAM at 2^52 would meet the driver's own buffers: the VF is refused with a clear reason;
// the guest is served on the host path.
TEST_P(HighMemory, GuestRamAt2To52IsRefusedForTheVfAndServedOnTheHostPath) {
  const std::uint64_t top = std::uint64_t{1} << 52;
  make_high_guest(true, top - kRegion);  // the second high region ends past 2^52
  Guest& g = guests_[0];
  EXPECT_EQ(g.pv->state(), vmm::PathState::fallback);
  const auto log = g.pv->transitions();
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log.back().reason.find("2^52"), std::string::npos) << log.back().reason;
  verify(g, 16, top - kRegion + 8192, top + 4096, 8192, 6);
  EXPECT_GT(g.pv->counters().fallback_ios, 0u);
  EXPECT_EQ(g.pv->counters().vf_ios, 0u);
}

TEST_P(HighMemory, ADescriptorAcrossTwoRegionsWorksOnTheVf) {
  make_high_guest(true);
  Guest& g = guests_[0];
  ASSERT_EQ(g.pv->state(), vmm::PathState::active);
  const std::uint64_t across = kHigh + kRegion - 2048;  // 2 KiB in each region
  verify(g, 100, across, kHigh + 4096, 4096, 2);
  verify(g, 200, kHigh + 4096, across, 4096, 3);
  EXPECT_EQ(g.pv->counters().errors, 0u);
  EXPECT_EQ(g.pv->counters().fallback_ios, 0u);
}

TEST_P(HighMemory, ADescriptorAcrossTwoRegionsWorksOnTheHostPath) {
  make_high_guest(false);
  Guest& g = guests_[0];
  const std::uint64_t across = kHigh + kRegion - 2048;
  verify(g, 100, across, kHigh + 4096, 4096, 4);
  verify(g, 200, kHigh + 4096, across, 4096, 5);
  EXPECT_EQ(g.pv->counters().errors, 0u);
  EXPECT_GT(g.pv->counters().fallback_ios, 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, DataPath, ::testing::ValuesIn(fpga::test_backends()),
                         backend_test_name);
INSTANTIATE_TEST_SUITE_P(Backends, HighMemory, ::testing::ValuesIn(fpga::test_backends()),
                         backend_test_name);

// Issue 10 item 10: the VF path assumed 512-byte LBAs, so a namespace of 4 KiB LBAs got writes
// and write-zeroes at 8 times their offset. The guest is now told blk_size 4096, requests must
// be aligned to it, and the worker converts sectors to the namespace's LBAs.
TEST(BlockSize, AVfWith4KiBLbasGetsEveryByteAtItsOffset) {
  const stack::ScratchImage scratch("pv-4k", std::filesystem::temp_directory_path());
  const std::string& image = scratch.path();  // removed last: after the card that maps it
  fpga::model::ModelConfig mc;
  mc.card.image_path = image;
  mc.card.storage_bytes = 16u << 20;
  mc.card.lockstep = true;
  mc.lba_shift = 12;
  auto card = fpga::model::ModelCard::create(mc);
  KEEL_ASSERT_OK(card);
  // A model card with 4 KiB blocks: opened by hand, the rest of the stack built on it.
  auto on_card = stack::Stack::attach(**card, {});
  KEEL_ASSERT_OK(on_card->discover_pf());
  stack::VfPlan plan;
  plan.resources.resize(1);
  plan.resources[0].slice_base = 256;   // 1 MiB into the card
  plan.resources[0].slice_lbas = 2048;  // 8 MiB
  KEEL_ASSERT_OK(on_card->enable_vfs(plan));
  auto mem = vmm::GuestMemory::create(32u << 20);
  KEEL_ASSERT_OK(mem);
  vmm::HostServiceConfig hc;
  hc.image_path = image;
  hc.base_offset = 256 * 4096;
  hc.length = 2048 * 4096;
  hc.guest_memory_fd = (*mem)->regions()[0].fd;
  hc.guest_memory_bytes = (*mem)->regions()[0].bytes;
  auto host = vmm::HostStorageService::start(hc);
  KEEL_ASSERT_OK(host);
  auto vf = (*card)->vf(0);
  KEEL_ASSERT_OK(vf);
  auto pv = on_card->create_paravisor(*vf, **mem, **host, {});
  KEEL_ASSERT_OK(pv);
  vmm::Paravisor& p = **pv;
  ASSERT_EQ(p.state(), vmm::PathState::active);
  EXPECT_EQ(p.config_space().blk_size, 4096u);
  EXPECT_EQ(p.capacity_sectors(), 2048u * 8);
  auto drv = vmm::GuestDriver::attach(p, **mem, 1, 128, 1u << 20);
  KEEL_ASSERT_OK(drv);
  vmm::GuestDriver& d = **drv;
  auto run = [&](std::uint32_t type, std::uint64_t sector, std::vector<vmm::DataSeg> data) {
    auto id =
        type == blk::kWriteZeroes ? d.write_zeroes(0, sector, 16) : d.submit(0, type, sector, data);
    EXPECT_TRUE(id.ok());
    d.kick(0);
    vmm::GuestCompletion c[4];
    for (unsigned t = 0; t < 200'000; ++t) {
      p.run_once();
      (*card)->step(1);
      if (d.reap(0, c) == 1) return c[0].status;
    }
    return std::uint8_t{0xFF};
  };
  auto image_at = [&](std::uint64_t sector, std::size_t bytes) {
    std::vector<std::byte> b(bytes);
    const int fd = ::open(image.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, b.data(), bytes, static_cast<off_t>(256 * 4096 + sector * 512)),
              static_cast<ssize_t>(bytes));
    ::close(fd);
    return b;
  };
  const std::uint64_t w = d.alloc(8192), r = d.alloc(8192);
  fill_pattern(d.host(w, 8192), 8192, 64, 7);
  ASSERT_EQ(run(blk::kOut, 64, {{w, 8192}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(image_at(64, 8192).data(), 8192, 64, 7), -1)
      << "the write landed at sector 64 of the slice";
  std::memset(d.host(r, 8192), 0, 8192);
  ASSERT_EQ(run(blk::kIn, 64, {{r, 8192}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(d.host(r, 8192), 8192, 64, 7), -1);
  // Write-zeroes of 16 sectors (two LBAs) at sector 64: the first 8 KiB, nothing else.
  fill_pattern(d.host(w, 8192), 8192, 80, 8);
  ASSERT_EQ(run(blk::kOut, 80, {{w, 8192}}), blk::kStatusOk);
  ASSERT_EQ(run(blk::kWriteZeroes, 64, {}), blk::kStatusOk);
  const auto zeroed = image_at(64, 8192);
  for (std::size_t i = 0; i < zeroed.size(); ++i) ASSERT_EQ(zeroed[i], std::byte{0}) << i;
  EXPECT_EQ(check_pattern(image_at(80, 8192).data(), 8192, 80, 8), -1) << "past the zeroes";
  // Not aligned to 4 KiB: refused.
  EXPECT_EQ(run(blk::kOut, 65, {{w, 4096}}), blk::kStatusIoErr);
  EXPECT_EQ(run(blk::kOut, 64, {{w, 512}}), blk::kStatusIoErr);
  const auto c = p.counters();
  EXPECT_GT(c.vf_ios, 0u);
  EXPECT_EQ(c.fallback_ios, 0u);
}

// The parser and the split for a 4 KiB block directly: alignment, and sub-requests that end
// on a block even when the pieces do not.
TEST(BlockSize, RequestsNotAlignedTo4KiBFailAndSubsEndOn4KiB) {
  auto mem = vmm::GuestMemory::create(1u << 20);
  KEEL_ASSERT_OK(mem);
  vmm::GuestMemory& m = **mem;
  vmm::BlkLimits limits;
  limits.capacity_sectors = 1 << 20;
  limits.block_bytes = 4096;
  auto parse = [&](std::uint64_t sector, std::vector<vmm::ChainSeg> data) {
    blk::OutHeader hh{blk::kOut, 0, sector};
    std::memcpy(m.translate(0, 16), &hh, 16);
    std::vector<vmm::ChainSeg> chain{{0, 16, false}};
    chain.insert(chain.end(), data.begin(), data.end());
    chain.push_back({64, 1, true});
    vmm::BlkRequest req;
    req.data.reserve(limits.max_pieces);
    const auto o = vmm::parse_blk_request(m, limits, 0, vmm::ChainError::ok, chain, req);
    return std::make_pair(o, req);
  };
  EXPECT_EQ(parse(1, {{4096, 4096, false}}).second.status, blk::kStatusIoErr) << "sector 1";
  EXPECT_EQ(parse(8, {{4096, 2048, false}}).second.status, blk::kStatusIoErr) << "2 KiB";
  // 12 KiB in pieces of 3 KiB: subs of at most 8 KiB must still end on 4 KiB.
  auto [o, req] = parse(
      8, {{4096, 3072, false}, {8192, 3072, false}, {12288, 3072, false}, {16384, 3072, false}});
  ASSERT_EQ(o, vmm::ParseOutcome::submit);
  vmm::SplitParams sp;
  sp.max_sub_bytes = 8192;
  sp.block_bytes = 4096;
  std::vector<vmm::SubRequest> subs(8);
  const auto r = vmm::split_blk_request(req, sp, subs);
  ASSERT_EQ(r.count, 2u) << r.why;
  EXPECT_EQ(subs[0].sector, 8u);
  EXPECT_EQ(subs[0].bytes, 8192u);
  EXPECT_EQ(subs[1].sector, 24u);
  EXPECT_EQ(subs[1].bytes, 4096u);
  vmm::DataSeg segs[vmm::kMaxSubSegs];
  ASSERT_EQ(vmm::sub_segments(req, subs[1], segs), 2u);
  EXPECT_EQ(segs[0].gpa, 12288u + 2048u);
  EXPECT_EQ(segs[0].len, 1024u);
  EXPECT_EQ(segs[1].gpa, 16384u);
  EXPECT_EQ(segs[1].len, 3072u);
}

}  // namespace
}  // namespace keel::testing
