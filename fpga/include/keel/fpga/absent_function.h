// keel/fpga/absent_function.h - a PCI function that is not on this process's bus: the PF of a
// card of which a process holds one function (a VM's VF, one VFIO device), as a Function.
#pragma once

#include <string>
#include <utility>

#include "keel/fpga/function.h"

namespace keel::fpga {

/// Reads return all ones and writes are dropped, as for a PCI function that does not respond;
/// everything else fails with gone and `why` (what the caller should use instead).
class AbsentFunction final : public Function {
 public:
  explicit AbsentFunction(std::string why) : why_(std::move(why)) {}

  unsigned number() const noexcept override { return 0; }
  std::uint64_t bar_size() const noexcept override { return 0; }
  std::uint32_t read32(std::uint64_t) noexcept override { return 0xffffffffu; }
  std::uint64_t read64(std::uint64_t) noexcept override { return ~std::uint64_t{0}; }
  void write32(std::uint64_t, std::uint32_t) noexcept override {}
  void write64(std::uint64_t, std::uint64_t) noexcept override {}
  Result<DmaBuffer> alloc_dma(std::size_t) override { return absent(); }
  Status map_dma(void*, std::size_t, Iova) override { return absent(); }
  Status unmap_dma(Iova) override { return absent(); }
  unsigned num_vectors() const noexcept override { return 0; }
  Result<std::uint32_t> wait_interrupt(unsigned, std::chrono::nanoseconds) override {
    return absent();
  }
  Status flr() override { return absent(); }

 private:
  Error absent() const { return make_error(Errc::gone, why_); }
  std::string why_;
};

}  // namespace keel::fpga
