// Private state of the reference card, shared by its source files.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "keel/fpga/card_storage.h"
#include "keel/fpga/iommu_function.h"
#include "keel/fpga/model/model_card.h"
#include "keel/fpga/pf_function.h"
#include "nic_model.h"
#include "vf_controller.h"

namespace keel::fpga::model {

class PfFunction final : public PfFunctionBase<IommuFunction> {
 public:
  explicit PfFunction(ModelCard::Impl& card);
  std::uint64_t bar_size() const noexcept override { return 0x4000; }
  std::uint32_t read32(std::uint64_t offset) noexcept override;
  std::uint64_t read64(std::uint64_t offset) noexcept override;
  void write32(std::uint64_t offset, std::uint32_t value) noexcept override;
  void write64(std::uint64_t offset, std::uint64_t value) noexcept override;
  unsigned num_vectors() const noexcept override { return 1; }

 private:
  bool gone() const noexcept override { return false; }
  ModelCard::Impl& card_;
};

class VfFunction final : public IommuFunction {
 public:
  VfFunction(ModelCard::Impl& card, unsigned index);
  std::uint64_t bar_size() const noexcept override { return 0x2000; }
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

 private:
  bool gone() const noexcept override;
  ModelCard::Impl& card_;
  unsigned index_;
};

struct ModelCard::Impl {
  ModelConfig config;
  std::unique_ptr<CardStorage> storage;
  std::unique_ptr<Iommu> iommu;
  Activity activity;
  std::vector<std::unique_ptr<VfController>> ctrls;  // one per possible VF
  std::unique_ptr<std::atomic<bool>[]> present;      // VF n is on the bus
  std::unique_ptr<PfFunction> pf;
  std::vector<std::unique_ptr<VfFunction>> vfs;
  std::unique_ptr<FaultInjector> faults;
  std::unique_ptr<NicModel> nic;  ///< The NIC PF, its VFs and the switch.

  std::mutex mu;  // card state: controllers' card side, VF resources, NUM_VFS
  std::atomic<unsigned> num_vfs{0};
  bool num_vfs_err = false;
  unsigned rr = 0;

  std::atomic<std::uint64_t> virtual_ns{0};
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::atomic<bool> running{false};
  std::thread thread;
  std::atomic<int> tid{-1};  ///< The free-running thread's kernel thread id.

  std::uint64_t now_ns() const noexcept;
  /// One arbitration round over the present VFs. Caller holds mu.
  unsigned round() noexcept;
  bool any_busy() noexcept;
  void run();
  /// NUM_VFS semantics. Caller holds mu.
  Status set_num_vfs_locked(unsigned n);
  /// Commits VF resources (VFCFG CTRL.ENABLE). Caller holds mu. Returns ERR_CODE (0: ok).
  std::uint32_t enable_vf_locked(unsigned vf);
  std::uint64_t storage_lbas() const noexcept;
};

std::unique_ptr<FaultInjector> make_fault_injector(ModelCard::Impl& card);

}  // namespace keel::fpga::model
