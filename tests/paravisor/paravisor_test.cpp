// The paravisor on model and sim: several guests each on their own VF, verified IO through the
// in-process virtio-blk driver, every request shape, bad input, isolation, confidential mode.
#include <cerrno>
#include <chrono>
#include <random>

#include "keel/fpga/model/model_card.h"
#include "paravisor_fixture.h"

namespace keel::testing {
namespace {

class Paravisor : public ::testing::TestWithParam<std::string>, public ParavisorTest {
 protected:
  void SetUp() override {
    if (!open_backend(GetParam()))
      GTEST_SKIP() << "needs a simulated card (the host path uses its image)";
  }
};

// Writes a pattern through the guest, reads it back through other buffers and compares.
void verified_round_trip(ParavisorTest& t, Guest& g, std::uint64_t sector, std::uint32_t sectors,
                         std::uint32_t seed, std::vector<std::uint32_t> pieces = {}) {
  const std::uint64_t bytes = std::uint64_t{sectors} * 512;
  if (pieces.empty()) pieces = {static_cast<std::uint32_t>(bytes)};
  auto layout = [&](std::uint64_t base) {
    std::vector<vmm::DataSeg> segs;
    std::uint64_t off = 0;
    for (std::uint32_t p : pieces) {
      segs.push_back({base + off, p});
      off += p + 520;  // gaps between pieces: not PRP-compatible, so the VF path bounces
    }
    return segs;
  };
  const std::uint64_t wbuf = g.drv->alloc(bytes + pieces.size() * 520 + 4096);
  const std::uint64_t rbuf = g.drv->alloc(bytes + pieces.size() * 520 + 4096);
  const auto wsegs = layout(wbuf), rsegs = layout(rbuf);
  std::vector<std::byte> pattern(bytes);
  fill_pattern(pattern.data(), bytes, sector, seed);
  std::uint64_t off = 0;
  for (const auto& s : wsegs) {
    std::memcpy(g.drv->host(s.gpa, s.len), pattern.data() + off, s.len);
    off += s.len;
  }
  ASSERT_EQ(t.run(g, blk::kOut, sector, wsegs), blk::kStatusOk);
  for (const auto& s : rsegs) std::memset(g.drv->host(s.gpa, s.len), 0, s.len);
  ASSERT_EQ(t.run(g, blk::kIn, sector, rsegs), blk::kStatusOk);
  off = 0;
  for (const auto& s : rsegs) {
    ASSERT_EQ(std::memcmp(g.drv->host(s.gpa, s.len), pattern.data() + off, s.len), 0)
        << "sector " << sector << " piece at " << off;
    off += s.len;
  }
}

TEST_P(Paravisor, DeviceOffersTheVirtioBlkFeatures) {
  make_guests(1);
  auto& pv = *guests_[0].pv;
  namespace f = keel::virtio::feature;
  const auto feats = pv.device_features();
  for (unsigned b : {f::kVersion1, f::kBlkSegMax, f::kBlkBlkSize, f::kBlkFlush, f::kBlkWriteZeroes,
                     f::kBlkMq, f::kRingEventIdx}) {
    EXPECT_NE(feats & keel::virtio::bit(b), 0u) << "feature bit " << b;
  }
  EXPECT_FALSE(pv.set_features(0).ok()) << "VERSION_1 is required";
  EXPECT_FALSE(pv.set_features(keel::virtio::bit(f::kVersion1) | keel::virtio::bit(3)).ok());
  const auto cfg = pv.config_space();
  EXPECT_EQ(cfg.capacity, kSliceLbas);
  EXPECT_EQ(cfg.blk_size, 512u);
  EXPECT_EQ(cfg.num_queues, 1);
  EXPECT_EQ(pv.state(), vmm::PathState::active);
}

TEST_P(Paravisor, VerifiedIoFromSeveralGuestsEachOnItsVf) {
  make_guests(3);
  std::mt19937_64 rng(5);
  for (int round = 0; round < 10; ++round) {
    for (unsigned gi = 0; gi < guests_.size(); ++gi) {
      const std::uint32_t sectors = 1 + static_cast<std::uint32_t>(rng() % 512);  // up to 256 KiB
      const std::uint64_t sector = rng() % (kSliceLbas - sectors);
      verified_round_trip(*this, guests_[gi], sector, sectors, gi * 100 + round);
      if (HasFailure()) return;
    }
  }
  for (auto& g : guests_) {
    const auto c = g.pv->counters();
    EXPECT_EQ(c.fallback_ios, 0u) << "all IO took the accelerated path";
    EXPECT_GT(c.vf_ios, 0u);
    EXPECT_EQ(c.errors, 0u);
  }
  // Each guest wrote only its own slice of the card: guest 1's data is not in guest 0's disk.
  const std::uint64_t buf = guests_[0].drv->alloc(4096);
  ASSERT_EQ(run(guests_[0], blk::kIn, 0, {{buf, 4096}}), blk::kStatusOk);
}

TEST_P(Paravisor, ScatterGatherThatNvmeCannotTakeDirectlyIsBounced) {
  make_guests(1);
  verified_round_trip(*this, guests_[0], 100, 24, 1, {512, 1536, 4096, 2048, 4096});
  EXPECT_GT(guests_[0].pv->counters().bounced, 0u);
}

TEST_P(Paravisor, FlushWriteZeroesAndGetId) {
  make_guests(1);
  Guest& g = guests_[0];
  verified_round_trip(*this, g, 40, 16, 3);
  ASSERT_EQ(run(g, blk::kFlush, 0, {}), blk::kStatusOk);
  auto id = g.drv->write_zeroes(0, 44, 4);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(await(g, {*id})[*id], blk::kStatusOk);
  const std::uint64_t buf = g.drv->alloc(16 * 512);
  ASSERT_EQ(run(g, blk::kIn, 40, {{buf, 16 * 512}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(g.drv->host(buf, 2048), 2048, 40, 3), -1);
  for (int i = 2048; i < 4096; ++i) ASSERT_EQ(*g.drv->host(buf + i, 1), std::byte{0}) << i;
  EXPECT_EQ(check_pattern(g.drv->host(buf + 4096, 4096), 4096, 48, 3), -1);
  const std::uint64_t idbuf = g.drv->alloc(20);
  ASSERT_EQ(run(g, blk::kGetId, 0, {{idbuf, 20}}), blk::kStatusOk);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(g.drv->host(idbuf, 4)), 4), "keel");
}

TEST_P(Paravisor, MultipleQueuesEachWithItsQueuePair) {
  vmm::ParavisorConfig cfg;
  cfg.queues = 2;
  make_guests(1, cfg);
  Guest& g = guests_[0];
  std::vector<std::uint16_t> ids[2];
  const std::uint64_t buf = g.drv->alloc(64 * 4096);
  for (unsigned i = 0; i < 32; ++i) {
    fill_pattern(g.drv->host(buf + i * 4096, 4096), 4096, i * 8, 9);
    auto id =
        g.drv->submit(i % 2, blk::kOut, i * 8, std::vector<vmm::DataSeg>{{buf + i * 4096, 4096}});
    ASSERT_TRUE(id.ok());
    ids[i % 2].push_back(*id);
  }
  g.drv->kick(0);
  g.drv->kick(1);
  for (unsigned q = 0; q < 2; ++q) {
    for (const auto& [id, st] : await(g, ids[q], q)) EXPECT_EQ(st, blk::kStatusOk);
  }
  for (unsigned i = 0; i < 32; ++i) {
    const std::uint64_t rb = g.drv->alloc(4096);
    ASSERT_EQ(run(g, blk::kIn, i * 8, {{rb, 4096}}, i % 2), blk::kStatusOk);
    EXPECT_EQ(check_pattern(g.drv->host(rb, 4096), 4096, i * 8, 9), -1);
  }
}

TEST_P(Paravisor, BadRequestsFailAloneAndEverythingKeepsRunning) {
  make_guests(2);
  Guest& g = guests_[0];
  const std::uint64_t buf = g.drv->alloc(8192);
  // Outside guest memory (32 MiB).
  EXPECT_EQ(run(g, blk::kIn, 0, {{64ull << 20, 4096}}), blk::kStatusIoErr);
  // Beyond the disk.
  EXPECT_EQ(run(g, blk::kIn, kSliceLbas - 1, {{buf, 1024}}), blk::kStatusIoErr);
  // Not a multiple of 512.
  EXPECT_EQ(run(g, blk::kOut, 0, {{buf, 700}}), blk::kStatusIoErr);
  // Unknown type.
  EXPECT_EQ(run(g, 77, 0, {}), blk::kStatusUnsupp);
  EXPECT_GE(g.pv->counters().bad_requests, 4u);
  EXPECT_FALSE(g.pv->needs_reset());
  verified_round_trip(*this, g, 8, 8, 4);
  verified_round_trip(*this, guests_[1], 8, 8, 5);
}

TEST_P(Paravisor, DeviceWriteIntoADriverOnlyBufferIsRefused) {
  make_guests(1);
  Guest& g = guests_[0];
  const std::uint64_t hdr = g.drv->alloc(64), data = g.drv->alloc(4096), st = g.drv->alloc(16);
  const blk::OutHeader h{blk::kIn, 0, 0};
  std::memcpy(g.drv->host(hdr, 16), &h, 16);
  *g.drv->host(st, 1) = std::byte{0xEE};
  std::memset(g.drv->host(data, 4096), 0x3C, 4096);
  // A read whose data buffer is driver-readable only, placed before the writable status:
  // the device must not write into it.
  const keel::virtio::Desc chain[3] = {{hdr, 16, keel::virtio::kDescNext, 101},
                                       {data, 4096, keel::virtio::kDescNext, 102},
                                       {st, 1, keel::virtio::kDescWrite, 0}};
  g.drv->publish_raw(0, chain, 100, 100);
  for (int i = 0; i < 100; ++i) turn();
  EXPECT_EQ(*g.drv->host(st, 1), std::byte{blk::kStatusIoErr});
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(*g.drv->host(data + i, 1), std::byte{0x3C});
}

TEST_P(Paravisor, ALoopingChainMarksTheDeviceForReset) {
  make_guests(2);
  Guest& g = guests_[0];
  const std::uint64_t hdr = g.drv->alloc(64);
  const keel::virtio::Desc loop[2] = {{hdr, 16, keel::virtio::kDescNext, 121},
                                      {hdr, 16, keel::virtio::kDescNext, 120}};
  g.drv->publish_raw(0, loop, 120, 120);
  for (int i = 0; i < 100; ++i) turn();
  EXPECT_TRUE(g.pv->needs_reset());
  // The other guest is unaffected.
  verified_round_trip(*this, guests_[1], 0, 8, 1);
  EXPECT_FALSE(guests_[1].pv->needs_reset());
}

TEST_P(Paravisor, AnIndexBeyondTheQueueMarksTheDeviceForReset) {
  make_guests(1);
  Guest& g = guests_[0];
  const keel::virtio::Desc d[1] = {{0, 16, keel::virtio::kDescNext, 5000}};
  g.drv->publish_raw(0, d, 90, 90);
  for (int i = 0; i < 50; ++i) turn();
  EXPECT_TRUE(g.pv->needs_reset());
}

TEST_P(Paravisor, AnAvailableHeadBeyondTheQueueMarksTheDeviceForReset) {
  make_guests(1);
  Guest& g = guests_[0];
  g.drv->publish_raw(0, {}, 0, 128 + 5);  // queue of 128: head 133 does not exist
  for (int i = 0; i < 20; ++i) turn();
  EXPECT_TRUE(g.pv->needs_reset());
  EXPECT_GE(g.pv->counters().bad_requests, 1u);
}

TEST_P(Paravisor, AGuestsVfCannotReachAnotherGuestsMemory) {
  make_guests(2, {}, 32u << 20);
  auto* model = dynamic_cast<fpga::model::ModelCard*>(card_);
  if (model == nullptr) GTEST_SKIP() << "inspects the model's IOMMU";
  // Each VF's IOMMU domain holds exactly its own guest's RAM at IOVA = GPA.
  auto& mmu = model->iommu();
  EXPECT_TRUE(mmu.covered(1, 0, 32u << 20));
  EXPECT_TRUE(mmu.covered(2, 0, 32u << 20));
  const std::byte* a = guests_[0].mem->translate(0, 1);
  const std::byte* b = guests_[1].mem->translate(0, 1);
  EXPECT_NE(a, b) << "same GPA, different memory per domain";
  EXPECT_FALSE(mmu.covered(1, 32u << 20, 4096)) << "nothing beyond the guest's RAM";
}

// A confidential guest's RAM is private: neither its VF nor the host storage service (the
// untrusted host) can reach it. Guest 0 runs on its VF (bounced through the paravisor's DMA
// pool), guest 1 has no VF and runs on the host path (bounced through the pool the paravisor
// shares with the host service, the only memory that service was given).
TEST_P(Paravisor, ConfidentialGuestMemoryIsNeverMappedForTheVf) {
  vmm::ParavisorConfig cfg;
  cfg.confidential = true;
  make_guests(2, cfg, 32u << 20, /*vf_guests=*/1);
  auto* model = dynamic_cast<fpga::model::ModelCard*>(card_);
  if (model != nullptr) {
    EXPECT_FALSE(model->iommu().covered(1, 0, 4096)) << "guest RAM is private";
  }
  for (const Guest& g : guests_) {
    EXPECT_FALSE(host_maps_guest_ram(g)) << "the host service maps guest RAM";
    const auto regions = g.host->regions();
    ASSERT_EQ(regions.size(), 1u) << "the host service was given only the shared pool";
    EXPECT_TRUE(regions[0].shared);
    EXPECT_EQ(regions[0].gpa, g.pv->shared_pool_address());
    EXPECT_EQ(regions[0].bytes, g.pv->shared_pool_bytes());
    EXPECT_GE(regions[0].gpa, vmm::kHostSharedBase) << "no overlap with guest addresses";
  }

  // The accelerated path.
  verified_round_trip(*this, guests_[0], 64, 64, 6);
  const auto c = guests_[0].pv->counters();
  EXPECT_GE(c.bounced, 2u);
  EXPECT_EQ(c.fallback_ios, 0u) << "still the accelerated path";
  EXPECT_EQ(c.pool_bounced, 0u);

  // The host path: single and scattered buffers, several sub-requests, flush, write-zeroes.
  Guest& h = guests_[1];
  EXPECT_EQ(h.pv->state(), vmm::PathState::absent);
  verified_round_trip(*this, h, 64, 64, 7);
  verified_round_trip(*this, h, 200, 24, 8, {512, 1536, 4096, 2048, 4096});
  verified_round_trip(*this, h, 1000, 700, 9);  // 350 KiB: three sub-requests
  ASSERT_EQ(run(h, blk::kFlush, 0, {}), blk::kStatusOk);
  auto wz = h.drv->write_zeroes(0, 1008, 8);
  ASSERT_TRUE(wz.ok());
  EXPECT_EQ(await(h, {*wz})[*wz], blk::kStatusOk);
  const std::uint64_t zb = h.drv->alloc(16 * 512);
  ASSERT_EQ(run(h, blk::kIn, 1000, {{zb, 16 * 512}}), blk::kStatusOk);
  EXPECT_EQ(check_pattern(h.drv->host(zb, 4096), 4096, 1000, 9), -1);
  for (int i = 4096; i < 8192; ++i) ASSERT_EQ(*h.drv->host(zb + i, 1), std::byte{0}) << i;

  // More requests in flight than pool chunks (32 per queue): the rest wait for one.
  constexpr unsigned kBurst = 40;  // 3 descriptors each: 42 fit a queue of 128
  const std::uint64_t wb = h.drv->alloc(kBurst * 4096);
  std::vector<std::uint16_t> ids;
  for (unsigned i = 0; i < kBurst; ++i) {
    fill_pattern(h.drv->host(wb + i * 4096, 4096), 4096, 4000 + i * 8, 10);
    auto id =
        h.drv->submit(0, blk::kOut, 4000 + i * 8, std::vector<vmm::DataSeg>{{wb + i * 4096, 4096}});
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  h.drv->kick(0);
  for (const auto& [id, st] : await(h, ids)) EXPECT_EQ(st, blk::kStatusOk) << id;
  for (unsigned i = 0; i < kBurst; ++i) {
    const std::uint64_t rb = h.drv->alloc(4096);
    ASSERT_EQ(run(h, blk::kIn, 4000 + i * 8, {{rb, 4096}}), blk::kStatusOk);
    ASSERT_EQ(check_pattern(h.drv->host(rb, 4096), 4096, 4000 + i * 8, 10), -1) << i;
  }
  const auto k = h.pv->counters();
  EXPECT_GT(k.fallback_ios, 0u);
  EXPECT_EQ(k.vf_ios, 0u);
  EXPECT_GE(k.pool_bounced, 2u * kBurst + 6);
  EXPECT_EQ(k.bounced, 0u);
  EXPECT_EQ(k.errors, 0u);

  // The host cannot reach guest RAM: a request naming a guest address faults, and so does one
  // past the pool.
  auto ch = h.host->open_channel(8);
  KEEL_ASSERT_OK(ch);
  auto client = vmm::HostServiceClient::attach(*ch);
  KEEL_ASSERT_OK(client);
  const std::uint64_t gbuf = h.drv->alloc(4096);
  std::memset(h.drv->host(gbuf, 4096), 0x5A, 4096);
  auto host_io = [&](vmm::HostOp op, std::uint64_t addr) {
    const vmm::HostSegment seg{addr, 4096};
    EXPECT_TRUE((*client)->submit(77, op, 0, {&seg, 1}));
    vmm::HostCompletion done[1];
    EXPECT_EQ((*client)->wait(done, std::chrono::seconds(10)), 1u);
    return done[0].result;
  };
  EXPECT_EQ(host_io(vmm::HostOp::read, gbuf), -EFAULT);
  EXPECT_EQ(host_io(vmm::HostOp::write, gbuf), -EFAULT);
  EXPECT_EQ(host_io(vmm::HostOp::read, 0), -EFAULT);
  EXPECT_EQ(host_io(vmm::HostOp::read, h.pv->shared_pool_address() + h.pv->shared_pool_bytes()),
            -EFAULT);
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(*h.drv->host(gbuf + i, 1), std::byte{0x5A}) << i;
  EXPECT_EQ(host_io(vmm::HostOp::read, h.pv->shared_pool_address()), 0) << "the pool it may use";
}

TEST_P(Paravisor, ConfidentialGuestRefusesAHostServiceThatMapsItsRam) {
  auto mem = vmm::GuestMemory::create(8u << 20);
  KEEL_ASSERT_OK(mem);
  vmm::HostServiceConfig hc;
  hc.image_path = image_;
  hc.length = kSliceLbas * 512;
  hc.guest_memory_fd = (*mem)->regions()[0].fd;
  hc.guest_memory_bytes = (*mem)->regions()[0].bytes;
  auto host = vmm::HostStorageService::start(hc);
  KEEL_ASSERT_OK(host);
  vmm::ParavisorConfig cfg;
  cfg.confidential = true;
  cfg.capacity_sectors = kSliceLbas;
  auto pv = stack_->create_paravisor(nullptr, **mem, **host, cfg);
  ASSERT_FALSE(pv.ok());
  EXPECT_EQ(pv.error().code, Errc::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(Backends, Paravisor, ::testing::ValuesIn(fpga::test_backends()),
                         backend_test_name);

}  // namespace
}  // namespace keel::testing
