// DmaArena: a memfd as one DMA window, carved page by page, handed from process to process.
#include "keel/fpga/dma_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

namespace keel::fpga {

namespace {

constexpr std::size_t kPage = 4096;

std::string errno_text(int err) { return std::generic_category().message(err); }

// A mapping of the whole memfd, shared (the device and the next process see the same pages),
// unmapped when its last holder lets go.
Result<std::shared_ptr<void>> map_view(int fd, std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    return make_error(Errc::no_memory, "cannot map " + std::to_string(bytes) +
                                           " bytes of DMA memory: " + errno_text(errno));
  }
  return std::shared_ptr<void>(p, [bytes](void* q) { ::munmap(q, bytes); });
}

}  // namespace

DmaArena::DmaArena(Function& fn, UniqueFd memfd, void* host, std::size_t bytes, Iova base,
                   bool window_ours)
    : fn_(fn),
      memfd_(std::move(memfd)),
      host_(static_cast<std::byte*>(host)),
      bytes_(bytes),
      base_(base),
      window_ours_(window_ours) {
  free_[0] = bytes;
}

Result<std::unique_ptr<DmaArena>> DmaArena::create(Function& fn, std::size_t bytes, Iova base) {
  if (bytes == 0) return make_error(Errc::invalid_argument, "a DMA arena of 0 bytes");
  if (base % kPage != 0) {
    return make_error(Errc::invalid_argument, "a DMA arena's IOVA must be page aligned");
  }
  bytes = (bytes + kPage - 1) / kPage * kPage;
  UniqueFd fd(::memfd_create("keel-dma-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return make_error(Errc::no_memory, "memfd_create: " + errno_text(errno));
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return make_error(Errc::no_memory, "sizing the DMA arena: " + errno_text(errno));
  }
  // Whoever maps it (a card in another process, the next process) can count on its size.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return make_error(Errc::io_error, "sealing the DMA arena: " + errno_text(errno));
  }
  auto view = map_view(fd.get(), bytes);
  if (!view) return view.error();
  void* host = view->get();
  if (Status st = fn.map_dma_fd(fd.get(), 0, host, bytes, base); !st.ok()) return st.error();
  std::unique_ptr<DmaArena> a(new DmaArena(fn, std::move(fd), host, bytes, base, true));
  a->view_ = std::move(view).value();
  return a;
}

Result<std::unique_ptr<DmaArena>> DmaArena::adopt(Function& fn, Handover h) {
  struct stat st {};
  if (!h.memfd.valid() || ::fstat(h.memfd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return make_error(Errc::invalid_argument, "the handed-over DMA arena is not a memory file");
  }
  // Sealed against shrinking: a page cut off under the device would kill the card's process.
  const int seals = ::fcntl(h.memfd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return make_error(Errc::invalid_argument,
                      "the handed-over DMA arena is not sealed against shrinking");
  }
  if (h.bytes == 0 || h.bytes % kPage != 0 || h.base % kPage != 0 ||
      static_cast<std::uint64_t>(st.st_size) < h.bytes) {
    return make_error(Errc::invalid_argument,
                      "the handed-over DMA arena (" + std::to_string(st.st_size) +
                          " bytes) does not hold the " + std::to_string(h.bytes) +
                          " page-aligned bytes its state names");
  }
  auto view = map_view(h.memfd.get(), h.bytes);
  if (!view) return view.error();
  void* host = view->get();
  if (Status s = fn.adopt_dma_fd(h.memfd.get(), 0, h.bytes, h.base); !s.ok()) return s.error();
  // The window stays the device's as it was (it never left its domain); this process takes
  // it over: unmapped from the device when this arena goes, unless handed over again.
  std::unique_ptr<DmaArena> a(new DmaArena(fn, std::move(h.memfd), host, h.bytes, h.base, true));
  a->view_ = std::move(view).value();
  return a;
}

DmaArena::~DmaArena() {
  if (window_ours_) (void)fn_.unmap_dma(base_);
}

bool DmaArena::take(std::uint64_t offset, std::size_t bytes) {
  auto it = free_.upper_bound(offset);
  if (it == free_.begin()) return false;
  --it;
  const std::uint64_t start = it->first;
  const std::size_t len = it->second;
  if (offset < start || offset + bytes > start + len) return false;
  free_.erase(it);
  if (offset > start) free_[start] = static_cast<std::size_t>(offset - start);
  if (offset + bytes < start + len) {
    free_[offset + bytes] = static_cast<std::size_t>(start + len - offset - bytes);
  }
  return true;
}

Result<DmaBuffer> DmaArena::alloc(std::size_t bytes, bool zeroed) {
  if (bytes == 0)
    return make_error(Errc::invalid_argument, "cannot allocate 0 bytes of DMA memory");
  const std::size_t rounded = (bytes + kPage - 1) / kPage * kPage;
  std::lock_guard lock(mu_);
  for (const auto& [offset, len] : free_) {
    if (len < rounded) continue;
    const std::uint64_t at = offset;
    (void)take(at, rounded);
    if (zeroed) std::memset(host_ + at, 0, rounded);
    return DmaBuffer(this, host_ + at, rounded, base_ + at);
  }
  return make_error(Errc::no_memory, "the DMA arena (" + std::to_string(bytes_) +
                                         " bytes) has no " + std::to_string(rounded) +
                                         " contiguous bytes free");
}

Result<DmaBuffer> DmaArena::claim(std::uint64_t offset, std::size_t bytes) {
  if (bytes == 0 || offset % kPage != 0 || bytes % kPage != 0 || offset > bytes_ ||
      bytes > bytes_ - offset) {
    return make_error(Errc::out_of_range, "a DMA buffer of " + std::to_string(bytes) +
                                              " bytes at offset " + std::to_string(offset) +
                                              " is not a page range of the " +
                                              std::to_string(bytes_) + "-byte arena");
  }
  std::lock_guard lock(mu_);
  if (!take(offset, bytes)) {
    return make_error(Errc::out_of_range, "the DMA buffer at offset " + std::to_string(offset) +
                                              " overlaps one claimed already");
  }
  return DmaBuffer(this, host_ + offset, bytes, base_ + offset);
}

std::size_t DmaArena::free_bytes() const {
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (const auto& [offset, len] : free_) n += len;
  return n;
}

void DmaArena::release_dma(void* host, std::size_t bytes, Iova iova) noexcept {
  (void)host;
  std::lock_guard lock(mu_);
  std::uint64_t offset = iova - base_;
  std::size_t len = bytes;
  // Coalesce with the free neighbours on both sides.
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + len == next->first) {
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      len += prev->second;
      free_.erase(prev);
    }
  }
  free_[offset] = len;
}

Result<DmaArena::Handover> DmaArena::hand_over() {
  UniqueFd dup(::fcntl(memfd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!dup.valid()) return make_error(Errc::io_error, "dup of the DMA arena: " + errno_text(errno));
  window_ours_ = false;
  Handover h;
  h.memfd = std::move(dup);
  h.base = base_;
  h.bytes = bytes_;
  h.old_view = view_;
  return h;
}

}  // namespace keel::fpga
