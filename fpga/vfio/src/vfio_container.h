// A VFIO container: one IOMMU domain (type 1) and the DMA windows mapped into it.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "keel/fpga/dma.h"
#include "keel/fpga/vfio/iova_space.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::fpga::vfio {

/// keel gives every IOMMU group its own container, so every function whose group is its own
/// (a VF behind ACS) has its own IOVA space, as the Function interface promises. Functions
/// that share a group share its container and IOVA space.
///
/// Threading: DMA calls may come from any thread; one mutex serialises them (control path).
class Container final : public DmaOwner {
 public:
  /// Opens `path` (/dev/vfio/vfio) and checks the API version and the type-1 IOMMU.
  /// Errors: unavailable (missing, no permission, not a VFIO container, no type-1 IOMMU).
  static Result<std::unique_ptr<Container>> open(const std::string& path);

  int fd() const noexcept { return fd_.get(); }

  /// Selects the type-1 IOMMU once the first group is attached, and reads its page sizes and
  /// usable IOVA ranges. Errors: unavailable.
  Status set_iommu();

  /// Errors: see Function::alloc_dma.
  Result<DmaBuffer> alloc(std::size_t bytes);
  /// Errors: see Function::map_dma.
  Status map(void* host, std::size_t bytes, Iova iova);
  /// Errors: not_found.
  Status unmap(Iova iova);

  /// The last group left: the kernel has dropped the domain and every mapping in it. Later
  /// releases only free host memory; later maps fail with gone.
  void detach() noexcept;

  std::size_t page() const noexcept { return space_.page(); }

 private:
  Container(UniqueFd fd, int iommu_type) : fd_(std::move(fd)), iommu_type_(iommu_type) {}
  void release_dma(void* host, std::size_t bytes, Iova iova) noexcept override;
  Status kernel_map(void* host, std::size_t bytes, Iova iova);
  void kernel_unmap(Iova iova, std::size_t bytes) noexcept;

  std::mutex mu_;
  UniqueFd fd_;
  int iommu_type_;
  bool detached_ = false;
  IovaSpace space_;
  std::set<Iova> allocated_;  // windows that belong to DmaBuffers from alloc()
};

}  // namespace keel::fpga::vfio
