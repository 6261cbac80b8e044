// keel/fpga/vfio/vfio_card.h - a real keel card on Linux, reached through VFIO.
//
// The PF is bound to vfio-pci and opened as a VFIO device; set_num_vfs() creates VFs through
// sysfs (sriov_numvfs), hands each to vfio-pci and opens it as its own VFIO device, so every
// VF has its own BAR, its own IOMMU domain (when its IOMMU group is its own) and its own
// MSI-X eventfds. Setup steps are in docs/boards.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "keel/fpga/card.h"

namespace keel::fpga::vfio {

/// Where the host's interfaces are, and how patient to be. Every member has a default.
struct VfioOptions {
  /// sysfs mount point (tests point it at a fake tree).
  std::string sysfs_root = "/sys";
  /// Device directory holding vfio/vfio and vfio/<group>.
  std::string dev_root = "/dev";
  /// Hand new VFs to vfio-pci (driver_override, unbind, bind) when the kernel has not.
  bool bind_vfs = true;
  /// How long to wait for a new VF's /dev/vfio/<group> node after enabling VFs.
  std::chrono::milliseconds vf_settle_timeout{5000};
};

/// A card whose PF is at `address`, bound to vfio-pci. A plain NVMe controller at `address`
/// (PCI class 01:08:02 that does not answer as a keel PF: a VF of an SR-IOV SSD or of a keel
/// card handed to this process, QEMU's nvme) is a card of that one function instead: vf(0) is
/// it, pf() is absent (reads all ones), set_num_vfs() is refused, as for a VM's VF. Free-running:
/// lockstep() is false, step() does nothing, now_ns() is the host's steady clock, and there is no
/// fault injector.
///
/// BAR access: the whole BAR0 is mapped (uncached) and read and written with single 32- or
/// 64-bit accesses. DMA: alloc_dma() maps anonymous memory at IOVAs from 2^52 up (kDmaAllocBase);
/// map_dma() maps caller memory at the caller's IOVA. Both pin memory, so RLIMIT_MEMLOCK must allow
/// it. Interrupts: each MSI-X vector is an eventfd; wait_interrupt() polls it. FLR: a VF's flr() is
/// VFIO_DEVICE_RESET. A function the kernel wants back (hot removal) turns gone.
///
/// Threading: as Function and Card document; set_num_vfs() and vf() are serialised inside.
class VfioCard final : public Card {
 public:
  /// Opens the card whose PF is `address` ("0000:3b:00.0"; "3b:00.0" means domain 0).
  /// Checks, in order, and names the first thing missing: the PCI device, /dev/vfio/vfio
  /// (vfio-pci loaded), the device's IOMMU group, its binding to vfio-pci, the VFIO
  /// container and group, and that the device answers as a keel card (PF ID = 'KEEL').
  /// VFs that already exist are opened too. Errors: invalid_argument (malformed address),
  /// unavailable (something above is missing, or no permission), busy (the group or device is
  /// open in another process), not_found (the device is not a keel card), io_error.
  static Result<std::unique_ptr<VfioCard>> open(std::string_view address,
                                                const VfioOptions& options = {});
  ~VfioCard() override;

  /// The PF's canonical PCI address.
  const std::string& address() const noexcept;

  std::string_view backend() const noexcept override { return "vfio"; }
  std::string describe() const override;
  Function& pf() noexcept override;
  Result<Function*> vf(unsigned index) override;
  /// The smaller of the card's CAPS.MAX_VFS and the PF's sriov_totalvfs.
  unsigned max_vfs() const noexcept override;
  unsigned num_vfs() const noexcept override;
  /// Enabling: writes the card's PF NUM_VFS, then sriov_numvfs, binds every new VF to
  /// vfio-pci and opens it; on any failure everything is undone. Disabling: closes the VFs
  /// (pointers to them stay valid and read all ones), writes sriov_numvfs 0, then NUM_VFS 0.
  /// Errors: invalid_argument (n > max_vfs()), busy (non-zero to non-zero, or the kernel
  /// refused), unavailable (the PF's driver cannot create VFs: load vfio-pci with
  /// enable_sriov=1; no permission), device_error (the card refused NUM_VFS), timeout (a VF's
  /// VFIO node did not appear in time), plus the errors of opening a function.
  Status set_num_vfs(unsigned n) override;
  bool owns_pf() const noexcept override;
  bool lockstep() const noexcept override { return false; }
  unsigned step(unsigned) override { return 0; }
  std::uint64_t now_ns() const noexcept override;

  struct Impl;

 private:
  explicit VfioCard(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::fpga::vfio
