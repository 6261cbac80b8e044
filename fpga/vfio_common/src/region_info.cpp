#include "keel/fpga/vfio/region_info.h"

#include <cstring>
#include <string>

namespace keel::fpga::vfio {

using vfio_user::CapHeader;
using vfio_user::kCapSparseMmap;
using vfio_user::kRegionCaps;
using vfio_user::kRegionMmap;
using vfio_user::SparseMmap;

Result<std::optional<std::vector<SparseArea>>> sparse_mmap_areas(std::span<const std::byte> reply) {
  RegionInfo info{};
  if (reply.size() < sizeof info) {
    return make_error(Errc::invalid_argument, "region info: " + std::to_string(reply.size()) +
                                                  " bytes, shorter than a vfio_region_info");
  }
  std::memcpy(&info, reply.data(), sizeof info);
  if ((info.flags & kRegionCaps) == 0) return std::optional<std::vector<SparseArea>>{};
  // The chain, bounded by the reply and by a hop count (a loop in it ends here).
  std::uint32_t at = info.cap_offset;
  for (unsigned hops = 0; at != 0; ++hops) {
    if (hops == 64) return make_error(Errc::invalid_argument, "region info: a capability loop");
    if (at < sizeof info || at > reply.size() || reply.size() - at < sizeof(CapHeader)) {
      return make_error(Errc::invalid_argument, "region info: a capability outside the reply");
    }
    CapHeader h{};
    std::memcpy(&h, reply.data() + at, sizeof h);
    if (h.id != kCapSparseMmap) {
      at = h.next;
      continue;
    }
    SparseMmap sm{};
    const std::size_t list = at + sizeof h + sizeof sm;
    if (reply.size() < list) {
      return make_error(Errc::invalid_argument, "region info: a sparse-mmap capability cut short");
    }
    std::memcpy(&sm, reply.data() + at + sizeof h, sizeof sm);
    if ((reply.size() - list) / sizeof(SparseArea) < sm.nr_areas) {
      return make_error(Errc::invalid_argument, "region info: " + std::to_string(sm.nr_areas) +
                                                    " sparse-mmap areas do not fit the reply");
    }
    std::vector<SparseArea> areas;
    for (std::uint32_t i = 0; i < sm.nr_areas; ++i) {
      SparseArea a{};
      std::memcpy(&a, reply.data() + list + i * sizeof a, sizeof a);
      if (a.size > info.size || a.offset > info.size - a.size) {
        return make_error(Errc::invalid_argument,
                          "region info: a sparse-mmap area beyond the region's " +
                              std::to_string(info.size) + " bytes");
      }
      areas.push_back(a);
    }
    return std::optional<std::vector<SparseArea>>(std::move(areas));
  }
  return std::optional<std::vector<SparseArea>>{};
}

Result<std::vector<SparseArea>> mappable_areas(std::span<const std::byte> reply) {
  auto sparse = sparse_mmap_areas(reply);
  if (!sparse) return sparse.error();
  RegionInfo info{};
  std::memcpy(&info, reply.data(), sizeof info);
  if ((info.flags & kRegionMmap) == 0) return std::vector<SparseArea>{};
  if (*sparse) return std::move(**sparse);
  return std::vector<SparseArea>{SparseArea{0, info.size}};
}

}  // namespace keel::fpga::vfio
