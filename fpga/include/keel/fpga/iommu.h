// keel/fpga/iommu.h - the IOMMU model shared by the simulated backends (model and sim).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <vector>

#include "keel/fpga/dma.h"
#include "keel/result.h"

namespace keel::fpga {

/// Per-function DMA windows. A card-side access must lie entirely inside mapped windows of
/// the issuing function; otherwise it is refused, counted against that function, and touches
/// no memory. Windows of different functions are independent (the same IOVA may map different
/// memory for different functions).
///
/// Threading: map/unmap from host threads and DMA from the card thread may run concurrently.
class Iommu {
 public:
  explicit Iommu(unsigned functions);

  /// Errors: invalid_argument (function out of range, zero length, unaligned), out_of_range
  /// (overlaps an existing window or wraps the address space).
  Status map(unsigned function, Iova iova, void* host, std::size_t bytes);
  /// Errors: not_found (no window starts at iova).
  Status unmap(unsigned function, Iova iova);
  /// Drops every window of the function.
  void unmap_all(unsigned function);

  /// True when [iova, iova + bytes) is entirely mapped for the function. Does not count.
  bool covered(unsigned function, Iova iova, std::size_t bytes) const;

  /// Card reads host memory. Returns false (and counts a fault) when refused.
  bool dma_read(unsigned function, Iova iova, void* dst, std::size_t bytes) noexcept;
  /// Card writes host memory. Returns false (and counts a fault) when refused.
  bool dma_write(unsigned function, Iova iova, const void* src, std::size_t bytes) noexcept;
  /// Like dma_write, but the last 4 bytes (which must be 4-byte aligned) are stored with
  /// release ordering after the rest, so a host thread that acquires them sees the whole
  /// record: how a completion queue entry's phase tag becomes visible last.
  bool dma_write_release_last32(unsigned function, Iova iova, const void* src,
                                std::size_t bytes) noexcept;

  /// Counts a refusal decided outside the IOMMU (the shell refusing a function's DMA).
  void count_fault(unsigned function) noexcept;
  std::uint64_t faults(unsigned function) const noexcept;
  std::uint64_t total_faults() const noexcept;
  unsigned functions() const noexcept { return static_cast<unsigned>(domains_.size()); }

 private:
  struct Window {
    std::byte* host;
    std::size_t bytes;
  };
  struct Domain {
    mutable std::shared_mutex mu;
    std::map<Iova, Window> windows;  // keyed by start IOVA
    std::atomic<std::uint64_t> faults{0};
  };

  enum class Op { read, write, write_release };
  bool access(unsigned function, Iova iova, std::byte* host_side, std::size_t bytes,
              Op op) noexcept;

  std::vector<std::unique_ptr<Domain>> domains_;
};

}  // namespace keel::fpga
