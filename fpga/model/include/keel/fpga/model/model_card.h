// keel/fpga/model/model_card.h - the reference card in C++.
//
// Same registers and semantics as the RTL card (hdl/), fast enough for unit tests and driver
// benchmarks. Storage is a disk image mmapped as the card's DDR; each VF reaches only its
// slice, as namespace 1 of its NVMe controller.
#pragma once

#include <memory>

#include "keel/fpga/card.h"
#include "keel/fpga/iommu.h"
#include "keel/fpga/nic.h"

namespace keel::fpga::model {

/// Tunables of the reference card beyond CardOptions. Every member has a default.
struct ModelConfig {
  CardOptions card;
  /// CAP.MQES: largest queue, 0-based.
  unsigned mqes = 1023;
  /// Identify MDTS: largest transfer is 2^mdts pages of 4 KiB.
  unsigned mdts = 5;
  /// Namespace format: LBAs of 2^lba_shift bytes, 9 (512) or 12 (4 KiB). Slices (VFCFG) and
  /// STORAGE_LBAS count these LBAs.
  unsigned lba_shift = 9;
  /// Card clock for the cycle counters.
  unsigned clock_mhz = 250;
  /// Card time one lockstep step advances.
  std::uint64_t ns_per_step = 1000;
  /// Commands one VF may run per arbitration turn, multiplied by its QoS weight.
  unsigned commands_per_weight = 4;
};

class ModelCard final : public Card {
 public:
  /// Builds the card. A free-running card (config.card.lockstep == false) starts its thread
  /// here. Errors: invalid_argument (max_vfs 0 or above 64, max_ioq_per_vf 0 or above 255,
  /// bad storage size), io_error (image file).
  static Result<std::unique_ptr<ModelCard>> create(const ModelConfig& config);
  ~ModelCard() override;

  std::string_view backend() const noexcept override { return "model"; }
  std::string describe() const override;
  Function& pf() noexcept override;
  Result<Function*> vf(unsigned index) override;
  unsigned max_vfs() const noexcept override;
  unsigned num_vfs() const noexcept override;
  Status set_num_vfs(unsigned n) override;
  bool lockstep() const noexcept override;
  int thread_id() const noexcept override;
  unsigned step(unsigned n = 1) override;
  std::uint64_t now_ns() const noexcept override;
  FaultInjector* faults() noexcept override;
  NicCard* nic() noexcept override;

  /// The IOMMU shared by all functions (tests inspect its windows and fault counts).
  Iommu& iommu() noexcept;

  struct Impl;

 private:
  explicit ModelCard(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::fpga::model
