// PCIe functions of the simulated card: BAR accesses become AXI4-Lite transactions.
#include <string>

#include "sim_impl.h"

namespace keel::fpga::sim {
namespace {

// A 32-bit access is the half of the aligned 8-byte word selected by bit 2 of the offset.
std::uint32_t half(std::uint64_t word, std::uint64_t offset) {
  return static_cast<std::uint32_t>((offset & 4) != 0 ? word >> 32 : word);
}

std::uint8_t strobes32(std::uint64_t offset) { return (offset & 4) != 0 ? 0xF0 : 0x0F; }

std::uint64_t place32(std::uint32_t value, std::uint64_t offset) {
  return std::uint64_t{value} << ((offset & 4) != 0 ? 32 : 0);
}

}  // namespace

// ---------------------------------------------------------------- PF

SimPf::SimPf(SimCard::Impl& card) : PfFunctionBase(*card.iommu, 0), card_(card) {}

std::uint32_t SimPf::read32(std::uint64_t offset) noexcept {
  if (offset >= bar_size()) return 0xFFFFFFFFu;
  return half(card_.mmio_read(0, offset), offset);
}

std::uint64_t SimPf::read64(std::uint64_t offset) noexcept {
  if (offset >= bar_size()) return ~std::uint64_t{0};
  return card_.mmio_read(0, offset);
}

void SimPf::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (offset >= bar_size()) return;
  card_.mmio_write(0, offset, place32(value, offset), strobes32(offset));
}

void SimPf::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  if (offset >= bar_size()) return;
  card_.mmio_write(0, offset, value, 0xFF);
}

// ---------------------------------------------------------------- VFs

SimVf::SimVf(SimCard::Impl& card, unsigned index)
    : IommuFunction(*card.iommu, index + 1), card_(card), index_(index) {}

bool SimVf::gone() const noexcept {
  return index_ >= card_.shell->num_vfs() || card_.shell->vf_removed(index_);
}

std::uint32_t SimVf::read32(std::uint64_t offset) noexcept {
  if (offset >= bar_size()) return 0xFFFFFFFFu;
  return half(card_.mmio_read(index_ + 1, offset), offset);
}

std::uint64_t SimVf::read64(std::uint64_t offset) noexcept {
  if (offset >= bar_size()) return ~std::uint64_t{0};
  return card_.mmio_read(index_ + 1, offset);
}

void SimVf::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (offset >= bar_size()) return;
  card_.mmio_write(index_ + 1, offset, place32(value, offset), strobes32(offset));
}

void SimVf::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  if (offset >= bar_size()) return;
  card_.mmio_write(index_ + 1, offset, value, 0xFF);
}

unsigned SimVf::num_vectors() const noexcept { return card_.irqs[index_ + 1]->vectors(); }

Result<std::uint32_t> SimVf::wait_interrupt(unsigned vector, std::chrono::nanoseconds timeout) {
  return card_.irqs[index_ + 1]->wait(
      index_, vector, timeout, card_.lockstep(), [&] { return card_.now_ns(); },
      [&] {
        std::lock_guard lock(card_.mu);
        card_.run_locked(card_.config.cycles_per_step);
      },
      [&] { return gone(); });
}

int SimVf::interrupt_fd(unsigned vector) { return card_.irqs[index_ + 1]->fd(vector); }

Status SimVf::set_interrupt_target(unsigned vector, int eventfd) {
  return card_.irqs[index_ + 1]->set_target(vector, eventfd);
}

void SimVf::set_interrupt_masked(unsigned vector, bool masked) {
  card_.irqs[index_ + 1]->set_masked(vector, masked);
}

Status SimVf::flr() {
  if (index_ >= card_.shell->num_vfs()) {
    return make_error(Errc::gone, "VF " + std::to_string(index_) + " is not present");
  }
  if (card_.shell->vf_removed(index_)) {
    return make_error(Errc::gone, "VF " + std::to_string(index_) + " was removed");
  }
  return card_.do_flr(index_ + 1, nullptr);
}

}  // namespace keel::fpga::sim
