// keelctl: card and VF management in the style of nvme-cli.
//
//   keelctl [--card SPEC] [--json] <command> ...
//
// A simulated card (model, sim) lives as long as the keelctl process; its disk image (--image)
// persists. Commands that need VFs enable --vfs of them (even split) on a simulated card that
// has none; on a real board VFs persist and `keelctl vf enable` sets them up.
#include <CLI/CLI.hpp>

#include <optional>
#include <string>

#include "keelctl.h"

int main(int argc, char** argv) {
  keelctl::Invocation inv;
  keelctl::Options& o = inv.options;
  CLI::App app{"keelctl: manage keel SR-IOV NVMe cards and their VFs (nvme-cli style)"};
  app.require_subcommand(1);
  app.add_option("--card", o.card,
                 "card: model, sim, vfio:<PCI address>, xrt:<index>, vfio-user:<socket>, "
                 "nvme-pf:<PF address> (SR-IOV of a standard NVMe device)")
      ->capture_default_str();
  app.add_option("--image", o.image, "disk image of a simulated card (default: in memory)");
  app.add_option("--vfs", o.sim_vfs, "VFs a simulated card enables when a command needs one")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--size-mib", o.sim_mib, "storage of a new simulated card in MiB")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_flag("--json", o.json, "machine-readable output");

  auto* list = app.add_subcommand("list", "the card and its VFs");
  auto* vf = app.add_subcommand("vf", "VF management");
  vf->require_subcommand(1);
  unsigned& count = inv.count;
  unsigned &queues = inv.queues, &weight = inv.weight, &rate = inv.rate, &vf_index = inv.vf_index;
  std::string& slices = inv.slices;
  auto* vf_enable = vf->add_subcommand("enable", "enable VFs and give each its resources");
  vf_enable->add_option("--count,-n", count, "number of VFs")->required()->check(CLI::Range(1, 64));
  vf_enable->add_option("--queues,-q", queues, "IO queue pairs per VF")->capture_default_str();
  vf_enable->add_option("--slice", slices,
                        "BASE:LBAS per VF, comma separated (default: even split)");
  vf_enable->add_option("--weight", weight, "QoS weight per VF (1-255)")->capture_default_str();
  vf_enable->add_option("--rate", rate, "rate limit per VF in MB/s (0: none)")
      ->capture_default_str();
  auto* vf_show = vf->add_subcommand("show", "VF resources and counters");
  std::optional<unsigned>& show_index = inv.show_index;
  vf_show->add_option("index", show_index, "one VF (default: all)");
  auto* vf_reset = vf->add_subcommand("reset", "function-level reset of one VF");
  vf_reset->add_option("index", vf_index, "VF")->required();
  auto* vf_disable = vf->add_subcommand("disable", "remove every VF");
  auto* vf_remove = vf->add_subcommand(
      "remove", "pull one VF from the bus (surprise removal: its guest fails over)");
  vf_remove->add_option("index", vf_index, "VF")->required();
  auto* vf_restore = vf->add_subcommand("restore", "put a removed VF back on the bus");
  vf_restore->add_option("index", vf_index, "VF")->required();

  auto* id_ctrl = app.add_subcommand("id-ctrl", "Identify Controller of a VF");
  auto* id_ns = app.add_subcommand("id-ns", "Identify Namespace 1 of a VF");
  for (auto* c : {id_ctrl, id_ns}) c->add_option("--vf", vf_index, "VF")->capture_default_str();

  std::uint64_t& start = inv.start;
  std::uint32_t& block_count0 = inv.block_count0;  // 0's based, as nvme-cli's --block-count
  std::string& data_path = inv.data_path;
  auto* read = app.add_subcommand("read", "read blocks (to --data FILE or stdout)");
  auto* write = app.add_subcommand("write", "write blocks (from --data FILE, or a pattern)");
  auto* verify = app.add_subcommand("verify", "read blocks and compare with --data FILE");
  for (auto* c : {read, write, verify}) {
    c->add_option("--vf", vf_index, "VF")->capture_default_str();
    c->add_option("--start-block,-s", start, "first logical block")->capture_default_str();
    c->add_option("--block-count,-c", block_count0, "number of blocks, 0's based (as nvme-cli)")
        ->capture_default_str();
    c->add_option("--data,-d", data_path, "data file");
  }
  verify->get_option("--data")->required();
  auto* counters = app.add_subcommand("counters", "card and VF performance counters");

  auto* nic = app.add_subcommand("nic", "the NIC: its VFs' switch ports, the uplink");
  nic->require_subcommand(1);
  auto* nic_list = nic->add_subcommand("list", "NIC VFs: MAC, port, counters; the uplink");
  auto* nic_vf = nic->add_subcommand("vf", "one NIC VF");
  nic_vf->require_subcommand(1);
  auto* nic_set = nic_vf->add_subcommand("set", "give a NIC VF's port its MAC and rate limit");
  nic_set->add_option("index", vf_index, "NIC VF")->required();
  nic_set->add_option("--mac", inv.mac, "MAC address (aa:bb:cc:dd:ee:ff)")->required();
  nic_set->add_option("--rate", rate, "TX rate limit in Mbit/s (0: none)")->capture_default_str();
  auto* nic_remove = nic_vf->add_subcommand(
      "remove", "pull one NIC VF from the bus (surprise removal: its guest fails over)");
  nic_remove->add_option("index", vf_index, "NIC VF")->required();
  auto* nic_restore = nic_vf->add_subcommand("restore", "put a removed NIC VF back");
  nic_restore->add_option("index", vf_index, "NIC VF")->required();

  CLI11_PARSE(app, argc, argv);

  using keelctl::Command;
  if (*list) inv.command = Command::list;
  if (*counters) inv.command = Command::counters;
  if (*vf_enable) inv.command = Command::vf_enable;
  if (*vf_show) inv.command = Command::vf_show;
  if (*vf_reset) inv.command = Command::vf_reset;
  if (*vf_disable) inv.command = Command::vf_disable;
  if (*vf_remove) inv.command = Command::vf_remove;
  if (*vf_restore) inv.command = Command::vf_restore;
  if (*id_ctrl) inv.command = Command::id_ctrl;
  if (*id_ns) inv.command = Command::id_ns;
  if (*read) inv.command = Command::read;
  if (*write) inv.command = Command::write;
  if (*verify) inv.command = Command::verify;
  if (*nic_list) inv.command = Command::nic_list;
  if (*nic_set) inv.command = Command::nic_set;
  if (*nic_remove) inv.command = Command::nic_remove;
  if (*nic_restore) inv.command = Command::nic_restore;
  return keelctl::run(inv);
}
