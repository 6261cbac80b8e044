// The PCIe shell model: the card, its clock and the per-port models of shell_ports.h (host
// memory through the IOMMU, card DDR, flush, translation checks, MSI-X, side band and the
// AXI4-Lite master for BAR accesses), composed.
#include "shell.h"

#include "Vkeel_card.h"
#include "verilated.h"

namespace keel::fpga::sim {

Shell::Shell(const ShellConfig& config, Iommu& iommu, CardStorage& storage,
             std::vector<std::unique_ptr<MsixInterrupts>>& irqs,
             std::vector<std::unique_ptr<MsixInterrupts>>& nic_irqs, NicLink& link)
    : cfg_(config),
      irqs_(irqs),
      ctx_(std::make_unique<VerilatedContext>()),
      top_(std::make_unique<Vkeel_card>(ctx_.get(), "keel_card")),
      bp_(config.stall_percent, config.stall_seed),
      pc_{*top_, cfg_, cycle_, bp_, st_},
      host_read_(pc_, iommu),
      host_write_(pc_, iommu),
      ddr_read_(pc_, storage),
      ddr_write_(pc_, storage),
      ats_(pc_, iommu, static_cast<unsigned>(irqs.size())),
      msix_(pc_, irqs),
      side_band_(pc_, irqs, ats_),
      flush_(pc_, storage),
      mmio_(pc_, iommu),
      nic_(pc_, iommu, nic_irqs, link) {
  top_->cfg_max_vfs = static_cast<std::uint8_t>(cfg_.max_vfs);
  top_->cfg_max_ioq = static_cast<std::uint8_t>(cfg_.max_ioq);
  top_->cfg_storage_lbas = storage.bytes() >> 9;
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
  mmio_.start(op, num_vfs());
  drive();
  top_->eval();
}

void Shell::request_flr(unsigned fn) { side_band_.request_flr(fn); }
void Shell::request_dbg(const DbgOp& op) { side_band_.request_dbg(op); }

void Shell::set_refuse(unsigned fn, bool on) noexcept { ats_.set_refuse(fn, on); }

std::uint64_t Shell::flr_done(unsigned fn) const noexcept { return side_band_.flr_done(fn); }

bool Shell::quiet() const noexcept {
  return host_read_.quiet() && host_write_.quiet() && ddr_read_.quiet() && ddr_write_.quiet() &&
         ats_.quiet() && flush_.quiet() && !mmio_.busy() && side_band_.quiet() && nic_.quiet();
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

// ---------------------------------------------------------------- the clock

void Shell::cycle() {
  sample();
  top_->clk = 1;
  top_->eval();
  ++cycle_;
  num_vfs_.store(top_->status_num_vfs, std::memory_order_release);
  removed_.store(top_->status_vf_removed, std::memory_order_release);
  nic_num_vfs_.store(top_->status_nic_num_vfs, std::memory_order_release);
  drive();
  top_->clk = 0;
  top_->eval();
}

// Before the edge: every handshake of this cycle, with the values both sides present now.
// Host reads are served from memory before this cycle's host writes land (and DDR likewise).
void Shell::sample() {
  host_read_.sample();
  host_write_.sample();
  ddr_read_.sample();
  ddr_write_.sample();
  ats_.sample();
  msix_.sample();
  side_band_.sample();
  flush_.sample();
  mmio_.sample();
  nic_.sample();
}

// After the edge: what the shell presents during the next cycle. The order is the order the
// ports draw back-pressure from the shared stream.
void Shell::drive() {
  host_read_.drive();
  host_write_.drive();
  ddr_read_.drive();
  ddr_write_.drive();
  ats_.drive();
  msix_.drive();
  side_band_.drive();
  flush_.drive();
  top_->s_skip_valid = 0;
  mmio_.drive();
  nic_.drive();
}

}  // namespace keel::fpga::sim
