// keel-card's NIC half: the NIC PF on <run-dir>/nicpf.sock and NIC VF n on nicvf<n>.sock
// (following the NIC's NUM_VFS as the NVMe VF sockets follow NumVFs), keel-card as the NIC's PF
// manager for the VFs it starts with (a MAC 02:4b:45:45:4c:<n> and an enabled switch port
// each), the uplink (--uplink), and the NIC VFs' fault injection through the NIC PF's
// configuration space (surprise removal and restore).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "keel/fpga/nic.h"
#include "keel/result.h"
#include "keel/wire/knic.h"
#include "served.h"

namespace keel::card_app {

struct NicOptions {
  std::string run_dir;
  /// NIC VFs enabled at start, each given its MAC (nic_vf_mac) and an enabled port.
  unsigned vfs = 0;
  /// Empty: no uplink; "dgram:LOCAL,REMOTE", "seqpacket:PATH" or "tap:IFNAME".
  std::string uplink;
};

/// The MAC keel-card gives NIC VF `vf`: locally administered, "KEEL" and the VF's index.
constexpr knic::Mac nic_vf_mac(unsigned vf) noexcept {
  return knic::Mac{0x02, 0x4B, 0x45, 0x45, 0x4C, static_cast<std::uint8_t>(vf)};
}

class NicServing {
 public:
  /// Errors: invalid_argument (a malformed --uplink, too many VFs), those of the uplink's
  /// socket or TAP device, of the NIC's NUM_VFS and port setup, and of the sockets.
  static Result<std::unique_ptr<NicServing>> start(fpga::NicCard& nic, const NicOptions& options,
                                                   std::uint64_t& generation);
  ~NicServing();
  NicServing(const NicServing&) = delete;
  NicServing& operator=(const NicServing&) = delete;

  /// Appends the served functions: the NIC PF, then NIC VF n.
  void collect(std::vector<Served*>& out) const;
  bool is_pf(const Served* s) const noexcept { return !served_.empty() && s == served_[0].get(); }
  /// After a message to the NIC PF: its NUM_VFS register may have changed the VFs.
  void follow_num_vfs();
  /// How long the main loop may sleep before tick() (-1: no limit), and the uplink's upkeep: a
  /// datagram uplink whose peer was not there (or went and came back) is dialled again.
  int poll_timeout_ms() const noexcept;
  void tick();
  /// Every NIC function's counters, and the uplink's.
  void print_counters() const;

 private:
  struct Uplink;
  NicServing(fpga::NicCard& nic, const NicOptions& options, std::uint64_t& generation);
  Status serve_vfs();
  void drop_vf_sockets();
  Status pull_vf(unsigned vf, bool pull);
  Status enable_port(unsigned vf);

  fpga::NicCard& nic_;
  const NicOptions options_;
  std::uint64_t& generation_;  ///< Bumped when the VF sockets change (the main loop's indexes).
  std::vector<std::unique_ptr<Served>> served_;  ///< [0] the NIC PF, [n + 1] NIC VF n.
  std::uint32_t removed_ = 0;                    ///< NIC VFs pulled from the bus (bit n).
  std::unique_ptr<Uplink> uplink_;
};

}  // namespace keel::card_app
