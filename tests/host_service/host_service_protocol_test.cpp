// Host storage service: bad requests, a full ring, stop with requests outstanding, wake-ups
// under a tight loop, a corrupt channel, and configuration errors.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <future>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "host_service_fixture.h"
#include "ring_layout.h"
#include "service_impl.h"

namespace keel::vmm {

/// Test seam: stands in for a device that hangs. The image is swapped (before any request) for
/// a FIFO nobody writes, so a read of it stays in the kernel; and with cancel_at_stop off, stop
/// sends no IORING_OP_ASYNC_CANCEL, as if the kernel could not interrupt the IO.
struct HostServiceForTests {
  static void back_with(HostStorageService& s, int fd) { s.impl_->image_fd.reset(fd); }
  static void cancel_at_stop(HostStorageService& s, bool on) { s.impl_->cancel_at_stop = on; }
};

}  // namespace keel::vmm

namespace keel::vmm::test {
namespace {

/// A FIFO opened read-write (so the open does not wait for a writer) that nobody writes.
int silent_fifo() {
  const char* dir = std::getenv("TMPDIR");
  std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/keel-fifo-XXXXXX";
  const int tmp = mkstemp(path.data());
  EXPECT_GE(tmp, 0);
  close(tmp);
  unlink(path.c_str());
  EXPECT_EQ(mkfifo(path.c_str(), 0600), 0) << path;
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path;
  unlink(path.c_str());
  return fd;
}

/// Start addresses of this process's mappings of the file behind `fd` (/proc/self/maps).
std::vector<std::uintptr_t> mappings_of(int fd) {
  struct stat st {};
  EXPECT_EQ(fstat(fd, &st), 0);
  std::vector<std::uintptr_t> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, dev;
    std::uint64_t inode = 0;
    in >> range >> perms >> offset >> dev >> inode;
    if (inode != static_cast<std::uint64_t>(st.st_ino) || line.find("memfd:") == std::string::npos)
      continue;
    out.push_back(static_cast<std::uintptr_t>(std::stoull(range, nullptr, 16)));
  }
  return out;
}

/// Waits (bounded) until the service has handed `n` submissions to io_uring.
bool in_the_kernel(const HostStorageService& s, std::uint64_t n) {
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (s.stats().io_uring_submits < n) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

/// Backs the service with a FIFO nobody writes and puts one read (`tag`) of it in the kernel,
/// where it stays; `cancellable` false: the service's stop does not cancel it (a hung device).
bool stuck_read(HostStorageService& s, HostServiceClient& c, std::uint64_t tag, bool cancellable) {
  HostServiceForTests::back_with(s, silent_fifo());
  if (!cancellable) HostServiceForTests::cancel_at_stop(s, false);
  const HostSegment seg{0x1000, 4096};
  if (!c.submit(tag, HostOp::read, 0, {&seg, 1})) return false;
  c.notify();
  return in_the_kernel(s, 1);
}

TEST_F(HostServiceTest, BadRequestsFailAloneWithTheirErrno) {
  start();
  auto c = client();
  ASSERT_TRUE(c);
  std::vector<HostSegment> too_many(kHostMaxSegments + 1, HostSegment{0, 512});
  struct Case {
    const char* what;
    HostOp op;
    std::uint64_t offset;
    std::vector<HostSegment> segs;
    std::uint32_t zero_bytes;
    std::int32_t expected;
  };
  const std::vector<Case> cases{
      {"unknown op", static_cast<HostOp>(9), 0, {{0, 512}}, 0, -EINVAL},
      {"read without segments", HostOp::read, 0, {}, 0, -EINVAL},
      {"write with 65 segments", HostOp::write, 0, too_many, 0, -EINVAL},
      {"zero-length segment", HostOp::write, 0, {{0, 512}, {4096, 0}}, 0, -EINVAL},
      {"flush with a segment", HostOp::flush, 0, {{0, 512}}, 0, -EINVAL},
      {"write_zeroes of 0 bytes", HostOp::write_zeroes, 0, {}, 0, -EINVAL},
      {"write_zeroes with a segment", HostOp::write_zeroes, 0, {{0, 512}}, 512, -EINVAL},
      {"read past the slice", HostOp::read, kSlice, {{0, 512}}, 0, -EINVAL},
      {"write across the slice end", HostOp::write, kSlice - 512, {{0, 1024}}, 0, -EINVAL},
      {"offset that overflows", HostOp::write, ~0ull - 100, {{0, 512}}, 0, -EINVAL},
      {"write_zeroes past the slice", HostOp::write_zeroes, kSlice - 512, {}, 1024, -EINVAL},
      {"segment past guest RAM", HostOp::read, 0, {{kRam, 512}}, 0, -EFAULT},
      {"segment across RAM's end", HostOp::write, 0, {{kRam - 256, 512}}, 0, -EFAULT},
      {"GPA that overflows", HostOp::read, 0, {{~0ull - 100, 512}}, 0, -EFAULT},
      {"one bad of several", HostOp::write, 0, {{0, 512}, {1ull << 40, 512}}, 0, -EFAULT},
  };
  const auto untouched = image.read(0, kImageBytes);
  for (const auto& k : cases) {
    EXPECT_EQ(run(*c, k.op, k.offset, k.segs, k.zero_bytes), k.expected) << k.what;
    EXPECT_EQ(run(*c, HostOp::read, 0, {{0, 4096}}), 0) << "service still serves after " << k.what;
  }
  EXPECT_EQ(image.read(0, kImageBytes), untouched) << "a refused request changed the image";
  EXPECT_EQ(service->stats().errors, cases.size());
}

TEST_F(HostServiceTest, WithoutGuestMemoryEveryDataSegmentFaults) {
  HostServiceConfig cfg = config();
  cfg.guest_memory_fd = -1;
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);
  EXPECT_EQ(run(*c, HostOp::read, 0, {{0, 512}}), -EFAULT);
  EXPECT_EQ(run(*c, HostOp::flush, 0, {}), 0);
}

TEST_F(HostServiceTest, FullRingRefusesAndRecovers) {
  start();
  auto c = client(8);
  ASSERT_TRUE(c);
  const HostSegment seg{0, 512};
  for (std::uint64_t t = 0; t < 8; ++t) ASSERT_TRUE(c->submit(t, HostOp::read, 0, {&seg, 1}));
  EXPECT_FALSE(c->submit(8, HostOp::read, 0, {&seg, 1})) << "ring of 8 took a 9th request";
  EXPECT_EQ(c->outstanding(), 8u);

  std::map<std::uint64_t, int> seen;
  HostCompletion done[16];
  for (unsigned i = 0; i < 8 && c->outstanding() > 0; ++i) {
    const unsigned n = c->wait(done, kWait);
    ASSERT_GT(n, 0u);
    for (unsigned k = 0; k < n; ++k) {
      EXPECT_EQ(done[k].result, 0);
      ++seen[done[k].tag];
    }
  }
  EXPECT_EQ(seen.size(), 8u);
  for (const auto& [tag, count] : seen) EXPECT_EQ(count, 1) << "tag " << tag;
  EXPECT_EQ(c->outstanding(), 0u);
  EXPECT_EQ(run(*c, HostOp::read, 0, {{0, 512}}), 0);
}

TEST_F(HostServiceTest, StopCompletesEveryRequestExactlyOnce) {
  start();
  auto c = client(64);
  ASSERT_TRUE(c);
  constexpr std::uint64_t kSent = 32, kQueued = 16, kBytes = 128 << 10;
  for (std::uint64_t t = 0; t < kSent; ++t) {
    const HostSegment seg{t * kBytes, kBytes};
    ASSERT_TRUE(c->submit(t, HostOp::write, t * kBytes, {&seg, 1}));
  }
  c->notify();
  for (std::uint64_t t = kSent; t < kSent + kQueued; ++t) {  // queued, never published
    const HostSegment seg{0, 512};
    ASSERT_TRUE(c->submit(t, HostOp::read, 0, {&seg, 1}));
  }

  service.reset();  // stop with requests in every state

  EXPECT_FALSE(c->service_alive());
  std::map<std::uint64_t, std::int32_t> results;
  HostCompletion done[8];
  for (unsigned i = 0; i < 2 * (kSent + kQueued) && c->outstanding() > 0; ++i) {
    const unsigned n = c->wait(done, kWait);
    ASSERT_GT(n, 0u);
    for (unsigned k = 0; k < n; ++k) {
      EXPECT_TRUE(results.emplace(done[k].tag, done[k].result).second) << "twice: " << done[k].tag;
    }
  }
  ASSERT_EQ(results.size(), kSent + kQueued);
  for (const auto& [tag, result] : results) {
    if (tag >= kSent) {
      EXPECT_EQ(result, -ECANCELED) << "unpublished request " << tag;
    } else {
      EXPECT_TRUE(result == 0 || result == -ECANCELED) << tag << ": " << result;
    }
  }
  const HostSegment seg{0, 512};
  EXPECT_FALSE(c->submit(99, HostOp::read, 0, {&seg, 1}));
  EXPECT_EQ(c->wait(done, kWait), 0u);  // nothing outstanding: returns at once
}

TEST_F(HostServiceTest, StopRacingABusyClientLosesAndDuplicatesNothing) {
  start();
  auto c = client(32);
  ASSERT_TRUE(c);
  std::atomic<std::uint64_t> completed{0};
  std::map<std::uint64_t, int> seen;
  std::uint64_t submitted = 0;
  std::thread io([&] {
    HostCompletion done[32];
    for (unsigned round = 0; round < 100000; ++round) {  // bounded; ends when the stop is seen
      while (c->outstanding() < 32) {
        const HostSegment seg{(submitted % 64) * 4096, 4096};
        if (!c->submit(submitted, HostOp::write, (submitted % 512) * 4096, {&seg, 1})) break;
        ++submitted;
      }
      const unsigned n = c->wait(done, kWait);
      for (unsigned k = 0; k < n; ++k) ++seen[done[k].tag];
      completed.fetch_add(n, std::memory_order_relaxed);
      if (!c->service_alive() && c->outstanding() == 0) return;
      if (n == 0 && c->outstanding() > 0) return;  // a bound ran out: checked below
    }
  });
  for (unsigned i = 0; i < 1'000'000'000 && completed.load() < 500; ++i) std::this_thread::yield();
  service.reset();
  io.join();
  EXPECT_EQ(c->outstanding(), 0u);
  EXPECT_EQ(seen.size(), submitted);
  for (const auto& [tag, count] : seen) ASSERT_EQ(count, 1) << "tag " << tag;
}

TEST_F(HostServiceTest, NoLostWakeUpInATightSubmitWaitLoop) {
  HostServiceConfig cfg = config();
  cfg.idle_timeout_ms = 600'000;  // a lost wake-up of the service would not be hidden
  start(cfg);
  auto c = client(4);
  ASSERT_TRUE(c);
  std::mt19937 rng(42);
  HostCompletion done[4];
  constexpr unsigned kIterations = 10000;
  for (unsigned i = 0; i < kIterations; ++i) {
    const unsigned batch = 1 + rng() % 3;
    for (unsigned k = 0; k < batch; ++k) {
      const HostSegment seg{(rng() % 1024) * 512, 512};
      ASSERT_TRUE(c->submit(i * 4 + k, HostOp::read, (rng() % 8192) * 512, {&seg, 1}));
    }
    if (rng() % 2 == 0) {  // sometimes publish and spin-poll first, racing the service's sleep
      c->notify();
      for (unsigned spin = rng() % 64; spin > 0 && c->poll(done) == 0;) --spin;
    }
    while (c->outstanding() > 0) {
      ASSERT_GT(c->wait(done, kWait), 0u) << "wake-up lost at iteration " << i;
    }
  }
  EXPECT_GT(service->stats().sleeps, 0u);
  EXPECT_LE(c->stats().kicks, c->stats().submitted);
  EXPECT_EQ(service->stats().requests, c->stats().submitted);
}

TEST_F(HostServiceTest, OwnEventLoopSleepsOnTheCompletionFd) {
  start();
  auto c = client();
  ASSERT_TRUE(c);
  HostCompletion done[1];
  for (std::uint64_t t = 0; t < 200; ++t) {
    const HostSegment seg{t * 512, 512};
    ASSERT_TRUE(c->submit(t, HostOp::read, t * 4096, {&seg, 1}));
    c->notify();
    unsigned n = 0;
    for (unsigned round = 0; round < 4 && n == 0; ++round) {  // bounded: one sleep suffices
      n = c->poll(done);
      if (n > 0 || !c->prepare_wait()) continue;
      pollfd p{c->completion_fd(), POLLIN, 0};
      ASSERT_EQ(::poll(&p, 1, 10'000), 1) << "completion fd not signalled, request " << t;
      std::uint64_t v = 0;
      ASSERT_EQ(read(c->completion_fd(), &v, sizeof v), 8);
      c->end_wait();
    }
    ASSERT_EQ(n, 1u);
    EXPECT_EQ(done[0].tag, t);
    EXPECT_EQ(done[0].result, 0);
  }
}

TEST_F(HostServiceTest, CorruptChannelIsDroppedAndOthersKeepRunning) {
  start();
  auto bad = service->open_channel(16);
  ASSERT_TRUE(bad.ok());
  auto good = client();
  ASSERT_TRUE(good);
  // Act as a broken client: publish a tail far beyond the ring through our own mapping.
  void* p =
      mmap(nullptr, detail::ring_bytes(16), PROT_READ | PROT_WRITE, MAP_SHARED, bad->ring_fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* header = static_cast<detail::RingHeader*>(p);  // the service's header (ring_layout.h)
  header->sq_tail.store(1000, std::memory_order_release);
  const std::uint64_t one = 1;
  ASSERT_EQ(write(bad->submit_eventfd, &one, sizeof one), 8);

  EXPECT_EQ(run(*good, HostOp::read, 0, {{0, 512}}), 0);
  EXPECT_EQ(run(*good, HostOp::read, 0, {{0, 512}}), 0);
  EXPECT_EQ(service->stats().broken_channels, 1u);
  EXPECT_NE(service->last_error().find("SQ tail"), std::string::npos) << service->last_error();
  EXPECT_EQ(header->sq_head.load(), 0u) << "the service consumed from a corrupt ring";
  munmap(p, detail::ring_bytes(16));
}

TEST_F(HostServiceTest, ConfigurationErrorsSayWhatIsWrong) {
  auto expect = [](HostServiceConfig c, Errc code, const char* text) {
    auto s = HostStorageService::start(c);
    ASSERT_FALSE(s.ok()) << text;
    EXPECT_EQ(s.error().code, code) << s.error().message;
    EXPECT_NE(s.error().message.find(text), std::string::npos) << s.error().message;
  };
  HostServiceConfig c = config();
  c.image_path = "/nonexistent/keel.img";
  expect(c, Errc::not_found, "/nonexistent/keel.img");
  c = config();
  c.image_path.clear();
  expect(c, Errc::invalid_argument, "image_path");
  c = config();
  c.base_offset = 6 << 20;
  expect(c, Errc::invalid_argument, "smaller than base_offset + length");
  c = config();
  c.io_uring_depth = 0;
  expect(c, Errc::invalid_argument, "io_uring_depth");
  c = config();
  c.guest_memory_bytes = 2 * kRam;
  expect(c, Errc::invalid_argument, "less than fd_offset + bytes");
  c = config();
  c.guest_memory_fd = -1;
  c.regions = {{ram.fd(), 0, 0, 1 << 20}, {ram.fd(), 0, 1 << 19, 1 << 20}};
  expect(c, Errc::invalid_argument, "overlaps");

  start();
  for (unsigned entries : {0u, 3u, 65536u}) {
    auto ch = service->open_channel(entries);
    ASSERT_FALSE(ch.ok());
    EXPECT_EQ(ch.error().code, Errc::invalid_argument);
  }
  auto ch = service->open_channel(16);
  ASSERT_TRUE(ch.ok());
  HostChannel wrong = *ch;
  wrong.entries = 32;
  auto a = HostServiceClient::attach(wrong);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().code, Errc::invalid_argument);
  wrong = *ch;
  wrong.ring_fd = ram.fd();  // big enough, but not a ring
  a = HostServiceClient::attach(wrong);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.error().message.find("magic"), std::string::npos) << a.error().message;
}

// A read the kernel holds (a FIFO nobody writes) when the service stops: it is cancelled, its
// completion comes back -ECANCELED, and only then is guest memory unmapped.
TEST_F(HostServiceTest, StopCancelsIoInTheKernelAndReportsWhatTheKernelSaid) {
  start();
  auto c = client();
  ASSERT_TRUE(c);
  ASSERT_TRUE(stuck_read(*service, *c, 7, true));

  const Status st = service->stop();

  EXPECT_TRUE(st.ok()) << to_string(st.error());
  HostCompletion done[2];
  ASSERT_EQ(c->wait(done, kWait), 1u);
  EXPECT_EQ(done[0].tag, 7u);
  EXPECT_EQ(done[0].result, -ECANCELED);
  EXPECT_EQ(service->stats().cancelled_at_stop, 1u);
  EXPECT_EQ(service->stats().stuck_at_stop, 0u);
  service.reset();
  EXPECT_EQ(mappings_of(ram.fd()).size(), 1u) << "the service's view of guest RAM was not unmapped";
}

// The same read on a device that hangs (the kernel cannot cancel it): stop reports it -ETIMEDOUT
// (not cancelled: it may still complete), says so, and never unmaps the guest memory the
// kernel may still write (an unmapped address could be reused for something else).
TEST_F(HostServiceTest, StopWithIoStuckInTheKernelSaysSoAndKeepsItsMemoryMapped) {
  HostServiceConfig cfg = config();
  cfg.stop_timeout_ms = 50;
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);
  ASSERT_TRUE(stuck_read(*service, *c, 7, false));

  const Status st = service->stop();

  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::timeout);
  EXPECT_NE(st.error().message.find("still in the kernel"), std::string::npos)
      << st.error().message;
  HostCompletion done[2];
  ASSERT_EQ(c->wait(done, kWait), 1u);
  EXPECT_EQ(done[0].tag, 7u);
  EXPECT_EQ(done[0].result, -ETIMEDOUT) << "reported as if it were out of the kernel";
  EXPECT_EQ(service->stats().stuck_at_stop, 1u);
  EXPECT_EQ(service->stats().cancelled_at_stop, 0u);
  EXPECT_NE(service->last_error().find("left mapped"), std::string::npos) << service->last_error();
  EXPECT_EQ(service->stop().error().code, Errc::timeout) << "a second stop says the same";
  service.reset();
  const auto maps = mappings_of(ram.fd());
  EXPECT_EQ(maps.size(), 2u) << "guest RAM the kernel may still write was unmapped";
  // The test's own tidy-up: with the ring closed the kernel has dropped the FIFO read (which,
  // unlike IO on a hung device, it can), and the FIFO never had data to write.
  for (const std::uintptr_t at : maps) {
    if (at != reinterpret_cast<std::uintptr_t>(ram.at(0))) {
      munmap(reinterpret_cast<void*>(at), kRam);
    }
  }
}

// O_DIRECT: a partial-block write whose edge read the kernel holds, and a second write to the
// same block waiting for it (never in the kernel) when the service stops: both complete
// -ECANCELED, once each.
TEST_F(HostServiceTest, StopCancelsAWriteWaitingForAReadModifyWrite) {
  HostServiceConfig cfg = config();
  cfg.direct = HostDirectIo::on;
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);
  HostServiceForTests::back_with(*service, silent_fifo());
  const HostSegment first{0x1000, 100};
  const HostSegment second{0x2000, 100};
  ASSERT_TRUE(c->submit(1, HostOp::write, 10, {&first, 1}));
  ASSERT_TRUE(c->submit(2, HostOp::write, 200, {&second, 1}));
  c->notify();
  ASSERT_TRUE(in_the_kernel(*service, 1));

  const Status st = service->stop();

  EXPECT_TRUE(st.ok()) << to_string(st.error());
  HostCompletion done[3];
  unsigned n = 0;
  while (n < 2) {
    const unsigned got = c->wait({done + n, 3 - n}, kWait);
    ASSERT_GT(got, 0u) << "a completion is missing";
    n += got;
  }
  EXPECT_EQ(c->poll(done), 0u) << "a request completed twice";
  EXPECT_EQ(done[0].result, -ECANCELED);
  EXPECT_EQ(done[1].result, -ECANCELED);
  EXPECT_EQ(done[0].tag + done[1].tag, 3u);
  EXPECT_GE(service->stats().overlap_waits, 1u);
  EXPECT_EQ(service->stats().stuck_at_stop, 0u);
}

// stop_timeout_ms is counted on the configured clock: with a test clock that does not move,
// the stop keeps waiting for the stuck request however much real time passes; moving the clock
// past the budget ends it, with the same report as above.
TEST_F(HostServiceTest, StopTimeoutRunsOnTheConfiguredClock) {
  auto clock = std::make_shared<ManualClock>(1'000'000'000);
  HostServiceConfig cfg = config();
  cfg.stop_timeout_ms = 50;
  cfg.clock = clock;
  start(cfg);
  auto c = client();
  ASSERT_TRUE(c);
  ASSERT_TRUE(stuck_read(*service, *c, 9, false));

  auto stopping = std::async(std::launch::async, [&] { return service->stop(); });
  // Several times the budget (and the service's idle_timeout_ms) in real time: still waiting.
  EXPECT_EQ(stopping.wait_for(std::chrono::milliseconds(500)), std::future_status::timeout)
      << "the stop budget was counted on real time";
  clock->advance(std::chrono::milliseconds(50));
  ASSERT_EQ(stopping.wait_for(kWait), std::future_status::ready);
  const Status st = stopping.get();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::timeout);
  HostCompletion done[2];
  ASSERT_EQ(c->wait(done, kWait), 1u);
  EXPECT_EQ(done[0].tag, 9u);
  EXPECT_EQ(done[0].result, -ETIMEDOUT);
  EXPECT_EQ(service->stats().stuck_at_stop, 1u);
  // The kernel may still write the memory: it stays mapped, as in the test above.
  const auto before = mappings_of(ram.fd());
  service.reset();
  const auto maps = mappings_of(ram.fd());
  EXPECT_EQ(maps.size(), before.size());
  for (const std::uintptr_t at : maps) {
    if (at != reinterpret_cast<std::uintptr_t>(ram.at(0))) {
      munmap(reinterpret_cast<void*>(at), kRam);
    }
  }
}

}  // namespace
}  // namespace keel::vmm::test
