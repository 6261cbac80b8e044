// keel/fpga/dma.h - memory the card can reach by DMA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace keel::fpga {

/// An IO virtual address: what a function puts on the bus. The IOMMU translates it.
using Iova = std::uint64_t;

/// Where alloc_dma() places its buffers in a function's IOMMU domain: 2^52, above the largest
/// physical address x86-64 and arm64 define, so no guest RAM mapped at IOVA = GPA (the
/// paravisor) can collide with a driver's queues or bounce buffers however much RAM the guest
/// has. (The host storage service's shared regions at 2^56 are a different address space.)
/// Below it is left to callers that choose their IOVAs. An IOMMU that cannot translate that
/// high (VT-d with 39- or 48-bit addresses) gets buffers from the top of what it translates.
inline constexpr Iova kDmaAllocBase = Iova{1} << 52;

/// Whom a DmaBuffer returns its memory to. Implemented by each backend.
class DmaOwner {
 public:
  /// Unmaps `iova` from the function's IOMMU domain and frees the host memory. Never fails.
  virtual void release_dma(void* host, std::size_t bytes, Iova iova) noexcept = 0;

 protected:
  ~DmaOwner() = default;
};

/// Host memory mapped into one function's IOMMU domain at `iova()`. Move-only; unmapped and
/// freed on destruction. Must not outlive the Card that allocated it.
class DmaBuffer {
 public:
  DmaBuffer() = default;
  DmaBuffer(DmaOwner* owner, void* host, std::size_t bytes, Iova iova) noexcept
      : owner_(owner), host_(host), bytes_(bytes), iova_(iova) {}
  DmaBuffer(const DmaBuffer&) = delete;
  DmaBuffer& operator=(const DmaBuffer&) = delete;
  DmaBuffer(DmaBuffer&& other) noexcept { swap(other); }
  DmaBuffer& operator=(DmaBuffer&& other) noexcept {
    DmaBuffer(std::move(other)).swap(*this);
    return *this;
  }
  ~DmaBuffer() { reset(); }

  void reset() noexcept {
    if (owner_ != nullptr) owner_->release_dma(host_, bytes_, iova_);
    owner_ = nullptr;
    host_ = nullptr;
    bytes_ = 0;
    iova_ = 0;
  }

  std::byte* data() const noexcept { return static_cast<std::byte*>(host_); }
  std::size_t size() const noexcept { return bytes_; }
  Iova iova() const noexcept { return iova_; }
  bool valid() const noexcept { return owner_ != nullptr; }

 private:
  void swap(DmaBuffer& other) noexcept {
    std::swap(owner_, other.owner_);
    std::swap(host_, other.host_);
    std::swap(bytes_, other.bytes_);
    std::swap(iova_, other.iova_);
  }

  DmaOwner* owner_ = nullptr;
  void* host_ = nullptr;
  std::size_t bytes_ = 0;
  Iova iova_ = 0;
};

}  // namespace keel::fpga
