// The shell's NIC ports (shell_nic_port.h).
#include "shell_nic_port.h"

#include <algorithm>
#include <cstring>

#include "Vkeel_card.h"
#include "keel/fpga/nic.h"

namespace keel::fpga::sim {

NicPort::NicPort(PortContext& pc, Iommu& iommu, std::vector<std::unique_ptr<MsixInterrupts>>& irqs,
                 NicLink& link)
    : pc_(pc), iommu_(iommu), irqs_(irqs), link_(link) {}

bool NicPort::quiet() const noexcept {
  return reads_.empty() && !collecting_ && resps_.empty() && !in_valid_ &&
         !link_.has_rx.load(std::memory_order_acquire);
}

void NicPort::sample() {
  Vkeel_card& t = pc_.top;
  // DMA reads: requests are served whole at acceptance (a refused one reads as zeros).
  if (rd_shown_) {
    Read& r = reads_.front();
    if (++r.sent == r.beats) reads_.pop_front();
  }
  if (t.m_nic_rd_valid && t.m_nic_rd_ready) {
    Read r;
    r.beats = std::max(1u, (t.m_nic_rd_len + 7u) / 8u);
    r.data.assign(std::size_t{r.beats} * 8, 0);
    r.err = t.m_nic_rd_len == 0 ||
            !iommu_.dma_read(t.m_nic_rd_fn, t.m_nic_rd_addr, r.data.data(), t.m_nic_rd_len);
    if (r.err) std::fill(r.data.begin(), r.data.end(), 0);
    r.ready_at = pc_.cycle + pc_.cfg.host_read_latency;
    reads_.push_back(std::move(r));
  }
  // DMA writes: one at a time; written when the last beat is in.
  if (wb_shown_) resps_.pop_front();
  if (t.m_nic_wr_valid && t.m_nic_wr_ready) {
    collecting_ = true;
    wfn_ = t.m_nic_wr_fn;
    waddr_ = t.m_nic_wr_addr;
    wlen_ = t.m_nic_wr_len;
    wdata_.clear();
  } else if (collecting_ && t.m_nic_wd_valid && t.m_nic_wd_ready) {
    const std::uint64_t d = t.m_nic_wd_data;
    const std::size_t n = std::min<std::size_t>(8, wlen_ - std::min(wlen_, wdata_.size()));
    for (std::size_t i = 0; i < n; ++i) wdata_.push_back(static_cast<std::uint8_t>(d >> (8 * i)));
    if (t.m_nic_wd_last) {
      collecting_ = false;
      bool ok;
      if (wlen_ == 16) {  // a completion: its last 4 bytes (the phase) land last
        ok = iommu_.dma_write_release_last32(wfn_, waddr_, wdata_.data(), wdata_.size());
      } else {
        ok = wlen_ != 0 && iommu_.dma_write(wfn_, waddr_, wdata_.data(), wdata_.size());
      }
      resps_.push_back({!ok, pc_.cycle + pc_.cfg.write_resp_latency});
    }
  }
  // MSI-X to NIC VF fn - 66.
  if (t.m_nic_msix_valid && t.m_nic_msix_ready) {
    const unsigned v = t.m_nic_msix_fn - nic_vf_function(0);
    if (v < irqs_.size()) irqs_[v]->fire(t.m_nic_msix_vector);
  }
  if (t.s_upl_overflow) link_.overflow.fetch_sub(1, std::memory_order_relaxed);
  if (t.s_upl_tx_drop) --tx_drops_;
  // Uplink in.
  if (in_valid_ && t.s_upl_valid && t.s_upl_ready) {
    in_off_ += 8;
    if (in_off_ >= in_.size()) in_valid_ = false;
  }
  // Uplink out: one frame per write.
  if (t.m_upl_valid && t.m_upl_ready) {
    const std::uint64_t d = t.m_upl_data;
    for (unsigned i = 0; i < t.m_upl_bytes && i < 8; ++i) {
      out_.push_back(static_cast<std::uint8_t>(d >> (8 * i)));
    }
    if (t.m_upl_last) {
      if (!link_.send || !link_.send(out_)) ++tx_drops_;
      out_.clear();
    }
  }
}

void NicPort::drive() {
  Vkeel_card& t = pc_.top;
  t.m_nic_rd_ready = 1;
  rd_shown_ = !reads_.empty() && pc_.cycle >= reads_.front().ready_at;
  t.s_nic_rd_valid = rd_shown_;
  if (rd_shown_) {
    const Read& r = reads_.front();
    std::uint64_t d = 0;
    std::memcpy(&d, r.data.data() + std::size_t{r.sent} * 8, 8);
    t.s_nic_rd_data = d;
    t.s_nic_rd_last = r.sent + 1 == r.beats;
    t.s_nic_rd_err = r.err;
  }
  t.m_nic_wr_ready = !collecting_;
  t.m_nic_wd_ready = collecting_;
  wb_shown_ = !resps_.empty() && pc_.cycle >= resps_.front().ready_at;
  t.s_nic_wb_valid = wb_shown_;
  t.s_nic_wb_err = wb_shown_ && resps_.front().err;
  t.m_nic_msix_ready = 1;
  t.m_upl_ready = 1;
  // Uplink in: the next frame the reader queued.
  if (!in_valid_ && link_.has_rx.load(std::memory_order_acquire)) {
    std::lock_guard lock(link_.mu);
    if (!link_.rx.empty()) {
      in_ = std::move(link_.rx.front());
      link_.rx.pop_front();
      in_valid_ = true;
      in_off_ = 0;
    }
    link_.has_rx.store(!link_.rx.empty(), std::memory_order_release);
  }
  t.s_upl_valid = in_valid_;
  if (in_valid_) {
    const std::size_t n = in_.size() > in_off_ ? std::min<std::size_t>(8, in_.size() - in_off_) : 0;
    std::uint64_t d = 0;
    if (n != 0) std::memcpy(&d, in_.data() + in_off_, n);
    t.s_upl_data = d;
    t.s_upl_bytes = static_cast<std::uint8_t>(n);
    t.s_upl_last = in_off_ + 8 >= in_.size();
  }
  // One count per cycle; taken (decremented) at the edge that samples it, in sample().
  t.s_upl_overflow = link_.overflow.load(std::memory_order_relaxed) != 0;
  t.s_upl_tx_drop = tx_drops_ != 0;
  t.cfg_uplink_on = link_.on.load(std::memory_order_acquire);
  t.cfg_uplink_up = link_.up.load(std::memory_order_acquire);
  t.cfg_nic_removed = static_cast<std::uint8_t>(link_.removed.load(std::memory_order_acquire));
}

}  // namespace keel::fpga::sim
