// VfioCard::open on hosts that are not ready, laid out in a fake sysfs and /dev: each missing
// piece is named, in the order a person setting up a board meets them. Nothing here touches
// real hardware or the real /sys.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "fake_sysfs.h"
#include "keel/fpga/vfio/vfio_card.h"

namespace keel::fpga::vfio {
namespace {

using keel::testing::FakeSysfs;
using keel::testing::TempDir;

constexpr const char* kPf = "0000:3b:00.0";

class VfioOpenTest : public ::testing::Test {
 protected:
  VfioOptions options() const {
    VfioOptions o;
    o.sysfs_root = sysfs_.root().string();
    o.dev_root = dev_.path().string();
    return o;
  }
  /// A /dev/vfio/vfio that exists but is a plain file, not the VFIO character device.
  void fake_container_node() {
    std::filesystem::create_directories(dev_.path() / "vfio");
    std::ofstream(dev_.path() / "vfio" / "vfio") << "";
  }
  void expect_unavailable(const char* what) {
    const auto card = VfioCard::open(kPf, options());
    ASSERT_FALSE(card.ok());
    EXPECT_EQ(card.error().code, Errc::unavailable) << to_string(card.error());
    EXPECT_NE(card.error().message.find(what), std::string::npos) << card.error().message;
  }

  FakeSysfs sysfs_;
  TempDir dev_;
};

TEST_F(VfioOpenTest, MalformedAddressIsInvalid) {
  const auto card = VfioCard::open("0000:3b:00", options());

  ASSERT_FALSE(card.ok());
  EXPECT_EQ(card.error().code, Errc::invalid_argument);
}

TEST_F(VfioOpenTest, NoSuchDevice) {
  expect_unavailable("no PCI device 0000:3b:00.0 in ");
  expect_unavailable("/bus/pci/devices");
}

TEST_F(VfioOpenTest, NoVfioDriver) {
  sysfs_.add_pf(kPf, 8);

  expect_unavailable("/vfio/vfio not present: load vfio-pci (modprobe vfio-pci)");
}

TEST_F(VfioOpenTest, NoIommuGroup) {
  sysfs_.add_pf(kPf, 8);
  fake_container_node();

  expect_unavailable("has no IOMMU group");
}

TEST_F(VfioOpenTest, BoundToAnotherDriver) {
  sysfs_.add_pf(kPf, 8);
  sysfs_.set_group(kPf, 7);
  sysfs_.bind(kPf, "xocl");
  fake_container_node();

  expect_unavailable("is bound to xocl, not vfio-pci");
  expect_unavailable("driver_override");
}

TEST_F(VfioOpenTest, BoundToNoDriver) {
  sysfs_.add_pf(kPf, 8);
  sysfs_.set_group(kPf, 7);
  fake_container_node();

  expect_unavailable("is bound to no driver, not vfio-pci");
}

TEST_F(VfioOpenTest, ContainerNodeThatIsNotVfio) {
  sysfs_.add_pf(kPf, 8);
  sysfs_.set_group(kPf, 7);
  sysfs_.bind(kPf, "vfio-pci");
  fake_container_node();

  expect_unavailable("is not a VFIO container");
}

}  // namespace
}  // namespace keel::fpga::vfio
