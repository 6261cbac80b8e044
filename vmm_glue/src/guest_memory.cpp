#include "keel/vmm/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace keel::vmm {

namespace {

/// The seal every guest-memory fd must carry: with it the file can never become shorter than
/// the mappings of it, which would fault (SIGBUS) on the next access.
constexpr int kRequiredSeals = F_SEAL_SHRINK;

// Checks that `bytes` of `fd` from `fd_offset` can be mapped and stay mapped: a regular file,
// sealed against shrinking, long enough, at a page-aligned offset.
Status check_memory_fd(int fd, std::uint64_t fd_offset, std::uint64_t bytes) {
  const auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  if (fd_offset % page != 0) {
    return make_error(Errc::invalid_argument, "file offset " + std::to_string(fd_offset) +
                                                  " is not a multiple of the page size");
  }
  if (fd_offset + bytes < fd_offset) {
    return make_error(Errc::invalid_argument, "file offset + size wraps");
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    return make_error(Errc::io_error, std::string("fstat of its fd: ") + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return make_error(Errc::invalid_argument,
                      "its fd is not a memory file (a memfd, or a tmpfs or hugetlbfs file)");
  }
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & kRequiredSeals) != kRequiredSeals) {
    return make_error(
        Errc::invalid_argument,
        std::string("its file is not sealed against shrinking (F_SEAL_SHRINK") +
            (seals < 0 ? ": the file does not support seals" : "") +
            "); the peer could truncate it under keel's mapping. Back guest RAM with a sealed "
            "memfd (QEMU: -object memory-backend-memfd,...,share=on, whose seal=on default "
            "adds F_SEAL_SHRINK)");
  }
  // The seal keeps the size from shrinking below what is checked here, for good.
  if (static_cast<std::uint64_t>(st.st_size) < fd_offset + bytes) {
    return make_error(Errc::out_of_range,
                      "its file holds " + std::to_string(st.st_size) + " bytes, less than offset " +
                          std::to_string(fd_offset) + " + size " + std::to_string(bytes));
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<GuestMemory>> GuestMemory::create(std::uint64_t bytes) {
  if (bytes == 0) return make_error(Errc::invalid_argument, "guest memory of 0 bytes");
  const std::uint64_t size = (bytes + (2u << 20) - 1) & ~std::uint64_t{(2u << 20) - 1};
  const int fd = memfd_create("keel-guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0)
    return make_error(Errc::io_error, std::string("memfd_create: ") + std::strerror(errno));
  if (ftruncate(fd, static_cast<off_t>(size)) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    const int e = errno;
    close(fd);
    return make_error(Errc::io_error,
                      std::string("sizing and sealing guest memory: ") + std::strerror(e));
  }
  std::unique_ptr<GuestMemory> m(new GuestMemory());
  if (Status st = m->add_region(fd, 0, 0, size, 0); !st.ok()) return st.error();
  return m;
}

std::unique_ptr<GuestMemory> GuestMemory::empty() {
  return std::unique_ptr<GuestMemory>(new GuestMemory());
}

GuestMemory::~GuestMemory() {
  for (const Region& r : regions_) {
    munmap(r.host, r.bytes);
    close(r.fd);
  }
}

Status GuestMemory::add_region(int fd, std::uint64_t fd_offset, std::uint64_t gpa,
                               std::uint64_t bytes, std::uint64_t user_addr) {
  if (bytes == 0 || gpa + bytes < gpa) {
    close(fd);
    return make_error(Errc::invalid_argument, "guest memory region of 0 bytes or wrapping");
  }
  for (const Region& r : regions_) {
    if (gpa < r.gpa + r.bytes && r.gpa < gpa + bytes) {
      close(fd);
      return make_error(Errc::invalid_argument,
                        "guest memory region at GPA " + std::to_string(gpa) + " overlaps another");
    }
  }
  if (Status st = check_memory_fd(fd, fd_offset, bytes); !st.ok()) {
    close(fd);
    return st;
  }
  // Guest RAM is shared with the front end (and the host service): MAP_SHARED of its fd.
  void* p =
      mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(fd_offset));
  if (p == MAP_FAILED) {
    const int e = errno;
    close(fd);
    return make_error(Errc::io_error, std::string("mapping guest memory: ") + std::strerror(e));
  }
  regions_.push_back(Region{gpa, bytes, user_addr, static_cast<std::byte*>(p), fd, fd_offset});
  return {};
}

std::byte* GuestMemory::translate(std::uint64_t gpa, std::uint64_t len) const noexcept {
  for (const Region& r : regions_) {
    if (gpa >= r.gpa && gpa - r.gpa < r.bytes && len <= r.bytes - (gpa - r.gpa)) {
      return r.host + (gpa - r.gpa);
    }
  }
  return nullptr;
}

std::byte* GuestMemory::translate_user(std::uint64_t uaddr, std::uint64_t len) const noexcept {
  for (const Region& r : regions_) {
    if (uaddr >= r.user_addr && uaddr - r.user_addr < r.bytes &&
        len <= r.bytes - (uaddr - r.user_addr)) {
      return r.host + (uaddr - r.user_addr);
    }
  }
  return nullptr;
}

std::uint64_t GuestMemory::user_to_gpa(std::uint64_t uaddr) const noexcept {
  for (const Region& r : regions_) {
    if (uaddr >= r.user_addr && uaddr - r.user_addr < r.bytes) return r.gpa + (uaddr - r.user_addr);
  }
  return ~std::uint64_t{0};
}

std::uint64_t GuestMemory::total_bytes() const noexcept {
  std::uint64_t n = 0;
  for (const Region& r : regions_) n += r.bytes;
  return n;
}

Status GuestMemory::map_for_device(fpga::Function& fn) const {
  for (const Region& r : regions_) {
    // The fd lets a card in another process (vfio-user) map the guest's pages itself.
    Status st = r.fd >= 0 ? fn.map_dma_fd(r.fd, r.fd_offset, r.host, r.bytes, r.gpa)
                          : fn.map_dma(r.host, r.bytes, r.gpa);
    if (!st.ok()) return st;
  }
  return {};
}

void GuestMemory::unmap_from_device(fpga::Function& fn) const noexcept {
  for (const Region& r : regions_) (void)fn.unmap_dma(r.gpa);
}

}  // namespace keel::vmm
