#include "keel/fpga/card_storage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace keel::fpga {
namespace {

Error sys_error(const std::string& what) {
  return make_error(Errc::io_error, what + ": " + std::strerror(errno));
}

}  // namespace

Result<std::unique_ptr<CardStorage>> CardStorage::open(const std::string& path,
                                                       std::uint64_t bytes) {
  std::unique_ptr<CardStorage> s(new CardStorage());
  if (path.empty()) {
    if (bytes == 0 || bytes % 512 != 0) {
      return make_error(Errc::invalid_argument,
                        "storage size must be a non-zero multiple of 512 bytes");
    }
    s->fd_ = memfd_create("keel-card-ddr", MFD_CLOEXEC);
    if (s->fd_ < 0) return sys_error("memfd_create for the card's storage");
    if (ftruncate(s->fd_, static_cast<off_t>(bytes)) != 0) {
      return sys_error("sizing the in-memory card storage");
    }
    s->bytes_ = bytes;
  } else {
    s->fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->fd_ < 0) return sys_error("opening disk image '" + path + "'");
    struct stat st {};
    if (fstat(s->fd_, &st) != 0) return sys_error("stat of disk image '" + path + "'");
    if (st.st_size == 0) {
      if (bytes == 0 || bytes % 512 != 0) {
        return make_error(Errc::invalid_argument,
                          "storage size must be a non-zero multiple of 512 bytes");
      }
      if (ftruncate(s->fd_, static_cast<off_t>(bytes)) != 0) {
        return sys_error("sizing disk image '" + path + "'");
      }
      s->bytes_ = bytes;
    } else {
      if (st.st_size % 512 != 0) {
        return make_error(Errc::invalid_argument,
                          "disk image '" + path + "' is not a multiple of 512 bytes");
      }
      s->bytes_ = static_cast<std::uint64_t>(st.st_size);
    }
    s->file_backed_ = true;
  }
  void* p = mmap(nullptr, s->bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd_, 0);
  if (p == MAP_FAILED) return sys_error("mapping the card's storage");
  s->base_ = static_cast<std::byte*>(p);
  // The card's DDR is resident: prefault the whole mapping writable now (without changing a
  // byte), so IO never pays first-touch page faults. Images above 8 GiB are paged on demand.
  if (s->bytes_ <= (8ull << 30)) (void)madvise(p, s->bytes_, MADV_POPULATE_WRITE);
  return s;
}

CardStorage::~CardStorage() {
  if (base_ != nullptr) munmap(base_, bytes_);
  if (fd_ >= 0) close(fd_);
}

Status CardStorage::flush(std::uint64_t offset, std::uint64_t length) noexcept {
  if (!file_backed_ || length == 0 || offset >= bytes_) return {};
  length = std::min(length, bytes_ - offset);
  const std::uint64_t page = 4096;
  const std::uint64_t start = offset & ~(page - 1);
  const std::uint64_t end = offset + length;
  if (msync(base_ + start, end - start, MS_SYNC) != 0) {
    return sys_error("msync of the disk image");
  }
  return {};
}

}  // namespace keel::fpga
