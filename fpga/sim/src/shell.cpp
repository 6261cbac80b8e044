// The PCIe shell model: per-clock AXI slaves for host memory (through the IOMMU) and card DDR
// (the mmapped image), an AXI4-Lite master for BAR accesses, translation checks, MSI-X, FLR,
// flush and the fault-injection port.
#include "shell.h"

#include <algorithm>
#include <cstring>

#include "Vkeel_card.h"
#include "verilated.h"

namespace keel::fpga::sim {
namespace {

constexpr unsigned kRing = 32;       // outstanding requests per AXI channel
constexpr unsigned kMaxBeats = 256;  // AXI4 burst limit
constexpr unsigned kBeat = 64;       // bytes per 512-bit beat
constexpr std::uint8_t kOkay = 0;
constexpr std::uint8_t kSlvErr = 2;
constexpr std::uint64_t kAllStrobes = ~std::uint64_t{0};

}  // namespace

struct Shell::RdReq {
  std::uint8_t id = 0;
  std::uint8_t user = 0;
  std::uint64_t addr = 0;
  unsigned beats = 0;
  unsigned sent = 0;
  bool err = false;
  std::uint64_t ready_at = 0;
  std::vector<std::byte> data;
};

struct Shell::WrReq {
  std::uint8_t id = 0;
  std::uint8_t user = 0;
  std::uint64_t addr = 0;
  unsigned beats = 0;
  unsigned got = 0;
  std::vector<std::byte> data;
  std::vector<std::uint64_t> strb;
};

struct Shell::Seen {
  bool ats_resp = false;
  bool flush_done = false;
};

Shell::Shell(const ShellConfig& config, Iommu& iommu, CardStorage& storage,
             std::vector<std::unique_ptr<MsixInterrupts>>& irqs)
    : cfg_(config),
      iommu_(iommu),
      storage_(storage),
      irqs_(irqs),
      ctx_(std::make_unique<VerilatedContext>()),
      seen_(std::make_unique<Seen>()),
      stall_state_(config.stall_seed | 1) {
  top_ = std::make_unique<Vkeel_card>(ctx_.get(), "keel_card");
  hr_.resize(kRing);
  dr_.resize(kRing);
  for (auto& r : hr_) r.data.resize(kMaxBeats * kBeat);
  for (auto& r : dr_) r.data.resize(kMaxBeats * kBeat);
  hw_.resize(kRing);
  for (auto& w : hw_) {
    w.data.resize(kMaxBeats * kBeat);
    w.strb.resize(kMaxBeats);
  }
  hb_.resize(kRing);
  db_.resize(kRing);
  dwq_addr_.resize(kRing);
  dwq_beats_.resize(kRing);
  flr_queue_.reserve(16);
  dbg_queue_.reserve(16);
  const unsigned functions = static_cast<unsigned>(irqs_.size());
  refuse_ = std::make_unique<std::atomic<bool>[]>(functions);
  flr_done_ = std::make_unique<std::atomic<std::uint64_t>[]>(functions);

  top_->cfg_max_vfs = static_cast<std::uint8_t>(cfg_.max_vfs);
  top_->cfg_max_ioq = static_cast<std::uint8_t>(cfg_.max_ioq);
  top_->cfg_storage_lbas = storage_.bytes() >> 9;
}

Shell::~Shell() {
  if (top_) top_->final();
}

void Shell::reset(unsigned cycles) {
  top_->rst = 1;
  top_->clk = 0;
  top_->eval();
  for (unsigned i = 0; i < cycles; ++i) {
    top_->clk = 1;
    top_->eval();
    top_->clk = 0;
    top_->eval();
  }
  top_->rst = 0;
  drive();
  top_->eval();
}

void Shell::start_mmio(const MmioOp& op) {
  mmio_op_ = op;
  mmio_nv_before_ = num_vfs();
  mmio_state_ = op.write ? MmioState::w_addr : MmioState::r_addr;
  drive();
  top_->eval();
}

void Shell::request_flr(unsigned fn) { flr_queue_.push_back(fn); }
void Shell::request_dbg(const DbgOp& op) { dbg_queue_.push_back(op); }

void Shell::set_refuse(unsigned fn, bool on) noexcept {
  if (fn < irqs_.size()) refuse_[fn].store(on, std::memory_order_relaxed);
}

std::uint64_t Shell::flr_done(unsigned fn) const noexcept {
  if (fn >= irqs_.size()) return 0;
  return flr_done_[fn].load(std::memory_order_acquire);
}

bool Shell::quiet() const noexcept {
  return hr_count_ == 0 && hw_count_ == 0 && hb_count_ == 0 && dr_count_ == 0 && dwq_count_ == 0 &&
         db_count_ == 0 && !ats_pending_ && !flush_busy_ && mmio_state_ == MmioState::idle &&
         flr_queue_.empty() && dbg_queue_.empty();
}

bool Shell::can_skip() const noexcept { return top_->status_idle && quiet(); }

std::uint32_t Shell::wake() const noexcept { return top_->status_wake; }

void Shell::skip(std::uint32_t k) {
  top_->s_skip_valid = 1;
  top_->s_skip_cycles = k;
  top_->eval();
  cycle();  // drive() takes the skip request away again
  cycle_ += k;
  st_.skipped_cycles += k;
}

SimStats Shell::stats() const {
  SimStats s = st_;
  s.cycles = cycle_;
  return s;
}

// ---------------------------------------------------------------- back-pressure, checks

bool Shell::stall() noexcept {
  if (cfg_.stall_percent == 0) return false;
  // xorshift64*: cheap and seeded, so a stalled run is reproducible.
  stall_state_ ^= stall_state_ >> 12;
  stall_state_ ^= stall_state_ << 25;
  stall_state_ ^= stall_state_ >> 27;
  return (stall_state_ * 0x2545F4914F6CDD1Dull >> 33) % 100 < cfg_.stall_percent;
}

// Before the edge: an address that was offered and not taken must still be offered,
// unchanged; no burst may cross a 4 KiB page.
void Shell::check_protocol() {
  Vkeel_card& t = *top_;
  auto check = [&](AddrBeat& prev, bool valid, bool ready, std::uint64_t addr, unsigned len,
                   unsigned id) {
    if (prev.valid && (!valid || addr != prev.addr || len != prev.len || id != prev.id)) {
      ++st_.protocol_errors;
    }
    if (valid && (addr & 4095) + (std::uint64_t{len} + 1) * kBeat > 4096) ++st_.protocol_errors;
    prev = AddrBeat{valid && !ready, addr, len, id};
  };
  check(prev_har_, t.m_axi_host_arvalid, t.m_axi_host_arready, t.m_axi_host_araddr,
        t.m_axi_host_arlen, t.m_axi_host_arid);
  check(prev_haw_, t.m_axi_host_awvalid, t.m_axi_host_awready, t.m_axi_host_awaddr,
        t.m_axi_host_awlen, t.m_axi_host_awid);
  check(prev_dar_, t.m_axi_ddr_arvalid, t.m_axi_ddr_arready, t.m_axi_ddr_araddr, t.m_axi_ddr_arlen,
        0);
  check(prev_daw_, t.m_axi_ddr_awvalid, t.m_axi_ddr_awready, t.m_axi_ddr_awaddr, t.m_axi_ddr_awlen,
        0);
  if (t.m_axi_host_wvalid && t.m_axi_host_wready && hw_count_ != 0) {
    const WrReq& w = hw_[hw_head_];
    if ((t.m_axi_host_wlast != 0) != (w.got + 1 == w.beats)) ++st_.protocol_errors;
  }
  if (t.m_axi_ddr_wvalid && t.m_axi_ddr_wready) {
    const unsigned left = dw_left_ != 0 ? dw_left_ : (dwq_count_ != 0 ? dwq_beats_[dwq_head_] : 0);
    if ((t.m_axi_ddr_wlast != 0) != (left == 1)) ++st_.protocol_errors;
  }
}

// ---------------------------------------------------------------- the clock

void Shell::cycle() {
  sample();
  top_->clk = 1;
  top_->eval();
  ++cycle_;
  num_vfs_.store(top_->status_num_vfs, std::memory_order_release);
  removed_.store(top_->status_vf_removed, std::memory_order_release);
  drive();
  top_->clk = 0;
  top_->eval();
}

// Before the edge: every handshake of this cycle, with the values both sides present now.
void Shell::sample() {
  Vkeel_card& t = *top_;
  Seen& s = *seen_;
  check_protocol();
  if (t.m_axi_host_rvalid && t.m_axi_host_rready) hr_shown_ = false;
  if (t.m_axi_host_bvalid && t.m_axi_host_bready) hb_shown_ = false;
  if (t.m_axi_ddr_rvalid && t.m_axi_ddr_rready) dr_shown_ = false;
  if (t.m_axi_ddr_bvalid && t.m_axi_ddr_bready) db_shown_ = false;

  // ---- host read
  if (t.m_axi_host_rvalid && t.m_axi_host_rready) {
    RdReq& r = hr_[hr_head_];
    ++st_.host_read_beats;
    if (r.id != 0) st_.host_data_bytes += kBeat;
    if (++r.sent == r.beats) {
      hr_head_ = (hr_head_ + 1) % kRing;
      --hr_count_;
    }
  }
  if (t.m_axi_host_arvalid && t.m_axi_host_arready) {
    host_read_accept(t.m_axi_host_arid, t.m_axi_host_aruser, t.m_axi_host_araddr,
                     t.m_axi_host_arlen + 1u);
  }
  // ---- host write
  if (t.m_axi_host_bvalid && t.m_axi_host_bready) {
    hb_head_ = (hb_head_ + 1) % kRing;
    --hb_count_;
  }
  if (t.m_axi_host_awvalid && t.m_axi_host_awready) {
    WrReq& w = hw_[(hw_head_ + hw_count_) % kRing];
    w.id = t.m_axi_host_awid;
    w.user = t.m_axi_host_awuser;
    w.addr = t.m_axi_host_awaddr;
    w.beats = t.m_axi_host_awlen + 1u;
    w.got = 0;
    ++hw_count_;
  }
  if (t.m_axi_host_wvalid && t.m_axi_host_wready) {
    WrReq& w = hw_[hw_head_];
    std::memcpy(w.data.data() + std::size_t{w.got} * kBeat, t.m_axi_host_wdata.data(), kBeat);
    w.strb[w.got] = t.m_axi_host_wstrb;
    ++st_.host_write_beats;
    if (w.id == 0)
      st_.host_data_bytes += static_cast<unsigned>(__builtin_popcountll(w.strb[w.got]));
    ++w.got;
    if (t.m_axi_host_wlast || w.got == w.beats) {
      host_write_finish(w);
      hw_head_ = (hw_head_ + 1) % kRing;
      --hw_count_;
    }
  }
  // ---- card DDR
  if (t.m_axi_ddr_rvalid && t.m_axi_ddr_rready) {
    RdReq& r = dr_[dr_head_];
    ++st_.ddr_read_beats;
    if (++r.sent == r.beats) {
      dr_head_ = (dr_head_ + 1) % kRing;
      --dr_count_;
    }
  }
  if (t.m_axi_ddr_arvalid && t.m_axi_ddr_arready) {
    ddr_read_accept(t.m_axi_ddr_araddr, t.m_axi_ddr_arlen + 1u);
  }
  if (t.m_axi_ddr_bvalid && t.m_axi_ddr_bready) {
    db_head_ = (db_head_ + 1) % kRing;
    --db_count_;
  }
  if (t.m_axi_ddr_awvalid && t.m_axi_ddr_awready) {
    const unsigned i = (dwq_head_ + dwq_count_) % kRing;
    dwq_addr_[i] = t.m_axi_ddr_awaddr;
    dwq_beats_[i] = t.m_axi_ddr_awlen + 1u;
    ++dwq_count_;
  }
  if (t.m_axi_ddr_wvalid && t.m_axi_ddr_wready) {
    if (dw_left_ == 0) {  // first beat of the oldest accepted burst
      dw_addr_ = dwq_addr_[dwq_head_];
      dw_left_ = dwq_beats_[dwq_head_];
      dw_err_ = false;
    }
    ++st_.ddr_write_beats;
    const std::uint64_t strb = t.m_axi_ddr_wstrb;
    if (dw_addr_ + kBeat > storage_.bytes() || dw_addr_ + kBeat < dw_addr_) {
      dw_err_ = true;
    } else if (strb == kAllStrobes) {
      std::memcpy(storage_.data() + dw_addr_, t.m_axi_ddr_wdata.data(), kBeat);
    } else if (strb != 0) {
      const auto* src = reinterpret_cast<const std::byte*>(t.m_axi_ddr_wdata.data());
      for (unsigned b = 0; b < kBeat; ++b) {
        if (((strb >> b) & 1u) != 0) storage_.data()[dw_addr_ + b] = src[b];
      }
    }
    dw_addr_ += kBeat;
    if (--dw_left_ == 0) {
      dwq_head_ = (dwq_head_ + 1) % kRing;
      --dwq_count_;
      BResp& b = db_[(db_head_ + db_count_) % kRing];
      b = BResp{0, 0, dw_err_ ? kSlvErr : kOkay, cycle_ + cfg_.write_resp_latency};
      ++db_count_;
    }
  }
  // ---- translation checks
  if (s.ats_resp) {
    s.ats_resp = false;
    ats_pending_ = false;
  }
  if (t.m_ats_valid && t.m_ats_ready) {
    const unsigned fn = t.m_ats_fn;
    const bool refused = fn >= irqs_.size() || refuse_[fn].load(std::memory_order_relaxed) ||
                         !iommu_.covered(fn, t.m_ats_addr, t.m_ats_len);
    if (refused) {
      iommu_.count_fault(fn);
      ++st_.dma_refused;
    }
    ats_ok_ = !refused;
    ats_pending_ = true;
    ats_at_ = cycle_ + cfg_.ats_latency;
  }
  // ---- MSI-X
  if (t.m_msix_valid && t.m_msix_ready) {
    ++st_.msix;
    if (t.m_msix_fn < irqs_.size()) irqs_[t.m_msix_fn]->fire(t.m_msix_vector);
  }
  // ---- function events, FLR and debug requests
  if (t.m_evt_valid) on_event(t.m_evt_fn, t.m_evt_kind);
  if (t.s_flr_valid && t.s_flr_ready) flr_queue_.erase(flr_queue_.begin());
  if (t.s_dbg_valid && t.s_dbg_ready) dbg_queue_.erase(dbg_queue_.begin());
  // ---- flush
  if (s.flush_done) {
    s.flush_done = false;
    flush_done_ = false;
    flush_busy_ = false;
  }
  if (t.m_flush_valid && t.m_flush_ready) {
    flush_err_ = !storage_.flush(t.m_flush_addr, t.m_flush_len).ok();
    flush_busy_ = true;
    flush_done_ = true;
  }
  // ---- AXI4-Lite
  switch (mmio_state_) {
    case MmioState::idle: break;
    case MmioState::w_addr:
      if (t.s_axil_awready) mmio_state_ = MmioState::w_resp;
      break;
    case MmioState::w_resp:
      if (t.s_axil_bvalid) {
        mmio_state_ = MmioState::idle;
        after_mmio_write();
      }
      break;
    case MmioState::r_addr:
      if (t.s_axil_arready) mmio_state_ = MmioState::r_data;
      break;
    case MmioState::r_data:
      if (t.s_axil_rvalid) {
        mmio_result_ = t.s_axil_rdata;
        mmio_state_ = MmioState::idle;
      }
      break;
  }
}

// After the edge: what the shell presents during the next cycle.
void Shell::drive() {
  Vkeel_card& t = *top_;
  Seen& s = *seen_;

  // ---- host read
  t.m_axi_host_arready = hr_count_ < kRing && !stall();
  if (hr_count_ != 0 && hr_[hr_head_].ready_at <= cycle_ && (hr_shown_ || !stall())) {
    hr_shown_ = true;
    const RdReq& r = hr_[hr_head_];
    t.m_axi_host_rvalid = 1;
    t.m_axi_host_rid = r.id;
    t.m_axi_host_ruser = r.user;
    t.m_axi_host_rresp = r.err ? kSlvErr : kOkay;
    t.m_axi_host_rlast = r.sent + 1 == r.beats;
    std::memcpy(t.m_axi_host_rdata.data(), r.data.data() + std::size_t{r.sent} * kBeat, kBeat);
  } else {
    t.m_axi_host_rvalid = 0;
  }
  // ---- host write
  t.m_axi_host_awready = hw_count_ < kRing && !stall();
  t.m_axi_host_wready = hw_count_ != 0 && !stall();
  if (hb_count_ != 0 && hb_[hb_head_].ready_at <= cycle_ && (hb_shown_ || !stall())) {
    hb_shown_ = true;
    const BResp& b = hb_[hb_head_];
    t.m_axi_host_bvalid = 1;
    t.m_axi_host_bid = b.id;
    t.m_axi_host_buser = b.user;
    t.m_axi_host_bresp = b.resp;
  } else {
    t.m_axi_host_bvalid = 0;
  }
  // ---- card DDR
  t.m_axi_ddr_arready = dr_count_ < kRing && !stall();
  if (dr_count_ != 0 && dr_[dr_head_].ready_at <= cycle_ && (dr_shown_ || !stall())) {
    dr_shown_ = true;
    const RdReq& r = dr_[dr_head_];
    t.m_axi_ddr_rvalid = 1;
    t.m_axi_ddr_rresp = r.err ? kSlvErr : kOkay;
    t.m_axi_ddr_rlast = r.sent + 1 == r.beats;
    std::memcpy(t.m_axi_ddr_rdata.data(), r.data.data() + std::size_t{r.sent} * kBeat, kBeat);
  } else {
    t.m_axi_ddr_rvalid = 0;
  }
  t.m_axi_ddr_awready = dwq_count_ < kRing && !stall();
  t.m_axi_ddr_wready = dwq_count_ != 0 && !stall();
  if (db_count_ != 0 && db_[db_head_].ready_at <= cycle_ && (db_shown_ || !stall())) {
    db_shown_ = true;
    t.m_axi_ddr_bvalid = 1;
    t.m_axi_ddr_bresp = db_[db_head_].resp;
  } else {
    t.m_axi_ddr_bvalid = 0;
  }
  // ---- translation checks
  t.m_ats_ready = !ats_pending_ && !stall();
  s.ats_resp = ats_pending_ && ats_at_ <= cycle_;
  t.m_ats_resp_valid = s.ats_resp;
  t.m_ats_resp_ok = ats_ok_;
  // ---- MSI-X, FLR, events, debug
  t.m_msix_ready = !stall();
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
  // ---- flush
  t.m_flush_ready = !flush_busy_ && !stall();
  s.flush_done = flush_done_;
  t.m_flush_done = flush_done_;
  t.m_flush_err = flush_err_;
  t.s_skip_valid = 0;
  // ---- AXI4-Lite
  t.s_axil_awvalid = mmio_state_ == MmioState::w_addr;
  t.s_axil_wvalid = mmio_state_ == MmioState::w_addr;
  t.s_axil_awaddr = mmio_op_.addr;
  t.s_axil_awuser = mmio_op_.fn;
  t.s_axil_wdata = mmio_op_.data;
  t.s_axil_wstrb = mmio_op_.strb;
  t.s_axil_bready = mmio_state_ == MmioState::w_resp;
  t.s_axil_arvalid = mmio_state_ == MmioState::r_addr;
  t.s_axil_araddr = mmio_op_.addr;
  t.s_axil_aruser = mmio_op_.fn;
  t.s_axil_rready = mmio_state_ == MmioState::r_data;
}

// ---------------------------------------------------------------- transfers

void Shell::host_read_accept(std::uint8_t id, std::uint8_t user, std::uint64_t addr,
                             unsigned beats) {
  RdReq& r = hr_[(hr_head_ + hr_count_) % kRing];
  r.id = id;
  r.user = user;
  r.addr = addr;
  r.beats = beats;
  r.sent = 0;
  r.ready_at = cycle_ + cfg_.host_read_latency;
  // The IOMMU checks the function's windows; a refused request is counted there and answered
  // with SLVERR on every beat, and touches no memory.
  r.err = !iommu_.dma_read(user, addr, r.data.data(), std::size_t{beats} * kBeat);
  if (r.err) {
    std::memset(r.data.data(), 0, std::size_t{beats} * kBeat);
    ++st_.dma_refused;
  }
  ++hr_count_;
}

void Shell::host_write_finish(WrReq& w) {
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
      ++st_.dma_refused;
      resp = kSlvErr;
    } else if (w.id != 0) {
      // A completion queue entry: its last dword (phase tag) becomes visible last.
      ++st_.completions;
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
  BResp& b = hb_[(hb_head_ + hb_count_) % kRing];
  b = BResp{w.id, w.user, resp, cycle_ + cfg_.write_resp_latency};
  ++hb_count_;
}

void Shell::ddr_read_accept(std::uint64_t addr, unsigned beats) {
  RdReq& r = dr_[(dr_head_ + dr_count_) % kRing];
  r.addr = addr;
  r.beats = beats;
  r.sent = 0;
  r.ready_at = cycle_ + cfg_.ddr_read_latency;
  const std::uint64_t bytes = std::uint64_t{beats} * kBeat;
  r.err = addr + bytes > storage_.bytes() || addr + bytes < addr;
  if (r.err) {
    std::memset(r.data.data(), 0, bytes);
  } else {
    std::memcpy(r.data.data(), storage_.data() + addr, bytes);
  }
  ++dr_count_;
}

void Shell::on_event(unsigned fn, unsigned kind) {
  if (fn >= irqs_.size()) return;
  irqs_[fn]->clear();
  if (kind == 0) {  // FLR finished: per-function shell state goes too
    refuse_[fn].store(false, std::memory_order_relaxed);
    flr_done_[fn].fetch_add(1, std::memory_order_acq_rel);
    irqs_[fn]->wake_all();
  }
}

void Shell::after_mmio_write() {
  // NUM_VFS (upper half of PF offset 8) set to 0: the VFs' DMA windows go with them.
  if (mmio_op_.fn != 0 || mmio_op_.addr != 0x08 || (mmio_op_.strb & 0xF0) == 0 ||
      (mmio_op_.strb & 0x0F) != 0) {
    return;
  }
  const unsigned now = top_->status_num_vfs;
  if (mmio_nv_before_ != 0 && now == 0) {
    for (unsigned i = 0; i < mmio_nv_before_; ++i) iommu_.unmap_all(i + 1);
  }
}

}  // namespace keel::fpga::sim
