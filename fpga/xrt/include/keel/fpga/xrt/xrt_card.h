// keel/fpga/xrt/xrt_card.h - a keel card on a Xilinx board, reached through XRT.
//
// XRT opens the board's user PF, loads the keel xclbin, and gives access to the PF's
// registers through xrt::ip and to host memory the card can reach through host-only buffers.
// That is all XRT reaches: the card's VFs are separate PCIe functions that XRT's xocl driver
// does not bind, and the keel register map has no window through which the PF could reach
// them. So on XRT the card is PF-only: max_vfs() is 0, set_num_vfs(n > 0) and vf() fail
// with a message pointing at the vfio backend. See docs/boards.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "keel/fpga/card.h"

namespace keel::fpga::xrt {

/// What to load and where the PF registers are. Every member has a default.
struct XrtOptions {
  /// The keel xclbin. Empty: the path in $KEEL_XCLBIN.
  std::string xclbin;
  /// The IP holding the PF registers, as XRT names it ("kernel:{instance}" or the kernel
  /// name). Empty: $KEEL_XRT_IP, else the xclbin's only IP, else its one IP named keel*.
  std::string ip_name;
};

/// A PF-only card on XRT device `index`. Free-running: lockstep() is false, step() does
/// nothing, now_ns() is the host's steady clock, and there is no fault injector.
///
/// Registers: 32-bit accesses through xrt::ip; a 64-bit access is two 32-bit ones, low dword
/// first. A failed access reads as all ones and drops writes, as a PCIe function that is gone.
/// DMA: alloc_dma() returns host-only xrt::bo buffers whose device address is the IOVA; the
/// card must see host memory (an xclbin with a HOST memory bank, host memory enabled in the
/// shell). map_dma() cannot place memory at a chosen IOVA on XRT: it fails with unavailable.
/// Interrupts: the PF raises none. FLR: the PF cannot be reset this way.
class XrtCard final : public Card {
 public:
  /// Opens XRT device `index`, loads the xclbin and opens the PF IP. Names the first thing
  /// missing. Errors: unavailable (XRT sees no such device, no xclbin named, the xclbin does
  /// not load, no PF IP), not_found (the xclbin file is missing, or the IP does not answer as
  /// a keel card), invalid_argument (the xclbin cannot be read).
  static Result<std::unique_ptr<XrtCard>> open(unsigned index, const XrtOptions& options = {});

  /// The xclbin open() would load: options.xclbin, else $KEEL_XCLBIN. Errors: unavailable
  /// (neither names one), not_found (the file does not exist).
  static Result<std::string> xclbin_path(const XrtOptions& options);

  ~XrtCard() override;

  std::string_view backend() const noexcept override { return "xrt"; }
  std::string describe() const override;
  Function& pf() noexcept override;
  /// Errors: not_found (always: XRT reaches no VF).
  Result<Function*> vf(unsigned index) override;
  unsigned max_vfs() const noexcept override { return 0; }
  unsigned num_vfs() const noexcept override { return 0; }
  /// 0 is accepted (there is nothing to remove). Errors: unavailable (any n > 0).
  Status set_num_vfs(unsigned n) override;
  bool lockstep() const noexcept override { return false; }
  unsigned step(unsigned) override { return 0; }
  std::uint64_t now_ns() const noexcept override;

  struct Impl;

 private:
  explicit XrtCard(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::fpga::xrt
