#include "keel/sriov/nvme_sriov_pf.h"

#include <fcntl.h>
#include <libnvme.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "keel/pci/pci_address.h"

namespace keel::sriov {

namespace fs = std::filesystem;

namespace {

constexpr unsigned kActOffline = 7, kActAssign = 8, kActOnline = 9;
constexpr unsigned kResourceVq = 0, kResourceVi = 1;
constexpr std::uint32_t kAdminTimeoutMs = 10'000;

// A passthrough command's result: 0, an NVMe status (> 0), or -1 with errno.
Status nvme_status(int rc, const std::string& what) {
  if (rc == 0) return {};
  if (rc < 0) return make_error(Errc::io_error, what + ": " + std::strerror(errno));
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", static_cast<unsigned>(rc));
  return make_error(Errc::device_error, what + " failed with NVMe status " + buf + " (" +
                                            nvme_status_to_string(rc, false) + ")");
}

}  // namespace

NvmeSriovPf::NvmeSriovPf(std::string address, const NvmeSriovOptions& options)
    : address_(std::move(address)),
      options_(options),
      sysfs_(pci::SysfsConfig{options.sysfs_root, {}}) {}

Result<std::unique_ptr<NvmeSriovPf>> NvmeSriovPf::open(const std::string& address,
                                                       const NvmeSriovOptions& options) {
  auto addr = pci::parse_pci_address(address);
  if (!addr) return addr.error();
  std::unique_ptr<NvmeSriovPf> pf(new NvmeSriovPf(*addr, options));
  if (!pf->sysfs_.exists(*addr)) {
    return make_error(Errc::unavailable, "no PCI device " + *addr + " in " +
                                             pf->sysfs_.device_dir(*addr).parent_path().string());
  }
  const auto driver = pf->sysfs_.driver(*addr);
  if (!driver) return driver.error();
  if (*driver != "nvme") {
    return make_error(Errc::unavailable,
                      *addr + " is bound to " +
                          (driver->empty() ? std::string("no driver") : *driver) +
                          ", not nvme: the PF of a standard NVMe device is managed through the "
                          "kernel's nvme driver (modprobe nvme)");
  }
  const auto total = pf->sysfs_.total_vfs(*addr);
  if (!total)
    return make_error(Errc::unavailable, *addr + " has no SR-IOV: " + total.error().message);
  pf->total_vfs_ = *total;
  // Its controller's character device: <device>/nvme/nvmeX -> /dev/nvmeX.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(pf->sysfs_.device_dir(*addr) / "nvme", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("nvme", 0) == 0) pf->device_ = options.dev_root + "/" + name;
  }
  if (pf->device_.empty()) {
    return make_error(Errc::unavailable, *addr + ": the nvme driver shows no controller for it");
  }
  pf->fd_.reset(::open(pf->device_.c_str(), O_RDWR | O_CLOEXEC));
  if (!pf->fd_.valid()) {
    return make_error(Errc::unavailable, pf->device_ + ": " + std::strerror(errno));
  }
  nvme_id_ctrl id{};
  if (Status st = nvme_status(nvme_identify_ctrl(pf->fd_.get(), &id), "Identify Controller");
      !st.ok()) {
    return st.error();
  }
  // OACS bit 7 says Virtualization Management is supported. QEMU 7.2's nvme implements the
  // command and CNS 14h/15h but leaves the bit clear, so a clear bit is not taken as a no:
  // the Identify Primary Controller Capabilities answer decides.
  pf->oacs_virt_mgmt_ = (id.oacs & NVME_CTRL_OACS_VIRT_MGMT) != 0;
  if (!pf->oacs_virt_mgmt_) {
    auto caps = pf->primary();
    if (!caps || (caps->vq_total == 0 && caps->vi_total == 0)) {
      return make_error(Errc::device_error,
                        *addr +
                            " does not support Virtualization Management (OACS bit 7 clear, "
                            "no flexible resources): its VFs cannot be given resources");
    }
  }
  return pf;
}

Result<NvmePrimaryCaps> NvmeSriovPf::primary() {
  nvme_primary_ctrl_cap c{};
  if (Status st = nvme_status(nvme_identify_primary_ctrl(fd_.get(), 0, &c),
                              "Identify Primary Controller Capabilities");
      !st.ok()) {
    return st.error();
  }
  NvmePrimaryCaps p;
  p.cntlid = le16toh(c.cntlid);
  p.vq_flexible = (c.crt & 1) != 0;
  p.vi_flexible = (c.crt & 2) != 0;
  p.vq_total = le32toh(c.vqfrt);
  p.vq_assigned = le32toh(c.vqrfa);
  p.vq_primary = le16toh(c.vqrfap);
  p.vq_private = le16toh(c.vqprt);
  p.vq_max_per_secondary = le16toh(c.vqfrsm);
  p.vi_total = le32toh(c.vifrt);
  p.vi_assigned = le32toh(c.virfa);
  p.vi_primary = le16toh(c.virfap);
  p.vi_private = le16toh(c.viprt);
  p.vi_max_per_secondary = le16toh(c.vifrsm);
  return p;
}

Result<std::vector<NvmeSecondary>> NvmeSriovPf::secondaries() {
  nvme_secondary_ctrl_list list{};
  if (Status st = nvme_status(nvme_identify_secondary_ctrl_list(fd_.get(), 0, 0, &list),
                              "Identify Secondary Controller List");
      !st.ok()) {
    return st.error();
  }
  const auto vfs = sysfs_.vf_addresses(address_);
  std::vector<NvmeSecondary> out;
  for (unsigned i = 0; i < list.num && i < NVME_ID_SECONDARY_CTRL_MAX; ++i) {
    const nvme_secondary_ctrl& e = list.sc_entry[i];
    NvmeSecondary s;
    s.scid = le16toh(e.scid);
    s.online = (e.scs & 1) != 0;
    s.vfn = le16toh(e.vfn);
    s.vq = le16toh(e.nvq);
    s.vi = le16toh(e.nvi);
    if (vfs && s.vfn >= 1 && s.vfn <= vfs->size()) {
      s.address = (*vfs)[s.vfn - 1];
      if (auto d = sysfs_.driver(s.address)) s.driver = *d;
    }
    out.push_back(std::move(s));
  }
  return out;
}

Status NvmeSriovPf::virt_mgmt(unsigned action, unsigned resource, std::uint16_t cntlid,
                              std::uint16_t nr) {
  std::uint32_t result = 0;
  nvme_virtual_mgmt_args args{};
  args.result = &result;
  args.args_size = sizeof args;
  args.fd = fd_.get();
  args.timeout = kAdminTimeoutMs;
  args.act = static_cast<nvme_virt_mgmt_act>(action);
  args.rt = static_cast<nvme_virt_mgmt_rt>(resource);
  args.cntlid = cntlid;
  args.nr = nr;
  static const char* kActions[] = {"", "primary flexible", "",       "",      "", "",
                                   "", "offline",          "assign", "online"};
  return nvme_status(nvme_virtual_mgmt(&args), std::string("Virtualization Management (") +
                                                   kActions[action % 10] + ", controller " +
                                                   std::to_string(cntlid) + ")");
}

Status NvmeSriovPf::enable(unsigned n) {
  if (n == 0 || n > total_vfs_) {
    return make_error(Errc::invalid_argument, address_ + " has " + std::to_string(total_vfs_) +
                                                  " VFs; cannot enable " + std::to_string(n));
  }
  const auto cur = sysfs_.num_vfs(address_);
  if (!cur) return cur.error();
  if (*cur != 0) {
    return make_error(Errc::busy, std::to_string(*cur) + " VFs are enabled on " + address_ +
                                      "; disable them first");
  }
  auto caps = primary();
  if (!caps) return caps.error();
  const unsigned vq = options_.vq_per_vf, vi = options_.vi_per_vf;
  if (vq < 2 || vi < 1 || (caps->vq_max_per_secondary != 0 && vq > caps->vq_max_per_secondary) ||
      (caps->vi_max_per_secondary != 0 && vi > caps->vi_max_per_secondary) ||
      std::uint64_t{vq} * n > caps->vq_total - caps->vq_primary ||
      std::uint64_t{vi} * n > caps->vi_total - caps->vi_primary) {
    return make_error(Errc::invalid_argument,
                      std::to_string(n) + " VFs with " + std::to_string(vq) + " queue and " +
                          std::to_string(vi) + " interrupt resources each do not fit " + address_ +
                          "'s flexible resources (" + std::to_string(caps->vq_total) + " VQ, " +
                          std::to_string(caps->vi_total) +
                          " VI; each VF needs at least 2 VQ and 1 VI)");
  }
  auto list = secondaries();
  if (!list) return list.error();
  std::vector<std::uint16_t> scid(n + 1, 0);
  for (const NvmeSecondary& s : *list) {
    if (s.vfn >= 1 && s.vfn <= n) scid[s.vfn] = s.scid;
  }
  for (unsigned v = 1; v <= n; ++v) {
    if (scid[v] == 0) {
      return make_error(Errc::device_error,
                        address_ + " lists no secondary controller for VF " + std::to_string(v));
    }
  }
  // Resources go to offline controllers; the VFs appear with autoprobe off (no driver takes
  // a controller that cannot run yet); then the controllers go online and the VFs go to
  // their driver.
  auto undo = [&](Status st) {
    (void)disable();
    return st;
  };
  for (unsigned v = 1; v <= n; ++v) {
    for (Status st :
         {virt_mgmt(kActOffline, 0, scid[v], 0),
          virt_mgmt(kActAssign, kResourceVq, scid[v], static_cast<std::uint16_t>(vq)),
          virt_mgmt(kActAssign, kResourceVi, scid[v], static_cast<std::uint16_t>(vi))}) {
      if (!st.ok()) return undo(st);
    }
  }
  if (Status st = sysfs_.set_drivers_autoprobe(address_, false); !st.ok()) return undo(st);
  if (Status st = sysfs_.set_num_vfs(address_, n); !st.ok()) return undo(st);
  for (unsigned v = 1; v <= n; ++v) {
    if (Status st = virt_mgmt(kActOnline, 0, scid[v], 0); !st.ok()) return undo(st);
  }
  if (!options_.vf_driver.empty()) {
    const auto vfs = sysfs_.vf_addresses(address_);
    if (!vfs) return undo(vfs.error());
    for (const std::string& vf : *vfs) {
      if (Status st = sysfs_.bind_to(vf, options_.vf_driver); !st.ok()) return undo(st);
    }
  }
  return {};
}

Status NvmeSriovPf::disable() {
  Status first = sysfs_.set_num_vfs(address_, 0);
  if (auto list = secondaries()) {
    for (const NvmeSecondary& s : *list) {
      if (!s.online) continue;
      if (Status st = virt_mgmt(kActOffline, 0, s.scid, 0); !st.ok() && first.ok()) first = st;
    }
  } else if (first.ok()) {
    first = list.error();
  }
  return first;
}

}  // namespace keel::sriov
