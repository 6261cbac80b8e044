// keel/fpga/vfio_user/config_space.h - the PCI configuration space keel-card shows for each
// function (vfio-user region 7), and how a client reads it back.
//
// A type-0 header for an NVMe controller (class 01:08:02), or for a function of the card's NIC
// an Ethernet controller (02:00:00), from the card's vendor (0x10EE, the card is an FPGA
// design; see docs/decisions.md), BAR0 a 64-bit memory BAR, and one
// vendor-specific capability (ID 0x09) at 0x40 that says which function of the card this is
// and, for the PF, how many VFs it has: what a VFIO client of a real card learns from the bus
// (the routing ID) and the SR-IOV capability.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "keel/result.h"

namespace keel::vfio_user {

inline constexpr std::size_t kConfigSpaceBytes = 256;
inline constexpr std::uint16_t kPciVendorId = 0x10EE;
inline constexpr std::uint16_t kPciDevicePf = 0x4B50;     ///< "KP"
inline constexpr std::uint16_t kPciDeviceVf = 0x4B56;     ///< "KV"
inline constexpr std::uint16_t kPciDeviceNicPf = 0x4B4E;  ///< "KN": the NIC's PF
inline constexpr std::uint16_t kPciDeviceNicVf = 0x4B45;  ///< "KE": a NIC VF
/// Function number of the NIC PF; NIC VF n is kNicPfNumber + 1 + n (keel/fpga/nic.h's
/// kNicPfFunction and nic_vf_function, which this layer cannot include).
inline constexpr unsigned kNicPfNumber = 65;
inline constexpr std::uint8_t kKeelCapOffset = 0x40;
inline constexpr std::uint8_t kKeelCapLength = 32;
/// Offsets in the keel capability of its two writable fields (PF only): NumVFs (u16, as
/// SR-IOV's) and the VFs pulled from the bus (u32 bitmap: a set bit surprise-removes VF n, as
/// a host pulling a VF from its guest; a cleared bit puts it back).
inline constexpr std::uint8_t kKeelCapNumVfs = 8;
inline constexpr std::uint8_t kKeelCapRemovedVfs = 12;
/// A simulated card's fault injector, for tests of a card in another process: a 16-byte
/// FaultRecord written here (PF only) is carried out at once; the write fails as the fault
/// does. Reads as zeros. A real card has none (the write is refused). Written to the NIC PF, the
/// record's `vf` is a NIC VF and only surprise_remove and restore are taken (the other ops are
/// NVMe faults: refused, unavailable).
inline constexpr std::uint8_t kKeelCapFault = 16;

enum class FaultOp : std::uint8_t {
  drop_completions = 1,   ///< count
  delay_completions = 2,  ///< count, arg = ns
  delay_ready = 3,        ///< arg = ns
  raise_fatal = 4,
  refuse_dma = 5,  ///< count != 0: refuse, 0: allow again
  surprise_remove = 6,
  restore = 7,
  corrupt_completions = 8,  ///< count, arg = fpga::CqeFault
  swallow_aborts = 9,       ///< count
};
struct FaultRecord {
  FaultOp op;
  std::uint8_t vf;
  std::uint16_t reserved;
  std::uint32_t count;
  std::uint64_t arg;
};
static_assert(sizeof(FaultRecord) == 16);

/// What the keel capability says.
struct FunctionIdentity {
  /// 0: the (NVMe) PF; n + 1: VF n; kNicPfNumber: the NIC PF; kNicPfNumber + 1 + n: NIC VF n.
  unsigned number = 0;
  unsigned max_vfs = 0;           ///< PF: VFs the card can expose (0 for a VF).
  unsigned num_vfs = 0;           ///< PF: VFs enabled now (0 for a VF).
  std::uint32_t removed_vfs = 0;  ///< PF: VFs surprise-removed now (bit n: VF n).
  /// A function of the NIC half (its PF or one of its VFs).
  bool is_nic() const noexcept { return number >= kNicPfNumber; }
  /// Either half's PF (the NVMe PF or the NIC PF).
  bool is_pf() const noexcept { return number == 0 || number == kNicPfNumber; }
  /// A VF's index within its half (meaningless for a PF).
  unsigned vf_index() const noexcept { return number - (is_nic() ? kNicPfNumber + 1 : 1); }
};

/// The 256 bytes of configuration space of a function.
std::array<std::uint8_t, kConfigSpaceBytes> build_config_space(const FunctionIdentity& id);

/// Reads the identity back. Errors: invalid_argument (not a keel function: another vendor or
/// device, no keel capability, a short read).
Result<FunctionIdentity> parse_config_space(std::span<const std::uint8_t> config);

}  // namespace keel::vfio_user
