// The only place keel touches a real card's registers: BAR0 of a VFIO device, mapped into the
// process (the kernel maps it uncached) and accessed through the volatile accessors below.
// Every raw pointer cast of the vfio backend is in this file; every mmap is in mmio.cpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "keel/result.h"

namespace keel::fpga::vfio {

/// BAR0 of one function. Accesses must be naturally aligned and inside size(); others read
/// as all ones and are dropped, as is every access after retire().
///
/// Ordering: a write is preceded by a release fence, so stores to DMA memory made before it
/// (a submission queue entry) are visible to the card before the write (its doorbell) lands.
/// A read is followed by an acquire fence, so later loads of DMA memory are not hoisted above
/// it. On x86 both fences only stop the compiler; uncached MMIO is ordered by the CPU.
///
/// Threading: accessors may run on any thread at once (each is one bus transaction).
class Bar {
 public:
  Bar() = default;
  Bar(const Bar&) = delete;
  Bar& operator=(const Bar&) = delete;
  ~Bar();

  /// Maps `size` bytes at `region_offset` of the VFIO device `device_fd` (which must outlive
  /// the Bar's use). When `mmappable` is false (the kernel will not map the whole BAR, e.g.
  /// it holds an MSI-X table on an old kernel), accesses go through pread/pwrite on the
  /// device instead: correct, but a system call each. After retire(), maps the function back
  /// (it returned to the bus): at the same address, so an access racing with it lands either
  /// in the scratch memory or in the BAR. Errors: io_error (mmap failed), invalid_argument
  /// (the BAR came back with another size).
  Status map(int device_fd, std::uint64_t region_offset, std::uint64_t size, bool mmappable);

  std::uint64_t size() const noexcept { return size_; }
  bool mapped() const noexcept { return base_ != nullptr; }

  /// Ends access, as when the function leaves the bus: reads return all ones, writes are
  /// dropped. An access racing with retire() lands in scratch memory, never in a hole.
  void retire() noexcept;

  std::uint32_t read32(std::uint64_t offset) const noexcept {
    if (!usable(offset, 4)) return ~std::uint32_t{0};
    if (base_ == nullptr) return slow_read32(offset);
    // base_ maps device memory; a volatile 32-bit load is exactly one 32-bit read on the bus.
    const std::uint32_t v = *reinterpret_cast<const volatile std::uint32_t*>(base_ + offset);
    std::atomic_thread_fence(std::memory_order_acquire);
    return v;
  }

  std::uint64_t read64(std::uint64_t offset) const noexcept {
    if (!usable(offset, 8)) return ~std::uint64_t{0};
    if (base_ == nullptr) {
      return slow_read32(offset) | (std::uint64_t{slow_read32(offset + 4)} << 32);
    }
    // One 64-bit read on the bus (the card's shell splits it for its 32-bit register bus).
    const std::uint64_t v = *reinterpret_cast<const volatile std::uint64_t*>(base_ + offset);
    std::atomic_thread_fence(std::memory_order_acquire);
    return v;
  }

  void write32(std::uint64_t offset, std::uint32_t value) noexcept {
    if (!usable(offset, 4)) return;
    if (base_ == nullptr) return slow_write32(offset, value);
    std::atomic_thread_fence(std::memory_order_release);
    // base_ maps device memory; a volatile 32-bit store is exactly one 32-bit posted write.
    *reinterpret_cast<volatile std::uint32_t*>(base_ + offset) = value;
  }

  void write64(std::uint64_t offset, std::uint64_t value) noexcept {
    if (!usable(offset, 8)) return;
    if (base_ == nullptr) {
      slow_write32(offset, static_cast<std::uint32_t>(value));
      slow_write32(offset + 4, static_cast<std::uint32_t>(value >> 32));
      return;
    }
    std::atomic_thread_fence(std::memory_order_release);
    // One 64-bit posted write (low dword at the lower address, as the card expects).
    *reinterpret_cast<volatile std::uint64_t*>(base_ + offset) = value;
  }

 private:
  bool usable(std::uint64_t offset, std::uint64_t width) const noexcept {
    // Acquire: what map() set before it made the BAR live (the mapping, the fd) is seen.
    return live_.load(std::memory_order_acquire) && (offset & (width - 1)) == 0 && offset < size_ &&
           size_ - offset >= width;
  }
  std::uint32_t slow_read32(std::uint64_t offset) const noexcept;
  void slow_write32(std::uint64_t offset, std::uint32_t value) const noexcept;

  std::byte* base_ = nullptr;
  int fd_ = -1;  // the VFIO device, for the pread/pwrite path; not owned
  std::uint64_t region_offset_ = 0;
  std::uint64_t size_ = 0;
  std::atomic<bool> live_{false};
};

/// The process address of `host` as the kernel's DMA-map call wants it.
inline std::uint64_t user_address(const void* host) noexcept {
  // A pointer's value as an integer, nothing more: VFIO_IOMMU_MAP_DMA takes a __u64 vaddr.
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(host));
}

/// Zeroed, page-aligned anonymous memory for DMA buffers, populated up front (the IOMMU pins
/// it anyway). Returns nullptr when the host is out of memory.
void* alloc_host_pages(std::size_t bytes) noexcept;
void free_host_pages(void* host, std::size_t bytes) noexcept;

}  // namespace keel::fpga::vfio
