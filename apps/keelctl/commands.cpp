// keelctl's commands: the card, its VFs and IO to a VF through the NVMe driver.
//
// A simulated card (model, sim) lives as long as the keelctl process; its disk image (--image)
// persists. Commands that need VFs enable --vfs of them (even split) on a simulated card that
// has none; on a real board VFs persist and `keelctl vf enable` sets them up.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "keel/drivers/nvme/controller.h"
#include "keel/drivers/nvme/queue_pair.h"
#include "keel/stack/stack.h"
#include "keelctl.h"

namespace keelctl {
namespace {

using json = nlohmann::json;
namespace drv = keel::drivers::nvme;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "keelctl: %s\n", what.c_str());
  std::exit(1);
}

void check(const keel::Status& st, const std::string& doing) {
  if (!st.ok()) fail(doing + ": " + keel::to_string(st.error()));
}

bool simulated(const keel::fpga::Card& c) { return c.backend() == "model" || c.backend() == "sim"; }

/// The card of --card with its PF manager. VFs are enabled later, and only on a simulated card
/// that has none when a command needs one (--vfs of them, even split).
std::unique_ptr<keel::stack::Stack> open(const Options& o) {
  keel::stack::StackConfig sc;
  sc.card = o.card;
  sc.card_options.image_path = o.image;
  sc.card_options.storage_bytes = o.sim_mib << 20;
  sc.card_options.lockstep = false;
  sc.card_options.max_vfs = std::max(8u, o.sim_vfs);
  sc.vfs.count = o.sim_vfs;
  auto s = keel::stack::Stack::open_card(sc);
  if (!s) fail("cannot open card '" + o.card + "': " + keel::to_string(s.error()));
  // A card of one function (a VF of a VM, a VF or NVMe controller opened on its own) has no
  // PF here: only the commands on VF 0 run on it.
  if (!(*s)->card().owns_pf()) return std::move(s).value();
  if (auto st = (*s)->discover_pf(); !st.ok()) fail(keel::to_string(st.error()));
  return std::move(s).value();
}

/// The VF's function, enabling VFs first on a simulated card that has none.
keel::fpga::Function& vf_function(keel::stack::Stack& s, unsigned vf) {
  if (s.card().num_vfs() == 0) {
    if (!simulated(s.card()))
      fail("no VFs are enabled on this card; run 'keelctl vf enable' first");
    check(s.enable_vfs(), "enabling VFs on the simulated card");
  }
  auto f = s.vf(vf);
  if (!f) fail(keel::to_string(f.error()));
  return **f;
}

std::string trim(const char* s, std::size_t n) {
  std::string out(s, strnlen(s, n));
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

json vf_json(const keel::sriov::VfInfo& v) {
  return {{"vf", v.index},
          {"present", v.present},
          {"enabled", v.enabled},
          {"queues", v.resources.queues},
          {"slice_base", v.resources.slice_base},
          {"slice_lbas", v.resources.slice_lbas},
          {"weight", v.resources.weight},
          {"rate_mbps", v.resources.rate_mbps},
          {"commands", v.counters.commands},
          {"bytes", v.counters.bytes},
          {"busy_cycles", v.counters.busy_cycles},
          {"dma_faults", v.counters.dma_faults},
          {"errors", v.counters.errors}};
}

void print_vfs(const std::vector<keel::sriov::VfInfo>& vfs, bool as_json) {
  if (as_json) {
    json a = json::array();
    for (const auto& v : vfs) a.push_back(vf_json(v));
    std::cout << json{{"vfs", a}}.dump(2) << "\n";
    return;
  }
  std::printf("%-4s %-8s %-6s %14s %12s %6s %8s %12s %14s\n", "VF", "state", "queues", "slice_base",
              "slice_lbas", "weight", "rate", "commands", "bytes");
  for (const auto& v : vfs) {
    std::printf("%-4u %-8s %-6u %14llu %12llu %6u %8s %12llu %14llu\n", v.index,
                !v.present ? "absent" : (v.enabled ? "enabled" : "idle"), v.resources.queues,
                static_cast<unsigned long long>(v.resources.slice_base),
                static_cast<unsigned long long>(v.resources.slice_lbas), v.resources.weight,
                v.resources.rate_mbps == 0 ? "-" : std::to_string(v.resources.rate_mbps).c_str(),
                static_cast<unsigned long long>(v.counters.commands),
                static_cast<unsigned long long>(v.counters.bytes));
  }
}

/// "--slice BASE:LBAS[,BASE:LBAS...]"
std::vector<std::pair<std::uint64_t, std::uint64_t>> parse_slices(const std::string& s) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto colon = item.find(':');
    try {
      if (colon == std::string::npos) throw std::invalid_argument(item);
      std::size_t used = 0;
      const std::uint64_t base = std::stoull(item.substr(0, colon), &used, 0);
      if (used != colon) throw std::invalid_argument(item);
      const std::string rest = item.substr(colon + 1);
      const std::uint64_t lbas = std::stoull(rest, &used, 0);
      if (used != rest.size()) throw std::invalid_argument(item);
      out.emplace_back(base, lbas);
    } catch (const std::exception&) {
      fail("--slice: '" + item + "' is not BASE:LBAS (logical blocks, e.g. 0:65536)");
    }
  }
  return out;
}

/// Runs one read or write of `blocks` at `lba` through a fresh queue pair.
void run_io(drv::Controller& ctrl, bool write, std::uint64_t lba, std::uint32_t blocks,
            std::vector<std::byte>& data) {
  auto qp = ctrl.create_queue_pair({.entries = 16});
  if (!qp) fail("creating a queue pair: " + keel::to_string(qp.error()));
  const std::uint32_t bb = ctrl.block_bytes();
  const std::uint32_t per_cmd = ctrl.max_transfer_bytes() / bb;
  auto buf = ctrl.function().alloc_dma(std::size_t{per_cmd} * bb);
  if (!buf) fail(keel::to_string(buf.error()));
  for (std::uint64_t done = 0; done < blocks;) {
    const std::uint32_t n =
        static_cast<std::uint32_t>(std::min<std::uint64_t>(per_cmd, blocks - done));
    const std::size_t bytes = std::size_t{n} * bb;
    if (write) std::memcpy(buf->data(), data.data() + done * bb, bytes);
    const drv::Segment seg{buf->iova(), static_cast<std::uint32_t>(bytes)};
    const drv::IoStatus st = write ? (*qp)->write(lba + done, n, {&seg, 1}, 0)
                                   : (*qp)->read(lba + done, n, {&seg, 1}, 0);
    if (!st.ok()) fail(std::string(write ? "write" : "read") + ": " + drv::to_string(st));
    drv::Completion c[1];
    if ((*qp)->wait(c, std::chrono::seconds(10)) != 1) fail("no completion within 10 s");
    if (!c[0].status.ok()) {
      fail(std::string(write ? "write" : "read") + " at LBA " + std::to_string(lba + done) + ": " +
           drv::to_string(c[0].status));
    }
    if (!write) std::memcpy(data.data() + done * bb, buf->data(), bytes);
    done += n;
  }
}

}  // namespace

int run(const Invocation& inv) {
  const Options& o = inv.options;
  const Command cmd = inv.command;
  const unsigned count = inv.count, queues = inv.queues, weight = inv.weight, rate = inv.rate,
                 vf_index = inv.vf_index;
  const std::string& slices = inv.slices;
  const std::optional<unsigned>& show_index = inv.show_index;
  const std::uint64_t start = inv.start;
  const std::uint32_t block_count0 = inv.block_count0;
  const std::string& data_path = inv.data_path;
  if (o.card.rfind("nvme-pf:", 0) == 0) return run_nvme_pf(inv, o.card.substr(8));

  auto stack = open(o);
  keel::fpga::Card* card = &stack->card();
  if (cmd == Command::nic_list || cmd == Command::nic_set || cmd == Command::nic_remove ||
      cmd == Command::nic_restore) {
    return run_nic(*card, inv);
  }
  auto pf_manager = [&]() -> keel::sriov::PfManager& {
    if (!card->owns_pf()) {
      fail(card->describe() + ": this card is one function, its PF is not this process's; " +
           "id-ctrl, id-ns, read, write and verify run on it (the PF: --card nvme-pf:<PF> for a " +
           "standard NVMe device, --card vfio-user:<run dir>/pf.sock for keel-card)");
    }
    return stack->pf();
  };

  if (cmd == Command::list || cmd == Command::counters) {
    const auto info = pf_manager().info();
    const auto cc = pf_manager().counters();
    const auto vfs = pf_manager().vfs();
    if (o.json) {
      json j = {{"card", card->describe()},
                {"backend", info.backend},
                {"version",
                 std::to_string(info.version_major) + "." + std::to_string(info.version_minor)},
                {"max_vfs", info.max_vfs},
                {"max_queues_per_vf", info.max_ioq_per_vf},
                {"storage_lbas", info.storage_lbas},
                {"lba_bytes", info.lba_bytes},
                {"num_vfs", info.num_vfs},
                {"counters",
                 {{"commands", cc.commands},
                  {"bytes", cc.bytes},
                  {"cycles", cc.cycles},
                  {"dma_faults", cc.dma_faults}}}};
      json a = json::array();
      for (const auto& v : vfs) a.push_back(vf_json(v));
      j["vfs"] = a;
      std::cout << j.dump(2) << "\n";
      return 0;
    }
    std::printf(
        "%s\nprogramming model %u.%u, %u VFs max, %u queues per VF, %llu LBAs of %u bytes\n",
        card->describe().c_str(), info.version_major, info.version_minor, info.max_vfs,
        info.max_ioq_per_vf, static_cast<unsigned long long>(info.storage_lbas), info.lba_bytes);
    std::printf(
        "counters: %llu commands, %llu bytes, %llu cycles, %llu DMA faults\n",
        static_cast<unsigned long long>(cc.commands), static_cast<unsigned long long>(cc.bytes),
        static_cast<unsigned long long>(cc.cycles), static_cast<unsigned long long>(cc.dma_faults));
    if (!vfs.empty()) print_vfs(vfs, false);
    return 0;
  }

  const bool vf = cmd == Command::vf_enable || cmd == Command::vf_show ||
                  cmd == Command::vf_reset || cmd == Command::vf_disable ||
                  cmd == Command::vf_remove || cmd == Command::vf_restore;
  if (vf) {
    if (cmd == Command::vf_enable) {
      std::vector<keel::sriov::VfResources> res(count);
      const auto info = pf_manager().info();
      const auto parsed = parse_slices(slices);
      if (!slices.empty() && parsed.size() != count) {
        fail("--slice gives " + std::to_string(parsed.size()) + " slices for " +
             std::to_string(count) + " VFs");
      }
      for (unsigned i = 0; i < count; ++i) {
        res[i].queues = queues;
        res[i].weight = weight;
        res[i].rate_mbps = rate;
        res[i].slice_base = parsed.empty() ? i * (info.storage_lbas / count) : parsed[i].first;
        res[i].slice_lbas = parsed.empty() ? info.storage_lbas / count : parsed[i].second;
      }
      if (card->num_vfs() != 0) check(pf_manager().disable_vfs(), "disabling the VFs that are enabled");
      check(pf_manager().enable_vfs(res), "enabling " + std::to_string(count) + " VFs");
      print_vfs(pf_manager().vfs(), o.json);
      return 0;
    }
    if (cmd == Command::vf_show) {
      if (show_index) {
        auto v = pf_manager().vf(*show_index);
        if (!v) fail(keel::to_string(v.error()));
        print_vfs({*v}, o.json);
      } else {
        print_vfs(pf_manager().vfs(), o.json);
      }
      return 0;
    }
    if (cmd == Command::vf_reset && !card->owns_pf()) {
      // One function on its own (a VF through VFIO): its own function-level reset, as the
      // kernel's VFIO does it (VFIO_DEVICE_RESET); its controller comes back disabled.
      keel::fpga::Function& fn = vf_function(*stack, vf_index);
      check(fn.flr(), "function-level reset of " + card->describe());
      const drv::DeviceState after = drv::Controller::status_of(fn);
      if (o.json) {
        std::cout << json{{"vf", vf_index}, {"reset", true}, {"state", drv::to_string(after)}}
                         .dump(2)
                  << "\n";
      } else {
        std::printf("VF %u reset (function-level reset through VFIO); controller %s\n", vf_index,
                    drv::to_string(after));
      }
      return 0;
    }
    if (cmd == Command::vf_reset) {
      check(pf_manager().reset_vf(vf_index), "resetting VF " + std::to_string(vf_index));
      if (o.json)
        std::cout << json{{"vf", vf_index}, {"reset", true}}.dump(2) << "\n";
      else
        std::printf("VF %u reset\n", vf_index);
      return 0;
    }
    if (cmd == Command::vf_remove || cmd == Command::vf_restore) {
      // A simulated card's fault injector; a card served by keel-card takes these two.
      keel::fpga::FaultInjector* fi = card->faults();
      if (fi == nullptr) fail("this card cannot remove or restore VFs");
      const bool remove = cmd == Command::vf_remove;
      check(remove ? fi->surprise_remove(vf_index) : fi->restore(vf_index),
            std::string(remove ? "removing" : "restoring") + " VF " + std::to_string(vf_index));
      if (o.json)
        std::cout << json{{"vf", vf_index}, {"present", !remove}}.dump(2) << "\n";
      else
        std::printf("VF %u %s\n", vf_index, remove ? "removed" : "restored");
      return 0;
    }
    if (cmd == Command::vf_disable) {
      check(pf_manager().disable_vfs(), "disabling VFs");
      if (!o.json)
        std::printf("VFs disabled\n");
      else
        std::cout << json{{"num_vfs", 0}}.dump(2) << "\n";
      return 0;
    }
  }

  keel::fpga::Function& fn = vf_function(*stack, vf_index);
  auto ctrl = stack->open_controller(fn);
  if (!ctrl) fail("VF " + std::to_string(vf_index) + " bring-up: " + keel::to_string(ctrl.error()));
  drv::Controller& c = **ctrl;

  if (cmd == Command::id_ctrl) {
    const nvme_id_ctrl& id = c.identify();
    const json j = {{"vid", id.vid},
                    {"ssvid", id.ssvid},
                    {"sn", trim(id.sn, sizeof id.sn)},
                    {"mn", trim(id.mn, sizeof id.mn)},
                    {"fr", trim(id.fr, sizeof id.fr)},
                    {"cntlid", id.cntlid},
                    {"ver", id.ver},
                    {"mdts", id.mdts},
                    {"sqes", id.sqes},
                    {"cqes", id.cqes},
                    {"nn", id.nn},
                    {"oncs", id.oncs},
                    {"acl", id.acl},
                    {"aerl", id.aerl},
                    {"subnqn", std::string(id.subnqn, strnlen(id.subnqn, sizeof id.subnqn))}};
    if (o.json) {
      std::cout << j.dump(2) << "\n";
    } else {
      std::printf("NVME Identify Controller:\n");
      for (const auto& [k, v] : j.items()) {
        std::printf("%-9s: %s\n", k.c_str(),
                    v.is_string() ? v.get<std::string>().c_str() : v.dump().c_str());
      }
    }
    return 0;
  }
  if (cmd == Command::id_ns) {
    const nvme_id_ns& ns = c.namespace_info();
    const json j = {{"nsze", ns.nsze},
                    {"ncap", ns.ncap},
                    {"nuse", ns.nuse},
                    {"nlbaf", ns.nlbaf},
                    {"flbas", ns.flbas},
                    {"lbaf0_ds", ns.lbaf[0].ds},
                    {"lba_bytes", c.block_bytes()}};
    if (o.json) {
      std::cout << j.dump(2) << "\n";
    } else {
      std::printf("NVME Identify Namespace 1:\n");
      for (const auto& [k, v] : j.items()) std::printf("%-9s: %s\n", k.c_str(), v.dump().c_str());
    }
    return 0;
  }

  const std::uint64_t blocks = std::uint64_t{block_count0} + 1;
  if (start >= c.block_count() || blocks > c.block_count() - start) {
    fail("blocks [" + std::to_string(start) + ", " + std::to_string(start + blocks) +
         ") are outside namespace 1 of VF " + std::to_string(vf_index) + " (" +
         std::to_string(c.block_count()) + " blocks)");
  }
  std::vector<std::byte> data(blocks * c.block_bytes());
  if (cmd == Command::write || cmd == Command::verify) {
    if (!data_path.empty()) {
      std::ifstream in(data_path, std::ios::binary);
      if (!in) fail("cannot open --data file '" + data_path + "'");
      in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
      if (static_cast<std::size_t>(in.gcount()) != data.size()) {
        fail("--data file '" + data_path + "' holds " + std::to_string(in.gcount()) + " bytes; " +
             std::to_string(data.size()) + " needed for " + std::to_string(blocks) + " blocks");
      }
    } else {
      for (std::size_t i = 0; i < data.size(); ++i) {
        data[i] = std::byte(static_cast<unsigned char>((start * 131 + i * 7) & 0xFF));
      }
    }
  }
  if (cmd == Command::write) {
    run_io(c, true, start, static_cast<std::uint32_t>(blocks), data);
    if (o.json)
      std::cout << json{{"write", "success"}, {"blocks", blocks}}.dump(2) << "\n";
    else
      std::fprintf(stderr, "write: Success\n");
    return 0;
  }
  std::vector<std::byte> got(data.size());
  run_io(c, false, start, static_cast<std::uint32_t>(blocks), got);
  if (cmd == Command::read) {
    if (data_path.empty()) {
      std::fwrite(got.data(), 1, got.size(), stdout);
    } else {
      std::ofstream out(data_path, std::ios::binary);
      out.write(reinterpret_cast<const char*>(got.data()),
                static_cast<std::streamsize>(got.size()));
      if (!out) fail("cannot write --data file '" + data_path + "'");
    }
    std::fprintf(stderr, "read: Success\n");
    return 0;
  }
  // verify
  const auto diff = std::mismatch(data.begin(), data.end(), got.begin());
  if (diff.first != data.end()) {
    const auto off = static_cast<std::uint64_t>(diff.first - data.begin());
    fail("verify: mismatch at byte " + std::to_string(off) + " (block " +
         std::to_string(start + off / c.block_bytes()) + ")");
  }
  if (o.json)
    std::cout << json{{"verify", "success"}, {"blocks", blocks}}.dump(2) << "\n";
  else
    std::printf("verify: Success, %llu blocks match\n", static_cast<unsigned long long>(blocks));
  return 0;
}

}  // namespace keelctl
