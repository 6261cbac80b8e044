// keel/fpga/dma_arena.h - DMA memory that outlives the process that allocated it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "keel/fpga/dma.h"
#include "keel/fpga/function.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::fpga {

/// One memfd, mapped into a function's IOMMU domain as one window at a fixed IOVA and carved
/// into DmaBuffers. A driver that keeps its queues here can hand them to the next process
/// (servicing): the window stays in the device's domain (the VFIO container, keel-card, the
/// in-process card keep it), the new process adopts the memfd and finds every queue at the
/// same offset, hence at the same IOVA, where the device still reads and writes it.
///
/// Threading: alloc, claim and buffer release may come from any thread (one mutex).
class DmaArena final : public DmaOwner {
 public:
  /// A new arena of `bytes` (rounded up to pages) mapped at `base` (page aligned) with
  /// map_dma_fd(). Errors: invalid_argument (zero size, unaligned base), no_memory, and
  /// map_dma's (out_of_range: the window overlaps another).
  static Result<std::unique_ptr<DmaArena>> create(Function& fn, std::size_t bytes, Iova base);

  /// What a process hands to the next one: the memfd (a duplicate), where its window is and
  /// how big it is. `old_view` is the old process's own mapping of the memory; a card in that
  /// process (the in-process model) may still DMA through it, so it must live until the device
  /// is done with the window (another process simply drops it on exit).
  struct Handover {
    UniqueFd memfd;
    Iova base = 0;
    std::size_t bytes = 0;
    std::shared_ptr<void> old_view;
  };

  /// Adopts a handed-over arena: maps the memfd into this process. The device's window is
  /// left as it is (it never went away). Every range is free until claim()ed. Errors:
  /// invalid_argument (the memfd is smaller than `bytes`, or not a file), no_memory.
  static Result<std::unique_ptr<DmaArena>> adopt(Function& fn, Handover h);

  ~DmaArena();
  DmaArena(const DmaArena&) = delete;
  DmaArena& operator=(const DmaArena&) = delete;

  /// Page-aligned memory of at least `bytes`, first fit, zeroed unless `zeroed` is false (a
  /// bounce pool, always written before it is read: zeroing it costs a page fault per page of
  /// a freshly adopted mapping, in the middle of a hand-over). Errors: invalid_argument
  /// (0 bytes), no_memory (the arena is full).
  Result<DmaBuffer> alloc(std::size_t bytes, bool zeroed = true);
  /// The buffer a previous process had at `offset` (restore): its contents untouched.
  /// Errors: out_of_range (outside the arena, unaligned, or overlapping a claimed range).
  Result<DmaBuffer> claim(std::uint64_t offset, std::size_t bytes);
  /// Where a buffer of this arena starts, from the arena's start.
  std::uint64_t offset_of(const DmaBuffer& b) const noexcept { return b.iova() - base_; }
  bool owns(const DmaBuffer& b) const noexcept {
    return b.valid() && b.iova() >= base_ && b.iova() - base_ < bytes_;
  }

  Iova base() const noexcept { return base_; }
  std::size_t size() const noexcept { return bytes_; }
  std::size_t free_bytes() const;

  /// Hands the arena over: from now on nothing is unmapped from the device, on release of a
  /// buffer or of the arena, and this process's mapping goes into the Handover. Errors:
  /// io_error (the memfd cannot be duplicated).
  Result<Handover> hand_over();

 private:
  DmaArena(Function& fn, UniqueFd memfd, void* host, std::size_t bytes, Iova base,
           bool window_ours);
  void release_dma(void* host, std::size_t bytes, Iova iova) noexcept override;
  /// Takes [offset, offset + bytes) out of the free ranges. Caller holds mu_.
  bool take(std::uint64_t offset, std::size_t bytes);

  Function& fn_;
  UniqueFd memfd_;
  std::shared_ptr<void> view_;  // this process's mapping (munmap on last release)
  std::byte* host_;
  std::size_t bytes_;
  Iova base_;
  bool window_ours_;  // the window is unmapped with the arena (not after a hand-over)
  mutable std::mutex mu_;
  std::map<std::uint64_t, std::size_t> free_;  // offset -> bytes, coalesced
};

}  // namespace keel::fpga
