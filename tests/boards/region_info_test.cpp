// fpga/vfio_common: a region's info reply and its capability chain, as both VFIO backends get
// it (the kernel's ioctl, vfio-user's DEVICE_GET_REGION_INFO): mappable areas, and every way
// a reply can lie about its capabilities.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "keel/fpga/vfio/region_info.h"

namespace keel::fpga::vfio {
namespace {

using vfio_user::CapHeader;
using vfio_user::kCapSparseMmap;
using vfio_user::kCapType;
using vfio_user::kRegionCaps;
using vfio_user::kRegionMmap;
using vfio_user::kRegionRead;
using vfio_user::SparseMmap;

// A reply: the RegionInfo, then what `tail` appends at the offsets it gives.
struct Reply {
  std::vector<std::byte> bytes;
  explicit Reply(std::uint32_t flags, std::uint64_t size = 0x4000, std::uint32_t cap_offset = 0) {
    RegionInfo info{};
    info.argsz = sizeof info;
    info.flags = flags;
    info.cap_offset = cap_offset;
    info.size = size;
    put(info);
  }
  template <typename T>
  void put(const T& v) {
    const std::size_t at = bytes.size();
    bytes.resize(at + sizeof v);
    std::memcpy(bytes.data() + at, &v, sizeof v);
  }
  void sparse(std::uint32_t next, std::vector<SparseArea> areas, std::uint32_t claimed = ~0u) {
    put(CapHeader{kCapSparseMmap, 1, next});
    put(SparseMmap{claimed == ~0u ? static_cast<std::uint32_t>(areas.size()) : claimed, 0});
    for (const SparseArea& a : areas) put(a);
  }
};

constexpr std::uint32_t kCapAt = sizeof(RegionInfo);

TEST(RegionInfo, NotMmapableHasNoAreas) {
  Reply r(kRegionRead);
  auto a = mappable_areas(r.bytes);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->empty());
}

TEST(RegionInfo, MmapableWithoutCapabilitiesIsOneWholeArea) {
  Reply r(kRegionRead | kRegionMmap, 0x4000);
  auto a = mappable_areas(r.bytes);
  ASSERT_TRUE(a.ok());
  ASSERT_EQ(a->size(), 1u);
  EXPECT_EQ((*a)[0].offset, 0u);
  EXPECT_EQ((*a)[0].size, 0x4000u);
  auto s = sparse_mmap_areas(r.bytes);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->has_value()) << "no sparse-mmap capability";
}

TEST(RegionInfo, SparseMmapAreasAfterAnotherCapability) {
  // A type capability first (skipped), then the sparse areas: the doorbell page of a VF.
  const std::uint32_t sparse_at = kCapAt + sizeof(CapHeader) + 8;
  Reply r(kRegionRead | kRegionMmap | kRegionCaps, 0x4000, kCapAt);
  r.put(CapHeader{kCapType, 1, sparse_at});
  r.put(std::uint64_t{0});
  r.sparse(0, {{0x1000, 0x1000}, {0x3000, 0x1000}});
  auto a = mappable_areas(r.bytes);
  ASSERT_TRUE(a.ok()) << a.error().message;
  ASSERT_EQ(a->size(), 2u);
  EXPECT_EQ((*a)[0].offset, 0x1000u);
  EXPECT_EQ((*a)[1].offset, 0x3000u);
  auto s = sparse_mmap_areas(r.bytes);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->has_value());
  EXPECT_EQ((*s)->size(), 2u);
}

TEST(RegionInfo, LyingRepliesAreRefused) {
  EXPECT_FALSE(mappable_areas(std::vector<std::byte>(sizeof(RegionInfo) - 1)).ok())
      << "shorter than a RegionInfo";
  {
    Reply r(kRegionMmap | kRegionCaps, 0x4000, 4096);
    EXPECT_FALSE(mappable_areas(r.bytes).ok()) << "a capability past the end";
  }
  {
    Reply r(kRegionMmap | kRegionCaps, 0x4000, 8);
    EXPECT_FALSE(mappable_areas(r.bytes).ok()) << "a capability inside the RegionInfo";
  }
  {
    Reply r(kRegionMmap | kRegionCaps, 0x4000, kCapAt);
    r.put(CapHeader{kCapType, 1, kCapAt});  // points at itself
    auto a = mappable_areas(r.bytes);
    ASSERT_FALSE(a.ok());
    EXPECT_NE(a.error().message.find("loop"), std::string::npos);
  }
  {
    Reply r(kRegionMmap | kRegionCaps, 0x4000, kCapAt);
    r.sparse(0, {{0x1000, 0x1000}}, 1000);  // claims 1000 areas, carries one
    EXPECT_FALSE(mappable_areas(r.bytes).ok()) << "more areas than the reply holds";
  }
  {
    Reply r(kRegionMmap | kRegionCaps, 0x4000, kCapAt);
    r.sparse(0, {{0x3000, 0x2000}});
    EXPECT_FALSE(mappable_areas(r.bytes).ok()) << "an area past the region";
  }
  {
    Reply r(kRegionMmap | kRegionCaps, 0x4000, kCapAt);
    r.sparse(0, {{~std::uint64_t{0} - 0xfff, 0x2000}});
    EXPECT_FALSE(mappable_areas(r.bytes).ok()) << "an area whose end wraps";
  }
}

}  // namespace
}  // namespace keel::fpga::vfio
