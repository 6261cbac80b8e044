// The reference card's PF: identity, NUM_VFS, per-VF resources (VFCFG) and counters.
#include <string>

#include <keel/regs/keel_regs.h>

#include "card_impl.h"

namespace keel::fpga::model {

namespace pf = regs::pf;
namespace vc = regs::vfcfg;

namespace {

// VFCFG STATUS.ERR_CODE values (see docs/regmap.md).
constexpr std::uint32_t kErrPastEnd = 1;
constexpr std::uint32_t kErrOverlap = 2;
constexpr std::uint32_t kErrQueues = 3;
constexpr std::uint32_t kErrEmpty = 4;
constexpr std::uint32_t kErrNotPresent = 5;
constexpr std::uint32_t kErrWhileEnabled = 6;

void set_lo(std::uint64_t& r, std::uint32_t v) { r = (r & ~0xFFFFFFFFull) | v; }
void set_hi(std::uint64_t& r, std::uint32_t v) {
  r = (r & 0xFFFFFFFFull) | (static_cast<std::uint64_t>(v) << 32);
}

}  // namespace

PfFunction::PfFunction(ModelCard::Impl& card) : PfFunctionBase(*card.iommu, 0), card_(card) {}

Status ModelCard::Impl::set_num_vfs_locked(unsigned n) {
  const unsigned cur = num_vfs.load();
  if (n > config.card.max_vfs) {
    num_vfs_err = true;
    return make_error(Errc::invalid_argument, "the card has " +
                                                  std::to_string(config.card.max_vfs) +
                                                  " VFs; cannot enable " + std::to_string(n));
  }
  if (cur != 0 && n != 0 && n != cur) {
    num_vfs_err = true;
    return make_error(Errc::busy, std::to_string(cur) + " VFs are enabled; set the count to 0 " +
                                      "before changing it to " + std::to_string(n));
  }
  num_vfs_err = false;
  if (n == cur) return {};
  if (n == 0) {
    for (unsigned i = 0; i < cur; ++i) {
      present[i].store(false, std::memory_order_release);
      ctrls[i]->set_removed(false);
      ctrls[i]->resources() = VfResources{};
      iommu->unmap_all(i + 1);
    }
    num_vfs.store(0);
    rr = 0;
    return {};
  }
  for (unsigned i = 0; i < n; ++i) {
    ctrls[i]->resources() = VfResources{};
    ctrls[i]->flr();
    present[i].store(true, std::memory_order_release);
  }
  num_vfs.store(n);
  rr = 0;
  return {};
}

std::uint32_t ModelCard::Impl::enable_vf_locked(unsigned vf) {
  if (vf >= num_vfs.load()) return kErrNotPresent;
  VfResources& r = ctrls[vf]->resources();
  if (r.ioq == 0 || r.ioq > config.card.max_ioq_per_vf) return kErrQueues;
  if (r.slice_lbas == 0) return kErrEmpty;
  const std::uint64_t total = storage_lbas();
  if (r.slice_base >= total || r.slice_lbas > total - r.slice_base) return kErrPastEnd;
  for (unsigned i = 0; i < num_vfs.load(); ++i) {
    if (i == vf) continue;
    const VfResources& o = ctrls[i]->resources();
    if (!o.enabled) continue;
    if (r.slice_base < o.slice_base + o.slice_lbas && o.slice_base < r.slice_base + r.slice_lbas) {
      return kErrOverlap;
    }
  }
  return 0;
}

std::uint32_t PfFunction::read32(std::uint64_t offset) noexcept {
  const std::uint64_t v = read64(offset & ~7ull);
  return static_cast<std::uint32_t>((offset & 4) != 0 ? v >> 32 : v);
}

std::uint64_t PfFunction::read64(std::uint64_t offset) noexcept {
  ModelCard::Impl& c = card_;
  const unsigned max_vfs = c.config.card.max_vfs;
  if (offset < vc::BASE) {
    auto lo_hi = [](std::uint32_t lo, std::uint32_t hi) {
      return lo | (static_cast<std::uint64_t>(hi) << 32);
    };
    std::uint64_t cmds = 0, bytes = 0;
    for (const auto& ctrl : c.ctrls) {
      cmds += ctrl->counters().cmds.load(std::memory_order_relaxed);
      bytes += ctrl->counters().bytes.load(std::memory_order_relaxed);
    }
    std::lock_guard lock(c.mu);
    std::uint32_t caps = 0;
    caps = static_cast<std::uint32_t>(
        regs::field_set(caps, pf::CAPS_MAX_VFS_MASK, pf::CAPS_MAX_VFS_SHIFT, max_vfs));
    caps = static_cast<std::uint32_t>(regs::field_set(
        caps, pf::CAPS_MAX_IOQ_MASK, pf::CAPS_MAX_IOQ_SHIFT, c.config.card.max_ioq_per_vf));
    caps = static_cast<std::uint32_t>(regs::field_set(
        caps, pf::CAPS_LBA_SHIFT_MASK, pf::CAPS_LBA_SHIFT_SHIFT, c.config.lba_shift));
    caps |= static_cast<std::uint32_t>(pf::CAPS_QOS_MASK | pf::CAPS_RATE_LIMIT_MASK);
    const std::uint32_t status = static_cast<std::uint32_t>(
        pf::STATUS_READY_MASK | (c.num_vfs_err ? pf::STATUS_NUM_VFS_ERR_MASK : 0));
    const std::uint32_t version = static_cast<std::uint32_t>(
        (regs::VERSION_MAJOR << pf::VERSION_MAJOR_SHIFT) | regs::VERSION_MINOR);
    switch (offset) {
      case pf::ID: return lo_hi(static_cast<std::uint32_t>(regs::MAGIC), version);
      case pf::CAPS: return lo_hi(caps, c.num_vfs.load());
      case pf::STORAGE_LBAS: return c.storage_lbas();
      case pf::STATUS: return lo_hi(status, c.config.clock_mhz);
      case pf::DMA_FAULTS: return c.iommu->total_faults();
      case pf::CMDS: return cmds;
      case pf::BYTES: return bytes;
      case pf::CYCLES: return c.now_ns() * c.config.clock_mhz / 1000;
      default: return 0;
    }
  }
  const std::uint64_t rel = offset - vc::BASE;
  const unsigned vf = static_cast<unsigned>(rel / vc::STRIDE);
  const std::uint64_t reg = rel % vc::STRIDE;
  if (vf >= max_vfs) return 0;
  const VfController& ctrl = *c.ctrls[vf];
  const VfCounters& k = ctrl.counters();
  switch (reg) {
    case vc::CMDS: return k.cmds.load(std::memory_order_relaxed);
    case vc::BYTES: return k.bytes.load(std::memory_order_relaxed);
    case vc::BUSY_CYCLES: return k.busy_cycles.load(std::memory_order_relaxed);
    case vc::DMA_FAULTS: return c.iommu->faults(vf + 1);
    case vc::CMD_ERRORS: return k.cmd_errors.load(std::memory_order_relaxed);
    default: break;
  }
  std::lock_guard lock(c.mu);
  const VfResources& r = c.ctrls[vf]->resources();
  const bool present = c.present[vf].load() && !ctrl.removed();
  switch (reg) {
    case vc::CTRL: {
      std::uint64_t status = 0;
      status |= r.enabled ? vc::STATUS_ENABLED_MASK : 0;
      status |= present ? vc::STATUS_PRESENT_MASK : 0;
      status |= r.err_code != 0 ? vc::STATUS_CFG_ERR_MASK : 0;
      status =
          regs::field_set(status, vc::STATUS_ERR_CODE_MASK, vc::STATUS_ERR_CODE_SHIFT, r.err_code);
      return (r.enabled ? 1u : 0u) | (status << 32);
    }
    case vc::IOQ: return r.ioq | (static_cast<std::uint64_t>(r.weight) << 32);
    case vc::RATE: return r.rate_mbps;  // FLR (high half) reads as zero
    case vc::SLICE_BASE: return r.slice_base;
    case vc::SLICE_LBAS: return r.slice_lbas;
    default: return 0;
  }
}

void PfFunction::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  ModelCard::Impl& c = card_;
  if (offset == pf::NUM_VFS) {
    std::lock_guard lock(c.mu);
    (void)c.set_num_vfs_locked(value & pf::NUM_VFS_COUNT_MASK);
    return;
  }
  if (offset < vc::BASE) return;  // read-only identity and counters
  const std::uint64_t rel = offset - vc::BASE;
  const unsigned vf = static_cast<unsigned>(rel / vc::STRIDE);
  const std::uint64_t reg = rel % vc::STRIDE;
  if (vf >= c.config.card.max_vfs) return;
  std::lock_guard lock(c.mu);
  VfController& ctrl = *c.ctrls[vf];
  VfResources& r = ctrl.resources();
  if (vf >= c.num_vfs.load()) {
    r.err_code = kErrNotPresent;
    return;
  }
  switch (reg) {
    case vc::CTRL: {
      const bool enable = (value & vc::CTRL_ENABLE_MASK) != 0;
      if (enable && !r.enabled) {
        r.err_code = c.enable_vf_locked(vf);
        r.enabled = r.err_code == 0;
      } else if (!enable && r.enabled) {
        ctrl.flr();  // the VF loses its controller state with its resources
        r.enabled = false;
        r.err_code = 0;
      }
      return;
    }
    case vc::FLR:
      if ((value & vc::FLR_GO_MASK) != 0) ctrl.flr();
      return;
    default: break;
  }
  if (r.enabled) {
    r.err_code = kErrWhileEnabled;
    return;
  }
  switch (reg) {
    case vc::IOQ: r.ioq = value & vc::IOQ_COUNT_MASK; break;
    case vc::QOS: r.weight = value & vc::QOS_WEIGHT_MASK; break;
    case vc::RATE: r.rate_mbps = value; break;
    case vc::SLICE_BASE: set_lo(r.slice_base, value); break;
    case vc::SLICE_BASE + 4: set_hi(r.slice_base, value); break;
    case vc::SLICE_LBAS: set_lo(r.slice_lbas, value); break;
    case vc::SLICE_LBAS + 4: set_hi(r.slice_lbas, value); break;
    default: break;  // read-only counters
  }
}

void PfFunction::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  write32(offset, static_cast<std::uint32_t>(value));
  const std::uint64_t rel = offset - vc::BASE;
  const std::uint64_t reg = rel % vc::STRIDE;
  if (offset >= vc::BASE && (reg == vc::SLICE_BASE || reg == vc::SLICE_LBAS)) {
    write32(offset + 4, static_cast<std::uint32_t>(value >> 32));
  }
}

}  // namespace keel::fpga::model
