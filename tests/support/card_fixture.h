// The backend-parameterised card fixture: every test that talks to a card derives from it and
// runs unchanged on model, sim and a real board (KEEL_CARD).
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/card.h"
#include "nvme_host.h"

namespace keel::testing {

/// What a test asks of the card it gets. Real boards ignore what they cannot change.
struct FixtureOptions {
  std::uint64_t storage_bytes = 64ull << 20;
  unsigned max_vfs = 8;
  unsigned max_ioq_per_vf = 4;
  bool lockstep = true;
  std::string image_path;
};

class CardTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { open(FixtureOptions{}); }

  /// (Re)opens the card for this test. Skips the test when the backend is unavailable here.
  void open(const FixtureOptions& o);

  fpga::Function& pf() { return card_->pf(); }

  /// What the PF manager does: gives VF `vf` a slice and queues and sets CTRL.ENABLE.
  /// Fails the test if the card refuses.
  fpga::Function& enable_vf(unsigned vf, std::uint64_t slice_base, std::uint64_t slice_lbas,
                            unsigned ioq = 2, unsigned weight = 1, unsigned rate_mbps = 0);
  /// Writes the VFCFG resources and ENABLE; returns VFCFG STATUS.ERR_CODE (0 when accepted).
  std::uint32_t try_enable_vf(unsigned vf, std::uint64_t slice_base, std::uint64_t slice_lbas,
                              unsigned ioq = 2, unsigned weight = 1, unsigned rate_mbps = 0);
  /// set_num_vfs(n) and contiguous slices of `lbas_each` from LBA 0.
  void enable_vfs(unsigned n, std::uint64_t lbas_each, unsigned ioq = 2);

  /// A VF with its controller enabled and IO queue pair 1 created.
  std::unique_ptr<NvmeHost> ready_host(unsigned vf, std::uint16_t io_entries = 64,
                                       bool irq = false);

  std::uint64_t vfcfg(unsigned vf, std::uint64_t reg) {
    return pf().read64(regs::vfcfg::at(vf, reg));
  }

  std::unique_ptr<fpga::Card> card_;
};

/// "vfio:0000:3b:00.1" -> "vfio_0000_3b_00_1" for test names.
std::string backend_test_name(const ::testing::TestParamInfo<std::string>& info);

#define KEEL_INSTANTIATE_CARD_SUITE(Suite)                                                      \
  INSTANTIATE_TEST_SUITE_P(Backends, Suite, ::testing::ValuesIn(::keel::fpga::test_backends()), \
                           ::keel::testing::backend_test_name)

/// Asserts that a Status or Result is ok, printing its error otherwise.
#define KEEL_ASSERT_OK(expr)                                                         \
  do {                                                                               \
    const auto& keel_assert_ok_ = (expr);                                            \
    ASSERT_TRUE(keel_assert_ok_.ok()) << ::keel::to_string(keel_assert_ok_.error()); \
  } while (0)

/// Status field (SCT/SC, no DNR/More) of a completion.
inline nvme::StatusCode sc_of(const nvme::Cqe& c) { return nvme::status_base(nvme::cqe_status(c)); }

}  // namespace keel::testing
