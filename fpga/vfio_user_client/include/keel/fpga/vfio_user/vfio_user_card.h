// keel/fpga/vfio_user/vfio_user_card.h - a card served by keel-card in another process, as a
// Card ("vfio-user:<socket>" in every card spec).
//
// What the socket serves decides what the card is, as VFIO does for a process:
// - a VF socket (vf<N>.sock): the card is that one VF, as a VM's paravisor sees its assigned
//   VF. vf(0) is it; the PF belongs to whoever runs the card, so pf() is an absent function
//   (reads all ones, every operation fails gone) and set_num_vfs() is refused.
// - the PF socket (pf.sock): the PF, and VF n on demand from vf<n>.sock beside it. The VFs are
//   keel-card's: set_num_vfs() writes the PF's NumVFs (config_space.h), which keel-card
//   carries out on its card, with sockets for the new VFs, so the PF manager (keelctl) works
//   on a running card as on a local one, and what it sets stays set.
// - a NIC VF socket (nicvf<N>.sock): the card is that one NIC VF, as a VM's paravisor sees its
//   assigned NIC VF: nic()->vf(0) is it; nic()->pf() is absent, set_num_vfs, attach_uplink,
//   surprise_remove and restore are unavailable (the NIC PF, the uplink and the faults are
//   keel-card's). The NVMe side is empty: pf() absent, num_vfs() 0, vf(i) not_found.
// - the NIC PF socket (nicpf.sock): nic()->pf() is the NIC PF (NICPF/NICVFCFG registers),
//   nic()->vf(n) dials nicvf<n>.sock beside it on demand, nic()->set_num_vfs() writes the NIC
//   PF's NumVFs (config_space.h; keel-card sets NUM_VFS and follows with sockets), and
//   surprise_remove/restore go to keel-card's NIC through the NIC PF's fault record.
//   attach_uplink is unavailable (keel-card's --uplink). The NVMe side is empty as above.
// A card opened on an NVMe socket has no NIC (nic() is null): the NIC's sockets are separate
// functions, one client each, as on the bus.
//
// The card runs on its own (free-running): its clock is the host's monotonic clock and step()
// does nothing. It has no fault injector: faults are injected in keel-card's process.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "keel/fpga/card.h"
#include "keel/fpga/vfio_user/client_function.h"
#include "keel/result.h"

namespace keel::vfio_user {

class VfioUserCard final : public fpga::Card {
 public:
  /// Connects to the function at `socket_path`. Errors: those of ClientFunction::connect.
  static Result<std::unique_ptr<VfioUserCard>> open(const std::string& socket_path,
                                                    const ClientConfig& config = {});
  /// The card of a connection another process handed over (servicing; ClientFunction::adopt).
  static Result<std::unique_ptr<VfioUserCard>> adopt(const std::string& socket_path, int connection,
                                                     const ClientConfig& config = {});
  ~VfioUserCard() override;

  std::string_view backend() const noexcept override { return "vfio-user"; }
  std::string describe() const override;
  fpga::Function& pf() noexcept override;
  Result<fpga::Function*> vf(unsigned index) override;
  unsigned max_vfs() const noexcept override;
  unsigned num_vfs() const noexcept override;
  /// PF mode: through the PF's NumVFs. Errors: as the card's set_num_vfs (busy: non-zero to
  /// non-zero); unavailable on a one-VF card.
  Status set_num_vfs(unsigned n) override;
  bool owns_pf() const noexcept override { return !single_vf_ && !nic_only_; }
  bool lockstep() const noexcept override { return false; }
  unsigned step(unsigned) override { return 0; }
  std::uint64_t now_ns() const noexcept override;

  /// PF mode: keel-card's fault injector, through the PF's configuration space (a simulated
  /// card's; keelctl vf remove/restore use it). A one-VF card has none.
  fpga::FaultInjector* faults() noexcept override;

  /// The NIC half when the socket served a NIC function (nicpf.sock, nicvf<N>.sock), else null.
  fpga::NicCard* nic() noexcept override;

  /// True when the socket served one VF (the card is that VF): an NVMe VF or a NIC VF.
  bool single_vf() const noexcept { return single_vf_; }
  /// True when the socket served a function of the card's NIC.
  bool nic_only() const noexcept { return nic_only_; }

 private:
  VfioUserCard(std::string path, const ClientConfig& config);
  static std::unique_ptr<VfioUserCard> around(std::unique_ptr<ClientFunction> first,
                                              const std::string& socket_path,
                                              const ClientConfig& config);

  class RemoteFaults;
  class RemoteNic;
  /// VF `index` of the PF at path_, from <prefix><index>.sock beside it, kept in `vfs`
  /// (function `number`). Caller holds vfs_mu_.
  Result<fpga::Function*> pf_mode_vf(std::vector<std::unique_ptr<ClientFunction>>& vfs,
                                     const char* prefix, unsigned index, unsigned number);
  /// Writes the PF's NumVFs; the VF clients in `vfs` let go when the count changed.
  Status write_num_vfs(std::vector<std::unique_ptr<ClientFunction>>& vfs, unsigned n,
                       unsigned before);
  /// Writes a FaultRecord to the PF's keel capability.
  Status send_fault(FaultOp op, unsigned vf, unsigned count, std::uint64_t arg);

  const std::string path_;
  const ClientConfig config_;
  bool single_vf_ = false;
  bool nic_only_ = false;
  std::unique_ptr<RemoteNic> nic_;
  std::unique_ptr<ClientFunction> first_;  ///< The function at path_.
  std::unique_ptr<fpga::Function> absent_pf_;
  std::unique_ptr<RemoteFaults> faults_;
  std::mutex vfs_mu_;
  std::vector<std::unique_ptr<ClientFunction>> vfs_;  ///< PF mode: VF n, once connected.
};

}  // namespace keel::vfio_user
