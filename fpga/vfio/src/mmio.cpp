// Every mmap of the vfio backend: BAR0 mappings and the host pages behind DMA buffers.
#include "mmio.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

namespace keel::fpga::vfio {

Bar::~Bar() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

Status Bar::map(int device_fd, std::uint64_t region_offset, std::uint64_t size, bool mmappable) {
  if (size_ != 0 && size != size_) {
    return make_error(Errc::invalid_argument, "BAR0 came back with " + std::to_string(size) +
                                                  " bytes, not " + std::to_string(size_));
  }
  fd_ = device_fd;
  region_offset_ = region_offset;
  size_ = size;
  if (mmappable) {
    // Over the scratch memory retire() left, when there is some: the address stays the same.
    void* p = ::mmap(base_, size, PROT_READ | PROT_WRITE, MAP_SHARED | (base_ ? MAP_FIXED : 0),
                     device_fd, static_cast<off_t>(region_offset));
    if (p == MAP_FAILED) {
      const int err = errno;
      return make_error(Errc::io_error, "cannot map BAR0 (" + std::to_string(size) +
                                            " bytes): " + std::generic_category().message(err));
    }
    base_ = static_cast<std::byte*>(p);
  } else if (base_ != nullptr) {
    ::munmap(base_, size_);  // back through pread/pwrite: the kernel no longer maps it whole
    base_ = nullptr;
  }
  live_.store(true, std::memory_order_release);
  return {};
}

void Bar::retire() noexcept {
  live_.store(false, std::memory_order_release);
  if (base_ == nullptr) return;
  // Swap the device mapping for private scratch memory in one step, so an access that passed
  // the live_ check just before cannot fault; the real BAR is released with its device.
  void* p =
      ::mmap(base_, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (p != MAP_FAILED) std::memset(base_, 0xFF, size_);
}

std::uint32_t Bar::slow_read32(std::uint64_t offset) const noexcept {
  std::uint32_t v = ~std::uint32_t{0};
  if (::pread(fd_, &v, sizeof v, static_cast<off_t>(region_offset_ + offset)) != sizeof v) {
    return ~std::uint32_t{0};
  }
  return v;
}

void Bar::slow_write32(std::uint64_t offset, std::uint32_t value) const noexcept {
  // A failed write is dropped, as a posted write to a function that is gone would be.
  (void)!::pwrite(fd_, &value, sizeof value, static_cast<off_t>(region_offset_ + offset));
}

void* alloc_host_pages(std::size_t bytes) noexcept {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void free_host_pages(void* host, std::size_t bytes) noexcept {
  if (host != nullptr) ::munmap(host, bytes);
}

}  // namespace keel::fpga::vfio
