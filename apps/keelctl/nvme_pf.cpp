// keelctl --card nvme-pf:<PF address>: SR-IOV on a standard NVMe controller (an SR-IOV SSD,
// QEMU's nvme), whose PF stays with the kernel's nvme driver: list, vf enable N, vf show,
// vf disable. The VFs then are vfio:<VF address> cards of one function each.
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "keel/sriov/nvme_sriov_pf.h"
#include "keelctl.h"

namespace keelctl {
namespace {

using json = nlohmann::json;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "keelctl: %s\n", what.c_str());
  std::exit(1);
}

json secondary_json(const keel::sriov::NvmeSecondary& s) {
  return {{"vf", s.vfn - 1},  {"scid", s.scid},       {"online", s.online}, {"vq", s.vq},
          {"vi", s.vi},       {"address", s.address}, {"driver", s.driver}};
}

void print_secondaries(const std::vector<keel::sriov::NvmeSecondary>& list, bool only_present) {
  std::printf("%-3s %-5s %-8s %-3s %-3s %-14s %s\n", "vf", "scid", "state", "vq", "vi", "address",
              "driver");
  for (const auto& s : list) {
    if (only_present && s.address.empty()) continue;
    std::printf("%-3u %-5u %-8s %-3u %-3u %-14s %s\n", s.vfn - 1u, s.scid,
                s.online ? "online" : "offline", s.vq, s.vi,
                s.address.empty() ? "-" : s.address.c_str(),
                s.driver.empty() ? "-" : s.driver.c_str());
  }
}

}  // namespace

int run_nvme_pf(const Invocation& inv, const std::string& address) {
  keel::sriov::NvmeSriovOptions options;
  options.vq_per_vf = std::max(2u, inv.queues + 1);  // the admin queue and the IO queues
  auto opened = keel::sriov::NvmeSriovPf::open(address, options);
  if (!opened) die("cannot open " + address + ": " + keel::to_string(opened.error()));
  keel::sriov::NvmeSriovPf& pf = **opened;
  auto show = [&](bool only_present) {
    auto caps = pf.primary();
    if (!caps) die(keel::to_string(caps.error()));
    auto list = pf.secondaries();
    if (!list) die(keel::to_string(list.error()));
    const auto n = pf.num_vfs();
    if (inv.options.json) {
      json j = {{"pf", pf.address()},
                {"device", pf.device()},
                {"total_vfs", pf.total_vfs()},
                {"num_vfs", n ? *n : 0u},
                {"primary",
                 {{"cntlid", caps->cntlid},
                  {"vq_flexible", caps->vq_total},
                  {"vq_assigned", caps->vq_assigned},
                  {"vq_private", caps->vq_private},
                  {"vq_max_per_vf", caps->vq_max_per_secondary},
                  {"vi_flexible", caps->vi_total},
                  {"vi_assigned", caps->vi_assigned},
                  {"vi_private", caps->vi_private},
                  {"vi_max_per_vf", caps->vi_max_per_secondary}}},
                {"vfs", json::array()}};
      for (const auto& s : *list) {
        if (!only_present || !s.address.empty()) j["vfs"].push_back(secondary_json(s));
      }
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    std::printf("NVMe SR-IOV PF %s (%s, controller %u): %u of %u VFs\n", pf.address().c_str(),
                pf.device().c_str(), caps->cntlid, n ? *n : 0u, pf.total_vfs());
    std::printf("flexible resources: VQ %u (%u assigned, at most %u per VF, %u private to the "
                "PF), VI %u (%u assigned, at most %u per VF, %u private)\n",
                caps->vq_total, caps->vq_assigned, caps->vq_max_per_secondary, caps->vq_private,
                caps->vi_total, caps->vi_assigned, caps->vi_max_per_secondary, caps->vi_private);
    print_secondaries(*list, only_present);
  };
  switch (inv.command) {
    case Command::list: show(false); return 0;
    case Command::vf_show: show(true); return 0;
    case Command::vf_enable:
      if (auto st = pf.enable(inv.count); !st.ok()) {
        die("enabling " + std::to_string(inv.count) + " VFs: " + keel::to_string(st.error()));
      }
      show(true);
      return 0;
    case Command::vf_disable:
      if (auto st = pf.disable(); !st.ok()) die("disabling VFs: " + keel::to_string(st.error()));
      show(false);
      return 0;
    default:
      die("nvme-pf: supports list, vf enable, vf show and vf disable; IO goes to a VF with "
          "--card vfio:<VF address>");
  }
}

}  // namespace keelctl
