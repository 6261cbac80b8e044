// keel/sriov/nvme_sriov_pf.h - SR-IOV on a standard NVMe controller (not keel's card): an
// SR-IOV SSD, or QEMU's nvme with sriov_max_vfs. The PF stays with the kernel's nvme driver;
// keel talks to it as nvme-cli does (admin passthrough on /dev/nvmeX, through libnvme):
// Identify Primary Controller Capabilities (CNS 14h) and Secondary Controller List (CNS 15h),
// Virtualization Management (opcode 1Ch) to give each secondary controller flexible queue
// (VQ) and interrupt (VI) resources and bring it online, and sysfs sriov_numvfs for the VFs,
// each handed to vfio-pci for a user-mode driver (keel's, through vfio:<VF address>).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "keel/pci/sysfs.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::sriov {

/// Identify Primary Controller Capabilities (CNS 14h), the fields a PF manager uses.
struct NvmePrimaryCaps {
  std::uint16_t cntlid = 0;
  bool vq_flexible = false, vi_flexible = false;  ///< CRT: which resource types are flexible.
  std::uint32_t vq_total = 0, vq_assigned = 0;    ///< VQFRT, VQRFA (to secondaries).
  std::uint16_t vq_primary = 0, vq_private = 0;   ///< VQRFAP, VQPRT.
  std::uint16_t vq_max_per_secondary = 0;         ///< VQFRSM.
  std::uint32_t vi_total = 0, vi_assigned = 0;
  std::uint16_t vi_primary = 0, vi_private = 0;
  std::uint16_t vi_max_per_secondary = 0;
};

/// One entry of the Secondary Controller List (CNS 15h).
struct NvmeSecondary {
  std::uint16_t scid = 0;  ///< Its controller identifier.
  bool online = false;
  std::uint16_t vfn = 0;  ///< The VF it is (1-based).
  std::uint16_t vq = 0, vi = 0;
  std::string address;  ///< Its VF's PCI address when the VF exists, else empty.
  std::string driver;   ///< The VF's driver, when it exists.
};

struct NvmeSriovOptions {
  std::string sysfs_root = "/sys";
  std::string dev_root = "/dev";
  /// Flexible resources each secondary controller gets: VQ (1 admin + IO queues) and VI.
  unsigned vq_per_vf = 2, vi_per_vf = 1;
  /// Hand each new VF to this driver ("" leaves them to the kernel).
  std::string vf_driver = "vfio-pci";
};

class NvmeSriovPf {
 public:
  /// The PF at `address`, bound to the kernel's nvme driver (its /dev/nvmeX is found through
  /// sysfs). Errors: invalid_argument (address), unavailable (no such device, not bound to
  /// nvme, no SR-IOV, no /dev node or permission), device_error (no Virtualization
  /// Management: OACS bit 7 clear and no flexible resources in CNS 14h).
  static Result<std::unique_ptr<NvmeSriovPf>> open(const std::string& address,
                                                   const NvmeSriovOptions& options = {});

  const std::string& address() const noexcept { return address_; }
  /// /dev/nvmeX.
  const std::string& device() const noexcept { return device_; }
  unsigned total_vfs() const noexcept { return total_vfs_; }
  /// Whether Identify Controller's OACS bit 7 (Virtualization Management) is set. Some
  /// controllers (QEMU 7.2's) support the command with the bit clear; open() then checks that
  /// they report flexible resources.
  bool oacs_virt_mgmt() const noexcept { return oacs_virt_mgmt_; }
  Result<unsigned> num_vfs() const { return sysfs_.num_vfs(address_); }

  Result<NvmePrimaryCaps> primary();
  Result<std::vector<NvmeSecondary>> secondaries();

  /// Gives the secondary controllers of VFs 1..n their resources (offline, assign VQ and VI),
  /// creates the VFs (sriov_numvfs, with the kernel's autoprobe off), brings the controllers
  /// online and hands every VF to options.vf_driver. Errors: invalid_argument (n is 0 or
  /// above total_vfs(), or the flexible resources do not stretch), busy (VFs already exist),
  /// device_error (a Virtualization Management command failed: its status), io_error.
  Status enable(unsigned n);
  /// Removes every VF (sriov_numvfs 0) and takes their controllers offline.
  Status disable();

 private:
  NvmeSriovPf(std::string address, const NvmeSriovOptions& options);
  Status virt_mgmt(unsigned action, unsigned resource, std::uint16_t cntlid, std::uint16_t nr);

  std::string address_, device_;
  NvmeSriovOptions options_;
  pci::SysfsSriov sysfs_;
  UniqueFd fd_;
  unsigned total_vfs_ = 0;
  bool oacs_virt_mgmt_ = false;
};

}  // namespace keel::sriov
