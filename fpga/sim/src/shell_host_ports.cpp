// Host-DMA ports of the shell: the card's AXI4 master to host memory, read and write, through
// the IOMMU model (which checks the function's DMA windows).
#include <cstring>

#include "Vkeel_card.h"
#include "shell_ports.h"

namespace keel::fpga::sim {
namespace {

constexpr std::uint64_t kAllStrobes = ~std::uint64_t{0};

}  // namespace

bool Backpressure::stall() noexcept {
  if (percent_ == 0) return false;
  // xorshift64*: cheap and seeded, so a stalled run is reproducible.
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return (state_ * 0x2545F4914F6CDD1Dull >> 33) % 100 < percent_;
}

void AddrChannelCheck::check(SimStats& st, bool valid, bool ready, std::uint64_t addr, unsigned len,
                             unsigned id) {
  if (valid_ && (!valid || addr != addr_ || len != len_ || id != id_)) ++st.protocol_errors;
  if (valid && (addr & 4095) + (std::uint64_t{len} + 1) * kBeat > 4096) ++st.protocol_errors;
  valid_ = valid && !ready;
  addr_ = addr;
  len_ = len;
  id_ = id;
}

// ---------------------------------------------------------------- host read

HostReadPort::HostReadPort(PortContext& pc, Iommu& iommu) : pc_(pc), iommu_(iommu) {
  ring_.resize(kShellRing);
  for (auto& r : ring_) r.data.resize(kMaxBeats * kBeat);
}

void HostReadPort::sample() {
  Vkeel_card& t = pc_.top;
  ar_check_.check(pc_.stats, t.m_axi_host_arvalid, t.m_axi_host_arready, t.m_axi_host_araddr,
                  t.m_axi_host_arlen, t.m_axi_host_arid);
  if (t.m_axi_host_rvalid && t.m_axi_host_rready) {
    shown_ = false;
    ReadBurst& r = ring_[head_];
    ++pc_.stats.host_read_beats;
    if (r.id != 0) pc_.stats.host_data_bytes += kBeat;
    if (++r.sent == r.beats) {
      head_ = (head_ + 1) % kShellRing;
      --count_;
    }
  }
  if (t.m_axi_host_arvalid && t.m_axi_host_arready) {
    accept(t.m_axi_host_arid, t.m_axi_host_aruser, t.m_axi_host_araddr, t.m_axi_host_arlen + 1u);
  }
}

void HostReadPort::drive() {
  Vkeel_card& t = pc_.top;
  t.m_axi_host_arready = count_ < kShellRing && !pc_.bp.stall();
  if (count_ != 0 && ring_[head_].ready_at <= pc_.cycle && (shown_ || !pc_.bp.stall())) {
    shown_ = true;
    const ReadBurst& r = ring_[head_];
    t.m_axi_host_rvalid = 1;
    t.m_axi_host_rid = r.id;
    t.m_axi_host_ruser = r.user;
    t.m_axi_host_rresp = r.err ? kSlvErr : kOkay;
    t.m_axi_host_rlast = r.sent + 1 == r.beats;
    std::memcpy(t.m_axi_host_rdata.data(), r.data.data() + std::size_t{r.sent} * kBeat, kBeat);
  } else {
    t.m_axi_host_rvalid = 0;
  }
}

void HostReadPort::accept(std::uint8_t id, std::uint8_t user, std::uint64_t addr, unsigned beats) {
  ReadBurst& r = ring_[(head_ + count_) % kShellRing];
  r.id = id;
  r.user = user;
  r.addr = addr;
  r.beats = beats;
  r.sent = 0;
  r.ready_at = pc_.cycle + pc_.cfg.host_read_latency;
  // The IOMMU checks the function's windows; a refused request is counted there and answered
  // with SLVERR on every beat, and touches no memory.
  r.err = !iommu_.dma_read(user, addr, r.data.data(), std::size_t{beats} * kBeat);
  if (r.err) {
    std::memset(r.data.data(), 0, std::size_t{beats} * kBeat);
    ++pc_.stats.dma_refused;
  }
  ++count_;
}

// ---------------------------------------------------------------- host write

HostWritePort::HostWritePort(PortContext& pc, Iommu& iommu) : pc_(pc), iommu_(iommu) {
  ring_.resize(kShellRing);
  for (auto& w : ring_) {
    w.data.resize(kMaxBeats * kBeat);
    w.strb.resize(kMaxBeats);
  }
  b_.resize(kShellRing);
}

void HostWritePort::sample() {
  Vkeel_card& t = pc_.top;
  aw_check_.check(pc_.stats, t.m_axi_host_awvalid, t.m_axi_host_awready, t.m_axi_host_awaddr,
                  t.m_axi_host_awlen, t.m_axi_host_awid);
  if (t.m_axi_host_wvalid && t.m_axi_host_wready && count_ != 0) {
    const Burst& w = ring_[head_];
    if ((t.m_axi_host_wlast != 0) != (w.got + 1 == w.beats)) ++pc_.stats.protocol_errors;
  }
  if (t.m_axi_host_bvalid && t.m_axi_host_bready) {
    b_shown_ = false;
    b_head_ = (b_head_ + 1) % kShellRing;
    --b_count_;
  }
  if (t.m_axi_host_awvalid && t.m_axi_host_awready) {
    Burst& w = ring_[(head_ + count_) % kShellRing];
    w.id = t.m_axi_host_awid;
    w.user = t.m_axi_host_awuser;
    w.addr = t.m_axi_host_awaddr;
    w.beats = t.m_axi_host_awlen + 1u;
    w.got = 0;
    ++count_;
  }
  if (t.m_axi_host_wvalid && t.m_axi_host_wready) {
    Burst& w = ring_[head_];
    std::memcpy(w.data.data() + std::size_t{w.got} * kBeat, t.m_axi_host_wdata.data(), kBeat);
    w.strb[w.got] = t.m_axi_host_wstrb;
    ++pc_.stats.host_write_beats;
    if (w.id == 0)
      pc_.stats.host_data_bytes += static_cast<unsigned>(__builtin_popcountll(w.strb[w.got]));
    ++w.got;
    if (t.m_axi_host_wlast || w.got == w.beats) {
      finish(w);
      head_ = (head_ + 1) % kShellRing;
      --count_;
    }
  }
}

void HostWritePort::drive() {
  Vkeel_card& t = pc_.top;
  t.m_axi_host_awready = count_ < kShellRing && !pc_.bp.stall();
  t.m_axi_host_wready = count_ != 0 && !pc_.bp.stall();
  if (b_count_ != 0 && b_[b_head_].ready_at <= pc_.cycle && (b_shown_ || !pc_.bp.stall())) {
    b_shown_ = true;
    const WriteResp& b = b_[b_head_];
    t.m_axi_host_bvalid = 1;
    t.m_axi_host_bid = b.id;
    t.m_axi_host_buser = b.user;
    t.m_axi_host_bresp = b.resp;
  } else {
    t.m_axi_host_bvalid = 0;
  }
}

void HostWritePort::finish(Burst& w) {
  // The strobed bytes: one span from the first to the last (the card never leaves holes except
  // in beats it could not fill, which are all-zero strobes).
  std::size_t first = 0;
  std::size_t last = 0;
  bool any = false;
  for (unsigned i = 0; i < w.beats; ++i) {
    const std::uint64_t s = w.strb[i];
    if (s == 0) continue;
    const std::size_t lo = std::size_t{i} * kBeat + static_cast<unsigned>(__builtin_ctzll(s));
    const std::size_t hi = std::size_t{i} * kBeat + 63 - static_cast<unsigned>(__builtin_clzll(s));
    if (!any) first = lo;
    last = hi;
    any = true;
  }
  std::uint8_t resp = kOkay;
  if (any) {
    const std::uint64_t iova = w.addr + first;
    const std::size_t len = last - first + 1;
    if (!iommu_.covered(w.user, iova, len)) {
      iommu_.count_fault(w.user);
      ++pc_.stats.dma_refused;
      resp = kSlvErr;
    } else if (w.id != 0) {
      // A completion queue entry: its last dword (phase tag) becomes visible last.
      ++pc_.stats.completions;
      if (!iommu_.dma_write_release_last32(w.user, iova, w.data.data() + first, len)) {
        resp = kSlvErr;
      }
    } else {
      // Contiguous runs of strobed bytes, whole beats at a time where possible.
      std::size_t run_start = 0;
      std::size_t run_len = 0;
      auto write_run = [&] {
        if (run_len != 0 &&
            !iommu_.dma_write(w.user, w.addr + run_start, w.data.data() + run_start, run_len)) {
          resp = kSlvErr;
        }
        run_len = 0;
      };
      auto add = [&](std::size_t pos, std::size_t n) {
        if (run_len != 0 && run_start + run_len == pos) {
          run_len += n;
          return;
        }
        write_run();
        run_start = pos;
        run_len = n;
      };
      for (unsigned i = 0; i < w.beats; ++i) {
        const std::uint64_t s = w.strb[i];
        if (s == kAllStrobes) {
          add(std::size_t{i} * kBeat, kBeat);
          continue;
        }
        for (unsigned b = 0; b < kBeat; ++b) {
          if (((s >> b) & 1u) != 0) add(std::size_t{i} * kBeat + b, 1);
        }
      }
      write_run();
    }
  }
  WriteResp& b = b_[(b_head_ + b_count_) % kShellRing];
  b = WriteResp{w.id, w.user, resp, pc_.cycle + pc_.cfg.write_resp_latency};
  ++b_count_;
}

}  // namespace keel::fpga::sim
