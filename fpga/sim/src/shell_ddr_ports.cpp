// Card-DDR ports of the shell: the card's AXI4 master to its DDR (the mmapped disk image), read
// and write, and the flush requests that persist a range of it.
#include <cstring>

#include "Vkeel_card.h"
#include "shell_ports.h"

namespace keel::fpga::sim {
namespace {

constexpr std::uint64_t kAllStrobes = ~std::uint64_t{0};

}  // namespace

// ---------------------------------------------------------------- DDR read

DdrReadPort::DdrReadPort(PortContext& pc, CardStorage& storage) : pc_(pc), storage_(storage) {
  ring_.resize(kShellRing);
  for (auto& r : ring_) r.data.resize(kMaxBeats * kBeat);
}

void DdrReadPort::sample() {
  Vkeel_card& t = pc_.top;
  ar_check_.check(pc_.stats, t.m_axi_ddr_arvalid, t.m_axi_ddr_arready, t.m_axi_ddr_araddr,
                  t.m_axi_ddr_arlen, 0);
  if (t.m_axi_ddr_rvalid && t.m_axi_ddr_rready) {
    shown_ = false;
    ReadBurst& r = ring_[head_];
    ++pc_.stats.ddr_read_beats;
    if (++r.sent == r.beats) {
      head_ = (head_ + 1) % kShellRing;
      --count_;
    }
  }
  if (t.m_axi_ddr_arvalid && t.m_axi_ddr_arready) {
    accept(t.m_axi_ddr_araddr, t.m_axi_ddr_arlen + 1u);
  }
}

void DdrReadPort::drive() {
  Vkeel_card& t = pc_.top;
  t.m_axi_ddr_arready = count_ < kShellRing && !pc_.bp.stall();
  if (count_ != 0 && ring_[head_].ready_at <= pc_.cycle && (shown_ || !pc_.bp.stall())) {
    shown_ = true;
    const ReadBurst& r = ring_[head_];
    t.m_axi_ddr_rvalid = 1;
    t.m_axi_ddr_rresp = r.err ? kSlvErr : kOkay;
    t.m_axi_ddr_rlast = r.sent + 1 == r.beats;
    std::memcpy(t.m_axi_ddr_rdata.data(), r.data.data() + std::size_t{r.sent} * kBeat, kBeat);
  } else {
    t.m_axi_ddr_rvalid = 0;
  }
}

void DdrReadPort::accept(std::uint64_t addr, unsigned beats) {
  ReadBurst& r = ring_[(head_ + count_) % kShellRing];
  r.addr = addr;
  r.beats = beats;
  r.sent = 0;
  r.ready_at = pc_.cycle + pc_.cfg.ddr_read_latency;
  const std::uint64_t bytes = std::uint64_t{beats} * kBeat;
  r.err = addr + bytes > storage_.bytes() || addr + bytes < addr;
  if (r.err) {
    std::memset(r.data.data(), 0, bytes);
  } else {
    std::memcpy(r.data.data(), storage_.data() + addr, bytes);
  }
  ++count_;
}

// ---------------------------------------------------------------- DDR write

DdrWritePort::DdrWritePort(PortContext& pc, CardStorage& storage) : pc_(pc), storage_(storage) {
  aw_addr_.resize(kShellRing);
  aw_beats_.resize(kShellRing);
  b_.resize(kShellRing);
}

void DdrWritePort::sample() {
  Vkeel_card& t = pc_.top;
  aw_check_.check(pc_.stats, t.m_axi_ddr_awvalid, t.m_axi_ddr_awready, t.m_axi_ddr_awaddr,
                  t.m_axi_ddr_awlen, 0);
  if (t.m_axi_ddr_wvalid && t.m_axi_ddr_wready) {
    const unsigned left = left_ != 0 ? left_ : (aw_count_ != 0 ? aw_beats_[aw_head_] : 0);
    if ((t.m_axi_ddr_wlast != 0) != (left == 1)) ++pc_.stats.protocol_errors;
  }
  if (t.m_axi_ddr_bvalid && t.m_axi_ddr_bready) {
    b_shown_ = false;
    b_head_ = (b_head_ + 1) % kShellRing;
    --b_count_;
  }
  if (t.m_axi_ddr_awvalid && t.m_axi_ddr_awready) {
    const unsigned i = (aw_head_ + aw_count_) % kShellRing;
    aw_addr_[i] = t.m_axi_ddr_awaddr;
    aw_beats_[i] = t.m_axi_ddr_awlen + 1u;
    ++aw_count_;
  }
  if (t.m_axi_ddr_wvalid && t.m_axi_ddr_wready) {
    if (left_ == 0) {  // first beat of the oldest accepted burst
      addr_ = aw_addr_[aw_head_];
      left_ = aw_beats_[aw_head_];
      err_ = false;
    }
    ++pc_.stats.ddr_write_beats;
    const std::uint64_t strb = t.m_axi_ddr_wstrb;
    if (addr_ + kBeat > storage_.bytes() || addr_ + kBeat < addr_) {
      err_ = true;
    } else if (strb == kAllStrobes) {
      std::memcpy(storage_.data() + addr_, t.m_axi_ddr_wdata.data(), kBeat);
    } else if (strb != 0) {
      // The beat's bytes as Verilator stores the 512-bit port (lane 0 first).
      const auto* src = reinterpret_cast<const std::byte*>(t.m_axi_ddr_wdata.data());
      for (unsigned b = 0; b < kBeat; ++b) {
        if (((strb >> b) & 1u) != 0) storage_.data()[addr_ + b] = src[b];
      }
    }
    addr_ += kBeat;
    if (--left_ == 0) {
      aw_head_ = (aw_head_ + 1) % kShellRing;
      --aw_count_;
      WriteResp& b = b_[(b_head_ + b_count_) % kShellRing];
      b = WriteResp{0, 0, err_ ? kSlvErr : kOkay, pc_.cycle + pc_.cfg.write_resp_latency};
      ++b_count_;
    }
  }
}

void DdrWritePort::drive() {
  Vkeel_card& t = pc_.top;
  t.m_axi_ddr_awready = aw_count_ < kShellRing && !pc_.bp.stall();
  t.m_axi_ddr_wready = aw_count_ != 0 && !pc_.bp.stall();
  if (b_count_ != 0 && b_[b_head_].ready_at <= pc_.cycle && (b_shown_ || !pc_.bp.stall())) {
    b_shown_ = true;
    t.m_axi_ddr_bvalid = 1;
    t.m_axi_ddr_bresp = b_[b_head_].resp;
  } else {
    t.m_axi_ddr_bvalid = 0;
  }
}

// ---------------------------------------------------------------- flush

FlushPort::FlushPort(PortContext& pc, CardStorage& storage) : pc_(pc), storage_(storage) {}

void FlushPort::sample() {
  Vkeel_card& t = pc_.top;
  if (done_shown_) {
    done_shown_ = false;
    done_ = false;
    busy_ = false;
  }
  if (t.m_flush_valid && t.m_flush_ready) {
    err_ = !storage_.flush(t.m_flush_addr, t.m_flush_len).ok();
    busy_ = true;
    done_ = true;
  }
}

void FlushPort::drive() {
  Vkeel_card& t = pc_.top;
  t.m_flush_ready = !busy_ && !pc_.bp.stall();
  done_shown_ = done_;
  t.m_flush_done = done_;
  t.m_flush_err = err_;
}

}  // namespace keel::fpga::sim
