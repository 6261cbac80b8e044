// Host storage service: verified IO through guest memory, flush, write_zeroes, several
// channels at once, guest memory in regions, and short IO.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

#include "host_service_fixture.h"

namespace keel::vmm::test {
namespace {

TEST_F(HostServiceTest, MultiSegmentWriteThenReadThroughGuestMemory) {
  start();
  auto c = client();
  ASSERT_TRUE(c);
  // Arrange: three guest buffers of odd sizes and alignments, filled with a seeded pattern.
  const std::vector<HostSegment> out{{100, 4000}, {8192, 4096}, {70001, 3 * 4096 - 4000 + 512}};
  std::vector<std::byte> expected;
  for (std::size_t i = 0; i < out.size(); ++i) {
    fill(ram.at(out[i].gpa), out[i].bytes, 77 + i);
    expected.insert(expected.end(), ram.at(out[i].gpa), ram.at(out[i].gpa) + out[i].bytes);
  }
  const std::uint64_t offset = 512 * 1000;

  // Act + assert: the write lands at base_offset + offset in the image.
  ASSERT_EQ(run(*c, HostOp::write, offset, out), 0);
  EXPECT_EQ(image.read(kBase + offset, expected.size()), expected);

  // The card's MAP_SHARED view of the image sees the same bytes (buffered IO is coherent).
  void* p = mmap(nullptr, kImageBytes, PROT_READ, MAP_SHARED, image.fd(), 0);
  ASSERT_NE(p, MAP_FAILED);
  EXPECT_EQ(
      std::memcmp(static_cast<std::byte*>(p) + kBase + offset, expected.data(), expected.size()),
      0);
  munmap(p, kImageBytes);

  // Read back into five other buffers and compare.
  const std::vector<HostSegment> reads{{1 << 20, 512},
                                       {(1 << 20) + 4096, 8192},
                                       {2 << 20, 1},
                                       {(2 << 20) + 7, 2047},
                                       {3 << 20, 6144}};
  ASSERT_EQ(expected.size(), 512u + 8192 + 1 + 2047 + 6144);
  ASSERT_EQ(run(*c, HostOp::read, offset, reads), 0);
  std::vector<std::byte> got;
  for (const auto& s : reads) got.insert(got.end(), ram.at(s.gpa), ram.at(s.gpa) + s.bytes);
  EXPECT_EQ(got, expected);

  const auto st = service->stats();
  EXPECT_EQ(st.requests, 2u);
  EXPECT_EQ(st.errors, 0u);
  EXPECT_EQ(st.bytes, 2 * expected.size());
  EXPECT_GE(st.io_uring_submits, 2u);
}

TEST_F(HostServiceTest, SliceEdgesAreReachableAndNothingOutsideIsTouched) {
  start();
  auto c = client();
  ASSERT_TRUE(c);
  const auto before = image.read(kBase - 4096, 4096);
  const auto after = image.read(kBase + kSlice, 4096);
  fill(ram.at(0), 8192, 5);
  EXPECT_EQ(run(*c, HostOp::write, 0, {{0, 4096}}), 0);
  EXPECT_EQ(run(*c, HostOp::write, kSlice - 4096, {{4096, 4096}}), 0);
  EXPECT_EQ(run(*c, HostOp::write_zeroes, kSlice - 512, {}, 512), 0);
  EXPECT_EQ(image.read(kBase - 4096, 4096), before);
  EXPECT_EQ(image.read(kBase + kSlice, 4096), after);
  EXPECT_EQ(std::memcmp(image.read(kBase, 4096).data(), ram.at(0), 4096), 0);
}

TEST_F(HostServiceTest, FlushCompletesSuccessfully) {
  start();
  auto c = client();
  ASSERT_TRUE(c);
  fill(ram.at(0), 4096, 9);
  EXPECT_EQ(run(*c, HostOp::write, 4096, {{0, 4096}}), 0);
  EXPECT_EQ(run(*c, HostOp::flush, 0, {}), 0);
}

class WriteZeroes : public HostServiceTest, public ::testing::WithParamInterface<bool> {};

TEST_P(WriteZeroes, ZeroesExactlyTheRange) {
  HostServiceConfig cfg = config();
  cfg.zero_range = GetParam();  // fallocate(ZERO_RANGE), or writes from the zero mapping
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);
  const std::uint64_t offset = 12345;
  const std::uint32_t bytes = (3 << 20) / 2 + 777;  // more than one zero chunk, odd edges
  const auto head = image.read(kBase + offset - 100, 100);
  const auto tail = image.read(kBase + offset + bytes, 100);

  ASSERT_EQ(run(*c, HostOp::write_zeroes, offset, {}, bytes), 0);

  EXPECT_EQ(image.read(kBase + offset, bytes), std::vector<std::byte>(bytes));
  EXPECT_EQ(image.read(kBase + offset - 100, 100), head);
  EXPECT_EQ(image.read(kBase + offset + bytes, 100), tail);
  EXPECT_EQ(service->stats().bytes, bytes);
}

INSTANTIATE_TEST_SUITE_P(Modes, WriteZeroes, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "zero_range" : "writes";
                         });

TEST_F(HostServiceTest, ConcurrentChannelsEachVerifyTheirOwnData) {
  start();
  constexpr unsigned kChannels = 4, kIos = 96, kDepth = 8, kBlock = 4096;
  std::vector<std::unique_ptr<HostServiceClient>> clients;
  for (unsigned i = 0; i < kChannels; ++i) clients.push_back(client(16));
  std::vector<std::thread> threads;
  std::vector<int> failures(kChannels, 0);
  for (unsigned q = 0; q < kChannels; ++q) {
    threads.emplace_back([&, q] {
      HostServiceClient& c = *clients[q];
      // Each queue owns 1/kChannels of the slice and of guest RAM; block i lives in RAM too.
      const std::uint64_t disk = q * (kSlice / kChannels), mem = q * (kRam / kChannels);
      std::mt19937_64 rng(1000 + q);
      std::vector<unsigned> order(kIos);
      for (unsigned i = 0; i < kIos; ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), rng);
      for (unsigned phase = 0; phase < 2; ++phase) {  // 0: write every block; 1: read it back
        unsigned next = 0, done = 0;
        HostCompletion cq[kDepth];
        while (done < kIos) {
          while (next < kIos && c.outstanding() < kDepth) {
            const unsigned b = order[next];
            const std::uint64_t gpa = mem + (phase == 0 ? b : kIos + b) * kBlock;
            if (phase == 0) fill(ram.at(gpa), kBlock, (q << 16) | b);
            const HostSegment seg{gpa, kBlock};
            if (!c.submit(b, phase == 0 ? HostOp::write : HostOp::read, disk + b * kBlock,
                          {&seg, 1}))
              break;
            ++next;
          }
          const unsigned n = c.wait(cq, kWait);
          if (n == 0) {
            ++failures[q];
            return;
          }
          for (unsigned i = 0; i < n; ++i) failures[q] += cq[i].result != 0;
          done += n;
        }
      }
      for (unsigned b = 0; b < kIos; ++b) {
        failures[q] +=
            std::memcmp(ram.at(mem + b * kBlock), ram.at(mem + (kIos + b) * kBlock), kBlock) != 0;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (unsigned q = 0; q < kChannels; ++q) EXPECT_EQ(failures[q], 0) << "channel " << q;
  EXPECT_EQ(service->stats().requests, 2u * kChannels * kIos);
}

TEST_F(HostServiceTest, GuestMemoryInRegions) {
  HostServiceConfig cfg = config();
  cfg.guest_memory_fd = -1;
  // Two regions of the same memfd: RAM [0, 1 MiB) at GPA 0 and [2 MiB, 3 MiB) at GPA 4 GiB.
  cfg.regions = {{ram.fd(), 0, 0, 1 << 20}, {ram.fd(), 2 << 20, 4ull << 30, 1 << 20}};
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);
  fill(ram.at((2 << 20) + 512), 4096, 3);
  ASSERT_EQ(run(*c, HostOp::write, 0, {{(4ull << 30) + 512, 4096}}), 0);
  EXPECT_EQ(std::memcmp(image.read(kBase, 4096).data(), ram.at((2 << 20) + 512), 4096), 0);
  // Between the regions, and across a region's end: outside guest memory.
  EXPECT_EQ(run(*c, HostOp::read, 0, {{2ull << 30, 512}}), -EFAULT);
  EXPECT_EQ(run(*c, HostOp::read, 0, {{(1 << 20) - 256, 512}}), -EFAULT);
}

// A confidential guest's service: no guest RAM, only shared regions registered after start.
TEST_F(HostServiceTest, SharedRegionsAreTheOnlyMemoryOfAServiceWithoutGuestRam) {
  HostServiceConfig cfg = config();
  cfg.guest_memory_fd = -1;
  start(cfg);
  EXPECT_TRUE(service->regions().empty());
  auto early = client();  // opened before the region: may use it once add_shared_region returns
  ASSERT_TRUE(early);
  GuestRam pool(1 << 20);
  auto at = service->add_shared_region(pool.fd(), 0, pool.bytes());
  ASSERT_TRUE(at.ok()) << to_string(at.error());
  EXPECT_GE(*at, kHostSharedBase);
  const auto regions = service->regions();
  ASSERT_EQ(regions.size(), 1u);
  EXPECT_EQ(regions[0].gpa, *at);
  EXPECT_EQ(regions[0].bytes, pool.bytes());
  EXPECT_TRUE(regions[0].shared);
  struct stat st {};
  ASSERT_EQ(fstat(pool.fd(), &st), 0);
  EXPECT_EQ(regions[0].ino, static_cast<std::uint64_t>(st.st_ino));
  EXPECT_EQ(regions[0].dev, static_cast<std::uint64_t>(st.st_dev));

  fill(pool.at(8192), 8192, 21);
  ASSERT_EQ(run(*early, HostOp::write, 4096, {{*at + 8192, 4096}, {*at + 12288, 4096}}), 0);
  EXPECT_EQ(std::memcmp(image.read(kBase + 4096, 8192).data(), pool.at(8192), 8192), 0);
  auto late = client();
  ASSERT_TRUE(late);
  ASSERT_EQ(run(*late, HostOp::read, 4096, {{*at, 8192}}), 0);
  EXPECT_EQ(std::memcmp(pool.at(0), pool.at(8192), 8192), 0);
  // Guest addresses and anything past the region fault; nothing reaches guest RAM.
  EXPECT_EQ(run(*late, HostOp::read, 0, {{0, 512}}), -EFAULT);
  EXPECT_EQ(run(*late, HostOp::read, 0, {{*at + pool.bytes() - 256, 512}}), -EFAULT);
  EXPECT_EQ(run(*late, HostOp::read, 0, {{*at - 512, 512}}), -EFAULT);

  // A second region goes above the first; bad regions are refused.
  GuestRam other(1 << 20);
  auto at2 = service->add_shared_region(other.fd(), 4096, 8192);
  ASSERT_TRUE(at2.ok()) << to_string(at2.error());
  EXPECT_GE(*at2, *at + pool.bytes());
  fill(other.at(4096), 4096, 22);
  ASSERT_EQ(run(*late, HostOp::write, 0, {{*at2, 4096}}), 0);
  EXPECT_EQ(std::memcmp(image.read(kBase, 4096).data(), other.at(4096), 4096), 0);
  EXPECT_EQ(service->regions().size(), 2u);
  EXPECT_EQ(service->add_shared_region(-1, 0, 4096).error().code, Errc::invalid_argument);
  EXPECT_EQ(service->add_shared_region(other.fd(), 0, 0).error().code, Errc::invalid_argument);
  EXPECT_EQ(service->add_shared_region(other.fd(), 0, 2 << 20).error().code,
            Errc::invalid_argument);
  EXPECT_EQ(service->regions().size(), 2u);
}

TEST_F(HostServiceTest, RegionsReportGuestRamGivenAtStart) {
  start();
  const auto regions = service->regions();
  ASSERT_EQ(regions.size(), 1u);
  EXPECT_EQ(regions[0].gpa, 0u);
  EXPECT_EQ(regions[0].bytes, kRam);
  EXPECT_FALSE(regions[0].shared);
  GuestRam pool(1 << 20);
  auto at = service->add_shared_region(pool.fd(), 0, pool.bytes());
  ASSERT_TRUE(at.ok()) << to_string(at.error());
  EXPECT_GE(*at, kHostSharedBase);
  auto c = client();
  ASSERT_TRUE(c);
  fill(ram.at(0), 4096, 23);
  ASSERT_EQ(run(*c, HostOp::write, 0, {{0, 4096}}), 0);
  ASSERT_EQ(run(*c, HostOp::read, 0, {{*at, 4096}}), 0);
  EXPECT_EQ(std::memcmp(pool.at(0), ram.at(0), 4096), 0);
}

TEST_F(HostServiceTest, ShortReadContinuesThenFailsWhereTheImageEnds) {
  start();
  auto c = client();
  ASSERT_TRUE(c);
  // The image shrinks under the service: a read straddling the new end gets a short read,
  // which is continued, and then end-of-file, which fails the request with -EIO.
  ASSERT_EQ(ftruncate(image.fd(), kBase + 8192), 0);
  EXPECT_EQ(run(*c, HostOp::read, 4096, {{0, 4096}, {4096, 8192}}), -EIO);
  EXPECT_GE(service->stats().retries, 1u);
  EXPECT_EQ(run(*c, HostOp::read, 0, {{0, 8192}}), 0);  // what is left still reads
}

TEST_F(HostServiceTest, CpuTimeOfTheThreadAndItsIoWorkers) {
  start();
  auto c = client();
  ASSERT_TRUE(c);
  const std::uint64_t before = service->thread_cpu_ns();
  for (unsigned i = 0; i < 200; ++i) ASSERT_EQ(run(*c, HostOp::read, i * 4096, {{0, 4096}}), 0);
  const std::uint64_t after = service->thread_cpu_ns();
  EXPECT_GT(after, before);
  EXPECT_GT(after, 0u);
  // A flush always runs on an io_uring worker thread, whose CPU time is counted separately.
  EXPECT_EQ(run(*c, HostOp::flush, 0, {}), 0);
  const std::uint64_t workers = service->io_worker_cpu_ns();
  EXPECT_GT(workers, 0u);
  EXPECT_GE(service->io_worker_cpu_ns(), workers);
}

}  // namespace
}  // namespace keel::vmm::test
