// The shell's other ports: address-translation checks, MSI-X, the side band (FLR, fault
// injection, function events) and the AXI4-Lite master for BAR accesses.
#include "Vkeel_card.h"
#include "shell_ports.h"

namespace keel::fpga::sim {

// ---------------------------------------------------------------- translation checks

TranslationPort::TranslationPort(PortContext& pc, Iommu& iommu, unsigned functions)
    : pc_(pc),
      iommu_(iommu),
      functions_(functions),
      refuse_(std::make_unique<std::atomic<bool>[]>(functions)) {}

void TranslationPort::set_refuse(unsigned fn, bool on) noexcept {
  if (fn < functions_) refuse_[fn].store(on, std::memory_order_relaxed);
}

void TranslationPort::sample() {
  Vkeel_card& t = pc_.top;
  if (resp_shown_) {
    resp_shown_ = false;
    pending_ = false;
  }
  if (t.m_ats_valid && t.m_ats_ready) {
    const unsigned fn = t.m_ats_fn;
    const bool refused = fn >= functions_ || refuse_[fn].load(std::memory_order_relaxed) ||
                         !iommu_.covered(fn, t.m_ats_addr, t.m_ats_len);
    if (refused) {
      iommu_.count_fault(fn);
      ++pc_.stats.dma_refused;
    }
    ok_ = !refused;
    pending_ = true;
    at_ = pc_.cycle + pc_.cfg.ats_latency;
  }
}

void TranslationPort::drive() {
  Vkeel_card& t = pc_.top;
  t.m_ats_ready = !pending_ && !pc_.bp.stall();
  resp_shown_ = pending_ && at_ <= pc_.cycle;
  t.m_ats_resp_valid = resp_shown_;
  t.m_ats_resp_ok = ok_;
}

// ---------------------------------------------------------------- MSI-X

MsixPort::MsixPort(PortContext& pc, std::vector<std::unique_ptr<MsixInterrupts>>& irqs)
    : pc_(pc), irqs_(irqs) {}

void MsixPort::sample() {
  Vkeel_card& t = pc_.top;
  if (t.m_msix_valid && t.m_msix_ready) {
    ++pc_.stats.msix;
    if (t.m_msix_fn < irqs_.size()) irqs_[t.m_msix_fn]->fire(t.m_msix_vector);
  }
}

void MsixPort::drive() { pc_.top.m_msix_ready = !pc_.bp.stall(); }

// ---------------------------------------------------------------- side band

SideBandPort::SideBandPort(PortContext& pc, std::vector<std::unique_ptr<MsixInterrupts>>& irqs,
                           TranslationPort& ats)
    : pc_(pc),
      irqs_(irqs),
      ats_(ats),
      flr_done_(std::make_unique<std::atomic<std::uint64_t>[]>(irqs.size())) {
  flr_queue_.reserve(16);
  dbg_queue_.reserve(16);
}

std::uint64_t SideBandPort::flr_done(unsigned fn) const noexcept {
  if (fn >= irqs_.size()) return 0;
  return flr_done_[fn].load(std::memory_order_acquire);
}

void SideBandPort::sample() {
  Vkeel_card& t = pc_.top;
  if (t.m_evt_valid) on_event(t.m_evt_fn, t.m_evt_kind);
  if (t.s_flr_valid && t.s_flr_ready) flr_queue_.erase(flr_queue_.begin());
  if (t.s_dbg_valid && t.s_dbg_ready) dbg_queue_.erase(dbg_queue_.begin());
}

void SideBandPort::drive() {
  Vkeel_card& t = pc_.top;
  t.s_flr_valid = !flr_queue_.empty();
  t.s_flr_fn = flr_queue_.empty() ? 0 : static_cast<std::uint8_t>(flr_queue_.front());
  t.s_dbg_valid = !dbg_queue_.empty();
  if (!dbg_queue_.empty()) {
    const DbgOp& d = dbg_queue_.front();
    t.s_dbg_op = d.op;
    t.s_dbg_vf = d.vf;
    t.s_dbg_arg0 = d.arg0;
    t.s_dbg_arg1 = d.arg1;
  }
}

void SideBandPort::on_event(unsigned fn, unsigned kind) {
  if (fn >= irqs_.size()) return;
  irqs_[fn]->clear();
  if (kind == 0) {  // FLR finished: per-function shell state goes too
    ats_.set_refuse(fn, false);
    flr_done_[fn].fetch_add(1, std::memory_order_acq_rel);
    irqs_[fn]->wake_all();
  }
}

// ---------------------------------------------------------------- AXI4-Lite master

MmioMaster::MmioMaster(PortContext& pc, Iommu& iommu) : pc_(pc), iommu_(iommu) {}

void MmioMaster::start(const MmioOp& op, unsigned num_vfs) {
  op_ = op;
  nv_before_ = num_vfs;
  state_ = op.write ? State::w_addr : State::r_addr;
}

void MmioMaster::sample() {
  Vkeel_card& t = pc_.top;
  switch (state_) {
    case State::idle: break;
    case State::w_addr:
      if (t.s_axil_awready) state_ = State::w_resp;
      break;
    case State::w_resp:
      if (t.s_axil_bvalid) {
        state_ = State::idle;
        after_write();
      }
      break;
    case State::r_addr:
      if (t.s_axil_arready) state_ = State::r_data;
      break;
    case State::r_data:
      if (t.s_axil_rvalid) {
        result_ = t.s_axil_rdata;
        state_ = State::idle;
      }
      break;
  }
}

void MmioMaster::drive() {
  Vkeel_card& t = pc_.top;
  t.s_axil_awvalid = state_ == State::w_addr;
  t.s_axil_wvalid = state_ == State::w_addr;
  t.s_axil_awaddr = op_.addr;
  t.s_axil_awuser = op_.fn;
  t.s_axil_wdata = op_.data;
  t.s_axil_wstrb = op_.strb;
  t.s_axil_bready = state_ == State::w_resp;
  t.s_axil_arvalid = state_ == State::r_addr;
  t.s_axil_araddr = op_.addr;
  t.s_axil_aruser = op_.fn;
  t.s_axil_rready = state_ == State::r_data;
}

void MmioMaster::after_write() {
  // NUM_VFS (upper half of PF offset 8) set to 0: the VFs' DMA windows go with them.
  if (op_.fn != 0 || op_.addr != 0x08 || (op_.strb & 0xF0) == 0 || (op_.strb & 0x0F) != 0) {
    return;
  }
  const unsigned now = pc_.top.status_num_vfs;
  if (nv_before_ != 0 && now == 0) {
    for (unsigned i = 0; i < nv_before_; ++i) iommu_.unmap_all(i + 1);
  }
}

}  // namespace keel::fpga::sim
