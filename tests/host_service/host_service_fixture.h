// Test support for the host storage service: a temporary image, memfd guest RAM, and a
// service plus client with bounded waits.
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "keel/vmm/host_service.h"

namespace keel::vmm::test {

inline constexpr auto kWait = std::chrono::seconds(10);  // bound of every wait in the suite

/// Fills `n` bytes with a seeded pattern.
inline void fill(std::byte* p, std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < n; i += 8) {
    const std::uint64_t v = rng();
    std::memcpy(p + i, &v, std::min<std::size_t>(8, n - i));
  }
}

/// A disk image in $TMPDIR (or /tmp), filled with a seeded pattern, removed at the end.
class TempImage {
 public:
  explicit TempImage(std::uint64_t bytes, std::uint64_t seed = 1) : bytes_(bytes) {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::string(dir != nullptr ? dir : "/tmp") + "/keel-host-image-XXXXXX";
    fd_ = mkstemp(path_.data());
    EXPECT_GE(fd_, 0) << "mkstemp " << path_;
    std::vector<std::byte> data(bytes);
    fill(data.data(), data.size(), seed);
    EXPECT_EQ(pwrite(fd_, data.data(), data.size(), 0), static_cast<ssize_t>(bytes));
  }
  ~TempImage() {
    close(fd_);
    unlink(path_.c_str());
  }
  TempImage(const TempImage&) = delete;
  TempImage& operator=(const TempImage&) = delete;

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  std::vector<std::byte> read(std::uint64_t offset, std::size_t n) const {
    std::vector<std::byte> out(n);
    EXPECT_EQ(pread(fd_, out.data(), n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
    return out;
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t bytes_;
};

/// Guest RAM: a memfd mapped here too, so tests can fill and check buffers.
class GuestRam {
 public:
  explicit GuestRam(std::uint64_t bytes) : bytes_(bytes) {
    fd_ = memfd_create("keel-test-guest", MFD_CLOEXEC);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(ftruncate(fd_, static_cast<off_t>(bytes)), 0);
    // The test's own view of guest RAM.
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    EXPECT_NE(p, MAP_FAILED);
    base_ = static_cast<std::byte*>(p);
  }
  ~GuestRam() {
    munmap(base_, bytes_);
    close(fd_);
  }
  GuestRam(const GuestRam&) = delete;
  GuestRam& operator=(const GuestRam&) = delete;

  int fd() const { return fd_; }
  std::uint64_t bytes() const { return bytes_; }
  std::byte* at(std::uint64_t gpa) const { return base_ + gpa; }

 private:
  int fd_ = -1;
  std::uint64_t bytes_;
  std::byte* base_ = nullptr;
};

/// An image of 8 MiB whose slice [1 MiB, 5 MiB) belongs to the guest; 4 MiB of guest RAM.
class HostServiceTest : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kImageBytes = 8 << 20;
  static constexpr std::uint64_t kBase = 1 << 20;
  static constexpr std::uint64_t kSlice = 4 << 20;
  static constexpr std::uint64_t kRam = 4 << 20;

  HostServiceConfig config() const {
    HostServiceConfig c;
    c.image_path = image.path();
    c.base_offset = kBase;
    c.length = kSlice;
    c.guest_memory_fd = ram.fd();
    c.guest_memory_bytes = ram.bytes();
    return c;
  }
  void start(const HostServiceConfig& c) {
    auto s = HostStorageService::start(c);
    ASSERT_TRUE(s.ok()) << to_string(s.error());
    service = std::move(*s);
  }
  void start() { start(config()); }
  std::unique_ptr<HostServiceClient> client(unsigned entries = 256) {
    auto ch = service->open_channel(entries);
    EXPECT_TRUE(ch.ok()) << to_string(ch.error());
    if (!ch.ok()) return nullptr;
    auto c = HostServiceClient::attach(*ch);
    EXPECT_TRUE(c.ok()) << to_string(c.error());
    return c.ok() ? std::move(*c) : nullptr;
  }

  /// Submits one request, notifies, and waits (bounded) for its completion; returns its result.
  static std::int32_t run(HostServiceClient& c, HostOp op, std::uint64_t offset,
                          std::vector<HostSegment> segs, std::uint32_t zero_bytes = 0) {
    static std::uint64_t next_tag = 1000;
    const std::uint64_t tag = next_tag++;
    EXPECT_TRUE(c.submit(tag, op, offset, segs, zero_bytes));
    HostCompletion done[1];
    const unsigned n = c.wait(done, kWait);
    EXPECT_EQ(n, 1u) << "no completion within the bound";
    if (n != 1) return 1;
    EXPECT_EQ(done[0].tag, tag);
    return done[0].result;
  }

  TempImage image{kImageBytes};
  GuestRam ram{kRam};
  std::unique_ptr<HostStorageService> service;
};

}  // namespace keel::vmm::test
