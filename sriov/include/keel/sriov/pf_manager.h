// keel/sriov/pf_manager.h - the PF manager: creates VFs and gives each its resources.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "keel/fpga/card.h"
#include "keel/result.h"

namespace keel::sriov {

/// What one VF gets. Every member has a default.
struct VfResources {
  /// IO queue pairs (1 to CardInfo::max_ioq_per_vf).
  unsigned queues = 1;
  /// First card LBA of the VF's namespace.
  std::uint64_t slice_base = 0;
  /// Size of the VF's namespace in LBAs (non-zero).
  std::uint64_t slice_lbas = 0;
  /// Arbiter weight (1-255): commands per round relative to other VFs.
  unsigned weight = 1;
  /// Bandwidth cap in MB/s; 0 is unlimited.
  std::uint32_t rate_mbps = 0;
};

struct CardInfo {
  std::string backend;
  unsigned version_major = 0, version_minor = 0;
  unsigned max_vfs = 0;
  unsigned max_ioq_per_vf = 0;
  std::uint64_t storage_lbas = 0;
  unsigned lba_bytes = 512;
  unsigned clock_mhz = 0;
  unsigned num_vfs = 0;
};

struct VfCounters {
  std::uint64_t commands = 0, bytes = 0, busy_cycles = 0, dma_faults = 0, errors = 0;
};

struct VfInfo {
  unsigned index = 0;
  bool present = false;
  bool enabled = false;
  VfResources resources;
  VfCounters counters;
};

struct CardCounters {
  std::uint64_t commands = 0, bytes = 0, cycles = 0, dma_faults = 0;
};

/// Drives a card's PF registers. Not thread-safe: one manager per card, used by one thread.
class PfManager {
 public:
  /// Checks the card's identity (PF ID register). Errors: not_found (no keel card answers:
  /// ID is not 'KEEL'), unavailable (unsupported major version).
  static Result<PfManager> discover(fpga::Card& card);

  CardInfo info() const;

  /// Validates every request against the card and each other, then enables `vfs.size()` VFs
  /// with those resources. Nothing changes when anything is wrong. Errors: invalid_argument
  /// (too many VFs, a slice past the end or overlapping another, too many or zero queues,
  /// bad weight), busy (VFs are enabled: disable_vfs() first), device_error (the card refused
  /// a VF; its VFCFG error code is in the message).
  Status enable_vfs(std::span<const VfResources> vfs);
  /// n VFs with `queues` queue pairs each, splitting the storage evenly.
  Status enable_vfs_even(unsigned n, unsigned queues = 1);
  /// Removes every VF.
  Status disable_vfs();
  /// Function-level reset of one VF through the PF (its resources stay). Errors: not_found.
  Status reset_vf(unsigned index);

  /// Errors: not_found (index beyond the card's VFs).
  Result<VfInfo> vf(unsigned index) const;
  std::vector<VfInfo> vfs() const;
  CardCounters counters() const;

  /// Why the card refused a VF's resources (VFCFG STATUS.ERR_CODE), in words.
  static std::string vfcfg_error_text(std::uint32_t code);

 private:
  explicit PfManager(fpga::Card& card) : card_(&card) {}
  Status validate(std::span<const VfResources> vfs) const;

  fpga::Card* card_;
};

}  // namespace keel::sriov
