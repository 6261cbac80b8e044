#include "sim_storage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace keel::fpga::sim {
namespace {

Error sys_error(const std::string& what) {
  return make_error(Errc::io_error, what + ": " + std::strerror(errno));
}

Error bad_size() {
  return make_error(Errc::invalid_argument,
                    "storage size must be a non-zero multiple of 512 bytes");
}

}  // namespace

Result<std::unique_ptr<SimStorage>> SimStorage::open(const std::string& path, std::uint64_t bytes) {
  std::unique_ptr<SimStorage> s(new SimStorage());
  if (path.empty()) {
    if (bytes == 0 || bytes % 512 != 0) return bad_size();
    s->fd_ = memfd_create("keel-sim-ddr", MFD_CLOEXEC);
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
      if (bytes == 0 || bytes % 512 != 0) return bad_size();
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
  return s;
}

SimStorage::~SimStorage() {
  if (base_ != nullptr) munmap(base_, bytes_);
  if (fd_ >= 0) close(fd_);
}

Status SimStorage::flush(std::uint64_t offset, std::uint64_t length) noexcept {
  if (!file_backed_ || length == 0) return {};
  if (offset >= bytes_) return {};
  if (length > bytes_ - offset) length = bytes_ - offset;
  const std::uint64_t start = offset & ~std::uint64_t{4095};
  if (msync(base_ + start, offset + length - start, MS_SYNC) != 0) {
    return sys_error("msync of the disk image");
  }
  return {};
}

}  // namespace keel::fpga::sim
