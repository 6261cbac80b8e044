// keel/fpga/function.h - one PCIe function of a card (the PF or a VF).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include "keel/fpga/dma.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::fpga {

/// One PCIe function: BAR0 registers, DMA memory in its own IOMMU domain, MSI-X vectors, FLR.
///
/// Threading: BAR reads and writes may be issued from any thread at once (they are single bus
/// transactions). DMA mapping, interrupt waits and FLR are safe from any thread, but an
/// interrupt vector should be waited on by one thread at a time.
class Function {
 public:
  virtual ~Function() = default;

  /// PCIe function number on the card: 0 for the PF, n + 1 for VF n.
  virtual unsigned number() const noexcept = 0;
  /// Size of BAR0 in bytes.
  virtual std::uint64_t bar_size() const noexcept = 0;

  /// BAR0 accesses. Offsets must be naturally aligned and inside bar_size(). A function that
  /// is gone (surprise-removed) reads as all ones and drops writes, as on PCIe.
  virtual std::uint32_t read32(std::uint64_t offset) noexcept = 0;
  virtual std::uint64_t read64(std::uint64_t offset) noexcept = 0;
  virtual void write32(std::uint64_t offset, std::uint32_t value) noexcept = 0;
  virtual void write64(std::uint64_t offset, std::uint64_t value) noexcept = 0;

  /// Allocates zeroed, page-aligned host memory of at least `bytes` and maps it into this
  /// function's IOMMU domain at an IOVA the backend picks.
  /// Errors: invalid_argument (bytes == 0), no_memory (host allocation or IOVA space exhausted),
  /// gone (the function was removed).
  virtual Result<DmaBuffer> alloc_dma(std::size_t bytes) = 0;

  /// Maps caller-owned memory at a caller-chosen IOVA (the paravisor maps guest memory at
  /// IOVA = GPA). `host`, `bytes` and `iova` must be page aligned. The caller keeps the memory
  /// alive until unmap_dma().
  /// Errors: invalid_argument (alignment, zero size), out_of_range (overlaps an existing
  /// window), no_memory, gone.
  virtual Status map_dma(void* host, std::size_t bytes, Iova iova) = 0;
  /// map_dma() of memory the caller can also name by file (guest RAM is a memfd): a backend in
  /// another process (vfio-user) maps `fd` at `fd_offset` itself, so the card DMAs into the
  /// same pages with no copy; in-process backends map `host`. Errors: as map_dma().
  virtual Status map_dma_fd(int fd, std::uint64_t fd_offset, void* host, std::size_t bytes,
                            Iova iova) {
    (void)fd;
    (void)fd_offset;
    return map_dma(host, bytes, iova);
  }
  /// Removes the window that starts at `iova`. Errors: not_found.
  virtual Status unmap_dma(Iova iova) = 0;

  /// MSI-X vectors this function has.
  virtual unsigned num_vectors() const noexcept = 0;
  /// Waits until `vector` fired at least once since the last wait, and returns how many times
  /// it fired. On a lockstep card the wait advances the card's clock, so `timeout` is card
  /// time. Errors: invalid_argument (no such vector), timeout, gone.
  virtual Result<std::uint32_t> wait_interrupt(unsigned vector,
                                               std::chrono::nanoseconds timeout) = 0;

  /// An eventfd that becomes readable when `vector` fires, for callers that wait on several
  /// event sources at once (epoll). Reading it (8 bytes) consumes the signal; wait_interrupt()
  /// keeps its own count. Returns -1 when the backend has no such fd for the vector.
  virtual int interrupt_fd(unsigned vector) {
    (void)vector;
    return -1;
  }
  /// Has the function signal `eventfd` itself for every message of `vector`, instead of its
  /// own interrupt_fd() (an interrupt that goes straight to another process's eventfd, as the
  /// kernel's VFIO signals a process's eventfds); -1 goes back to interrupt_fd(). The fd is
  /// duplicated. Masking applies as before. Errors: unavailable (the backend cannot),
  /// invalid_argument (no such vector), io_error (dup).
  virtual Status set_interrupt_target(unsigned vector, int eventfd) {
    (void)vector;
    (void)eventfd;
    return make_error(Errc::unavailable, "this function cannot signal another eventfd");
  }
  /// MSI-X per-vector mask: while masked, the function records the interrupt as pending and
  /// signals interrupt_fd() only when unmasked. Lets a polling caller take no interrupts and
  /// arm one just before it sleeps. Backends without masking ignore it.
  virtual void set_interrupt_masked(unsigned vector, bool masked) {
    (void)vector;
    (void)masked;
  }

  /// Servicing (NVMe keepalive): this process gives the function, running, to the next one.
  /// Every DMA window but those at `keep` is unmapped; the rest stay in the device's domain,
  /// now the next process's. From then on this object sends the device nothing (not even at
  /// destruction) and its operations fail as gone. Returns what carries the function to the
  /// next process (vfio-user: the connection, which it adopts through
  /// CardOptions::adopt_connection). Errors: unavailable (the backend cannot hand a function
  /// over: the device lives in this process, or the kernel's VFIO), gone.
  virtual Result<UniqueFd> hand_over(std::span<const Iova> keep) {
    (void)keep;
    return make_error(Errc::unavailable, "this function cannot be handed to another process");
  }
  /// The next process's half: a window `hand_over()` kept, recorded as this process's (it is
  /// unmapped by unmap_dma() and mapped again wherever this backend maps its windows again)
  /// with nothing sent to the device. `fd` is the window's memory (duplicated). Default: an
  /// in-process domain has nothing to record. Errors: out_of_range (overlaps a window).
  virtual Status adopt_dma_fd(int fd, std::uint64_t fd_offset, std::size_t bytes, Iova iova) {
    (void)fd;
    (void)fd_offset;
    (void)bytes;
    (void)iova;
    return {};
  }

  /// Function-level reset; returns when the reset is complete. For a VF: outstanding commands
  /// are aborted, its queues deleted, its controller reset, its resources kept. Errors:
  /// invalid_argument (the PF cannot be reset this way), gone, timeout.
  virtual Status flr() = 0;

 protected:
  Function() = default;
  Function(const Function&) = delete;
  Function& operator=(const Function&) = delete;
};

}  // namespace keel::fpga
