#include "doorbell_page.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

namespace keel::vfio_user {

Result<std::unique_ptr<DoorbellPage>> DoorbellPage::create(std::uint64_t offset,
                                                           std::uint64_t bytes, unsigned slots) {
  std::unique_ptr<DoorbellPage> p(new DoorbellPage());
  p->offset_ = offset;
  p->bytes_ = bytes;
  p->memfd_.reset(::memfd_create("keel-doorbells", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!p->memfd_.valid() || ::ftruncate(p->memfd_.get(), static_cast<off_t>(offset + bytes)) != 0 ||
      ::fcntl(p->memfd_.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    return make_error(Errc::io_error, std::string("doorbell memfd: ") + std::strerror(errno));
  }
  void* map = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, p->memfd_.get(),
                     static_cast<off_t>(offset));
  if (map == MAP_FAILED) {
    return make_error(Errc::io_error, std::string("doorbell mmap: ") + std::strerror(errno));
  }
  p->slots_ = static_cast<std::uint32_t*>(map);
  p->kick_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!p->kick_.valid()) return make_error(Errc::io_error, "doorbell eventfd failed");
  p->seen_.assign(slots != 0 && slots < bytes / 4 ? slots : bytes / 4, 0);
  return p;
}

DoorbellPage::~DoorbellPage() {
  if (slots_ != nullptr) ::munmap(slots_, bytes_);
}

unsigned DoorbellPage::apply(fpga::Function& fn) noexcept {
  std::uint64_t n = 0;
  (void)!::read(kick_.get(), &n, sizeof n);  // the kick: every store before it is visible
  unsigned wrote = 0;
  for (std::size_t i = 0; i < seen_.size(); ++i) {
    const std::uint32_t v =
        std::atomic_ref<std::uint32_t>(slots_[i]).load(std::memory_order_acquire);
    if (v == seen_[i]) continue;
    seen_[i] = v;
    fn.write32(offset_ + i * 4, v & 0xffffu);
    ++wrote;
  }
  return wrote;
}

void DoorbellPage::reset() noexcept {
  std::memset(slots_, 0, seen_.size() * 4);
  seen_.assign(seen_.size(), 0);
  std::uint64_t n = 0;
  (void)!::read(kick_.get(), &n, sizeof n);
}

}  // namespace keel::vfio_user
