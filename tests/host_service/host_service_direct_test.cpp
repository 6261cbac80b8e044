// Host storage service with O_DIRECT: aligned requests go to the image as they are, unaligned
// ones through the slot's bounce buffer (read-modify-write of partial edge blocks), and
// nothing through the page cache. On a regular file with direct = on, and on a loop block
// device (4096-byte logical blocks) where one can be set up here.
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "host_service_fixture.h"

namespace keel::vmm::test {
namespace {

/// Pages of [offset, offset + bytes) of the file (or block device) behind `fd` that are in the
/// page cache.
std::size_t resident_pages(int fd, std::uint64_t offset, std::uint64_t bytes) {
  const auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  const std::uint64_t start = offset / page * page;
  const std::uint64_t len = offset + bytes - start;
  // A view of the file only to ask mincore() about it; nothing is read through it.
  void* p = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  EXPECT_NE(p, MAP_FAILED) << std::strerror(errno);
  if (p == MAP_FAILED) return 0;
  std::vector<unsigned char> in((len + page - 1) / page);
  EXPECT_EQ(mincore(p, len, in.data()), 0) << std::strerror(errno);
  munmap(p, len);
  std::size_t n = 0;
  for (const unsigned char v : in) n += v & 1;
  return n;
}

/// Writes the file's dirty pages back and drops its pages from the page cache.
void drop_cache(int fd) {
  EXPECT_EQ(fdatasync(fd), 0);
  EXPECT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
}

/// The bytes of `segs` in guest RAM, in order.
std::vector<std::byte> gather(const GuestRam& ram, const std::vector<HostSegment>& segs) {
  std::vector<std::byte> out;
  for (const auto& s : segs) out.insert(out.end(), ram.at(s.gpa), ram.at(s.gpa) + s.bytes);
  return out;
}

class DirectIoTest : public HostServiceTest {
 protected:
  HostServiceConfig direct_config(HostDirectIo mode = HostDirectIo::on) const {
    HostServiceConfig c = config();
    c.direct = mode;
    return c;
  }
};

TEST_F(DirectIoTest, AlignedSegmentsGoStraightToTheImage) {
  start(direct_config());
  auto c = client();
  ASSERT_TRUE(c);
  const std::vector<HostSegment> out{{0, 4096}, {16384, 8192}, {65536, 4096}};
  for (std::size_t i = 0; i < out.size(); ++i) fill(ram.at(out[i].gpa), out[i].bytes, 40 + i);
  const auto expected = gather(ram, out);

  ASSERT_EQ(run(*c, HostOp::write, 65536, out), 0);
  EXPECT_EQ(image.read(kBase + 65536, expected.size()), expected);
  const std::vector<HostSegment> in{{1 << 20, 8192}, {(1 << 20) + 12288, 8192}};
  ASSERT_EQ(run(*c, HostOp::read, 65536, in), 0);
  EXPECT_EQ(gather(ram, in), expected);

  const auto st = service->stats();
  EXPECT_EQ(st.errors, 0u);
  EXPECT_EQ(st.bounced, 0u) << "aligned requests were bounced";
  EXPECT_EQ(st.rmw_reads, 0u);
}

// Offset and length on the alignment, memory not: through the bounce buffer, but no block of
// the image is read for a write.
TEST_F(DirectIoTest, UnalignedMemoryIsBouncedWithoutReadingTheImage) {
  start(direct_config());
  auto c = client();
  ASSERT_TRUE(c);
  const std::vector<HostSegment> out{{100, 4000}, {8192, 4096}, {70001, 4192}};
  for (std::size_t i = 0; i < out.size(); ++i) fill(ram.at(out[i].gpa), out[i].bytes, 77 + i);
  const auto expected = gather(ram, out);
  const std::uint64_t offset = 512 * 1000;

  ASSERT_EQ(run(*c, HostOp::write, offset, out), 0);
  EXPECT_EQ(image.read(kBase + offset, expected.size()), expected);
  EXPECT_EQ(service->stats().rmw_reads, 0u);
  const std::vector<HostSegment> in{
      {1 << 20, 512}, {(1 << 20) + 4096 + 3, 8191}, {2 << 20, 1}, {(2 << 20) + 7, 3584}};
  ASSERT_EQ(run(*c, HostOp::read, offset, in), 0);
  EXPECT_EQ(gather(ram, in), expected);

  const auto st = service->stats();
  EXPECT_EQ(st.errors, 0u);
  EXPECT_GE(st.bounced, 2u);
  EXPECT_EQ(st.rmw_reads, 0u);
}

// Offsets and lengths off the alignment: the partial blocks at the edges are read, and written
// back with only the request's bytes changed; a request longer than the bounce buffer takes
// several windows.
TEST_F(DirectIoTest, UnalignedOffsetsChangeOnlyTheirBytes) {
  start(direct_config());
  auto c = client();
  ASSERT_TRUE(c);
  auto model = image.read(kBase, kSlice);
  struct Case {
    std::uint64_t offset;
    std::vector<HostSegment> segs;
  };
  const std::vector<Case> cases{
      {4096 + 100, {{0, 50}}},                                  // inside one block
      {8192 - 7, {{4096, 14}}},                                 // across a block boundary
      {20000, {{8192 + 5, 3000}, {16384, 4096}}},               // head and tail edges
      {300000 + 333, {{65536 + 1, 200000}, {1 << 20, 77777}}},  // several windows
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& k = cases[i];
    for (std::size_t j = 0; j < k.segs.size(); ++j) {
      fill(ram.at(k.segs[j].gpa), k.segs[j].bytes, 100 * i + j);
    }
    const auto data = gather(ram, k.segs);
    ASSERT_EQ(run(*c, HostOp::write, k.offset, k.segs), 0) << "case " << i;
    std::copy(data.begin(), data.end(), model.begin() + static_cast<std::ptrdiff_t>(k.offset));
    EXPECT_EQ(image.read(kBase, kSlice), model) << "case " << i;
    // And back through the bounce buffer into other memory.
    std::vector<HostSegment> in;
    std::uint64_t at = (2 << 20) + 9;
    for (const auto& s : k.segs) {
      in.push_back({at, s.bytes});
      at += s.bytes + 13;
    }
    ASSERT_EQ(run(*c, HostOp::read, k.offset, in), 0) << "case " << i;
    EXPECT_EQ(gather(ram, in), data) << "case " << i;
  }
  const auto st = service->stats();
  EXPECT_EQ(st.errors, 0u);
  EXPECT_GE(st.rmw_reads, 4u);
  EXPECT_GE(st.bounced, 2 * cases.size() + 4);  // the long ones took several windows each
}

// Random reads, writes and write_zeroes of every shape, one at a time, against a model of the
// slice: O_DIRECT must give exactly what the page cache gives.
class DirectIoModel : public DirectIoTest, public ::testing::WithParamInterface<HostDirectIo> {};

TEST_P(DirectIoModel, RandomRequestsMatchTheModel) {
  start(direct_config(GetParam()));
  auto c = client();
  ASSERT_TRUE(c);
  auto model = image.read(kBase, kSlice);
  const auto before = image.read(kBase - 8192, 8192);
  const auto after = image.read(kBase + kSlice, 8192);
  std::mt19937_64 rng(2024);
  auto pick = [&](std::uint64_t n) { return rng() % n; };
  for (unsigned iter = 0; iter < 300; ++iter) {
    const unsigned op = static_cast<unsigned>(pick(3));
    if (op == 2) {  // write_zeroes
      const auto bytes = static_cast<std::uint32_t>(1 + pick(300000));
      const std::uint64_t offset =
          pick(2) ? pick(kSlice - bytes) : pick((kSlice - bytes) / 4096) * 4096;
      ASSERT_EQ(run(*c, HostOp::write_zeroes, offset, {}, bytes), 0) << "iteration " << iter;
      std::fill_n(model.begin() + static_cast<std::ptrdiff_t>(offset), bytes, std::byte{0});
      continue;
    }
    // Segments: aligned or not in address and length; a write's in the lower half of guest
    // RAM, a read's in the upper half.
    std::vector<HostSegment> segs;
    std::uint64_t gpa = op == 0 ? 0 : kRam / 2;
    std::uint64_t total = 0;
    const unsigned n = 1 + static_cast<unsigned>(pick(4));
    for (unsigned i = 0; i < n; ++i) {
      const bool aligned = pick(2) == 0;
      const auto bytes =
          static_cast<std::uint32_t>(aligned ? 4096 * (1 + pick(40)) : 1 + pick(60000));
      gpa = aligned ? (gpa + 4095) / 4096 * 4096 : gpa + pick(100);
      segs.push_back({gpa, bytes});
      gpa += bytes;
      total += bytes;
    }
    const std::uint64_t offset =
        pick(2) ? pick(kSlice - total) : pick((kSlice - total) / 4096) * 4096;
    if (op == 0) {
      for (const auto& s : segs) fill(ram.at(s.gpa), s.bytes, rng());
      const auto data = gather(ram, segs);
      ASSERT_EQ(run(*c, HostOp::write, offset, segs), 0) << "iteration " << iter;
      std::copy(data.begin(), data.end(), model.begin() + static_cast<std::ptrdiff_t>(offset));
    } else {
      ASSERT_EQ(run(*c, HostOp::read, offset, segs), 0) << "iteration " << iter;
      const auto got = gather(ram, segs);
      ASSERT_TRUE(
          std::equal(got.begin(), got.end(), model.begin() + static_cast<std::ptrdiff_t>(offset)))
          << "iteration " << iter << ": read of " << total << " bytes at " << offset;
    }
  }
  EXPECT_EQ(image.read(kBase, kSlice), model);
  EXPECT_EQ(image.read(kBase - 8192, 8192), before);
  EXPECT_EQ(image.read(kBase + kSlice, 8192), after);
  const auto st = service->stats();
  EXPECT_EQ(st.errors, 0u);
  if (GetParam() == HostDirectIo::on) {
    EXPECT_GT(st.bounced, 0u);
    EXPECT_GT(st.rmw_reads, 0u);
  } else {
    EXPECT_EQ(st.bounced, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, DirectIoModel,
                         ::testing::Values(HostDirectIo::on, HostDirectIo::off),
                         [](const ::testing::TestParamInfo<HostDirectIo>& p) {
                           return p.param == HostDirectIo::on ? "direct" : "buffered";
                         });

class DirectWriteZeroes : public DirectIoTest, public ::testing::WithParamInterface<bool> {};

TEST_P(DirectWriteZeroes, ZeroesExactlyTheRange) {
  HostServiceConfig cfg = direct_config();
  cfg.zero_range = GetParam();
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);
  const std::uint64_t offset = 12345;
  const std::uint32_t bytes = (3 << 20) / 2 + 777;  // more than one zero chunk, odd edges
  const auto head = image.read(kBase + offset - 100, 100);
  const auto tail = image.read(kBase + offset + bytes, 100);

  ASSERT_EQ(run(*c, HostOp::write_zeroes, offset, {}, bytes), 0);
  ASSERT_EQ(run(*c, HostOp::write_zeroes, 8192 + 10, {}, 20), 0);  // inside one block

  EXPECT_EQ(image.read(kBase + offset, bytes), std::vector<std::byte>(bytes));
  EXPECT_EQ(image.read(kBase + offset - 100, 100), head);
  EXPECT_EQ(image.read(kBase + offset + bytes, 100), tail);
  EXPECT_EQ(image.read(kBase + 8192 + 10, 20), std::vector<std::byte>(20));
  EXPECT_NE(image.read(kBase + 8192 + 9, 1), std::vector<std::byte>(1));
  EXPECT_NE(image.read(kBase + 8192 + 30, 1), std::vector<std::byte>(1));
  EXPECT_EQ(service->stats().bytes, bytes + 20u);
  EXPECT_GE(service->stats().rmw_reads, 3u);  // two edges of the long one, the short one
}

INSTANTIATE_TEST_SUITE_P(Modes, DirectWriteZeroes, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "zero_range" : "writes";
                         });

// Partial-block writes to the same blocks at once: each read-modify-write waits for the one
// before, so every write lands (none puts back the old bytes of another).
TEST_F(DirectIoTest, ConcurrentPartialWritesToOneBlockAllLand) {
  start(direct_config());
  auto c = client(64);
  ASSERT_TRUE(c);
  constexpr unsigned kWrites = 24, kPiece = 37;  // 888 bytes from 8192 - 100: three blocks
  const std::uint64_t first = 8192 - 100;
  std::vector<std::byte> expected;
  for (unsigned i = 0; i < kWrites; ++i) {
    const std::uint64_t gpa = 1 + 1000 * i;
    fill(ram.at(gpa), kPiece, 500 + i);
    expected.insert(expected.end(), ram.at(gpa), ram.at(gpa) + kPiece);
    const HostSegment seg{gpa, kPiece};
    ASSERT_TRUE(c->submit(i, HostOp::write, first + i * kPiece, {&seg, 1}));
  }
  c->notify();  // all at once: the service takes them in one pass
  unsigned done = 0;
  HostCompletion cq[kWrites];
  while (done < kWrites) {
    const unsigned n = c->wait(cq, kWait);
    ASSERT_GT(n, 0u) << "no completion within the bound";
    for (unsigned i = 0; i < n; ++i) EXPECT_EQ(cq[i].result, 0) << "tag " << cq[i].tag;
    done += n;
  }
  EXPECT_EQ(image.read(kBase + first, expected.size()), expected);
  EXPECT_GT(service->stats().overlap_waits, 0u) << "the writes never met: the test proves nothing";
}

// Many writes and write_zeroes in flight at once, disjoint in bytes but sharing blocks, aligned
// (straight to the image) and not (read-modify-write): whatever the order the service runs
// them in, every byte ends as its request wrote it.
TEST_F(DirectIoTest, ConcurrentWritesSharingBlocksAllLand) {
  start(direct_config());
  auto c = client(256);
  ASSERT_TRUE(c);
  auto model = image.read(kBase, kSlice);
  std::mt19937_64 rng(77);
  struct Piece {
    std::uint64_t offset;
    std::uint32_t bytes;
    std::uint64_t gpa;
    bool zero;
  };
  for (unsigned round = 0; round < 4; ++round) {
    std::vector<Piece> pieces;
    std::uint64_t at = round * (512 << 10);  // each round in its own part of the slice
    std::uint64_t gpa = 0;
    while (pieces.size() < 200) {
      Piece p{at, 0, 0, rng() % 8 == 0};
      if (rng() % 4 == 0) {  // on the blocks: whole pages, or up to the next page
        p.bytes = at % 4096 == 0 ? static_cast<std::uint32_t>(4096 * (1 + rng() % 2))
                                 : static_cast<std::uint32_t>(4096 - at % 4096);
        gpa = (gpa + 4095) / 4096 * 4096;
      } else {
        p.bytes = static_cast<std::uint32_t>(1 + rng() % 3000);
        gpa += rng() % 64;
      }
      p.gpa = gpa;
      gpa += p.bytes;
      at += p.bytes + (rng() % 4 == 0 ? rng() % 100 : 0);  // sometimes bytes nobody writes
      pieces.push_back(p);
    }
    ASSERT_LE(gpa, kRam);
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      const HostSegment seg{p.gpa, p.bytes};
      if (p.zero) {
        ASSERT_TRUE(c->submit(i, HostOp::write_zeroes, p.offset, {}, p.bytes));
        std::fill_n(model.begin() + static_cast<std::ptrdiff_t>(p.offset), p.bytes, std::byte{0});
        continue;
      }
      fill(ram.at(p.gpa), p.bytes, 1000 * round + i);
      ASSERT_TRUE(c->submit(i, HostOp::write, p.offset, {&seg, 1}));
      std::copy_n(ram.at(p.gpa), p.bytes, model.begin() + static_cast<std::ptrdiff_t>(p.offset));
    }
    c->notify();
    unsigned done = 0;
    HostCompletion cq[64];
    while (done < pieces.size()) {
      const unsigned n = c->wait(cq, kWait);
      ASSERT_GT(n, 0u) << "round " << round << ": no completion within the bound";
      for (unsigned i = 0; i < n; ++i) EXPECT_EQ(cq[i].result, 0) << "tag " << cq[i].tag;
      done += n;
    }
    ASSERT_EQ(image.read(kBase, kSlice), model) << "round " << round;
  }
  EXPECT_GT(service->stats().overlap_waits, 0u) << "the writes never met: the test proves nothing";
}

// A read that the image's end cuts short, at a point off the alignment: the rest continues
// through the bounce buffer, which finds the end and fails the request with -EIO.
TEST_F(DirectIoTest, ShortReadContinuesThroughTheBounceBufferThenFailsWhereTheImageEnds) {
  start(direct_config());
  auto c = client();
  ASSERT_TRUE(c);
  ASSERT_EQ(ftruncate(image.fd(), kBase + 8192 + 100), 0);
  const auto tail = image.read(kBase, 8192 + 100);

  EXPECT_EQ(run(*c, HostOp::read, 4096, {{0, 4096}, {65536, 8192}}), -EIO);
  EXPECT_EQ(std::memcmp(ram.at(0), tail.data() + 4096, 4096), 0);
  EXPECT_EQ(std::memcmp(ram.at(65536), tail.data() + 8192, 100), 0) << "the short part is lost";
  EXPECT_GE(service->stats().retries, 1u);
  EXPECT_GE(service->stats().bounced, 1u);
  // What is left still reads, aligned or not, up to the last byte.
  EXPECT_EQ(run(*c, HostOp::read, 0, {{0, 8192}}), 0);
  EXPECT_EQ(run(*c, HostOp::read, 8192 + 50, {{3, 50}}), 0);
  EXPECT_EQ(std::memcmp(ram.at(3), tail.data() + 8192 + 50, 50), 0);
  EXPECT_EQ(run(*c, HostOp::read, 8192 + 50, {{3, 51}}), -EIO);
}

// The point of O_DIRECT: after the service has written and read a range, none of it is in the
// page cache (a VF writing the same media would otherwise meet stale copies). Buffered IO, for
// contrast, leaves it there.
class PageCache : public DirectIoTest, public ::testing::WithParamInterface<HostDirectIo> {};

TEST_P(PageCache, OnlyBufferedIoLeavesTheRangeInThePageCache) {
  drop_cache(image.fd());
  ASSERT_EQ(resident_pages(image.fd(), 0, kImageBytes), 0u)
      << "the image's pages could not be dropped from the page cache: the test proves nothing";
  start(direct_config(GetParam()));
  auto c = client();
  ASSERT_TRUE(c);
  fill(ram.at(0), 65536, 8);

  ASSERT_EQ(run(*c, HostOp::write, 0, {{0, 65536}}), 0);             // aligned
  ASSERT_EQ(run(*c, HostOp::write, 131072 + 100, {{3, 10000}}), 0);  // bounced, edges read
  ASSERT_EQ(run(*c, HostOp::read, 1 << 20, {{1 << 20, 65536}}), 0);  // aligned
  ASSERT_EQ(run(*c, HostOp::read, (2 << 20) + 7, {{(2 << 20) + 5, 20000}}), 0);  // bounced
  ASSERT_EQ(run(*c, HostOp::flush, 0, {}), 0);

  const std::size_t written = resident_pages(image.fd(), kBase, 131072 + 100 + 10000);
  const std::size_t read = resident_pages(image.fd(), kBase + (1 << 20), (1 << 20) + 7 + 20000);
  if (GetParam() == HostDirectIo::on) {
    EXPECT_EQ(written, 0u) << "written blocks went through the page cache";
    EXPECT_EQ(read, 0u) << "read blocks went through the page cache";
  } else {
    EXPECT_GE(written, 16u + 3u);  // the 64 KiB written, and the pages of the 10000 bytes
    EXPECT_GE(read, 16u + 5u);
  }
  // The image holds what was written either way.
  EXPECT_EQ(std::memcmp(image.read(kBase, 65536).data(), ram.at(0), 65536), 0);
  EXPECT_EQ(std::memcmp(image.read(kBase + 131072 + 100, 10000).data(), ram.at(3), 10000), 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, PageCache, ::testing::Values(HostDirectIo::on, HostDirectIo::off),
                         [](const ::testing::TestParamInfo<HostDirectIo>& p) {
                           return p.param == HostDirectIo::on ? "direct" : "buffered";
                         });

// A descriptor the caller passes is opened again for O_DIRECT: the caller's open file keeps
// its flags (and its page cache use).
TEST_F(DirectIoTest, PassedDescriptorIsReopenedAndKeepsItsFlags) {
  HostServiceConfig cfg = direct_config();
  cfg.image_path.clear();
  cfg.image_fd = image.fd();
  const int flags = fcntl(image.fd(), F_GETFL);
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);
  fill(ram.at(0), 8192, 12);
  ASSERT_EQ(run(*c, HostOp::write, 4096, {{0, 8192}}), 0);
  EXPECT_EQ(std::memcmp(image.read(kBase + 4096, 8192).data(), ram.at(0), 8192), 0);
  EXPECT_EQ(fcntl(image.fd(), F_GETFL), flags);
  EXPECT_EQ(fcntl(image.fd(), F_GETFL) & O_DIRECT, 0);
}

TEST_F(DirectIoTest, SliceOffTheAlignmentIsRefused) {
  HostServiceConfig cfg = direct_config();
  cfg.base_offset = kBase + 100;
  auto s = HostStorageService::start(cfg);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, Errc::invalid_argument);
  EXPECT_NE(s.error().message.find("alignment"), std::string::npos) << s.error().message;
  cfg.direct = HostDirectIo::off;  // the page cache has no such limit
  EXPECT_TRUE(HostStorageService::start(cfg).ok());
  cfg.direct = HostDirectIo::automatic;  // a regular file: the page cache
  EXPECT_TRUE(HostStorageService::start(cfg).ok());
}

/// A loop block device over a file, with `block`-byte logical blocks, detached when the last
/// descriptor of it closes. valid() false: why() says what stood in the way.
class LoopDevice {
 public:
  LoopDevice(int backing_fd, unsigned block) {
    const int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
      why_ = std::string("/dev/loop-control: ") + std::strerror(errno);
      return;
    }
    for (unsigned attempt = 0; attempt < 8 && fd_ < 0; ++attempt) {
      const int n = ioctl(ctl, LOOP_CTL_GET_FREE);
      if (n < 0) {
        why_ = std::string("LOOP_CTL_GET_FREE: ") + std::strerror(errno);
        break;
      }
      path_ = "/dev/loop" + std::to_string(n);
      const int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) {
        why_ = path_ + ": " + std::strerror(errno);
        break;
      }
      loop_config lc{};
      lc.fd = static_cast<std::uint32_t>(backing_fd);
      lc.block_size = block;
      lc.info.lo_flags = LO_FLAGS_AUTOCLEAR;
      if (ioctl(fd, LOOP_CONFIGURE, &lc) == 0) {
        fd_ = fd;
        break;
      }
      const int err = errno;
      ::close(fd);
      why_ = "LOOP_CONFIGURE of " + path_ + ": " + std::strerror(err);
      if (err != EBUSY) break;  // EBUSY: another process took it first
    }
    ::close(ctl);
  }
  ~LoopDevice() {
    if (fd_ < 0) return;
    ioctl(fd_, LOOP_CLR_FD, 0);
    ::close(fd_);
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;

  bool valid() const { return fd_ >= 0; }
  const std::string& why() const { return why_; }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::string path_;
  std::string why_;
};

// The SR-IOV case on a loop device: the service on the block device (O_DIRECT by default), and
// the test writing the backing file behind the block device's page cache as a VF writes the
// media. Guest sector writes on 4096-byte blocks are read-modify-writes; a block the media
// changed under the service reads fresh; nothing of the device is left in its page cache.
TEST_F(DirectIoTest, BlockDeviceIsCoherentWithWritesBehindItsPageCache) {
  LoopDevice loop(image.fd(), 4096);
  if (!loop.valid()) GTEST_SKIP() << "no loop device: " << loop.why();
  HostServiceConfig cfg = direct_config(HostDirectIo::automatic);
  cfg.image_path = loop.path();
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);

  // A 512-byte sector and a run of sectors, off the 4096-byte blocks.
  fill(ram.at(0), 512 + 5 * 512, 31);
  ASSERT_EQ(run(*c, HostOp::write, 512, {{0, 512}}), 0);
  ASSERT_EQ(run(*c, HostOp::write, 8192 + 3584, {{512, 5 * 512}}), 0);
  ASSERT_EQ(run(*c, HostOp::write_zeroes, 65536 + 1024, {}, 3 * 4096), 0);
  ASSERT_EQ(run(*c, HostOp::flush, 0, {}), 0);
  ASSERT_EQ(fsync(loop.fd()), 0);
  EXPECT_EQ(std::memcmp(image.read(kBase + 512, 512).data(), ram.at(0), 512), 0);
  EXPECT_EQ(std::memcmp(image.read(kBase + 8192 + 3584, 5 * 512).data(), ram.at(512), 5 * 512), 0);
  EXPECT_EQ(image.read(kBase + 65536 + 1024, 3 * 4096), std::vector<std::byte>(3 * 4096));
  EXPECT_GE(service->stats().rmw_reads, 3u) << "the device's 4096-byte blocks were not honoured";

  // The "VF" rewrites a block the service has read; the service reads it again.
  const std::uint64_t block = 1 << 20;
  ASSERT_EQ(run(*c, HostOp::read, block, {{1 << 20, 4096}}), 0);
  std::vector<std::byte> media(4096);
  fill(media.data(), media.size(), 32);
  ASSERT_EQ(pwrite(image.fd(), media.data(), media.size(), static_cast<off_t>(kBase + block)),
            4096);
  ASSERT_EQ(fdatasync(image.fd()), 0);
  ASSERT_EQ(run(*c, HostOp::read, block, {{2 << 20, 4096}}), 0);
  EXPECT_EQ(std::memcmp(ram.at(2 << 20), media.data(), 4096), 0)
      << "the service read a stale copy of a block the media changed";
  ASSERT_EQ(run(*c, HostOp::read, block + 100, {{(2 << 20) + 1, 200}}), 0);  // bounced
  EXPECT_EQ(std::memcmp(ram.at((2 << 20) + 1), media.data() + 100, 200), 0);

  EXPECT_EQ(resident_pages(loop.fd(), kBase, 65536 + 1024 + 3 * 4096), 0u)
      << "the service's writes left blocks of the device in its page cache";
  EXPECT_EQ(resident_pages(loop.fd(), kBase + block, 4096), 0u)
      << "the service's reads left blocks of the device in its page cache";
  service.reset();  // its descriptor of the device first: the loop device detaches after
}

}  // namespace
}  // namespace keel::vmm::test
