// keel/fpga/iommu_function.h - DMA memory for functions of simulated cards (model and sim),
// mapped through the shared Iommu model.
#pragma once

#include <atomic>

#include "keel/fpga/function.h"
#include "keel/fpga/iommu.h"

namespace keel::fpga {

/// Implements the DMA part of Function on top of the Iommu model: alloc_dma takes anonymous
/// page-aligned memory and maps it at IOVAs from kDmaAllocBase up (below it is left for callers
/// that choose their own IOVAs, such as the paravisor's IOVA = GPA).
class IommuFunction : public Function, private DmaOwner {
 public:
  IommuFunction(Iommu& iommu, unsigned function) noexcept : iommu_(iommu), function_(function) {}

  unsigned number() const noexcept override { return function_; }
  Result<DmaBuffer> alloc_dma(std::size_t bytes) override;
  Status map_dma(void* host, std::size_t bytes, Iova iova) override;
  Status unmap_dma(Iova iova) override;

  /// First IOVA alloc_dma hands out.
  static constexpr Iova kAllocBase = kDmaAllocBase;

 protected:
  /// True when the function is not there (surprise-removed or not enabled).
  virtual bool gone() const noexcept = 0;
  Iommu& iommu() noexcept { return iommu_; }

 private:
  void release_dma(void* host, std::size_t bytes, Iova iova) noexcept override;

  Iommu& iommu_;
  unsigned function_;
  std::atomic<Iova> next_iova_{kAllocBase};
};

}  // namespace keel::fpga
