// SysfsSriov against a fake sysfs tree: every operation and every error it names.
#include "keel/pci/sysfs.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "fake_sysfs.h"

namespace keel::pci {
namespace {

using keel::testing::FakeSysfs;

constexpr const char* kPf = "0000:3b:00.0";
constexpr const char* kVf0 = "0000:3b:00.1";
constexpr const char* kVf1 = "0000:3b:00.2";

class SysfsSriovTest : public ::testing::Test {
 protected:
  /// A SysfsSriov on the fake tree that records every write and fails the writes that
  /// `refuse` names with its errno.
  SysfsSriov make() {
    SysfsConfig config;
    config.root = fake_.root();
    config.on_write = [this](const std::filesystem::path& attr, std::string_view value) {
      const std::string rel = attr.lexically_relative(fake_.root()).string();
      writes_.emplace_back(rel, std::string(value));
      return refuse_errno_;
    };
    return SysfsSriov(config);
  }

  FakeSysfs fake_;
  std::vector<std::pair<std::string, std::string>> writes_;
  int refuse_errno_ = 0;
};

std::string numvfs_path() { return FakeSysfs::rel(kPf, "sriov_numvfs"); }

TEST_F(SysfsSriovTest, ReadsTotalAndCurrentVfCounts) {
  fake_.add_pf(kPf, 8, 2);
  SysfsSriov s = make();

  const auto total = s.total_vfs(kPf);
  const auto num = s.num_vfs(kPf);

  ASSERT_TRUE(total.ok()) << to_string(total.error());
  ASSERT_TRUE(num.ok()) << to_string(num.error());
  EXPECT_EQ(*total, 8u);
  EXPECT_EQ(*num, 2u);
}

TEST_F(SysfsSriovTest, AcceptsShortAndUpperCaseAddresses) {
  fake_.add_pf("0000:af:00.0", 4);
  SysfsSriov s = make();

  const auto total = s.total_vfs("AF:00.0");

  ASSERT_TRUE(total.ok()) << to_string(total.error());
  EXPECT_EQ(*total, 4u);
  EXPECT_TRUE(s.exists("0000:AF:00.0"));
  EXPECT_FALSE(s.exists("0000:af:00.1"));
}

TEST_F(SysfsSriovTest, NoSuchDeviceIsNamed) {
  SysfsSriov s = make();

  const auto total = s.total_vfs(kPf);

  ASSERT_FALSE(total.ok());
  EXPECT_EQ(total.error().code, Errc::not_found);
  EXPECT_NE(total.error().message.find("no PCI device 0000:3b:00.0"), std::string::npos)
      << total.error().message;
  EXPECT_NE(total.error().message.find("bus/pci/devices"), std::string::npos);
}

TEST_F(SysfsSriovTest, MalformedAddressNeverBecomesAPath) {
  fake_.add_pf(kPf, 8);
  SysfsSriov s = make();

  for (const char* bad : {"../../../etc", "0000:3b:00.0/..", "", "0000:3b:00.8", "0000:3b:20.0",
                          "000:3b:00.0", "0000:3b:0.0", "0000:3b:00.0 "}) {
    const Status st = s.set_num_vfs(bad, 1);
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_EQ(st.error().code, Errc::invalid_argument) << bad;
    EXPECT_NE(st.error().message.find("is not a PCI address"), std::string::npos)
        << st.error().message;
  }
  EXPECT_TRUE(writes_.empty());
}

TEST_F(SysfsSriovTest, DeviceWithoutSriovIsNotCapable) {
  fake_.add_device(kPf);
  SysfsSriov s = make();

  const auto total = s.total_vfs(kPf);
  const Status st = s.set_num_vfs(kPf, 1);

  ASSERT_FALSE(total.ok());
  EXPECT_EQ(total.error().code, Errc::unavailable);
  EXPECT_NE(total.error().message.find("not SR-IOV capable"), std::string::npos);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::unavailable);
}

TEST_F(SysfsSriovTest, GarbageInACountIsAnIoError) {
  fake_.add_pf(kPf, 8);
  fake_.put(FakeSysfs::rel(kPf, "sriov_totalvfs"), "lots\n");
  SysfsSriov s = make();

  const auto total = s.total_vfs(kPf);

  ASSERT_FALSE(total.ok());
  EXPECT_EQ(total.error().code, Errc::io_error);
  EXPECT_NE(total.error().message.find("unexpected content 'lots'"), std::string::npos)
      << total.error().message;
}

TEST_F(SysfsSriovTest, ReadFailureKeepsTheErrnoText) {
  fake_.add_pf(kPf, 8);
  std::filesystem::remove(fake_.device(kPf) / "sriov_numvfs");
  std::filesystem::create_directory(fake_.device(kPf) / "sriov_numvfs");
  SysfsSriov s = make();

  const auto num = s.num_vfs(kPf);

  ASSERT_FALSE(num.ok());
  EXPECT_EQ(num.error().code, Errc::io_error);
  EXPECT_NE(num.error().message.find("Is a directory"), std::string::npos) << num.error().message;
}

TEST_F(SysfsSriovTest, EnablingFromZeroWritesTheCountOnce) {
  fake_.add_pf(kPf, 8);
  SysfsSriov s = make();

  const Status st = s.set_num_vfs(kPf, 4);

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  ASSERT_EQ(writes_.size(), 1u);
  EXPECT_EQ(writes_[0], std::make_pair(numvfs_path(), std::string("4")));
  EXPECT_EQ(fake_.read(numvfs_path()), "4");
}

TEST_F(SysfsSriovTest, ChangingANonZeroCountWritesZeroFirst) {
  fake_.add_pf(kPf, 8, 2);
  SysfsSriov s = make();

  const Status st = s.set_num_vfs(kPf, 4);

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  ASSERT_EQ(writes_.size(), 2u);
  EXPECT_EQ(writes_[0], std::make_pair(numvfs_path(), std::string("0")));
  EXPECT_EQ(writes_[1], std::make_pair(numvfs_path(), std::string("4")));
  EXPECT_EQ(fake_.read(numvfs_path()), "4");
}

TEST_F(SysfsSriovTest, DisablingWritesZero) {
  fake_.add_pf(kPf, 8, 3);
  SysfsSriov s = make();

  const Status st = s.set_num_vfs(kPf, 0);

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  ASSERT_EQ(writes_.size(), 1u);
  EXPECT_EQ(fake_.read(numvfs_path()), "0");
}

TEST_F(SysfsSriovTest, SameCountWritesNothing) {
  fake_.add_pf(kPf, 8, 3);
  SysfsSriov s = make();

  const Status st = s.set_num_vfs(kPf, 3);

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  EXPECT_TRUE(writes_.empty());
}

TEST_F(SysfsSriovTest, MoreThanTotalVfsIsRefusedBeforeAnyWrite) {
  fake_.add_pf(kPf, 8, 2);
  SysfsSriov s = make();

  const Status st = s.set_num_vfs(kPf, 9);

  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::invalid_argument);
  EXPECT_NE(st.error().message.find("at most 8"), std::string::npos) << st.error().message;
  EXPECT_TRUE(writes_.empty());
  EXPECT_EQ(fake_.read(numvfs_path()), "2\n");
}

TEST_F(SysfsSriovTest, KernelRefusalsAreNamed) {
  struct Case {
    int err;
    Errc code;
    const char* text;
  };
  const Case cases[] = {
      {ENOENT, Errc::unavailable, "enable_sriov=1"},
      {EBUSY, Errc::busy, "in use"},
      {ERANGE, Errc::invalid_argument, "more than sriov_totalvfs"},
      {EACCES, Errc::unavailable, "permission denied"},
      {EPERM, Errc::unavailable, "permission denied"},
      {EIO, Errc::io_error, "Input/output error"},
      {ENOMEM, Errc::io_error, "Cannot allocate memory"},
  };
  for (const Case& c : cases) {
    FakeSysfs fresh;
    fresh.add_pf(kPf, 8);
    SysfsConfig config;
    config.root = fresh.root();
    config.on_write = [&](const std::filesystem::path&, std::string_view) { return c.err; };
    SysfsSriov s(config);

    const Status st = s.set_num_vfs(kPf, 2);

    ASSERT_FALSE(st.ok()) << c.err;
    EXPECT_EQ(st.error().code, c.code) << c.err << ": " << st.error().message;
    EXPECT_NE(st.error().message.find(c.text), std::string::npos) << st.error().message;
  }
}

TEST_F(SysfsSriovTest, ZeroFirstFailureStopsBeforeTheNewCount) {
  fake_.add_pf(kPf, 8, 2);
  refuse_errno_ = EBUSY;
  SysfsSriov s = make();

  const Status st = s.set_num_vfs(kPf, 4);

  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::busy);
  ASSERT_EQ(writes_.size(), 1u);
  EXPECT_EQ(writes_[0].second, "0");
}

// Root ignores file modes, so the real permission check runs in a child that gives up root.
TEST_F(SysfsSriovTest, PermissionDeniedOnARealFileIsNamed) {
  fake_.add_pf(kPf, 8);
  std::filesystem::permissions(fake_.root().parent_path(), std::filesystem::perms::owner_all |
                                                               std::filesystem::perms::group_read |
                                                               std::filesystem::perms::group_exec |
                                                               std::filesystem::perms::others_read |
                                                               std::filesystem::perms::others_exec);
  std::filesystem::permissions(fake_.device(kPf) / "sriov_numvfs",
                               std::filesystem::perms::owner_read |
                                   std::filesystem::perms::group_read |
                                   std::filesystem::perms::others_read);
  SysfsConfig config;
  config.root = fake_.root();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Child: no gtest assertions here, only an exit code. 65534 is "nobody".
    if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(3);
    const Status st = SysfsSriov(config).set_num_vfs(kPf, 2);
    if (st.ok()) ::_exit(4);
    const bool named = st.error().code == Errc::unavailable &&
                       st.error().message.find("permission denied writing") != std::string::npos;
    ::_exit(named ? 0 : 5);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: could not drop root, 4: write succeeded, "
                                       "5: wrong error";
}

TEST_F(SysfsSriovTest, WriteFailureKeepsTheErrnoText) {
  fake_.add_device(kVf0);
  std::filesystem::remove(fake_.device(kVf0) / "driver_override");
  std::filesystem::create_symlink("/dev/full", fake_.device(kVf0) / "driver_override");
  SysfsSriov s = make();

  const Status st = s.set_driver_override(kVf0, "vfio-pci");

  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::io_error);
  EXPECT_NE(st.error().message.find("No space left on device"), std::string::npos)
      << st.error().message;
  EXPECT_NE(st.error().message.find("driver_override"), std::string::npos);
}

TEST_F(SysfsSriovTest, ListsVfsInIndexOrder) {
  fake_.add_pf(kPf, 16, 11);
  for (unsigned i = 0; i < 11; ++i) {
    char bdf[16];
    std::snprintf(bdf, sizeof bdf, "0000:3b:%02x.%u", 1 + i / 8, i % 8);
    fake_.add_vf(kPf, i, bdf);
  }
  fake_.put(FakeSysfs::rel(kPf, "virtfn_note"), "not a link\n");
  SysfsSriov s = make();

  const auto vfs = s.vf_addresses(kPf);

  ASSERT_TRUE(vfs.ok()) << to_string(vfs.error());
  ASSERT_EQ(vfs->size(), 11u);
  EXPECT_EQ((*vfs)[0], "0000:3b:01.0");
  EXPECT_EQ((*vfs)[2], "0000:3b:01.2");
  EXPECT_EQ((*vfs)[9], "0000:3b:02.1");
  EXPECT_EQ((*vfs)[10], "0000:3b:02.2");
}

TEST_F(SysfsSriovTest, NoVfsListsNothing) {
  fake_.add_pf(kPf, 8);
  SysfsSriov s = make();

  const auto vfs = s.vf_addresses(kPf);

  ASSERT_TRUE(vfs.ok()) << to_string(vfs.error());
  EXPECT_TRUE(vfs->empty());
}

TEST_F(SysfsSriovTest, ReportsTheBoundDriver) {
  fake_.add_pf(kPf, 8);
  fake_.add_device(kVf0);
  fake_.bind(kPf, "vfio-pci");
  SysfsSriov s = make();

  const auto bound = s.driver(kPf);
  const auto unbound = s.driver(kVf0);

  ASSERT_TRUE(bound.ok()) << to_string(bound.error());
  ASSERT_TRUE(unbound.ok()) << to_string(unbound.error());
  EXPECT_EQ(*bound, "vfio-pci");
  EXPECT_EQ(*unbound, "");
}

TEST_F(SysfsSriovTest, SetsAndClearsDriverOverride) {
  fake_.add_device(kVf0);
  SysfsSriov s = make();

  const Status set = s.set_driver_override(kVf0, "vfio-pci");
  const std::string after_set = fake_.read(FakeSysfs::rel(kVf0, "driver_override"));
  const Status clear = s.set_driver_override(kVf0, "");

  ASSERT_TRUE(set.ok()) << to_string(set.error());
  ASSERT_TRUE(clear.ok()) << to_string(clear.error());
  EXPECT_EQ(after_set, "vfio-pci");
  EXPECT_EQ(fake_.read(FakeSysfs::rel(kVf0, "driver_override")), "\n");
}

TEST_F(SysfsSriovTest, MissingDriverOverrideMeansAnOldKernel) {
  fake_.add_device(kVf0);
  std::filesystem::remove(fake_.device(kVf0) / "driver_override");
  SysfsSriov s = make();

  const Status st = s.set_driver_override(kVf0, "vfio-pci");

  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::unavailable);
  EXPECT_NE(st.error().message.find("too old"), std::string::npos) << st.error().message;
  EXPECT_FALSE(std::filesystem::exists(fake_.device(kVf0) / "driver_override"))
      << "a missing attribute must not be created";
}

TEST_F(SysfsSriovTest, UnbindWritesTheAddressToTheDriver) {
  fake_.add_device(kVf0);
  fake_.bind(kVf0, "nvme");
  SysfsSriov s = make();

  const Status st = s.unbind(kVf0);

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  EXPECT_EQ(fake_.read("bus/pci/drivers/nvme/unbind"), kVf0);
}

TEST_F(SysfsSriovTest, UnbindOfAnUnboundDeviceWritesNothing) {
  fake_.add_device(kVf0);
  SysfsSriov s = make();

  const Status st = s.unbind(kVf0);

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  EXPECT_TRUE(writes_.empty());
}

TEST_F(SysfsSriovTest, BindUsesTheDriversBindFile) {
  fake_.add_device(kVf0);
  fake_.add_driver("vfio-pci");
  SysfsSriov s = make();

  const Status st = s.bind(kVf0, "vfio-pci");

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  EXPECT_EQ(fake_.read("bus/pci/drivers/vfio-pci/bind"), kVf0);
  EXPECT_EQ(fake_.read("bus/pci/drivers_probe"), "");
}

TEST_F(SysfsSriovTest, BindFallsBackToDriversProbe) {
  fake_.add_device(kVf0);
  fake_.add_driver("vfio-pci", /*with_bind=*/false);
  SysfsSriov s = make();

  const Status st = s.bind(kVf0, "vfio-pci");

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  EXPECT_EQ(fake_.read("bus/pci/drivers_probe"), kVf0);
}

TEST_F(SysfsSriovTest, BindToAMissingDriverSaysToLoadIt) {
  fake_.add_device(kVf0);
  SysfsSriov s = make();

  const Status st = s.bind(kVf0, "vfio-pci");

  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::unavailable);
  EXPECT_NE(st.error().message.find("modprobe vfio-pci"), std::string::npos) << st.error().message;
  EXPECT_TRUE(writes_.empty());
}

TEST_F(SysfsSriovTest, BindToHandsTheDeviceOverInOrder) {
  fake_.add_pf(kPf, 8, 2);
  fake_.add_vf(kPf, 0, kVf0);
  fake_.bind(kVf0, "nvme");
  fake_.add_driver("vfio-pci");
  SysfsSriov s = make();

  const Status st = s.bind_to(kVf0, "vfio-pci");

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  ASSERT_EQ(writes_.size(), 3u);
  EXPECT_EQ(writes_[0],
            std::make_pair(FakeSysfs::rel(kVf0, "driver_override"), std::string("vfio-pci")));
  EXPECT_EQ(writes_[1], std::make_pair(FakeSysfs::rel(kVf0, "driver/unbind"), std::string(kVf0)));
  EXPECT_EQ(writes_[2],
            std::make_pair(std::string("bus/pci/drivers/vfio-pci/bind"), std::string(kVf0)));
}

TEST_F(SysfsSriovTest, BindToTheCurrentDriverWritesNothing) {
  fake_.add_device(kVf1);
  fake_.bind(kVf1, "vfio-pci");
  SysfsSriov s = make();

  const Status st = s.bind_to(kVf1, "vfio-pci");

  ASSERT_TRUE(st.ok()) << to_string(st.error());
  EXPECT_TRUE(writes_.empty());
}

TEST_F(SysfsSriovTest, FindsTheIommuGroup) {
  fake_.add_device(kVf0);
  fake_.set_group(kVf0, 42);
  SysfsSriov s = make();

  const auto group = s.iommu_group(kVf0);

  ASSERT_TRUE(group.ok()) << to_string(group.error());
  EXPECT_EQ(*group, 42u);
}

TEST_F(SysfsSriovTest, NoIommuGroupSaysHowToTurnTheIommuOn) {
  fake_.add_device(kVf0);
  SysfsSriov s = make();

  const auto group = s.iommu_group(kVf0);

  ASSERT_FALSE(group.ok());
  EXPECT_EQ(group.error().code, Errc::unavailable);
  EXPECT_NE(group.error().message.find("intel_iommu=on"), std::string::npos)
      << group.error().message;
}

TEST_F(SysfsSriovTest, EveryOperationNamesAMissingDevice) {
  SysfsSriov s = make();

  const std::vector<Errc> codes = {
      s.num_vfs(kVf0).error().code,
      s.set_num_vfs(kVf0, 1).error().code,
      s.vf_addresses(kVf0).error().code,
      s.driver(kVf0).error().code,
      s.set_driver_override(kVf0, "vfio-pci").error().code,
      s.unbind(kVf0).error().code,
      s.bind(kVf0, "vfio-pci").error().code,
      s.bind_to(kVf0, "vfio-pci").error().code,
      s.iommu_group(kVf0).error().code,
  };

  for (const Errc code : codes) EXPECT_EQ(code, Errc::not_found);
  EXPECT_TRUE(writes_.empty());
}

}  // namespace
}  // namespace keel::pci
