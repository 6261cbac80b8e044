// The simulated card's NIC half: the NIC PF and VFs of the Verilated keel_nic (hdl/rtl), and
// the uplink fd with its reader thread (one read = one frame, as the model's).
#pragma once

#include <memory>
#include <thread>
#include <vector>

#include "keel/fpga/iommu_function.h"
#include "keel/fpga/nic.h"
#include "keel/fpga/pf_function.h"
#include "keel/fpga/sim/sim_card.h"
#include "keel/unique_fd.h"

namespace keel::fpga::sim {

class SimNic;

class SimNicPf final : public PfFunctionBase<IommuFunction> {
 public:
  explicit SimNicPf(SimCard::Impl& card);
  std::uint64_t bar_size() const noexcept override;
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  unsigned num_vectors() const noexcept override { return 0; }

 private:
  bool gone() const noexcept override { return false; }
  SimCard::Impl& card_;
};

class SimNicVf final : public IommuFunction {
 public:
  SimNicVf(SimCard::Impl& card, unsigned index);
  std::uint64_t bar_size() const noexcept override { return 0x1000; }
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  unsigned num_vectors() const noexcept override;
  Result<std::uint32_t> wait_interrupt(unsigned vector, std::chrono::nanoseconds timeout) override;
  int interrupt_fd(unsigned vector) override;
  Status set_interrupt_target(unsigned vector, int eventfd) override;
  void set_interrupt_masked(unsigned vector, bool masked) override;
  Status flr() override;
  bool gone() const noexcept override;

 private:
  SimCard::Impl& card_;
  unsigned index_;
};

class SimNic final : public NicCard {
 public:
  explicit SimNic(SimCard::Impl& card);
  ~SimNic() override;
  Function& pf() noexcept override { return pf_; }
  Result<Function*> vf(unsigned index) override;
  unsigned max_vfs() const noexcept override;
  unsigned num_vfs() const noexcept override;
  Status set_num_vfs(unsigned n) override;
  Status attach_uplink(UniqueFd fd) override;
  Status surprise_remove(unsigned index) override;
  Status restore(unsigned index) override;

 private:
  void stop_uplink() noexcept;
  void reader(int fd, int stop_fd) noexcept;
  void reset_irqs(unsigned index);

  SimCard::Impl& card_;
  SimNicPf pf_;
  std::vector<std::unique_ptr<SimNicVf>> vfs_;
  UniqueFd uplink_, stop_;
  std::thread thread_;
};

}  // namespace keel::fpga::sim
