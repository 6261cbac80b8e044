// keel/vmm/guest_memory.h - a guest's RAM as the paravisor sees it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "keel/fpga/function.h"
#include "keel/result.h"

namespace keel::vmm {

/// Guest RAM: one or more regions, each backed by a shareable fd and mapped here. Every access
/// from a guest-supplied address goes through translate(), which refuses anything not wholly
/// inside one region.
///
/// The fds usually come from another process (the vhost-user front end), which keeps its own
/// descriptor of the same file. A mapping past the end of a file faults (SIGBUS) on touch, so
/// a peer that could shrink the file after keel mapped it could kill keel at will. Every region
/// must therefore be a regular file (memfd, tmpfs, hugetlbfs) sealed with F_SEAL_SHRINK and
/// holding the whole region; seals cannot be removed, so the check at add_region() holds for
/// the mapping's lifetime. QEMU's memory-backend-memfd seals by default (seal=on:
/// F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL); memory-backend-file cannot be sealed.
///
/// Threading: regions are set up before IO starts; translate() is then safe from any thread.
class GuestMemory {
 public:
  struct Region {
    std::uint64_t gpa = 0;
    std::uint64_t bytes = 0;
    std::uint64_t user_addr = 0;  ///< The front end's address of the region (vhost-user).
    std::byte* host = nullptr;
    int fd = -1;
    std::uint64_t fd_offset = 0;
  };

  /// RAM of `bytes` (rounded up to 2 MiB) at GPA 0, backed by a memfd sealed against
  /// shrinking and growing.
  /// Errors: invalid_argument (0 bytes), io_error (memfd/mmap).
  static Result<std::unique_ptr<GuestMemory>> create(std::uint64_t bytes);
  /// Empty memory, to be filled with add_region() (vhost-user SET_MEM_TABLE).
  static std::unique_ptr<GuestMemory> empty();
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  /// Maps `bytes` of `fd` from `fd_offset` as the region at `gpa`; takes ownership of fd (closed
  /// on failure). Errors: invalid_argument (zero size, wrapping, overlap with another region,
  /// fd_offset not page aligned, fd not a regular file, fd not sealed with F_SEAL_SHRINK),
  /// out_of_range (the file is shorter than fd_offset + bytes), io_error (fstat, mmap).
  /// Each message says what was wrong.
  Status add_region(int fd, std::uint64_t fd_offset, std::uint64_t gpa, std::uint64_t bytes,
                    std::uint64_t user_addr);

  /// Host pointer for [gpa, gpa + len), or nullptr when any byte lies outside guest RAM.
  std::byte* translate(std::uint64_t gpa, std::uint64_t len) const noexcept;
  /// Same for a front-end user address (vhost-user ring addresses).
  std::byte* translate_user(std::uint64_t uaddr, std::uint64_t len) const noexcept;
  /// GPA of a front-end user address, or ~0 when outside every region.
  std::uint64_t user_to_gpa(std::uint64_t uaddr) const noexcept;

  const std::vector<Region>& regions() const noexcept { return regions_; }
  std::uint64_t total_bytes() const noexcept;

  /// Maps every region into the function's IOMMU domain at IOVA = GPA, so PRPs can carry
  /// guest addresses. Errors: as Function::map_dma.
  Status map_for_device(fpga::Function& fn) const;
  /// Removes those windows (missing ones are ignored).
  void unmap_from_device(fpga::Function& fn) const noexcept;

 private:
  GuestMemory() = default;
  std::vector<Region> regions_;
};

}  // namespace keel::vmm
