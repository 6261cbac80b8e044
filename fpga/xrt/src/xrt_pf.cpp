// The PF on XRT. XRT reports failures by throwing; every call is caught here and becomes an
// all-ones read, a dropped write or a typed error.
#include "xrt_pf.h"

#include <cstring>
#include <exception>
#include <new>

namespace keel::fpga::xrt {

XrtPf::~XrtPf() {
  std::lock_guard lock(mu_);
  buffers_.clear();
}

std::uint32_t XrtPf::read32(std::uint64_t offset) noexcept {
  if (!inside(offset, 4)) return ~std::uint32_t{0};
  try {
    return ip_.read_register(static_cast<std::uint32_t>(offset));
  } catch (...) {
    return ~std::uint32_t{0};
  }
}

std::uint64_t XrtPf::read64(std::uint64_t offset) noexcept {
  if (!inside(offset, 8)) return ~std::uint64_t{0};
  const std::uint64_t lo = read32(offset);
  return lo | (std::uint64_t{read32(offset + 4)} << 32);
}

void XrtPf::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (!inside(offset, 4)) return;
  try {
    ip_.write_register(static_cast<std::uint32_t>(offset), value);
  } catch (...) {
    // Dropped, as a posted write to a function that is gone.
  }
}

void XrtPf::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  if (!inside(offset, 8)) return;
  write32(offset, static_cast<std::uint32_t>(value));
  write32(offset + 4, static_cast<std::uint32_t>(value >> 32));
}

Result<DmaBuffer> XrtPf::alloc_dma(std::size_t bytes) {
  if (bytes == 0)
    return make_error(Errc::invalid_argument, "cannot allocate 0 bytes of DMA memory");
  if (host_group_ < 0) {
    return make_error(Errc::unavailable,
                      "the xclbin has no host memory bank, so the card cannot reach host "
                      "memory: build it with a HOST[0] connection and enable host memory in the "
                      "shell (xbutil configure --host-mem)");
  }
  constexpr std::size_t kPage = 4096;
  if (bytes > ~std::size_t{0} - kPage)
    return make_error(Errc::no_memory, "DMA allocation too large");
  const std::size_t rounded = (bytes + kPage - 1) / kPage * kPage;
  try {
    ::xrt::bo bo(device_, rounded, ::xrt::bo::flags::host_only,
                 static_cast<::xrt::memory_group>(host_group_));
    void* host = bo.map();
    std::memset(host, 0, rounded);
    const Iova iova = bo.address();
    std::lock_guard lock(mu_);
    buffers_.insert_or_assign(iova, std::move(bo));
    return DmaBuffer(this, host, rounded, iova);
  } catch (const std::bad_alloc&) {
    return make_error(Errc::no_memory,
                      "out of host memory for a " + std::to_string(rounded) + "-byte DMA buffer");
  } catch (const std::exception& e) {
    return make_error(Errc::no_memory, "XRT could not allocate a " + std::to_string(rounded) +
                                           "-byte host-only buffer: " + e.what());
  }
}

void XrtPf::release_dma(void*, std::size_t, Iova iova) noexcept {
  std::lock_guard lock(mu_);
  buffers_.erase(iova);  // the bo's destructor frees it
}

Status XrtPf::map_dma(void*, std::size_t, Iova) {
  return make_error(Errc::unavailable,
                    "XRT picks device addresses for host memory itself; mapping memory at a "
                    "chosen IOVA (IOVA = GPA) needs the vfio backend");
}

Status XrtPf::unmap_dma(Iova iova) {
  return make_error(Errc::not_found,
                    "no map_dma window at IOVA " + std::to_string(iova) + " (XRT maps none)");
}

}  // namespace keel::fpga::xrt
