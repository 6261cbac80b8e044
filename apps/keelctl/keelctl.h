// keelctl: card and VF management in the style of nvme-cli. main.cpp parses the command line
// into an Invocation; commands.cpp runs it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace keel::fpga {
class Card;
}

namespace keelctl {

/// Options before the command.
struct Options {
  std::string card = "model";
  std::string image;
  bool json = false;
  unsigned sim_vfs = 4;
  std::uint64_t sim_mib = 64;
};

enum class Command {
  list,
  counters,
  vf_enable,
  vf_show,
  vf_reset,
  vf_disable,
  vf_remove,
  vf_restore,
  id_ctrl,
  id_ns,
  read,
  write,
  verify,
  nic_list,     ///< the NIC: its VFs' ports and counters, the uplink
  nic_set,      ///< a NIC VF's port: MAC, rate limit, enable
  nic_remove,   ///< surprise-remove a NIC VF (a simulated card's fault)
  nic_restore,  ///< put it back
};

/// What one run of keelctl does: the global options, the command and its arguments.
struct Invocation {
  Options options;
  Command command = Command::list;
  unsigned count = 0, queues = 1, weight = 1, rate = 0, vf_index = 0;  // vf enable, --vf
  std::string slices;                                                  // vf enable --slice
  std::optional<unsigned> show_index;                                  // vf show [index]
  std::uint64_t start = 0;                                             // read/write/verify
  std::uint32_t block_count0 = 0;  // 0's based, as nvme-cli's --block-count
  std::string data_path;
  std::string mac;  // nic vf set --mac
};

/// Runs the command; exits the process with status 1 and a message on stderr on any error.
int run(const Invocation& inv);
/// The same for --card nvme-pf:<address> (a standard NVMe SR-IOV PF; nvme_pf.cpp).
int run_nvme_pf(const Invocation& inv, const std::string& address);
/// keelctl nic ... on the card's NIC (nic.cpp).
int run_nic(keel::fpga::Card& card, const Invocation& inv);

}  // namespace keelctl
