// keel/fpga/vfio/iova_space.h - IOVA bookkeeping for one real IOMMU domain.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "keel/fpga/dma.h"
#include "keel/result.h"

namespace keel::fpga::vfio {

/// Which IOVAs of a domain are in use. The kernel does the mapping; this decides where
/// alloc_dma() buffers go and refuses caller-chosen windows that overlap or that the IOMMU
/// cannot translate, with a message instead of a bare errno.
///
/// Allocated windows start at kAllocBase (kDmaAllocBase, 2^52, as on the simulated cards), are
/// 64 KiB aligned and keep an unmapped guard page after them; below it is left to callers that
/// choose their IOVAs (the paravisor's IOVA = GPA). When no usable range reaches kAllocBase
/// (an IOMMU of 39 or 48 address bits), windows are taken from the top of the highest usable
/// range downwards, as far from guest RAM as the IOMMU allows.
///
/// Threading: none; the owner serialises calls.
class IovaSpace {
 public:
  /// One usable IOVA range, both ends inclusive.
  struct Range {
    Iova first = 0;
    Iova last = ~Iova{0};
  };

  static constexpr Iova kAllocBase = kDmaAllocBase;
  static constexpr Iova kAllocAlign = 64ull << 10;

  /// `usable`: the ranges the IOMMU translates (all of them when empty). `page`: the smallest
  /// IOMMU page, a power of two.
  explicit IovaSpace(std::vector<Range> usable = {}, std::size_t page = 4096);

  std::size_t page() const noexcept { return page_; }
  const std::vector<Range>& usable() const noexcept { return usable_; }

  /// Records a caller-chosen window. Errors: invalid_argument (zero size, or `iova` or
  /// `bytes` not a multiple of page()), out_of_range (overlaps a window, wraps, or leaves the
  /// usable ranges).
  Status reserve(Iova iova, std::size_t bytes);
  /// Picks and records a window of `bytes` (a multiple of page()). Errors: invalid_argument
  /// (zero or unaligned size), no_memory (no room left in the usable ranges).
  Result<Iova> allocate(std::size_t bytes);
  /// The size of the window that starts at `iova`. Errors: not_found.
  Result<std::size_t> size_of(Iova iova) const;
  /// Forgets the window that starts at `iova` and returns its size. Errors: not_found.
  Result<std::size_t> release(Iova iova);

  std::size_t windows() const noexcept { return windows_.size(); }

 private:
  const Range* range_holding(Iova first, Iova last) const;
  Result<Iova> allocate_below(std::size_t bytes, Iova need, Iova align);

  std::vector<Range> usable_;
  std::size_t page_;
  std::map<Iova, std::size_t> windows_;  // start -> bytes
};

}  // namespace keel::fpga::vfio
