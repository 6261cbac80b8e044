// The PF of a keel card on XRT: registers through xrt::ip, DMA memory from host-only BOs.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include <experimental/xrt_ip.h>
#include <xrt/xrt_bo.h>
#include <xrt/xrt_device.h>

#include "keel/fpga/function.h"
#include "keel/fpga/pf_function.h"

namespace keel::fpga::xrt {

class XrtPf final : public PfFunctionBase<Function>, private DmaOwner {
 public:
  /// `host_group`: the xclbin's host memory bank for host-only BOs, or -1 when it has none.
  XrtPf(::xrt::device device, ::xrt::ip ip, std::uint64_t bar_size, int host_group)
      : device_(std::move(device)),
        ip_(std::move(ip)),
        bar_size_(bar_size),
        host_group_(host_group) {}
  ~XrtPf() override;

  unsigned number() const noexcept override { return 0; }
  std::uint64_t bar_size() const noexcept override { return bar_size_; }
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  Result<DmaBuffer> alloc_dma(std::size_t bytes) override;
  Status map_dma(void* host, std::size_t bytes, Iova iova) override;
  Status unmap_dma(Iova iova) override;
  unsigned num_vectors() const noexcept override { return 0; }

 private:
  void release_dma(void* host, std::size_t bytes, Iova iova) noexcept override;
  bool inside(std::uint64_t offset, std::uint64_t width) const noexcept {
    return (offset & (width - 1)) == 0 && offset < bar_size_ && bar_size_ - offset >= width;
  }

  ::xrt::device device_;
  ::xrt::ip ip_;
  std::uint64_t bar_size_;
  int host_group_;
  std::mutex mu_;
  std::map<Iova, ::xrt::bo> buffers_;  // live alloc_dma buffers by device address
};

}  // namespace keel::fpga::xrt
