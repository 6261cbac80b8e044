// The fixture of the NBD server tests (nbd_*_test.cpp, one executable): a keel guest disk
// behind an NBD server, on the accelerated path or on the fallback (the test's parameter; the
// suite is instantiated for both in nbd_fixture.cpp), a scripted client, and the helpers every
// topic uses. The card runs free (the server needs its own threads); every wait is bounded (the
// client's socket timeout, or a minute where a test polls a counter), the server's timeouts run
// on a clock the test moves, and nothing asserts on time.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "keel/clock.h"
#include "keel/stack/nbd_disk.h"
#include "nbd_client.h"

namespace keel::test {

inline constexpr std::uint64_t kMiB = 1ull << 20;
inline constexpr std::uint64_t kDiskBytes = 48 * kMiB;

inline std::vector<std::uint8_t> pattern(std::size_t n, std::uint32_t seed) {
  std::vector<std::uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<std::uint8_t>(rng());
  return v;
}

inline std::string socket_path() {
  static std::atomic<unsigned> n{0};
  return "/tmp/keel-nbd-test-" + std::to_string(getpid()) + "-" + std::to_string(n++) + ".sock";
}

/// Joins a client-side sender thread even when an assertion returns early (the socket is shut
/// down first, so the thread's blocked send fails instead of waiting for the timeout).
struct Joiner {
  std::thread& thread;
  NbdClient& client;
  ~Joiner() {
    if (thread.joinable()) {
      shutdown(client.fd(), SHUT_RDWR);
      thread.join();
    }
  }
};

/// A clock for the server's timeouts that moves only when the test says so, shared with the
/// server (which lives in the fixture, past the test body's scope).
class TestClock {
 public:
  std::shared_ptr<const Clock> source() const { return clock_; }
  void advance(std::chrono::nanoseconds d) { clock_->advance(d); }

 private:
  std::shared_ptr<ManualClock> clock_ = std::make_shared<ManualClock>(1'000'000'000);
};

class NbdTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { start({}); }
  void TearDown() override { disk_.reset(); }

  /// (Re)starts the disk with server settings changed by `tweak`.
  void start(const std::function<void(vmm::NbdServerConfig&)>& tweak) {
    disk_.reset();
    stack::NbdDiskOptions o;
    o.size_bytes = kDiskBytes;
    o.vf_path = std::string(GetParam()) == "vf";
    o.server.socket_path = socket_path();
    o.server.log = false;
    if (tweak) tweak(o.server);
    auto d = stack::NbdDisk::create(o);
    ASSERT_TRUE(d.ok()) << to_string(d.error());
    disk_ = std::move(d).value();
  }

  std::unique_ptr<NbdClient> client() {
    auto c = NbdClient::connect(disk_->server().socket_path());
    EXPECT_NE(c, nullptr);
    return c;
  }
  std::unique_ptr<NbdClient> open() {
    auto c = client();
    if (c == nullptr) return nullptr;
    NbdClient::Export e;
    EXPECT_TRUE(c->open("keel", e)) << c->failure();
    EXPECT_EQ(e.size, kDiskBytes);
    return c;
  }

  /// Moves `clock` an hour on, again and again, until the server has dropped `peers` peers in
  /// all: a message or a stall the server had not seen yet when the clock moved starts its wait
  /// then, and the next move ends it. Bounded by a minute of real time, which a loaded machine
  /// does not need and a server that drops nobody runs out.
  bool advance_until_dropped(TestClock& clock, std::uint64_t peers) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (disk_->server().stats().protocol_errors < peers) {
      if (std::chrono::steady_clock::now() > until) return false;
      clock.advance(std::chrono::hours(1));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

  void expect_data(NbdClient& c, std::uint64_t off, const std::vector<std::uint8_t>& want) {
    std::vector<std::uint8_t> got;
    ASSERT_EQ(c.read(off, static_cast<std::uint32_t>(want.size()), got), 0u) << "read at " << off;
    ASSERT_TRUE(got == want) << "data differs at offset " << off << " (+" << want.size() << ")";
  }

  /// Every test ends here: the path that was asked for carried the IO.
  void expect_path_used() {
    const auto c = disk_->paravisor().counters();
    if (std::string(GetParam()) == "vf") {
      EXPECT_GT(c.vf_ios, 0u);
      EXPECT_EQ(c.fallback_ios, 0u);
    } else {
      EXPECT_GT(c.fallback_ios, 0u);
      EXPECT_EQ(c.vf_ios, 0u);
    }
  }

  std::unique_ptr<stack::NbdDisk> disk_;
};

/// Polls `done` every millisecond for at most a minute of real time (a bound that a loaded
/// machine does not need and a broken server runs out).
inline bool eventually(const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace keel::test
