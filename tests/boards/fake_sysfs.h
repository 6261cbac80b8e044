// A fake sysfs tree in a temporary directory: PCI devices, drivers, virtfn links and IOMMU
// groups laid out as the kernel lays them out, so the sysfs logic runs unchanged against it.
// Writes land in plain files the test reads back; nothing reacts to them.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace keel::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "keel-boards-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

class FakeSysfs {
 public:
  FakeSysfs() : root_(dir_.path() / "sys") {
    std::filesystem::create_directories(root_ / "bus/pci/devices");
    std::filesystem::create_directories(root_ / "bus/pci/drivers");
    std::filesystem::create_directories(root_ / "kernel/iommu_groups");
    put("bus/pci/drivers_probe", "");
  }

  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path device(const std::string& bdf) const {
    return root_ / "bus/pci/devices" / bdf;
  }

  /// A PCI device with the attributes every device has.
  void add_device(const std::string& bdf) {
    std::filesystem::create_directories(device(bdf));
    put(rel(bdf, "driver_override"), "(null)\n");
    put(rel(bdf, "vendor"), "0x10ee\n");
  }
  /// An SR-IOV PF.
  void add_pf(const std::string& bdf, unsigned total, unsigned num = 0) {
    add_device(bdf);
    put(rel(bdf, "sriov_totalvfs"), std::to_string(total) + "\n");
    put(rel(bdf, "sriov_numvfs"), std::to_string(num) + "\n");
  }
  /// VF `index` of `pf` at `vf` (a device with a virtfn<index> link from its PF).
  void add_vf(const std::string& pf, unsigned index, const std::string& vf) {
    add_device(vf);
    std::filesystem::create_directory_symlink("../" + vf,
                                              device(pf) / ("virtfn" + std::to_string(index)));
    std::filesystem::create_directory_symlink("../" + pf, device(vf) / "physfn");
  }
  /// A loaded driver with bind/unbind files.
  void add_driver(const std::string& name, bool with_bind = true) {
    std::filesystem::create_directories(root_ / "bus/pci/drivers" / name);
    if (with_bind) put("bus/pci/drivers/" + name + "/bind", "");
    put("bus/pci/drivers/" + name + "/unbind", "");
  }
  /// Binds `bdf` to `driver` (the driver link, as the kernel makes it).
  void bind(const std::string& bdf, const std::string& driver) {
    add_driver(driver);
    std::filesystem::create_directory_symlink("../../drivers/" + driver, device(bdf) / "driver");
  }
  void set_group(const std::string& bdf, unsigned group) {
    const auto dir = root_ / "kernel/iommu_groups" / std::to_string(group);
    std::filesystem::create_directories(dir / "devices");
    std::filesystem::create_directory_symlink(
        "../../../../kernel/iommu_groups/" + std::to_string(group), device(bdf) / "iommu_group");
  }

  /// Contents of a file under the root ("" when it does not exist).
  std::string read(const std::string& relative) const {
    std::ifstream in(root_ / relative);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  void put(const std::string& relative, const std::string& content) {
    std::ofstream(root_ / relative, std::ios::trunc) << content;
  }
  static std::string rel(const std::string& bdf, const std::string& attribute) {
    return "bus/pci/devices/" + bdf + "/" + attribute;
  }

 private:
  TempDir dir_;
  std::filesystem::path root_;
};

}  // namespace keel::testing
