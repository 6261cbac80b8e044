#include "keel/fpga/iommu_function.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace keel::fpga {
namespace {

constexpr std::size_t kPage = 4096;

}  // namespace

Result<DmaBuffer> IommuFunction::alloc_dma(std::size_t bytes) {
  if (bytes == 0) return make_error(Errc::invalid_argument, "DMA allocation of 0 bytes");
  if (gone()) return make_error(Errc::gone, "function " + std::to_string(function_) + " is gone");
  const std::size_t len = (bytes + kPage - 1) & ~(kPage - 1);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return make_error(Errc::no_memory, "DMA allocation of " + std::to_string(len) +
                                           " bytes failed: " + std::strerror(errno));
  }
  // IOVAs are 64 KiB aligned (the largest NVMe page size keel supports) with at least one
  // unmapped guard page after each buffer, so a device overrun faults in the IOMMU.
  constexpr std::size_t kIovaAlign = 64 * 1024;
  const std::size_t span = (len + kPage + kIovaAlign - 1) & ~(kIovaAlign - 1);
  const Iova iova = next_iova_.fetch_add(span, std::memory_order_relaxed);
  if (Status st = iommu_.map(function_, iova, p, len); !st.ok()) {
    munmap(p, len);
    return st.error();
  }
  return DmaBuffer(this, p, len, iova);
}

Status IommuFunction::map_dma(void* host, std::size_t bytes, Iova iova) {
  if (gone()) return make_error(Errc::gone, "function " + std::to_string(function_) + " is gone");
  return iommu_.map(function_, iova, host, bytes);
}

Status IommuFunction::unmap_dma(Iova iova) { return iommu_.unmap(function_, iova); }

void IommuFunction::release_dma(void* host, std::size_t bytes, Iova iova) noexcept {
  (void)iommu_.unmap(function_, iova);  // may already be gone with the VF
  munmap(host, bytes);
}

}  // namespace keel::fpga
