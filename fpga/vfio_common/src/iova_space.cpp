// IOVA bookkeeping: first-fit allocation from 2^52 (or top-down below the IOMMU limit) with
// guard pages, overlap checks.
#include "keel/fpga/vfio/iova_space.h"

#include <algorithm>
#include <cstdio>
#include <string>

namespace keel::fpga::vfio {

namespace {

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// Rounds up to a power-of-two alignment; false when that wraps.
bool align_up(Iova v, Iova align, Iova& out) {
  const Iova mask = align - 1;
  if (v > ~Iova{0} - mask) return false;
  out = (v + mask) & ~mask;
  return true;
}

// a + b, or the largest IOVA when that wraps.
Iova sat_add(Iova a, Iova b) { return a > ~Iova{0} - b ? ~Iova{0} : a + b; }

}  // namespace

IovaSpace::IovaSpace(std::vector<Range> usable, std::size_t page)
    : usable_(std::move(usable)), page_(page == 0 ? 4096 : page) {
  if (usable_.empty()) usable_.push_back(Range{});
  std::sort(usable_.begin(), usable_.end(),
            [](const Range& a, const Range& b) { return a.first < b.first; });
}

const IovaSpace::Range* IovaSpace::range_holding(Iova first, Iova last) const {
  for (const Range& r : usable_) {
    if (first >= r.first && last <= r.last) return &r;
  }
  return nullptr;
}

Status IovaSpace::reserve(Iova iova, std::size_t bytes) {
  if (bytes == 0) return make_error(Errc::invalid_argument, "cannot map an empty DMA window");
  if (iova % page_ != 0 || bytes % page_ != 0) {
    return make_error(Errc::invalid_argument, "DMA window at IOVA " + hex(iova) + " of " +
                                                  std::to_string(bytes) +
                                                  " bytes is not aligned to the IOMMU page (" +
                                                  std::to_string(page_) + " bytes)");
  }
  if (iova > ~Iova{0} - (bytes - 1)) {
    return make_error(Errc::out_of_range, "DMA window at IOVA " + hex(iova) + " of " +
                                              std::to_string(bytes) +
                                              " bytes wraps the address space");
  }
  const Iova last = iova + (bytes - 1);
  if (range_holding(iova, last) == nullptr) {
    return make_error(Errc::out_of_range, "IOVAs " + hex(iova) + "-" + hex(last) +
                                              " lie outside what the IOMMU translates");
  }
  auto next = windows_.lower_bound(iova);
  if (next != windows_.end() && next->first <= last) {
    return make_error(Errc::out_of_range, "DMA window at IOVA " + hex(iova) +
                                              " overlaps the window at " + hex(next->first));
  }
  if (next != windows_.begin()) {
    const auto prev = std::prev(next);
    if (prev->first + (prev->second - 1) >= iova) {
      return make_error(Errc::out_of_range, "DMA window at IOVA " + hex(iova) +
                                                " overlaps the window at " + hex(prev->first));
    }
  }
  windows_.emplace(iova, bytes);
  return {};
}

Result<Iova> IovaSpace::allocate(std::size_t bytes) {
  if (bytes == 0 || bytes % page_ != 0) {
    return make_error(Errc::invalid_argument, "DMA allocation of " + std::to_string(bytes) +
                                                  " bytes is not a multiple of the IOMMU page");
  }
  const Iova align = std::max<Iova>(kAllocAlign, page_);
  // Each allocation occupies its bytes plus one guard page nobody is given.
  if (bytes > ~Iova{0} - page_) return make_error(Errc::no_memory, "DMA allocation too large");
  const Iova need = bytes + page_;
  auto exhausted = [&] {
    return make_error(Errc::no_memory, "no free IOVA range of " + std::to_string(bytes) +
                                           " bytes left in this IOMMU domain");
  };
  Iova cand = kAllocBase;
  for (;;) {
    if (!align_up(cand, align, cand)) return exhausted();
    // The first usable range that can still hold the candidate.
    const Range* range = nullptr;
    for (const Range& r : usable_) {
      if (r.last >= cand && r.last - std::max(cand, r.first) >= need - 1) {
        range = &r;
        break;
      }
    }
    if (range == nullptr) return allocate_below(bytes, need, align);
    if (cand < range->first) {
      cand = range->first;
      continue;  // realign
    }
    const Iova last = cand + (need - 1);
    auto next = windows_.lower_bound(cand);
    if (next != windows_.begin()) {
      const auto prev = std::prev(next);
      const Iova free_from = sat_add(sat_add(prev->first, prev->second), page_);  // past its guard
      if (free_from > cand) {
        cand = free_from;
        continue;
      }
    }
    if (next != windows_.end() && next->first <= last) {
      cand = sat_add(sat_add(next->first, next->second), page_);
      continue;
    }
    windows_.emplace(cand, bytes);
    return cand;
  }
}

Result<Iova> IovaSpace::allocate_below(std::size_t bytes, Iova need, Iova align) {
  // Nothing from kAllocBase up: the highest free window below it, from the top of the highest
  // usable range down (guest RAM mapped at IOVA = GPA sits at the bottom).
  for (auto r = usable_.rbegin(); r != usable_.rend(); ++r) {
    if (r->first >= kAllocBase) continue;
    Iova hi = std::min(r->last, kAllocBase - 1);  // the highest IOVA the window may use
    while (hi >= r->first && hi - r->first >= need - 1) {
      const Iova cand = (hi - (need - 1)) & ~(align - 1);
      if (cand < r->first) break;
      // The window (with its guard) must not touch one that starts at or below its end.
      auto next = windows_.upper_bound(cand + (need - 1));
      if (next != windows_.begin()) {
        const auto prev = std::prev(next);
        const Iova prev_end = sat_add(sat_add(prev->first, prev->second), page_ - 1);
        if (prev_end >= cand) {
          if (prev->first == 0) break;
          hi = prev->first - 1;
          continue;
        }
      }
      windows_.emplace(cand, bytes);
      return cand;
    }
  }
  return make_error(Errc::no_memory, "no free IOVA range of " + std::to_string(bytes) +
                                         " bytes left in this IOMMU domain");
}

Result<std::size_t> IovaSpace::size_of(Iova iova) const {
  const auto it = windows_.find(iova);
  if (it == windows_.end()) {
    return make_error(Errc::not_found, "no DMA window starts at IOVA " + hex(iova));
  }
  return it->second;
}

Result<std::size_t> IovaSpace::release(Iova iova) {
  const auto it = windows_.find(iova);
  if (it == windows_.end()) {
    return make_error(Errc::not_found, "no DMA window starts at IOVA " + hex(iova));
  }
  const std::size_t bytes = it->second;
  windows_.erase(it);
  return bytes;
}

}  // namespace keel::fpga::vfio
