// keel/fpga/vfio/region_info.h - a VFIO region's info and its capability chain, as the
// kernel's VFIO_DEVICE_GET_REGION_INFO and vfio-user's DEVICE_GET_REGION_INFO return them:
// vfio-user carries <linux/vfio.h>'s vfio_region_info and capabilities byte for byte, so the
// kernel VFIO backend and the vfio-user backend read them with this one parser.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "keel/result.h"
#include "keel/wire/vfio_user.h"

namespace keel::fpga::vfio {

using vfio_user::RegionInfo;
using vfio_user::SparseArea;

/// The areas of the region's sparse-mmap capability, if it has one (nullopt: none). Errors:
/// as mappable_areas.
Result<std::optional<std::vector<SparseArea>>> sparse_mmap_areas(std::span<const std::byte> reply);

/// The parts of a region a process may mmap, from its info reply (a RegionInfo, then its
/// capabilities at offsets from the reply's start): none when the region is not mmap-able;
/// the whole region when it is and has no sparse-mmap capability; the capability's areas
/// otherwise (empty if it lists none). Errors: invalid_argument (a reply shorter than a
/// RegionInfo, a capability outside the reply, a loop in the chain, an area beyond the
/// region or whose end wraps).
Result<std::vector<SparseArea>> mappable_areas(std::span<const std::byte> reply);

}  // namespace keel::fpga::vfio
