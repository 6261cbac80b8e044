// A VFIO container: one IOMMU domain (type 1) and the DMA windows mapped into it.
#pragma once

#include <cstddef>
#include <map>
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
  /// releases only free host memory; later maps fail with gone. The container's descriptor
  /// stays open, and the windows stay recorded, for attach().
  void detach() noexcept;

  /// After detach(): attaches the group `group_fd` (the function back on the bus, in a new
  /// IOMMU group perhaps), selects the IOMMU again and maps every window that is still held
  /// (DmaBuffers and caller-chosen windows alike) at its old IOVA, so nothing that holds an
  /// IOVA has to learn a new one. Errors: unavailable (attach or IOMMU refused), out_of_range
  /// (a window is outside what the new domain translates), and the errors of map(); on error
  /// the container stays detached.
  Status attach(int group_fd);

  std::size_t page() const noexcept { return space_.page(); }

 private:
  Container(UniqueFd fd, int iommu_type) : fd_(std::move(fd)), iommu_type_(iommu_type) {}
  void release_dma(void* host, std::size_t bytes, Iova iova) noexcept override;
  Status kernel_map(void* host, std::size_t bytes, Iova iova);
  void kernel_unmap(Iova iova, std::size_t bytes) noexcept;
  /// Selects the IOMMU and reads its page size and usable ranges into `space`.
  Status select_iommu(IovaSpace& space);

  std::mutex mu_;
  UniqueFd fd_;
  int iommu_type_;
  bool detached_ = false;
  IovaSpace space_;
  std::set<Iova> allocated_;     // windows that belong to DmaBuffers from alloc()
  std::map<Iova, void*> hosts_;  // every window's host memory, for attach()
};

}  // namespace keel::fpga::vfio
