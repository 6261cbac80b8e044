// IovaSpace: where the vfio backend puts DMA buffers and which caller windows it refuses.
#include "keel/fpga/vfio/iova_space.h"

#include <gtest/gtest.h>

namespace keel::fpga::vfio {
namespace {

constexpr std::size_t kPage = 4096;
constexpr Iova kGiB = 1ull << 30;

// The error code of a failed call; a call that succeeded fails the expectation instead.
template <typename R>
Errc code(const R& r) {
  EXPECT_FALSE(r.ok()) << "expected an error";
  return r.ok() ? Errc::io_error : r.error().code;
}

TEST(IovaSpace, AllocationsStartAtTheAllocBaseAlignedWithAGuardPage) {
  IovaSpace space;

  const auto a = space.allocate(64 * 1024);
  const auto b = space.allocate(kPage);

  ASSERT_TRUE(a.ok()) << to_string(a.error());
  ASSERT_TRUE(b.ok()) << to_string(b.error());
  EXPECT_EQ(*a, IovaSpace::kAllocBase);
  EXPECT_EQ(*b % IovaSpace::kAllocAlign, 0u);
  EXPECT_GE(*b, *a + 64 * 1024 + kPage) << "no guard page after the first buffer";
}

TEST(IovaSpace, ReleasedRangesAreReused) {
  IovaSpace space;
  const auto a = space.allocate(kPage);
  ASSERT_TRUE(a.ok());

  const auto size = space.release(*a);
  const auto again = space.allocate(kPage);

  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, kPage);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *a);
  EXPECT_EQ(space.windows(), 1u);
}

TEST(IovaSpace, CallerWindowsBelowTheAllocBaseDoNotDisturbAllocations) {
  IovaSpace space;

  const Status guest = space.reserve(0, 4 * kGiB);  // IOVA = GPA for a 4 GiB guest
  const auto buffer = space.allocate(kPage);

  ASSERT_TRUE(guest.ok()) << to_string(guest.error());
  ASSERT_TRUE(buffer.ok());
  EXPECT_EQ(*buffer, IovaSpace::kAllocBase);
}

// Issue 10: buffers at 64 GiB took the IOVAs of a guest with ~60 GiB of RAM (IOVA = GPA).
TEST(IovaSpace, GuestRamUpTo2To52DoesNotMeetAllocations) {
  IovaSpace space;

  const auto buffer = space.allocate(kPage);
  const Status guest = space.reserve(0, 1024 * kGiB);  // a 1 TiB guest at IOVA = GPA
  const Status high = space.reserve(64 * kGiB, 64 * kGiB);

  ASSERT_TRUE(buffer.ok());
  EXPECT_GE(*buffer, Iova{1} << 52);
  EXPECT_EQ(code(high), Errc::out_of_range) << "overlaps the 1 TiB guest";
  EXPECT_TRUE(guest.ok()) << to_string(guest.error());
}

TEST(IovaSpace, AnIommuOf39BitsGetsBuffersFromTheTopDown) {
  // x86 style: everything but the MSI window, and a 39-bit address width.
  const Iova top = (1ull << 39) - 1;
  IovaSpace space({{0, 0xFEDFFFFF}, {0xFEF00000, top}}, kPage);
  ASSERT_TRUE(space.reserve(4 * kGiB, 60 * kGiB).ok());  // guest RAM above 4 GiB, IOVA = GPA

  const auto a = space.allocate(kPage);
  const auto b = space.allocate(64 * 1024);

  ASSERT_TRUE(a.ok()) << to_string(a.error());
  ASSERT_TRUE(b.ok()) << to_string(b.error());
  EXPECT_EQ(*a, (top + 1) - IovaSpace::kAllocAlign);
  EXPECT_EQ(*a % IovaSpace::kAllocAlign, 0u);
  EXPECT_EQ(*b % IovaSpace::kAllocAlign, 0u);
  EXPECT_LE(*b + 64 * 1024 + kPage, *a) << "overlaps the first buffer or its guard page";
  EXPECT_GE(*b, 64 * kGiB);
}

TEST(IovaSpace, AllocationSkipsACallerWindow) {
  IovaSpace space;
  ASSERT_TRUE(space.reserve(IovaSpace::kAllocBase, 16 * kPage).ok());

  const auto buffer = space.allocate(kPage);

  ASSERT_TRUE(buffer.ok());
  EXPECT_GE(*buffer, IovaSpace::kAllocBase + 16 * kPage);
  EXPECT_EQ(*buffer % IovaSpace::kAllocAlign, 0u);
}

TEST(IovaSpace, OverlappingWindowsAreRefused) {
  IovaSpace space;
  ASSERT_TRUE(space.reserve(kGiB, 4 * kPage).ok());

  const Status inside = space.reserve(kGiB + kPage, kPage);
  const Status before = space.reserve(kGiB - kPage, 2 * kPage);
  const Status adjacent = space.reserve(kGiB + 4 * kPage, kPage);

  ASSERT_FALSE(inside.ok());
  EXPECT_EQ(code(inside), Errc::out_of_range);
  EXPECT_NE(inside.error().message.find("overlaps"), std::string::npos);
  ASSERT_FALSE(before.ok());
  EXPECT_EQ(code(before), Errc::out_of_range);
  EXPECT_TRUE(adjacent.ok()) << to_string(adjacent.error());
}

TEST(IovaSpace, UnalignedOrEmptyWindowsAreInvalid) {
  IovaSpace space;

  const Status unaligned_iova = space.reserve(kGiB + 512, kPage);
  const Status unaligned_size = space.reserve(kGiB, kPage + 1);
  const Status empty = space.reserve(kGiB, 0);
  const auto empty_alloc = space.allocate(0);

  EXPECT_EQ(code(unaligned_iova), Errc::invalid_argument);
  EXPECT_EQ(code(unaligned_size), Errc::invalid_argument);
  EXPECT_EQ(code(empty), Errc::invalid_argument);
  EXPECT_EQ(code(empty_alloc), Errc::invalid_argument);
}

TEST(IovaSpace, WindowsOutsideTheUsableRangesAreRefused) {
  // x86 style: everything but the MSI window, and a 39-bit address width.
  IovaSpace space({{0, 0xFEDFFFFF}, {0xFEF00000, (1ull << 39) - 1}}, kPage);

  const Status msi = space.reserve(0xFEE00000, kPage);
  const Status wide = space.reserve(1ull << 39, kPage);
  const Status wraps = space.reserve(~Iova{0} - kPage + 1, 2 * kPage);
  const Status fine = space.reserve(0xFEF00000, kPage);

  EXPECT_EQ(code(msi), Errc::out_of_range);
  EXPECT_EQ(code(wide), Errc::out_of_range);
  EXPECT_EQ(code(wraps), Errc::out_of_range);
  EXPECT_TRUE(fine.ok()) << to_string(fine.error());
}

TEST(IovaSpace, AllocationMovesToTheNextUsableRangeAndRunsOut) {
  const Iova second = IovaSpace::kAllocBase << 1;
  IovaSpace space({{IovaSpace::kAllocBase, IovaSpace::kAllocBase + 2 * kPage - 1},
                   {second, second + 128 * 1024 - 1}},
                  kPage);

  const auto first = space.allocate(kPage);      // fits below the end of range one
  const auto moved = space.allocate(8 * kPage);  // does not: goes to range two
  const auto last = space.allocate(8 * kPage);   // range two has room for one more
  const auto none = space.allocate(8 * kPage);

  ASSERT_TRUE(first.ok()) << to_string(first.error());
  EXPECT_EQ(*first, IovaSpace::kAllocBase);
  ASSERT_TRUE(moved.ok()) << to_string(moved.error());
  EXPECT_EQ(*moved, second);
  ASSERT_TRUE(last.ok()) << to_string(last.error());
  EXPECT_EQ(*last, second + 64 * 1024);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(code(none), Errc::no_memory);
}

TEST(IovaSpace, LargerIommuPagesRaiseTheAlignment) {
  IovaSpace space({}, 2 << 20);

  const Status small = space.reserve(kGiB, kPage);
  const auto buffer = space.allocate(2 << 20);

  EXPECT_EQ(code(small), Errc::invalid_argument);
  ASSERT_TRUE(buffer.ok());
  EXPECT_EQ(*buffer % (2 << 20), 0u);
}

TEST(IovaSpace, ReleasingAnUnknownWindowIsNotFound) {
  IovaSpace space;

  const auto r = space.release(kGiB);

  ASSERT_FALSE(r.ok());
  EXPECT_EQ(code(r), Errc::not_found);
}

// What a VFIO container replays into a new IOMMU domain when its function comes back: each
// window's size, by its start; a window that is not there is not found.
TEST(IovaSpace, AWindowsSizeIsKnownByItsStartOnly) {
  IovaSpace space;
  ASSERT_TRUE(space.reserve(kGiB, 4 * kPage).ok());
  const auto a = space.allocate(3 * kPage);
  ASSERT_TRUE(a.ok());

  EXPECT_EQ(space.size_of(kGiB).value(), 4 * kPage);
  EXPECT_EQ(space.size_of(*a).value(), 3 * kPage);
  EXPECT_EQ(code(space.size_of(kGiB + kPage)), Errc::not_found) << "inside a window, not its start";
  ASSERT_TRUE(space.release(kGiB).ok());
  EXPECT_EQ(code(space.size_of(kGiB)), Errc::not_found);
}

}  // namespace
}  // namespace keel::fpga::vfio
