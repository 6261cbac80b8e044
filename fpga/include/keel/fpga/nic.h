// keel/fpga/nic.h - the NIC half of a card: a PCI physical function of its own (beside the NVMe
// PF) with its own SR-IOV VFs, and the embedded switch that joins the VFs and the uplink.
// Registers: blocks NICPF/NICVFCFG (PF) and NIC/NICQ (VF) of the generated keel/regs/keel_regs.h;
// ring entries: keel/wire/knic.h.
#pragma once

#include "keel/fpga/function.h"
#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::fpga {

/// Function numbers (IOMMU domains, the shell's function id) of the NIC: they follow the NVMe
/// PF's (0) and VFs' (1..MAX_VFS).
inline constexpr unsigned kNicPfFunction = 65;
constexpr unsigned nic_vf_function(unsigned index) noexcept { return kNicPfFunction + 1 + index; }

class NicCard {
 public:
  virtual ~NicCard() = default;
  /// The NIC PF: NUM_VFS, per-VF MAC, rate limit, enable, counters, FLR (NICPF/NICVFCFG).
  virtual Function& pf() noexcept = 0;
  /// NIC VF `index` (0-based). Errors: not_found when index >= num_vfs().
  virtual Result<Function*> vf(unsigned index) = 0;
  virtual unsigned max_vfs() const noexcept = 0;
  virtual unsigned num_vfs() const noexcept = 0;
  /// Errors: as a write of NICPF NUM_VFS (invalid_argument, busy when changing a non-zero
  /// count to another).
  virtual Status set_num_vfs(unsigned n) = 0;
  /// Gives the switch its uplink: a datagram socket or TAP fd on which one read or write is one
  /// frame (a unix SOCK_DGRAM/SOCK_SEQPACKET socket, QEMU's -netdev dgram peer, a TAP device
  /// opened IFF_TAP | IFF_NO_PI). Replaces any earlier uplink. Frames to unknown unicast MACs
  /// leave through it; frames read from it enter the switch.
  virtual Status attach_uplink(UniqueFd fd) = 0;
  /// Fault injection on a simulated card: the NIC VF disappears (BAR reads all ones, nothing
  /// moves, interrupt waits fail with gone) / comes back as after an FLR. Errors: not_found,
  /// unavailable on hardware.
  virtual Status surprise_remove(unsigned index) = 0;
  virtual Status restore(unsigned index) = 0;
};

}  // namespace keel::fpga
