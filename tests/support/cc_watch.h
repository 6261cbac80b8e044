// cc_watch.h - a function wrapper that counts writes to the NVMe CC register, for the
// servicing tests: an NVMe keepalive take-over must never write it (no disable, no enable, no
// reset).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "keel/fpga/function.h"
#include "keel/regs/keel_regs.h"

namespace keel::testing {

// The function as the driver sees it, counting every write to CC. adopt_dma_fd() and
// hand_over() are not passed on: the tests' "processes" share this one function object,
// whose backend never handed its arena window over and still has it recorded; the defaults
// (nothing to record, cannot hand over) are what is true here.
class CcWatch final : public fpga::Function {
 public:
  explicit CcWatch(fpga::Function& inner) : f_(inner) {}
  unsigned cc_writes() const { return cc_writes_.load(); }

  unsigned number() const noexcept override { return f_.number(); }
  std::uint64_t bar_size() const noexcept override { return f_.bar_size(); }
  std::uint32_t read32(std::uint64_t o) noexcept override { return f_.read32(o); }
  std::uint64_t read64(std::uint64_t o) noexcept override { return f_.read64(o); }
  void write32(std::uint64_t o, std::uint32_t v) noexcept override {
    if (o == regs::nvme::CC) cc_writes_.fetch_add(1);
    f_.write32(o, v);
  }
  void write64(std::uint64_t o, std::uint64_t v) noexcept override {
    if (o == regs::nvme::CC) cc_writes_.fetch_add(1);
    f_.write64(o, v);
  }
  Result<fpga::DmaBuffer> alloc_dma(std::size_t bytes) override { return f_.alloc_dma(bytes); }
  Status map_dma(void* host, std::size_t bytes, fpga::Iova iova) override {
    return f_.map_dma(host, bytes, iova);
  }
  Status map_dma_fd(int fd, std::uint64_t off, void* host, std::size_t bytes,
                    fpga::Iova iova) override {
    return f_.map_dma_fd(fd, off, host, bytes, iova);
  }
  Status unmap_dma(fpga::Iova iova) override { return f_.unmap_dma(iova); }
  unsigned num_vectors() const noexcept override { return f_.num_vectors(); }
  Result<std::uint32_t> wait_interrupt(unsigned v, std::chrono::nanoseconds t) override {
    return f_.wait_interrupt(v, t);
  }
  int interrupt_fd(unsigned v) override { return f_.interrupt_fd(v); }
  void set_interrupt_masked(unsigned v, bool m) override { f_.set_interrupt_masked(v, m); }
  Status flr() override { return f_.flr(); }

 private:
  fpga::Function& f_;
  std::atomic<unsigned> cc_writes_{0};
};

}  // namespace keel::testing
