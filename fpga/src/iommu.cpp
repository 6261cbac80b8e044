#include "keel/fpga/iommu.h"

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>

namespace keel::fpga {
namespace {

constexpr std::uint64_t kPage = 4096;

// Finds the window containing `iova`, or windows.end().
template <typename Map>
auto find_window(Map& windows, Iova iova) {
  auto it = windows.upper_bound(iova);
  if (it == windows.begin()) return windows.end();
  --it;
  if (iova - it->first >= it->second.bytes) return windows.end();
  return it;
}

}  // namespace

Iommu::Iommu(unsigned functions) {
  domains_.reserve(functions);
  for (unsigned i = 0; i < functions; ++i) domains_.push_back(std::make_unique<Domain>());
}

Status Iommu::map(unsigned function, Iova iova, void* host, std::size_t bytes) {
  if (function >= domains_.size()) {
    return make_error(Errc::invalid_argument,
                      "IOMMU map: function " + std::to_string(function) + " does not exist");
  }
  if (bytes == 0 || iova % kPage != 0 || bytes % kPage != 0 ||
      reinterpret_cast<std::uintptr_t>(host) % kPage != 0) {  // pointer inspected, not used
    return make_error(Errc::invalid_argument,
                      "IOMMU map: iova, host address and length must be 4 KiB aligned and "
                      "non-zero");
  }
  if (iova + bytes < iova) {
    return make_error(Errc::out_of_range, "IOMMU map: window wraps the IOVA space");
  }
  Domain& d = *domains_[function];
  std::unique_lock lock(d.mu);
  auto next = d.windows.lower_bound(iova);
  if (next != d.windows.end() && next->first < iova + bytes) {
    return make_error(Errc::out_of_range, "IOMMU map: IOVA window overlaps an existing one");
  }
  if (next != d.windows.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.bytes > iova) {
      return make_error(Errc::out_of_range, "IOMMU map: IOVA window overlaps an existing one");
    }
  }
  d.windows.emplace(iova, Window{static_cast<std::byte*>(host), bytes});
  return {};
}

Status Iommu::unmap(unsigned function, Iova iova) {
  if (function >= domains_.size()) {
    return make_error(Errc::invalid_argument, "IOMMU unmap: no such function");
  }
  Domain& d = *domains_[function];
  std::unique_lock lock(d.mu);
  if (d.windows.erase(iova) == 0) {
    return make_error(Errc::not_found, "IOMMU unmap: no window starts at that IOVA");
  }
  return {};
}

void Iommu::unmap_all(unsigned function) {
  if (function >= domains_.size()) return;
  Domain& d = *domains_[function];
  std::unique_lock lock(d.mu);
  d.windows.clear();
}

bool Iommu::covered(unsigned function, Iova iova, std::size_t bytes) const {
  if (function >= domains_.size()) return false;
  const Domain& d = *domains_[function];
  std::shared_lock lock(d.mu);
  Iova cur = iova;
  std::size_t left = bytes;
  while (left > 0) {
    auto it = find_window(d.windows, cur);
    if (it == d.windows.end()) return false;
    const std::size_t in_window = it->second.bytes - static_cast<std::size_t>(cur - it->first);
    const std::size_t n = left < in_window ? left : in_window;
    cur += n;
    left -= n;
  }
  return true;
}

bool Iommu::access(unsigned function, Iova iova, std::byte* host_side, std::size_t bytes,
                   Op op) noexcept {
  if (function >= domains_.size()) return false;
  Domain& d = *domains_[function];
  if (bytes == 0) return true;
  std::shared_lock lock(d.mu);
  // Pass 1: every byte must be mapped, or nothing is touched.
  {
    if (iova + bytes < iova) {  // wraps the IOVA space
      d.faults.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    Iova cur = iova;
    std::size_t left = bytes;
    while (left > 0) {
      auto it = find_window(d.windows, cur);
      if (it == d.windows.end()) {
        d.faults.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
      const std::size_t in_window = it->second.bytes - static_cast<std::size_t>(cur - it->first);
      const std::size_t n = left < in_window ? left : in_window;
      cur += n;
      left -= n;
    }
  }
  // Pass 2: copy span by span. For write_release the final 4 bytes go last, with release.
  const std::size_t body = op == Op::write_release ? bytes - 4 : bytes;
  Iova cur = iova;
  std::size_t done = 0;
  std::byte* last_word = nullptr;
  while (done < bytes) {
    auto it = find_window(d.windows, cur);
    const std::size_t off = static_cast<std::size_t>(cur - it->first);
    const std::size_t in_window = it->second.bytes - off;
    const std::size_t n = (bytes - done) < in_window ? (bytes - done) : in_window;
    std::byte* mem = it->second.host + off;
    switch (op) {
      case Op::read: std::memcpy(host_side + done, mem, n); break;
      case Op::write: std::memcpy(mem, host_side + done, n); break;
      case Op::write_release: {
        const std::size_t copy = done + n <= body ? n : (done < body ? body - done : 0);
        if (copy > 0) std::memcpy(mem, host_side + done, copy);
        if (done + n > body) last_word = mem + (body - done);
        break;
      }
    }
    cur += n;
    done += n;
  }
  if (op == Op::write_release) {
    std::uint32_t word;
    std::memcpy(&word, host_side + body, 4);
    // The last word of a completion is 4-byte aligned host memory that the host polls with
    // an acquire load: store it with release so the rest of the record is visible first.
    std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(last_word))
        .store(word, std::memory_order_release);
  }
  return true;
}

bool Iommu::dma_read(unsigned function, Iova iova, void* dst, std::size_t bytes) noexcept {
  return access(function, iova, static_cast<std::byte*>(dst), bytes, Op::read);
}

bool Iommu::dma_write(unsigned function, Iova iova, const void* src, std::size_t bytes) noexcept {
  // access() only reads through host_side for writes.
  return access(function, iova, const_cast<std::byte*>(static_cast<const std::byte*>(src)), bytes,
                Op::write);
}

bool Iommu::dma_write_release_last32(unsigned function, Iova iova, const void* src,
                                     std::size_t bytes) noexcept {
  if (bytes < 4 || (iova + bytes) % 4 != 0) return false;
  return access(function, iova, const_cast<std::byte*>(static_cast<const std::byte*>(src)), bytes,
                Op::write_release);
}

void Iommu::count_fault(unsigned function) noexcept {
  if (function < domains_.size()) {
    domains_[function]->faults.fetch_add(1, std::memory_order_relaxed);
  }
}

std::uint64_t Iommu::faults(unsigned function) const noexcept {
  if (function >= domains_.size()) return 0;
  return domains_[function]->faults.load(std::memory_order_relaxed);
}

std::uint64_t Iommu::total_faults() const noexcept {
  std::uint64_t sum = 0;
  for (const auto& d : domains_) sum += d->faults.load(std::memory_order_relaxed);
  return sum;
}

}  // namespace keel::fpga
