// keel/pci/sysfs.h - the Linux side of SR-IOV: sysfs attributes of a PF and its VFs.
//
// On a real host the kernel owns the VFs: writing sriov_numvfs creates or removes them,
// driver_override and bind/unbind decide which driver gets each one. SysfsSriov is that
// logic and nothing else (no register access, no VFIO), rooted at a configurable sysfs
// directory so tests run it against a fake tree in a temporary directory.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "keel/result.h"

namespace keel::pci {

/// Where sysfs is and who hears about writes. Every member has a default.
struct SysfsConfig {
  /// The sysfs mount point; tests point it at a fake tree.
  std::filesystem::path root = "/sys";
  /// Called before every write with the attribute's path and the value about to be written
  /// (keelctl --verbose prints these). Returns 0 to let the write happen, or an errno value to
  /// fail it as if write(2) had returned that error: tests play the kernel's refusals with it
  /// (EBUSY, ENOENT, ERANGE) and check the order of writes.
  std::function<int(const std::filesystem::path& attribute, std::string_view value)> on_write;
};

/// SR-IOV and driver binding through sysfs. Every function taking a PCI address accepts the
/// forms parse_pci_address() does and fails with invalid_argument on anything else.
///
/// Errors common to all functions: not_found (no such PCI device under
/// <root>/bus/pci/devices), unavailable (permission denied: run as root or grant write access
/// to the attribute), io_error (any other failed read or write, with the errno text).
///
/// Threading: no state besides the configuration; concurrent calls on different devices are
/// fine, on the same device they race exactly as two shells writing sysfs would.
class SysfsSriov {
 public:
  explicit SysfsSriov(SysfsConfig config = {});

  const std::filesystem::path& root() const noexcept { return config_.root; }
  /// <root>/bus/pci/devices/<address> (no check that it exists).
  std::filesystem::path device_dir(std::string_view address) const;

  /// True when the PCI device exists.
  bool exists(std::string_view address) const;

  /// sriov_totalvfs: how many VFs the PF can have. Errors: unavailable (the device is not
  /// SR-IOV capable: it has no sriov_totalvfs).
  Result<unsigned> total_vfs(std::string_view pf) const;
  /// sriov_numvfs: how many VFs exist now. Errors: as total_vfs().
  Result<unsigned> num_vfs(std::string_view pf) const;
  /// Sets sriov_numvfs to `n`. Writes 0 first when changing one non-zero count to another, as
  /// the kernel requires; does nothing when the count is already `n`. Errors: as total_vfs(),
  /// plus invalid_argument (n above sriov_totalvfs), unavailable (no driver bound to the PF,
  /// or its driver cannot create VFs, e.g. vfio-pci loaded without enable_sriov=1), busy (the
  /// kernel refused because VFs are in use).
  Status set_num_vfs(std::string_view pf, unsigned n);

  /// sriov_drivers_autoprobe: whether the kernel probes drivers for new VFs. Off, VFs appear
  /// with no driver (a PF manager that must set them up first, then binds them itself).
  Status set_drivers_autoprobe(std::string_view pf, bool on);

  /// Addresses of the PF's VFs, VF 0 first (from the virtfn<N> links).
  Result<std::vector<std::string>> vf_addresses(std::string_view pf) const;

  /// Name of the driver bound to the device, or "" when none is.
  Result<std::string> driver(std::string_view address) const;
  /// Writes driver_override, so that the next probe binds only `driver_name` ("" clears it).
  /// Errors: unavailable (the kernel has no driver_override).
  Status set_driver_override(std::string_view address, std::string_view driver_name);
  /// Unbinds the device from its driver (driver/unbind). Nothing to do when unbound.
  Status unbind(std::string_view address);
  /// Binds the device to `driver_name` through <root>/bus/pci/drivers/<driver>/bind, or asks
  /// the kernel to probe it (<root>/bus/pci/drivers_probe) when the driver has no bind file.
  /// Errors: unavailable (no such driver is loaded: modprobe it).
  Status bind(std::string_view address, std::string_view driver_name);
  /// The whole hand-over: driver_override, unbind from the current driver, bind to
  /// `driver_name`. Nothing to do when the device is already bound to it. Errors: as the
  /// three steps.
  Status bind_to(std::string_view address, std::string_view driver_name);

  /// The device's IOMMU group number (the iommu_group link). Errors: unavailable (no IOMMU
  /// group: the IOMMU is off or absent).
  Result<unsigned> iommu_group(std::string_view address) const;

 private:
  Result<std::string> checked(std::string_view address) const;
  Result<unsigned> read_count(std::string_view pf, const char* attribute) const;
  Status write(const std::filesystem::path& attribute, std::string_view value) const;

  SysfsConfig config_;
};

}  // namespace keel::pci
