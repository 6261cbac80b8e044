// The reference card's NIC: PF and VF registers, NUM_VFS, FLR, fault injection.
#include <string>

#include <keel/regs/keel_regs.h>

#include "nic_model.h"

namespace keel::fpga::model {

namespace np = regs::nicpf;
namespace nv = regs::nicvfcfg;
namespace nr = regs::nic;
namespace nq = regs::nicq;

namespace {

// NICVFCFG STATUS.ERR_CODE and NICQ QSTATUS.ERR_CODE values (docs/regmap.md).
constexpr std::uint32_t kPortErrMac = 1;
constexpr std::uint32_t kPortErrMacInUse = 2;
constexpr std::uint32_t kPortErrNotPresent = 5;
constexpr std::uint32_t kPortErrWhileEnabled = 6;
constexpr std::uint32_t kQErrSize = 1;
constexpr std::uint32_t kQErrAlign = 2;
constexpr std::uint32_t kQErrWhileEnabled = 4;
constexpr std::uint32_t kQErrDoorbell = 5;

constexpr unsigned kVectors = 2 * regs::NIC_MAX_QUEUES;

std::uint32_t lo32(std::uint64_t v) { return static_cast<std::uint32_t>(v); }
void set_half(std::uint64_t& r, std::uint64_t v, unsigned width, bool high) {
  if (width == 64) {
    r = v;
  } else if (high) {
    r = (r & 0xFFFFFFFFull) | (v << 32);
  } else {
    r = (r & ~0xFFFFFFFFull) | (v & 0xFFFFFFFFull);
  }
}

}  // namespace

void NicQueue::stop() noexcept {
  enabled = false;
  cfg &= ~static_cast<std::uint32_t>(nq::CFG_ENABLE_MASK);
  tx_tail.store(0, std::memory_order_relaxed);
  rx_tail.store(0, std::memory_order_relaxed);
  tx_cq_head.store(0, std::memory_order_relaxed);
  rx_cq_head.store(0, std::memory_order_relaxed);
  tx_head = rx_head = tx_cq_tail = rx_cq_tail = 0;
  tx_phase = rx_phase = 1;
  tx_fire = rx_fire = throttled = false;
}

// ---------------------------------------------------------------- construction

NicModel::NicModel(NicHost host, unsigned max_vfs)
    : host_(std::move(host)),
      max_vfs_(max_vfs),
      switch_(max_vfs + 1, static_cast<int>(max_vfs)),
      pf_(*this) {
  for (unsigned i = 0; i < max_vfs; ++i) {
    vfs_.push_back(std::make_unique<NicVf>(kVectors));
    functions_.push_back(std::make_unique<NicVfFunction>(*this, i));
  }
  sync_port(max_vfs);  // the uplink port (disabled until attach_uplink)
}

NicModel::~NicModel() { stop_uplink(); }

Result<Function*> NicModel::vf(unsigned index) {
  if (index >= num_vfs()) {
    return make_error(Errc::not_found, "NIC VF " + std::to_string(index) + " is not present (" +
                                           std::to_string(num_vfs()) + " NIC VFs enabled)");
  }
  return static_cast<Function*>(functions_[index].get());
}

Status NicModel::set_num_vfs(unsigned n) {
  std::lock_guard lock(mu_);
  return set_num_vfs_locked(n);
}

Status NicModel::set_num_vfs_locked(unsigned n) {
  const unsigned cur = num_vfs_.load();
  if (n > max_vfs_) {
    num_vfs_err_ = true;
    return make_error(Errc::invalid_argument, "the card has " + std::to_string(max_vfs_) +
                                                  " NIC VFs; cannot enable " + std::to_string(n));
  }
  if (cur != 0 && n != 0 && n != cur) {
    num_vfs_err_ = true;
    return make_error(Errc::busy, std::to_string(cur) + " NIC VFs are enabled; set the count " +
                                      "to 0 before changing it to " + std::to_string(n));
  }
  num_vfs_err_ = false;
  if (n == cur) return {};
  if (n == 0) {
    for (unsigned i = 0; i < cur; ++i) {
      NicVf& f = *vfs_[i];
      reset_vf(i);
      f.present.store(false, std::memory_order_release);
      f.removed.store(false, std::memory_order_release);
      f.port_enabled = false;
      f.mac = {};
      f.rate = 0;
      f.counters = {};
      f.bucket.configure(0, 0, 0);
      sync_port(i);
      switch_.clear_counters(i);
      host_.iommu->unmap_all(nic_vf_function(i));
      f.irq.wake_all();
    }
    num_vfs_.store(0);
    return {};
  }
  for (unsigned i = 0; i < n; ++i) {
    reset_vf(i);
    vfs_[i]->present.store(true, std::memory_order_release);
  }
  num_vfs_.store(n);
  return {};
}

Status NicModel::surprise_remove(unsigned index) {
  std::lock_guard lock(mu_);
  if (index >= num_vfs()) return make_error(Errc::not_found, "no NIC VF " + std::to_string(index));
  NicVf& f = *vfs_[index];
  f.removed.store(true, std::memory_order_release);
  sync_port(index);  // its MAC leaves the switch: frames for it now go to the uplink
  f.irq.wake_all();
  return {};
}

Status NicModel::restore(unsigned index) {
  std::lock_guard lock(mu_);
  if (index >= num_vfs()) return make_error(Errc::not_found, "no NIC VF " + std::to_string(index));
  vfs_[index]->removed.store(false, std::memory_order_release);
  reset_vf(index);
  return {};
}

void NicModel::reset_vf(unsigned v) noexcept {
  NicVf& f = *vfs_[v];
  for (auto& q : f.queues) {
    q.stop();
    q.tx_base = q.tx_cq_base = q.rx_base = q.rx_cq_base = 0;
    q.cfg = 0;
    q.err = 0;
  }
  f.enabled = false;
  f.fatal = false;
  f.mtu_err = false;
  f.mtu = 1500;
  f.irq.clear();
  for (unsigned vec = 0; vec < kVectors; ++vec) f.irq.set_masked(vec, false);
  f.irq.wake_all();
  sync_port(v);
}

void NicModel::sync_port(unsigned v) noexcept {
  eswitch::PortConfig c;
  if (v == max_vfs_) {
    c.enabled = uplink_.valid();
    c.anti_spoof = false;
    c.max_frame = regs::NIC_MAX_MTU + regs::NIC_FRAME_OVERHEAD;
  } else {
    const NicVf& f = *vfs_[v];
    c.enabled = f.port_enabled && f.present.load() && !f.removed.load();
    c.mac = f.mac;
    c.anti_spoof = true;
    c.max_frame = f.mtu + regs::NIC_FRAME_OVERHEAD;
  }
  switch_.configure(v, c);
}

std::uint32_t NicModel::enable_port(unsigned v) noexcept {
  NicVf& f = *vfs_[v];
  if (v >= num_vfs() || !f.present.load() || f.removed.load()) return kPortErrNotPresent;
  if (knic::is_multicast(f.mac) || knic::is_zero(f.mac)) return kPortErrMac;
  const int owner = switch_.port_of(f.mac);
  if (owner >= 0 && static_cast<unsigned>(owner) != v) return kPortErrMacInUse;
  f.port_enabled = true;
  const std::uint32_t mbps = lo32(nv::RATE_MBPS_MASK & f.rate) >> nv::RATE_MBPS_SHIFT;
  std::uint64_t burst_kb = (f.rate & nv::RATE_BURST_KB_MASK) >> nv::RATE_BURST_KB_SHIFT;
  if (burst_kb == 0) burst_kb = 64;
  f.bucket.configure(std::uint64_t{mbps} * 1'000'000, burst_kb * 1024, host_.now_ns());
  sync_port(v);
  return 0;
}

// ---------------------------------------------------------------- PF registers

std::uint32_t NicModel::pf_read32(std::uint64_t offset) noexcept {
  switch (offset) {
    case np::ID: return lo32(regs::NIC_MAGIC);
    case np::VERSION: return lo32(np::VERSION_RESET);
    case np::CAPS:
      return max_vfs_ | lo32(regs::NIC_MAX_QUEUES << np::CAPS_MAX_QUEUES_SHIFT) |
             lo32(np::CAPS_RATE_LIMIT_MASK) | (uplink_.valid() ? lo32(np::CAPS_UPLINK_MASK) : 0);
    case np::NUM_VFS: return num_vfs_.load();
    case np::STATUS:
      return (num_vfs_err_ ? lo32(np::STATUS_NUM_VFS_ERR_MASK) : 0) |
             (uplink_.valid() && !uplink_failed_.load() ? lo32(np::STATUS_UPLINK_UP_MASK) : 0);
    default: break;
  }
  auto half = [&](std::uint64_t reg, std::uint64_t value) -> std::optional<std::uint32_t> {
    if (offset == reg) return lo32(value);
    if (offset == reg + 4) return lo32(value >> 32);
    return std::nullopt;
  };
  const std::uint64_t overflow = uplink_overflow_.load(std::memory_order_relaxed);
  for (auto [reg, value] : {std::pair{np::UPLINK_TX_FRAMES, uplink_tx_frames_},
                            std::pair{np::UPLINK_TX_BYTES, uplink_tx_bytes_},
                            std::pair{np::UPLINK_RX_FRAMES, uplink_rx_frames_},
                            std::pair{np::UPLINK_RX_BYTES, uplink_rx_bytes_},
                            std::pair{np::UPLINK_DROPS, uplink_drops_ + overflow},
                            std::pair{np::UPLINK_TX_DROPS, uplink_tx_drops_}}) {
    if (auto r = half(reg, value)) return *r;
  }
  if (offset < nv::BASE || offset >= nv::BASE + max_vfs_ * nv::STRIDE) return 0;
  const unsigned v = static_cast<unsigned>((offset - nv::BASE) / nv::STRIDE);
  const std::uint64_t reg = (offset - nv::BASE) % nv::STRIDE;
  const NicVf& f = *vfs_[v];
  const NicCounters& c = f.counters;
  switch (reg) {
    case nv::CTRL: return f.port_enabled ? 1u : 0u;
    case nv::STATUS:
      return (f.port_enabled ? lo32(nv::STATUS_ENABLED_MASK) : 0) |
             (f.present.load() && !f.removed.load() ? lo32(nv::STATUS_PRESENT_MASK) : 0) |
             (f.cfg_err ? lo32(nv::STATUS_CFG_ERR_MASK) : 0) |
             (f.err_code << nv::STATUS_ERR_CODE_SHIFT);
    case nv::MAC_LO: return knic::mac_lo(f.mac);
    case nv::MAC_HI: return knic::mac_hi(f.mac);
    case nv::RATE: return f.rate;
    default: break;
  }
  for (auto [r, value] :
       {std::pair{nv::TX_FRAMES, c.tx_frames},
        {nv::TX_BYTES, c.tx_bytes},
        {nv::RX_FRAMES, c.rx_frames},
        {nv::RX_BYTES, c.rx_bytes},
        {nv::DROP_SPOOF, c.drop_spoof},
        {nv::DROP_BAD_DESC, c.drop_bad_desc},
        {nv::DROP_OVERSIZE, c.drop_oversize + switch_.counters(v).drop(eswitch::Drop::oversize)},
        {nv::DROP_DMA_FAULT, c.drop_dma_fault},
        {nv::DROP_RX_NO_BUF, c.drop_rx_no_buf},
        {nv::TX_THROTTLED, c.tx_throttled},
        {nv::DROP_QUEUE_OFF, c.drop_queue_off},
        {nv::DROP_NO_ROUTE, c.drop_no_route}}) {
    if (reg == r) return lo32(value);
    if (reg == r + 4) return lo32(value >> 32);
  }
  return 0;
}

void NicModel::pf_write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (offset == np::NUM_VFS) {
    (void)set_num_vfs_locked(value & lo32(np::NUM_VFS_COUNT_MASK));
    return;
  }
  if (offset < nv::BASE || offset >= nv::BASE + max_vfs_ * nv::STRIDE) return;
  const unsigned v = static_cast<unsigned>((offset - nv::BASE) / nv::STRIDE);
  const std::uint64_t reg = (offset - nv::BASE) % nv::STRIDE;
  NicVf& f = *vfs_[v];
  switch (reg) {
    case nv::CTRL:
      if ((value & nv::CTRL_ENABLE_MASK) == 0) {
        f.port_enabled = false;
        f.cfg_err = false;
        f.err_code = 0;
        sync_port(v);
      } else if (!f.port_enabled) {
        f.err_code = enable_port(v);
        f.cfg_err = f.err_code != 0;
      }
      return;
    case nv::MAC_LO:
    case nv::MAC_HI:
    case nv::RATE:
      if (f.port_enabled) {
        f.cfg_err = true;
        f.err_code = kPortErrWhileEnabled;
        return;
      }
      if (reg == nv::RATE) {
        f.rate = value;
      } else if (reg == nv::MAC_LO) {
        f.mac = knic::mac_from_regs(value, knic::mac_hi(f.mac));
      } else {
        f.mac = knic::mac_from_regs(knic::mac_lo(f.mac), value);
      }
      return;
    case nv::FLR:
      if ((value & nv::FLR_GO_MASK) != 0 && v < num_vfs()) reset_vf(v);
      return;
    default: return;
  }
}

NicPfFunction::NicPfFunction(NicModel& nic)
    : PfFunctionBase(*nic.host_.iommu, kNicPfFunction), nic_(nic) {}

std::uint32_t NicPfFunction::read32(std::uint64_t offset) noexcept {
  std::lock_guard lock(nic_.mu_);
  return nic_.pf_read32(offset);
}

std::uint64_t NicPfFunction::read64(std::uint64_t offset) noexcept {
  std::lock_guard lock(nic_.mu_);
  return nic_.pf_read32(offset) | std::uint64_t{nic_.pf_read32(offset + 4)} << 32;
}

void NicPfFunction::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  std::lock_guard lock(nic_.mu_);
  nic_.pf_write32(offset, value);
}

void NicPfFunction::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  std::lock_guard lock(nic_.mu_);
  nic_.pf_write32(offset, lo32(value));
  nic_.pf_write32(offset + 4, lo32(value >> 32));
}

// ---------------------------------------------------------------- VF registers

std::uint32_t NicModel::vf_read32(unsigned v, std::uint64_t offset) noexcept {
  NicVf& f = *vfs_[v];
  if (offset >= nq::BASE && offset < nq::BASE + regs::NIC_MAX_QUEUES * nq::STRIDE) {
    const NicQueue& q = f.queues[(offset - nq::BASE) / nq::STRIDE];
    const std::uint64_t reg = (offset - nq::BASE) % nq::STRIDE;
    switch (reg) {
      case nq::CFG: return q.cfg;
      case nq::QSTATUS:
        return (q.enabled ? lo32(nq::QSTATUS_ENABLED_MASK) : 0) |
               (q.err != 0 ? lo32(nq::QSTATUS_ERR_MASK) : 0) | q.err << nq::QSTATUS_ERR_CODE_SHIFT;
      case nq::TX_TAIL: return q.tx_tail.load(std::memory_order_relaxed);
      case nq::RX_TAIL: return q.rx_tail.load(std::memory_order_relaxed);
      case nq::TX_CQ_HEAD: return q.tx_cq_head.load(std::memory_order_relaxed);
      case nq::RX_CQ_HEAD: return q.rx_cq_head.load(std::memory_order_relaxed);
      case nq::TX_HEAD: return q.tx_head;
      case nq::RX_HEAD: return q.rx_head;
      default: return lo32(vf_read64(v, offset & ~std::uint64_t{7}) >> (offset & 4 ? 32 : 0));
    }
  }
  switch (offset) {
    case nr::ID: return lo32(regs::NIC_MAGIC);
    case nr::CAPS:
      return lo32(regs::NIC_MAX_QUEUES | regs::NIC_MAX_RING_LOG2 << nr::CAPS_RING_LOG2_SHIFT |
                  regs::NIC_MAX_MTU << nr::CAPS_MAX_MTU_SHIFT);
    case nr::CTRL: return f.enabled ? 1u : 0u;
    case nr::STATUS:
      return (f.enabled && !f.fatal ? lo32(nr::STATUS_READY_MASK) : 0) |
             (f.port_enabled ? lo32(nr::STATUS_LINK_MASK) : 0) |
             (f.fatal ? lo32(nr::STATUS_FATAL_MASK) : 0) |
             (f.mtu_err ? lo32(nr::STATUS_MTU_ERR_MASK) : 0);
    case nr::MAC_LO: return knic::mac_lo(f.mac);
    case nr::MAC_HI: return knic::mac_hi(f.mac);
    case nr::MTU: return f.mtu;
    default: return 0;
  }
}

std::uint64_t NicModel::vf_read64(unsigned v, std::uint64_t offset) noexcept {
  if (offset >= nq::BASE && offset < nq::BASE + regs::NIC_MAX_QUEUES * nq::STRIDE) {
    const NicQueue& q = vfs_[v]->queues[(offset - nq::BASE) / nq::STRIDE];
    switch ((offset - nq::BASE) % nq::STRIDE) {
      case nq::TX_BASE: return q.tx_base;
      case nq::TX_CQ_BASE: return q.tx_cq_base;
      case nq::RX_BASE: return q.rx_base;
      case nq::RX_CQ_BASE: return q.rx_cq_base;
      default: break;
    }
  }
  return vf_read32(v, offset) | std::uint64_t{vf_read32(v, offset + 4)} << 32;
}

void NicModel::vf_write(unsigned v, std::uint64_t offset, std::uint64_t value,
                        unsigned width) noexcept {
  NicVf& f = *vfs_[v];
  if (offset >= nq::BASE && offset < nq::BASE + regs::NIC_MAX_QUEUES * nq::STRIDE) {
    const unsigned q = static_cast<unsigned>((offset - nq::BASE) / nq::STRIDE);
    queue_write(f, q, (offset - nq::BASE) % nq::STRIDE, value, width);
    return;
  }
  switch (offset) {
    case nr::CTRL:
      if ((value & nr::CTRL_ENABLE_MASK) != 0) {
        f.enabled = true;
      } else {
        f.enabled = false;
        f.fatal = false;
        for (auto& q : f.queues) q.stop();
      }
      return;
    case nr::MTU: {
      const auto mtu = static_cast<unsigned>(value & nr::MTU_BYTES_MASK);
      f.mtu_err = mtu < regs::NIC_MIN_MTU || mtu > regs::NIC_MAX_MTU;
      if (!f.mtu_err) {
        f.mtu = mtu;
        sync_port(v);
      }
      return;
    }
    default: return;
  }
}

void NicModel::queue_write(NicVf& f, unsigned qi, std::uint64_t reg, std::uint64_t value,
                           unsigned width) noexcept {
  NicQueue& q = f.queues[qi];
  auto doorbell = [&](std::atomic<std::uint32_t>& db, unsigned size) {
    const auto index = static_cast<std::uint32_t>(value & 0xFFFF);
    if (!q.enabled || index >= size) {
      if (q.enabled) q.err = kQErrDoorbell;
      return;
    }
    db.store(index, std::memory_order_relaxed);
  };
  const std::uint64_t reg8 = reg & ~std::uint64_t{7};
  const bool high = (reg & 4) != 0;
  switch (reg8) {
    case nq::TX_BASE:
    case nq::TX_CQ_BASE:
    case nq::RX_BASE:
    case nq::RX_CQ_BASE: {
      if (q.enabled) {
        q.err = kQErrWhileEnabled;
        return;
      }
      std::uint64_t& r = reg8 == nq::TX_BASE      ? q.tx_base
                         : reg8 == nq::TX_CQ_BASE ? q.tx_cq_base
                         : reg8 == nq::RX_BASE    ? q.rx_base
                                                  : q.rx_cq_base;
      set_half(r, value, width, high);
      return;
    }
    default: break;
  }
  switch (reg) {
    case nq::CFG: {
      const auto cfg = lo32(value);
      const bool enable = (cfg & nq::CFG_ENABLE_MASK) != 0;
      const std::uint32_t irq_bits = lo32(nq::CFG_TX_IRQ_MASK | nq::CFG_RX_IRQ_MASK);
      if (q.enabled) {
        if (!enable) {
          q.stop();
          q.cfg = cfg;
          return;
        }
        // Running: only the interrupt enables may change.
        if ((cfg & ~irq_bits) != (q.cfg & ~irq_bits)) {
          q.err = kQErrWhileEnabled;
          return;
        }
        q.cfg = cfg;
        return;
      }
      q.cfg = cfg;
      if (!enable) return;
      const unsigned tx_log2 = cfg & 0xF, rx_log2 = (cfg >> 4) & 0xF;
      if (tx_log2 < regs::NIC_MIN_RING_LOG2 || tx_log2 > regs::NIC_MAX_RING_LOG2 ||
          rx_log2 < regs::NIC_MIN_RING_LOG2 || rx_log2 > regs::NIC_MAX_RING_LOG2) {
        q.err = kQErrSize;
        q.cfg &= ~lo32(nq::CFG_ENABLE_MASK);
        return;
      }
      if (((q.tx_base | q.tx_cq_base | q.rx_base | q.rx_cq_base) & 63) != 0) {
        q.err = kQErrAlign;
        q.cfg &= ~lo32(nq::CFG_ENABLE_MASK);
        return;
      }
      q.stop();
      q.cfg = cfg;
      q.err = 0;
      q.enabled = true;
      return;
    }
    case nq::TX_TAIL: doorbell(q.tx_tail, q.tx_size()); break;
    case nq::RX_TAIL: doorbell(q.rx_tail, q.rx_size()); break;
    case nq::TX_CQ_HEAD: doorbell(q.tx_cq_head, q.tx_size()); break;
    case nq::RX_CQ_HEAD: doorbell(q.rx_cq_head, q.rx_size()); break;
    default: return;
  }
}

NicVfFunction::NicVfFunction(NicModel& nic, unsigned index)
    : IommuFunction(*nic.host_.iommu, nic_vf_function(index)), nic_(nic), index_(index) {}

bool NicVfFunction::gone() const noexcept {
  const NicVf& f = *nic_.vfs_[index_];
  return !f.present.load(std::memory_order_acquire) || f.removed.load(std::memory_order_acquire);
}

std::uint32_t NicVfFunction::read32(std::uint64_t offset) noexcept {
  if (gone()) return 0xFFFFFFFFu;
  std::lock_guard lock(nic_.mu_);
  return nic_.vf_read32(index_, offset);
}

std::uint64_t NicVfFunction::read64(std::uint64_t offset) noexcept {
  if (gone()) return ~std::uint64_t{0};
  std::lock_guard lock(nic_.mu_);
  return nic_.vf_read64(index_, offset);
}

void NicVfFunction::write32(std::uint64_t offset, std::uint32_t value) noexcept {
  if (gone()) return;
  {
    std::lock_guard lock(nic_.mu_);
    nic_.vf_write(index_, offset, value, 32);
  }
  nic_.host_.activity->kick();
}

void NicVfFunction::write64(std::uint64_t offset, std::uint64_t value) noexcept {
  if (gone()) return;
  {
    std::lock_guard lock(nic_.mu_);
    nic_.vf_write(index_, offset, value, 64);
  }
  nic_.host_.activity->kick();
}

unsigned NicVfFunction::num_vectors() const noexcept { return kVectors; }

Result<std::uint32_t> NicVfFunction::wait_interrupt(unsigned vector,
                                                    std::chrono::nanoseconds timeout) {
  return nic_.vfs_[index_]->irq.wait(
      index_, vector, timeout, nic_.host_.lockstep, [&] { return nic_.host_.now_ns(); },
      [&] { nic_.host_.step(); }, [&] { return gone(); });
}

int NicVfFunction::interrupt_fd(unsigned vector) { return nic_.vfs_[index_]->irq.fd(vector); }

Status NicVfFunction::set_interrupt_target(unsigned vector, int eventfd) {
  return nic_.vfs_[index_]->irq.set_target(vector, eventfd);
}

void NicVfFunction::set_interrupt_masked(unsigned vector, bool masked) {
  nic_.vfs_[index_]->irq.set_masked(vector, masked);
}

Status NicVfFunction::flr() {
  std::lock_guard lock(nic_.mu_);
  if (gone()) return make_error(Errc::gone, "NIC VF " + std::to_string(index_) + " is gone");
  nic_.reset_vf(index_);
  return {};
}

}  // namespace keel::fpga::model
