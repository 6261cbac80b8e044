// common/: the log interface, the clocks, thread CPU time and the unix listener.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "keel/clock.h"
#include "keel/log.h"
#include "keel/process_memory.h"
#include "keel/thread_cpu.h"
#include "keel/unix_listener.h"

namespace keel {
namespace {

struct Captured {
  log::Level level;
  std::string component, message;
};

// Captures records for one test and restores the default sink and level afterwards.
class LogCapture {
 public:
  LogCapture() {
    log::set_sink([this](const log::Record& r) {
      records.push_back({r.level, std::string(r.component), std::string(r.message)});
    });
  }
  ~LogCapture() {
    log::set_sink({});
    log::set_level(log::Level::info);
  }
  std::vector<Captured> records;
};

TEST(Log, RecordsCarryComponentLevelAndFormattedMessage) {
  LogCapture cap;
  constexpr log::Logger kLog{"paravisor"};
  kLog.warn("queue %u: %s", 3u, "gone");
  ASSERT_EQ(cap.records.size(), 1u);
  EXPECT_EQ(cap.records[0].level, log::Level::warn);
  EXPECT_EQ(cap.records[0].component, "paravisor");
  EXPECT_EQ(cap.records[0].message, "queue 3: gone");
}

TEST(Log, BelowTheLevelIsDroppedAndOffDropsEverything) {
  LogCapture cap;
  constexpr log::Logger kLog{"nbd"};
  log::set_level(log::Level::warn);
  kLog.info("dropped");
  kLog.debug("dropped");
  kLog.error("kept");
  log::set_level(log::Level::off);
  kLog.error("dropped");
  ASSERT_EQ(cap.records.size(), 1u);
  EXPECT_EQ(cap.records[0].message, "kept");
}

TEST(Log, LongMessagesAreWholeAndTrailingNewlinesGo) {
  LogCapture cap;
  const std::string long_text(1000, 'x');
  log::Logger("t").info("%s\n", long_text.c_str());
  ASSERT_EQ(cap.records.size(), 1u);
  EXPECT_EQ(cap.records[0].message, long_text);
}

TEST(Log, ParseLevel) {
  EXPECT_EQ(log::parse_level("debug").value(), log::Level::debug);
  EXPECT_EQ(log::parse_level("warning").value(), log::Level::warn);
  EXPECT_EQ(log::parse_level("off").value(), log::Level::off);
  auto bad = log::parse_level("loud");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, Errc::invalid_argument);
  EXPECT_NE(bad.error().message.find("trace, debug, info, warn, error, off"), std::string::npos);
}

// A daemon's own memory leaves out the files it only maps: 8 MiB of a memfd, touched, count
// when it is not excluded and not when it is.
TEST(ProcessMemory, OwnResidentBytesLeaveOutExcludedFiles) {
  constexpr std::size_t kBytes = 8u << 20;
  const int fd = memfd_create("keel-test-guest-ram", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, kBytes), 0);
  void* p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::memset(p, 1, kBytes);
  auto id = file_id(fd);
  ASSERT_TRUE(id.ok());
  const FileId ram[] = {*id};
  auto with = own_resident_bytes({});
  auto without = own_resident_bytes(ram);
  ASSERT_TRUE(with.ok());
  ASSERT_TRUE(without.ok());
  EXPECT_GE(*with, *without + kBytes - (1u << 20));  // (other mappings may move a little)
  EXPECT_GT(*without, 0u);
  munmap(p, kBytes);
  close(fd);
  EXPECT_FALSE(file_id(-1).ok());
  EXPECT_FALSE(file_id(std::string("/nonexistent/keel")).ok());
}

// The scheduler's account of a thread: one that burnt CPU has run time; a thread id that is
// not this process's reads as zeros.
TEST(SchedStat, ThreadsRunTimeAndNothingForAStranger) {
  volatile std::uint64_t x = 0;
  const std::uint64_t cpu0 = this_thread_cpu_ns();
  while (this_thread_cpu_ns() - cpu0 < 5'000'000) x = x + 1;
  const SchedStat s = thread_schedstat(this_thread_tid());
  EXPECT_GT(s.run_ns, 0u);
  EXPECT_GT(s.timeslices, 0u);
  const SchedStat none = thread_schedstat(-1);
  EXPECT_EQ(none.run_ns, 0u);
  EXPECT_EQ(none.wait_ns, 0u);
}

TEST(Clock, ManualClockMovesOnlyWhenAdvanced) {
  ManualClock c(100);
  EXPECT_EQ(c.now_ns(), 100u);
  EXPECT_EQ(c.deadline_after(std::chrono::microseconds(2)), 2100u);
  c.advance(std::chrono::nanoseconds(50));
  EXPECT_EQ(c.now_ns(), 150u);
  const ManualClock late(UINT64_MAX - 10);
  EXPECT_EQ(late.deadline_after(std::chrono::microseconds(1)), UINT64_MAX);  // saturates
  EXPECT_EQ(c.deadline_after(std::chrono::nanoseconds(-5)), 150u);           // the past is now
}

TEST(Clock, SteadyClockIsMonotonic) {
  const std::uint64_t a = steady_clock().now_ns();
  const std::uint64_t b = steady_clock().now_ns();
  EXPECT_GT(a, 0u);
  EXPECT_GE(b, a);
}

TEST(ThreadCpu, MeterCountsTheWorkersCpuAndKeepsItAfterItEnds) {
  ThreadCpuMeter meter;
  EXPECT_EQ(meter.ns(), 0u);
  std::thread t([&] {
    meter.start();
    const std::uint64_t until = this_thread_cpu_ns() + 20'000'000;  // burn 20 ms of CPU
    while (this_thread_cpu_ns() < until) {
    }
    meter.finish();
  });
  t.join();
  EXPECT_GE(meter.ns(), 20'000'000u);
  EXPECT_GT(this_thread_cpu_ns(), 0u);
  EXPECT_GT(thread_cpu_ns(pthread_self()), 0u);
}

class Listener : public ::testing::Test {
 protected:
  std::string path = (std::filesystem::temp_directory_path() /
                      ("keel-listener-" + std::to_string(getpid()) + ".sock"))
                         .string();
  void TearDown() override { ::unlink(path.c_str()); }
};

TEST_F(Listener, BindsAcceptsAndRemovesItsFile) {
  {
    auto l = UnixListener::listen(path);
    ASSERT_TRUE(l.ok()) << l.error().message;
    EXPECT_FALSE(l->accept().valid());  // nothing pending: non-blocking
    struct stat st {};
    ASSERT_EQ(::lstat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
  }
  struct stat st {};
  EXPECT_NE(::lstat(path.c_str(), &st), 0) << "the socket file outlived its listener";
}

TEST_F(Listener, ReplacesAStaleSocketButNotALiveServer) {
  // A socket file with nobody listening, as a server that died leaves it.
  auto make_stale = [&] {
    const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    ASSERT_EQ(::bind(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
    ::close(s);
  };
  auto live = UnixListener::listen(path);
  ASSERT_TRUE(live.ok()) << live.error().message;
  auto second = UnixListener::listen(path);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Errc::busy);
  EXPECT_NE(second.error().message.find("another server"), std::string::npos);
  live->close();

  make_stale();
  auto replaced = UnixListener::listen(path);
  ASSERT_TRUE(replaced.ok()) << replaced.error().message;
  replaced->close();

  make_stale();
  UnixListenerConfig keep;
  keep.replace_stale_socket = false;
  auto kept = UnixListener::listen(path, keep);
  ASSERT_FALSE(kept.ok());
  EXPECT_EQ(kept.error().code, Errc::busy);
}

TEST_F(Listener, RefusesAPathThatIsNotASocketOrTooLong) {
  { std::ofstream(path) << "data"; }
  auto l = UnixListener::listen(path);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.error().code, Errc::busy);
  EXPECT_NE(l.error().message.find("not a socket"), std::string::npos);
  std::ifstream still(path);
  EXPECT_TRUE(still.good()) << "a file that is not a socket was removed";
  auto long_path = UnixListener::listen(std::string(200, 'a'));
  ASSERT_FALSE(long_path.ok());
  EXPECT_EQ(long_path.error().code, Errc::invalid_argument);
}

}  // namespace
}  // namespace keel
