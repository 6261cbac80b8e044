// keelctl nic ...: the NIC PF's side of a card (NUM_VFS, each VF's switch port: MAC, rate limit,
// enable, counters) and NIC VF surprise removal on a simulated card. On a card served by
// keel-card: --card vfio-user:<run dir>/nicpf.sock.
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/card.h"
#include "keel/fpga/nic.h"
#include "keel/wire/knic.h"
#include "keelctl.h"

namespace keelctl {

namespace {

namespace nv = keel::regs::nicvfcfg;
namespace np = keel::regs::nicpf;
using nlohmann::json;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "keelctl: %s\n", what.c_str());
  std::exit(1);
}

std::string mac_text(const keel::knic::Mac& m) {
  char b[18];
  std::snprintf(b, sizeof b, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  return b;
}

bool parse_mac(const std::string& s, keel::knic::Mac& out) {
  unsigned b[6];
  char tail = 0;
  if (std::sscanf(s.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
                  &tail) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(b[i]);
  return true;
}

const char* port_error(std::uint64_t code) {
  switch (code) {
    case 1: return "a multicast or all-zero MAC";
    case 2: return "the MAC belongs to another enabled port";
    case 5: return "the VF is not present";
    case 6: return "MAC or rate written while the port is enabled";
    default: return "refused";
  }
}

json port_json(keel::fpga::Function& pf, unsigned v) {
  const std::uint32_t status = pf.read32(nv::at(v, nv::STATUS));
  const std::uint32_t rate = pf.read32(nv::at(v, nv::RATE));
  json j{{"vf", v},
         {"mac", mac_text(keel::knic::mac_from_regs(pf.read32(nv::at(v, nv::MAC_LO)),
                                                    pf.read32(nv::at(v, nv::MAC_HI))))},
         {"enabled", (status & nv::STATUS_ENABLED_MASK) != 0},
         {"present", (status & nv::STATUS_PRESENT_MASK) != 0},
         {"rate_mbps", (rate & nv::RATE_MBPS_MASK) >> nv::RATE_MBPS_SHIFT}};
  json c;
  for (auto [name, reg] : {std::pair{"tx_frames", nv::TX_FRAMES},
                           {"tx_bytes", nv::TX_BYTES},
                           {"rx_frames", nv::RX_FRAMES},
                           {"rx_bytes", nv::RX_BYTES},
                           {"drop_spoof", nv::DROP_SPOOF},
                           {"drop_bad_desc", nv::DROP_BAD_DESC},
                           {"drop_oversize", nv::DROP_OVERSIZE},
                           {"drop_dma_fault", nv::DROP_DMA_FAULT},
                           {"drop_rx_no_buf", nv::DROP_RX_NO_BUF},
                           {"drop_queue_off", nv::DROP_QUEUE_OFF},
                           {"drop_no_route", nv::DROP_NO_ROUTE},
                           {"tx_throttled", nv::TX_THROTTLED}}) {
    c[name] = pf.read64(nv::at(v, reg));
  }
  j["counters"] = c;
  return j;
}

}  // namespace

int run_nic(keel::fpga::Card& card, const Invocation& inv) {
  keel::fpga::NicCard* nic = card.nic();
  if (nic == nullptr) {
    die("this card has no NIC (" + card.describe() +
        "); a NIC served by keel-card is --card vfio-user:<run dir>/nicpf.sock");
  }
  const bool json_out = inv.options.json;
  switch (inv.command) {
    case Command::nic_remove:
    case Command::nic_restore: {
      const bool remove = inv.command == Command::nic_remove;
      const keel::Status st =
          remove ? nic->surprise_remove(inv.vf_index) : nic->restore(inv.vf_index);
      if (!st.ok()) {
        die(std::string(remove ? "removing" : "restoring") + " NIC VF " +
            std::to_string(inv.vf_index) + ": " + keel::to_string(st.error()));
      }
      if (json_out) {
        std::cout << json{{"nic_vf", inv.vf_index}, {"present", !remove}}.dump(2) << "\n";
      } else {
        std::printf("NIC VF %u %s\n", inv.vf_index, remove ? "removed" : "restored");
      }
      return 0;
    }
    case Command::nic_set: {
      keel::fpga::Function& pf = nic->pf();
      const unsigned v = inv.vf_index;
      if (v >= nic->num_vfs()) die("NIC VF " + std::to_string(v) + " is not present");
      keel::knic::Mac mac{};
      if (!parse_mac(inv.mac, mac)) die("--mac " + inv.mac + " is not aa:bb:cc:dd:ee:ff");
      pf.write32(nv::at(v, nv::CTRL), 0);  // MAC and rate are written with the port down
      pf.write32(nv::at(v, nv::MAC_LO), keel::knic::mac_lo(mac));
      pf.write32(nv::at(v, nv::MAC_HI), keel::knic::mac_hi(mac));
      pf.write32(nv::at(v, nv::RATE), inv.rate & static_cast<std::uint32_t>(nv::RATE_MBPS_MASK));
      pf.write32(nv::at(v, nv::CTRL), nv::CTRL_ENABLE_MASK);
      const std::uint64_t code = keel::regs::field_get(
          pf.read32(nv::at(v, nv::STATUS)), nv::STATUS_ERR_CODE_MASK, nv::STATUS_ERR_CODE_SHIFT);
      if (code != 0) die("NIC VF " + std::to_string(v) + ": port refused: " + port_error(code));
      if (json_out) {
        std::cout << port_json(pf, v).dump(2) << "\n";
      } else {
        std::printf("NIC VF %u: MAC %s, rate %s, port enabled\n", v, mac_text(mac).c_str(),
                    inv.rate == 0 ? "unlimited" : (std::to_string(inv.rate) + " Mbit/s").c_str());
      }
      return 0;
    }
    default: {  // nic list
      keel::fpga::Function& pf = nic->pf();
      const std::uint32_t st = pf.read32(np::STATUS);
      json j{{"nic_vfs", nic->num_vfs()},
             {"max_nic_vfs", nic->max_vfs()},
             {"uplink_up", (st & np::STATUS_UPLINK_UP_MASK) != 0},
             {"uplink",
              {{"tx_frames", pf.read64(np::UPLINK_TX_FRAMES)},
               {"rx_frames", pf.read64(np::UPLINK_RX_FRAMES)},
               {"drops", pf.read64(np::UPLINK_DROPS)},
               {"tx_drops", pf.read64(np::UPLINK_TX_DROPS)}}}};
      j["vfs"] = json::array();
      for (unsigned v = 0; v < nic->num_vfs(); ++v) j["vfs"].push_back(port_json(pf, v));
      if (json_out) {
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      std::printf(
          "NIC: %u of %u VFs, uplink %s (out %" PRIu64 ", in %" PRIu64 ", dropped %" PRIu64 ")\n",
          nic->num_vfs(), nic->max_vfs(), j["uplink_up"].get<bool>() ? "up" : "down",
          j["uplink"]["tx_frames"].get<std::uint64_t>(),
          j["uplink"]["rx_frames"].get<std::uint64_t>(), j["uplink"]["drops"].get<std::uint64_t>());
      std::printf("%-4s %-17s %-7s %-7s %10s %10s %8s %8s %8s\n", "VF", "MAC", "port", "present",
                  "tx", "rx", "spoof", "no_buf", "no_route");
      for (const json& p : j["vfs"]) {
        const json& c = p["counters"];
        std::printf("%-4u %-17s %-7s %-7s %10" PRIu64 " %10" PRIu64 " %8" PRIu64 " %8" PRIu64
                    " %8" PRIu64 "\n",
                    p["vf"].get<unsigned>(), p["mac"].get<std::string>().c_str(),
                    p["enabled"].get<bool>() ? "up" : "down",
                    p["present"].get<bool>() ? "yes" : "no", c["tx_frames"].get<std::uint64_t>(),
                    c["rx_frames"].get<std::uint64_t>(), c["drop_spoof"].get<std::uint64_t>(),
                    c["drop_rx_no_buf"].get<std::uint64_t>(),
                    c["drop_no_route"].get<std::uint64_t>());
      }
      return 0;
    }
  }
}

}  // namespace keelctl
