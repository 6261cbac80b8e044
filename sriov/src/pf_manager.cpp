#include "keel/sriov/pf_manager.h"

#include <algorithm>

#include <keel/regs/keel_regs.h>

namespace keel::sriov {

namespace pf = regs::pf;
namespace vc = regs::vfcfg;

namespace {

std::string range(std::uint64_t base, std::uint64_t lbas) {
  std::string out = "[";  // appended: see pci_address.cpp on GCC 12's -Wrestrict
  out.append(std::to_string(base)).append(", ").append(std::to_string(base + lbas)).append(")");
  return out;
}

}  // namespace

Result<PfManager> PfManager::discover(fpga::Card& card) {
  fpga::Function& p = card.pf();
  const std::uint32_t id = p.read32(pf::ID);
  if (id != regs::MAGIC) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "PF ID register reads 0x%08x, not 0x%08llx ('KEEL')", id,
                  static_cast<unsigned long long>(regs::MAGIC));
    return make_error(Errc::not_found,
                      std::string("no keel card on ") + std::string(card.backend()) + ": " + buf);
  }
  const auto major =
      regs::field_get(p.read32(pf::VERSION), pf::VERSION_MAJOR_MASK, pf::VERSION_MAJOR_SHIFT);
  if (major != regs::VERSION_MAJOR) {
    return make_error(Errc::unavailable, "card programming model " + std::to_string(major) +
                                             ".x; this keel speaks " +
                                             std::to_string(regs::VERSION_MAJOR) + ".x");
  }
  return PfManager(card);
}

CardInfo PfManager::info() const {
  fpga::Function& p = card_->pf();
  CardInfo i;
  i.backend = std::string(card_->backend());
  const std::uint32_t v = p.read32(pf::VERSION);
  i.version_major =
      static_cast<unsigned>(regs::field_get(v, pf::VERSION_MAJOR_MASK, pf::VERSION_MAJOR_SHIFT));
  i.version_minor =
      static_cast<unsigned>(regs::field_get(v, pf::VERSION_MINOR_MASK, pf::VERSION_MINOR_SHIFT));
  const std::uint32_t caps = p.read32(pf::CAPS);
  i.max_vfs =
      static_cast<unsigned>(regs::field_get(caps, pf::CAPS_MAX_VFS_MASK, pf::CAPS_MAX_VFS_SHIFT));
  i.max_ioq_per_vf =
      static_cast<unsigned>(regs::field_get(caps, pf::CAPS_MAX_IOQ_MASK, pf::CAPS_MAX_IOQ_SHIFT));
  i.lba_bytes = 1u << regs::field_get(caps, pf::CAPS_LBA_SHIFT_MASK, pf::CAPS_LBA_SHIFT_SHIFT);
  i.storage_lbas = p.read64(pf::STORAGE_LBAS);
  i.clock_mhz = p.read32(pf::CLOCK_MHZ) & 0xFFFF;
  i.num_vfs = p.read32(pf::NUM_VFS) & 0xFF;
  return i;
}

Status PfManager::validate(std::span<const VfResources> vfs) const {
  const CardInfo ci = info();
  if (vfs.empty()) return make_error(Errc::invalid_argument, "asked for 0 VFs");
  if (vfs.size() > ci.max_vfs) {
    return make_error(Errc::invalid_argument, "the card has " + std::to_string(ci.max_vfs) +
                                                  " VFs; asked for " + std::to_string(vfs.size()));
  }
  std::uint64_t total_queues = 0;
  for (std::size_t i = 0; i < vfs.size(); ++i) {
    const VfResources& r = vfs[i];
    const std::string who = "VF " + std::to_string(i);
    if (r.queues == 0 || r.queues > ci.max_ioq_per_vf) {
      return make_error(Errc::invalid_argument, who + " asks for " + std::to_string(r.queues) +
                                                    " IO queues; the card gives a VF 1 to " +
                                                    std::to_string(ci.max_ioq_per_vf));
    }
    total_queues += r.queues;
    if (r.weight == 0 || r.weight > 255) {
      return make_error(Errc::invalid_argument,
                        who + " has QoS weight " + std::to_string(r.weight) + "; use 1 to 255");
    }
    if (r.slice_lbas == 0) return make_error(Errc::invalid_argument, who + " has an empty slice");
    if (r.slice_base >= ci.storage_lbas || r.slice_lbas > ci.storage_lbas - r.slice_base) {
      return make_error(Errc::invalid_argument, who + "'s slice " +
                                                    range(r.slice_base, r.slice_lbas) +
                                                    " runs past the end of the card's storage (" +
                                                    std::to_string(ci.storage_lbas) + " LBAs)");
    }
    for (std::size_t j = 0; j < i; ++j) {
      const VfResources& o = vfs[j];
      if (r.slice_base < o.slice_base + o.slice_lbas &&
          o.slice_base < r.slice_base + r.slice_lbas) {
        return make_error(Errc::invalid_argument,
                          who + "'s slice " + range(r.slice_base, r.slice_lbas) + " overlaps VF " +
                              std::to_string(j) + "'s " + range(o.slice_base, o.slice_lbas));
      }
    }
  }
  (void)total_queues;  // queues are per VF on keel cards; no shared pool to exhaust
  return {};
}

std::string PfManager::vfcfg_error_text(std::uint32_t code) {
  switch (code) {
    case 0: return "none";
    case 1: return "slice past the end of storage";
    case 2: return "slice overlaps another enabled VF";
    case 3: return "IO queue count zero or above the card's maximum";
    case 4: return "empty slice";
    case 5: return "VF not present";
    case 6: return "resource written while the VF is enabled";
    default: return "unknown error code " + std::to_string(code);
  }
}

Status PfManager::enable_vfs(std::span<const VfResources> vfs) {
  if (Status st = validate(vfs); !st.ok()) return st;
  if (card_->num_vfs() != 0) {
    return make_error(Errc::busy,
                      std::to_string(card_->num_vfs()) + " VFs are enabled; disable them first");
  }
  if (Status st = card_->set_num_vfs(static_cast<unsigned>(vfs.size())); !st.ok()) return st;
  fpga::Function& p = card_->pf();
  for (unsigned i = 0; i < vfs.size(); ++i) {
    const VfResources& r = vfs[i];
    p.write32(vc::at(i, vc::IOQ), r.queues);
    p.write32(vc::at(i, vc::QOS), r.weight);
    p.write32(vc::at(i, vc::RATE), r.rate_mbps);
    p.write64(vc::at(i, vc::SLICE_BASE), r.slice_base);
    p.write64(vc::at(i, vc::SLICE_LBAS), r.slice_lbas);
    p.write32(vc::at(i, vc::CTRL), static_cast<std::uint32_t>(vc::CTRL_ENABLE_MASK));
    const std::uint32_t status = p.read32(vc::at(i, vc::STATUS));
    if ((status & vc::STATUS_ENABLED_MASK) == 0) {
      const auto code = static_cast<std::uint32_t>(
          regs::field_get(status, vc::STATUS_ERR_CODE_MASK, vc::STATUS_ERR_CODE_SHIFT));
      (void)card_->set_num_vfs(0);
      return make_error(Errc::device_error,
                        "the card refused VF " + std::to_string(i) + ": " + vfcfg_error_text(code));
    }
  }
  return {};
}

Status PfManager::enable_vfs_even(unsigned n, unsigned queues) {
  if (n == 0) return make_error(Errc::invalid_argument, "asked for 0 VFs");
  const std::uint64_t each = info().storage_lbas / n;
  std::vector<VfResources> vfs(n);
  for (unsigned i = 0; i < n; ++i) {
    vfs[i].queues = queues;
    vfs[i].slice_base = i * each;
    vfs[i].slice_lbas = each;
  }
  return enable_vfs(vfs);
}

Status PfManager::disable_vfs() { return card_->set_num_vfs(0); }

Status PfManager::reset_vf(unsigned index) {
  if (index >= card_->num_vfs()) {
    return make_error(Errc::not_found, "VF " + std::to_string(index) + " is not enabled (" +
                                           std::to_string(card_->num_vfs()) + " VFs)");
  }
  card_->pf().write32(vc::at(index, vc::FLR), static_cast<std::uint32_t>(vc::FLR_GO_MASK));
  const bool done = fpga::poll_until(*card_, std::chrono::milliseconds(100), [&] {
    return (card_->pf().read32(vc::at(index, vc::STATUS)) & vc::STATUS_FLR_BUSY_MASK) == 0;
  });
  if (!done)
    return make_error(Errc::timeout,
                      "FLR of VF " + std::to_string(index) + " did not finish in 100 ms");
  return {};
}

Result<VfInfo> PfManager::vf(unsigned index) const {
  const CardInfo ci = info();
  if (index >= ci.max_vfs) {
    return make_error(Errc::not_found, "VF " + std::to_string(index) +
                                           " does not exist (the card has " +
                                           std::to_string(ci.max_vfs) + ")");
  }
  fpga::Function& p = card_->pf();
  VfInfo v;
  v.index = index;
  const std::uint32_t status = p.read32(vc::at(index, vc::STATUS));
  v.present = (status & vc::STATUS_PRESENT_MASK) != 0;
  v.enabled = (status & vc::STATUS_ENABLED_MASK) != 0;
  v.resources.queues = p.read32(vc::at(index, vc::IOQ)) & 0xFF;
  v.resources.weight = p.read32(vc::at(index, vc::QOS)) & 0xFF;
  v.resources.rate_mbps = p.read32(vc::at(index, vc::RATE));
  v.resources.slice_base = p.read64(vc::at(index, vc::SLICE_BASE));
  v.resources.slice_lbas = p.read64(vc::at(index, vc::SLICE_LBAS));
  v.counters.commands = p.read64(vc::at(index, vc::CMDS));
  v.counters.bytes = p.read64(vc::at(index, vc::BYTES));
  v.counters.busy_cycles = p.read64(vc::at(index, vc::BUSY_CYCLES));
  v.counters.dma_faults = p.read64(vc::at(index, vc::DMA_FAULTS));
  v.counters.errors = p.read64(vc::at(index, vc::CMD_ERRORS));
  return v;
}

std::vector<VfInfo> PfManager::vfs() const {
  std::vector<VfInfo> out;
  for (unsigned i = 0; i < card_->num_vfs(); ++i) {
    auto v = vf(i);
    if (v.ok()) out.push_back(*v);
  }
  return out;
}

CardCounters PfManager::counters() const {
  fpga::Function& p = card_->pf();
  return {p.read64(pf::CMDS), p.read64(pf::BYTES), p.read64(pf::CYCLES), p.read64(pf::DMA_FAULTS)};
}

}  // namespace keel::sriov
