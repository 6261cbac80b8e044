// Card specs for real boards: PCI addresses and XRT indices are checked before any backend
// runs, and a board that is not here is reported as unavailable with what is missing.
#include <gtest/gtest.h>

#include <string>

#include "keel/fpga/card.h"
#include "keel/pci/pci_address.h"

namespace keel {
namespace {

TEST(PciAddress, CanonicalFormPassesThrough) {
  const auto a = pci::parse_pci_address("0000:3b:00.1");

  ASSERT_TRUE(a.ok()) << to_string(a.error());
  EXPECT_EQ(*a, "0000:3b:00.1");
}

TEST(PciAddress, ShortFormAndUpperCaseAreNormalised) {
  const auto short_form = pci::parse_pci_address("3B:1f.7");
  const auto long_domain = pci::parse_pci_address("10000:E3:00.0");

  ASSERT_TRUE(short_form.ok()) << to_string(short_form.error());
  ASSERT_TRUE(long_domain.ok()) << to_string(long_domain.error());
  EXPECT_EQ(*short_form, "0000:3b:1f.7");
  EXPECT_EQ(*long_domain, "10000:e3:00.0");
}

TEST(PciAddress, MalformedAddressesNameTheBadPart) {
  struct Case {
    const char* text;
    const char* why;
  };
  const Case cases[] = {
      {"", "no '.'"},
      {"0000:3b:00", "no '.'"},
      {"3b.0", "no ':'"},
      {"0000:3b:00.8", "function"},
      {"0000:3b:00.", "function"},
      {"0000:3b:00.10", "function"},
      {"0000:3b:20.0", "at most 1f"},
      {"0000:3b:0.0", "device must be 2"},
      {"0000:3:00.0", "bus must be 2"},
      {"000:3b:00.0", "domain"},
      {"00000000a:3b:00.0", "domain"},
      {"zzzz:3b:00.0", "domain"},
      {"0000:3b:00.0 ", "function"},
      {"../../../etc/x.0", "no ':'"},
      {"0000:0000:3b:00.0", "domain"},
  };
  for (const Case& c : cases) {
    const auto a = pci::parse_pci_address(c.text);
    ASSERT_FALSE(a.ok()) << "'" << c.text << "' was accepted as " << *a;
    EXPECT_EQ(a.error().code, Errc::invalid_argument);
    EXPECT_NE(a.error().message.find(c.why), std::string::npos)
        << c.text << ": " << a.error().message;
    EXPECT_NE(a.error().message.find("dddd:bb:dd.f"), std::string::npos);
  }
}

TEST(CardSpec, MalformedVfioSpecsAreInvalid) {
  for (const char* spec : {"vfio", "vfio:", "vfio:3b", "vfio:0000:3b:00.9", "vfio:0000:3b:00.1x",
                           "vfio:/sys/bus/pci/devices/0000:3b:00.1"}) {
    const auto card = fpga::open_card(spec);
    ASSERT_FALSE(card.ok()) << spec;
    EXPECT_EQ(card.error().code, Errc::invalid_argument) << spec << ": " << card.error().message;
    EXPECT_NE(card.error().message.find(spec), std::string::npos) << card.error().message;
  }
}

TEST(CardSpec, MalformedXrtSpecsAreInvalid) {
  for (const char* spec : {"xrt", "xrt:", "xrt:abc", "xrt:-1", "xrt:+1", "xrt:1.0", "xrt:0x1",
                           "xrt: 1", "xrt:1 ", "xrt:99999999999999999999"}) {
    const auto card = fpga::open_card(spec);
    ASSERT_FALSE(card.ok()) << spec;
    EXPECT_EQ(card.error().code, Errc::invalid_argument) << spec << ": " << card.error().message;
    EXPECT_NE(card.error().message.find("xrt:<device index>"), std::string::npos)
        << card.error().message;
  }
}

TEST(CardSpec, UnknownBackendIsInvalid) {
  const auto card = fpga::open_card("pcie:0000:3b:00.1");

  ASSERT_FALSE(card.ok());
  EXPECT_EQ(card.error().code, Errc::invalid_argument);
  EXPECT_NE(card.error().message.find("vfio:<PCI address>"), std::string::npos);
}

// On a machine without the board (CI, this container) the spec is well formed, so the answer
// is unavailable, naming what is missing: the device, or the VFIO driver.
TEST(CardSpec, VfioWithoutABoardIsUnavailableAndSaysWhy) {
  const auto card = fpga::open_card("vfio:0000:3b:00.1");

  if (card.ok()) GTEST_SKIP() << "a real card answers at 0000:3b:00.1: " << (*card)->describe();
  EXPECT_EQ(card.error().code, Errc::unavailable) << to_string(card.error());
  const std::string& msg = card.error().message;
  const bool names_missing_piece = msg.find("no PCI device 0000:3b:00.1") != std::string::npos ||
                                   msg.find("/dev/vfio") != std::string::npos ||
                                   msg.find("vfio-pci") != std::string::npos ||
                                   msg.find("IOMMU") != std::string::npos ||
                                   msg.find("not part of this build") != std::string::npos;
  EXPECT_TRUE(names_missing_piece) << msg;
}

TEST(CardSpec, XrtWithoutABoardIsUnavailableAndSaysWhy) {
  const auto card = fpga::open_card("xrt:0");

  if (card.ok()) GTEST_SKIP() << "a real XRT board answers: " << (*card)->describe();
  EXPECT_EQ(card.error().code, Errc::unavailable) << to_string(card.error());
  const std::string& msg = card.error().message;
  const bool names_missing_piece = msg.find("XRT") != std::string::npos ||
                                   msg.find("KEEL_XCLBIN") != std::string::npos ||
                                   msg.find("not part of this build") != std::string::npos;
  EXPECT_TRUE(names_missing_piece) << msg;
}

TEST(CardSpec, WellFormedShortVfioAddressIsAccepted) {
  const auto card = fpga::open_card("vfio:3b:00.1");

  if (card.ok()) GTEST_SKIP() << "a real card answers at 0000:3b:00.1";
  EXPECT_NE(card.error().code, Errc::invalid_argument) << to_string(card.error());
}

}  // namespace
}  // namespace keel
