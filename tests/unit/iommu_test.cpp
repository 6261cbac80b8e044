// The IOMMU model: windows per function, refusals that touch nothing and are counted.
#include <sys/mman.h>

#include <cstring>

#include <gtest/gtest.h>

#include "keel/fpga/iommu.h"

namespace keel::fpga {
namespace {

struct Pages {
  explicit Pages(std::size_t n) : bytes(n * 4096) {
    mem = static_cast<std::byte*>(
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  ~Pages() { munmap(mem, bytes); }
  std::byte* mem;
  std::size_t bytes;
};

TEST(Iommu, MapReadWriteUnmap) {
  Iommu mmu(3);
  Pages p(2);
  ASSERT_TRUE(mmu.map(1, 0x10000, p.mem, 8192).ok());
  const char msg[] = "hello, card";
  ASSERT_TRUE(mmu.dma_write(1, 0x10000 + 4090, msg, sizeof msg));  // crosses a page
  EXPECT_EQ(std::memcmp(p.mem + 4090, msg, sizeof msg), 0);
  char back[sizeof msg] = {};
  ASSERT_TRUE(mmu.dma_read(1, 0x10000 + 4090, back, sizeof back));
  EXPECT_STREQ(back, msg);
  EXPECT_EQ(mmu.faults(1), 0u);
  ASSERT_TRUE(mmu.unmap(1, 0x10000).ok());
  EXPECT_FALSE(mmu.dma_read(1, 0x10000, back, 4));
  EXPECT_EQ(mmu.faults(1), 1u);
  EXPECT_EQ(mmu.unmap(1, 0x10000).error().code, Errc::not_found);
}

TEST(Iommu, RefusedAccessTouchesNothingAndIsCounted) {
  Iommu mmu(2);
  Pages p(1);
  std::memset(p.mem, 0x11, 4096);
  ASSERT_TRUE(mmu.map(1, 0x20000, p.mem, 4096).ok());
  std::byte src[64];
  std::memset(src, 0x22, sizeof src);
  // Starts inside, ends outside: refused whole.
  EXPECT_FALSE(mmu.dma_write(1, 0x20000 + 4096 - 32, src, sizeof src));
  for (std::size_t i = 0; i < 4096; ++i) ASSERT_EQ(p.mem[i], std::byte{0x11}) << i;
  // Another function has no window there.
  EXPECT_FALSE(mmu.dma_write(0, 0x20000, src, sizeof src));
  EXPECT_EQ(mmu.faults(1), 1u);
  EXPECT_EQ(mmu.faults(0), 1u);
  EXPECT_EQ(mmu.total_faults(), 2u);
  // Wrapping the address space.
  EXPECT_FALSE(mmu.dma_read(1, ~std::uint64_t{0} - 8, src, 64));
  EXPECT_EQ(mmu.faults(1), 2u);
  EXPECT_FALSE(mmu.dma_read(7, 0x20000, src, 4)) << "no such function";
}

TEST(Iommu, AdjacentWindowsServeOneAccess) {
  Iommu mmu(1);
  Pages a(1), b(1);
  ASSERT_TRUE(mmu.map(0, 0x1000, a.mem, 4096).ok());
  ASSERT_TRUE(mmu.map(0, 0x2000, b.mem, 4096).ok());
  std::byte src[256];
  for (int i = 0; i < 256; ++i) src[i] = std::byte(i);
  ASSERT_TRUE(mmu.dma_write(0, 0x2000 - 128, src, 256));
  EXPECT_EQ(std::memcmp(a.mem + 4096 - 128, src, 128), 0);
  EXPECT_EQ(std::memcmp(b.mem, src + 128, 128), 0);
  EXPECT_TRUE(mmu.covered(0, 0x1000, 8192));
  EXPECT_FALSE(mmu.covered(0, 0x1000, 8193));
}

TEST(Iommu, MapRejectsBadWindows) {
  Iommu mmu(2);
  Pages p(2);
  EXPECT_EQ(mmu.map(0, 0x1001, p.mem, 4096).error().code, Errc::invalid_argument);
  EXPECT_EQ(mmu.map(0, 0x1000, p.mem, 100).error().code, Errc::invalid_argument);
  EXPECT_EQ(mmu.map(0, 0x1000, p.mem, 0).error().code, Errc::invalid_argument);
  EXPECT_EQ(mmu.map(5, 0x1000, p.mem, 4096).error().code, Errc::invalid_argument);
  ASSERT_TRUE(mmu.map(0, 0x4000, p.mem, 8192).ok());
  EXPECT_EQ(mmu.map(0, 0x5000, p.mem, 4096).error().code, Errc::out_of_range);
  EXPECT_EQ(mmu.map(0, 0x3000, p.mem, 8192).error().code, Errc::out_of_range);
  EXPECT_TRUE(mmu.map(1, 0x4000, p.mem, 8192).ok()) << "domains are independent";
  EXPECT_EQ(mmu.map(0, ~std::uint64_t{0} & ~0xFFFull, p.mem, 8192).error().code,
            Errc::out_of_range);
}

TEST(Iommu, ReleaseStoreOfTheLastWord) {
  Iommu mmu(1);
  Pages p(1);
  ASSERT_TRUE(mmu.map(0, 0x1000, p.mem, 4096).ok());
  const std::uint32_t cqe[4] = {1, 2, 3, 0x10004};
  ASSERT_TRUE(mmu.dma_write_release_last32(0, 0x1000 + 16, cqe, 16));
  EXPECT_EQ(std::memcmp(p.mem + 16, cqe, 16), 0);
  EXPECT_FALSE(mmu.dma_write_release_last32(0, 0x1000 + 2, cqe, 16)) << "unaligned last word";
}

}  // namespace
}  // namespace keel::fpga
