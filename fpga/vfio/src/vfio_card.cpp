// VfioCard: opening a real card through VFIO, and SR-IOV through sysfs plus the card's PF.
#include "keel/fpga/vfio/vfio_card.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <keel/regs/keel_regs.h>

#include "keel/fpga/absent_function.h"
#include "keel/log.h"
#include "keel/pci/pci_address.h"
#include "keel/pci/sysfs.h"
#include "vfio_device.h"

namespace keel::fpga::vfio {

namespace fs = std::filesystem;
namespace pf_regs = regs::pf;

constexpr log::Logger kLog{"vfio"};

namespace {

constexpr std::string_view kVfioPci = "vfio-pci";
// PCI class code of an NVMe controller (mass storage, non-volatile memory, NVM Express).
constexpr std::string_view kNvmeClass = "0x010802";

// Errors that mean "this host is not set up for the card" become unavailable, so callers
// (and test fixtures) can tell "cannot run here" from a real failure.
Error as_unavailable(Error e) {
  if (e.code == Errc::not_found) e.code = Errc::unavailable;
  return e;
}

std::array<std::uint8_t, 16> random_uuid() {
  std::array<std::uint8_t, 16> u{};
  if (::getrandom(u.data(), u.size(), 0) != static_cast<ssize_t>(u.size())) {
    std::random_device rd;
    for (auto& b : u) b = static_cast<std::uint8_t>(rd());
  }
  u[6] = static_cast<std::uint8_t>((u[6] & 0x0F) | 0x40);  // version 4 (random)
  u[8] = static_cast<std::uint8_t>((u[8] & 0x3F) | 0x80);  // RFC 4122 variant
  return u;
}

std::string uuid_text(const std::array<std::uint8_t, 16>& u) {
  std::string s;
  char buf[3];
  for (std::size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    std::snprintf(buf, sizeof buf, "%02x", u[i]);
    s += buf;
  }
  return s;
}

}  // namespace

struct VfioCard::Impl {
  explicit Impl(const VfioOptions& o) : options(o), sysfs(pci::SysfsConfig{o.sysfs_root, {}}) {}

  Result<std::shared_ptr<Group>> group_for(unsigned number);
  Result<std::unique_ptr<VfioFunction>> open_function(const std::string& addr, unsigned number);
  Status open_vfs(unsigned n);
  Status disable();
  Status wait_for_node(const std::string& vf, const fs::path& node) const;
  std::string container_path() const { return options.dev_root + "/vfio/vfio"; }
  /// The function's PCI class ("0x010802"), empty when sysfs does not say.
  std::string pci_class(const std::string& addr) const {
    std::ifstream in(sysfs.device_dir(addr) / "class");
    std::string cls;
    in >> cls;
    return cls;
  }

  VfioOptions options;
  pci::SysfsSriov sysfs;
  std::string address;
  // Declared first, destroyed last: DmaBuffers of every function point at these.
  std::vector<std::shared_ptr<Container>> containers;
  std::map<unsigned, std::weak_ptr<Group>> groups;  // open groups, shared by their functions
  std::unique_ptr<VfioFunction> pf;
  std::mutex mu;  // VF list and count
  std::vector<std::unique_ptr<VfioFunction>> vfs;
  std::vector<std::unique_ptr<VfioFunction>> retired;  // removed VFs: pointers stay valid
  std::atomic<unsigned> num_vfs{0};
  unsigned max_vfs = 0;
  std::string no_vfs_reason;  // why max_vfs is 0, when it is
  std::array<std::uint8_t, 16> token{};
  bool have_token = false;
  // A card of one NVMe function: vfs[0] is it, this stands for the PF that is not ours.
  std::unique_ptr<Function> absent_pf;
  bool single() const noexcept { return absent_pf != nullptr; }

  // The release watcher: when the kernel asks for a function back (its VF is being removed:
  // sriov_numvfs going to 0, hot unplug), the function is closed at once, as a kernel
  // driver's remove() lets go, so the kernel's removal finishes instead of waiting on this
  // process; users of the function see it gone (all ones, DMA and waits fail).
  //
  // A function released that way is watched for its return: once its address is back in
  // sysfs, bound to vfio-pci (an administrator re-enabled the VF, `keelctl --card nvme-pf:`
  // binds it), it is opened again into the same object, its DMA windows mapped again at their
  // IOVAs; its users see a device that answers again, as after a reset.
  void start_watcher();
  void stop_watcher();
  void watch();
  /// One attempt at bringing `fn` back; true when it is open again. Under mu.
  bool try_return(VfioFunction& fn);
  std::vector<VfioFunction*> released;  // by the watcher, waiting for their return; under mu
  std::map<VfioFunction*, std::string> return_errors;  // the last failure logged, per function
  std::thread watcher;
  UniqueFd watcher_wake;  // an eventfd: stop, or the VF list changed
  std::atomic<bool> watcher_stop{false};
};

void VfioCard::Impl::start_watcher() {
  watcher_wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!watcher_wake.valid()) return;  // without it, gone is still noticed on use
  watcher = std::thread([this] { watch(); });
}

void VfioCard::Impl::stop_watcher() {
  if (!watcher.joinable()) return;
  watcher_stop.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  (void)!::write(watcher_wake.get(), &one, sizeof one);
  watcher.join();
}

void VfioCard::Impl::watch() {
  // While a released function may come back, sysfs is looked at this often (a re-enable
  // takes the kernel far longer).
  constexpr int kReturnPollMs = 100;
  while (!watcher_stop.load(std::memory_order_acquire)) {
    std::vector<pollfd> fds{{watcher_wake.get(), POLLIN, 0}};
    std::vector<VfioFunction*> fns;
    bool waiting = false;
    {
      std::lock_guard lock(mu);
      for (auto& f : vfs) {
        if (f && !f->closed()) {
          fds.push_back({f->gone_fd(), POLLIN, 0});
          fns.push_back(f.get());
        }
      }
      waiting = !released.empty();
    }
    const int ready = ::poll(fds.data(), fds.size(), waiting ? kReturnPollMs : -1);
    if (ready < 0) continue;  // EINTR
    if ((fds[0].revents & POLLIN) != 0) {
      std::uint64_t n = 0;
      (void)!::read(watcher_wake.get(), &n, sizeof n);
    }
    std::lock_guard lock(mu);
    for (std::size_t i = 1; i < fds.size(); ++i) {
      if ((fds[i].revents & POLLIN) == 0 || fns[i - 1]->closed()) continue;
      kLog.warn("%s: the kernel asks for it back (removed); released",
                fns[i - 1]->address().c_str());
      fns[i - 1]->close();
      released.push_back(fns[i - 1]);
    }
    std::erase_if(released, [&](VfioFunction* f) {
      // Only functions still on the card's list (a disable retires them for good).
      const bool listed =
          std::any_of(vfs.begin(), vfs.end(),
                      [f](const std::unique_ptr<VfioFunction>& v) { return v.get() == f; });
      if (!listed || try_return(*f)) {
        return_errors.erase(f);
        return true;
      }
      return false;
    });
  }
}

bool VfioCard::Impl::try_return(VfioFunction& fn) {
  const std::string& addr = fn.address();
  // Quietly not yet: the function is not on the bus, or not vfio-pci's (yet).
  if (!sysfs.exists(addr)) return false;
  const auto driver = sysfs.driver(addr);
  if (!driver.ok() || *driver != kVfioPci) return false;
  const auto number = sysfs.iommu_group(addr);
  if (!number.ok()) return false;
  const fs::path node = fs::path(options.dev_root) / "vfio" / std::to_string(*number);
  std::error_code ec;
  if (!fs::exists(node, ec)) return false;
  Status st;
  auto group = Group::rejoin(node.string(), *number, fn.container());
  if (group.ok())
    st = fn.reopen(*group);
  else
    st = group.error();
  if (!st.ok()) {
    // Said once per distinct reason: the next attempt may well succeed (udev still at it).
    std::string& last = return_errors[&fn];
    if (last != st.error().message) {
      last = st.error().message;
      kLog.warn("%s is back on the bus but cannot be opened yet: %s", addr.c_str(), last.c_str());
    }
    return false;
  }
  groups[*number] = *group;
  kLog.info("%s: back on the bus (IOMMU group %u); opened again, its DMA windows mapped again",
            addr.c_str(), *number);
  return true;
}

Result<std::shared_ptr<Group>> VfioCard::Impl::group_for(unsigned number) {
  if (auto it = groups.find(number); it != groups.end()) {
    if (auto open = it->second.lock()) return open;
  }
  auto group =
      Group::open(options.dev_root + "/vfio/" + std::to_string(number), number, container_path());
  if (!group.ok()) return group.error();
  groups[number] = *group;
  containers.push_back((*group)->container());
  return group;
}

Result<std::unique_ptr<VfioFunction>> VfioCard::Impl::open_function(const std::string& addr,
                                                                    unsigned number) {
  const auto group_number = sysfs.iommu_group(addr);
  if (!group_number.ok()) return as_unavailable(group_number.error());
  auto group = group_for(*group_number);
  if (!group.ok()) return group.error();
  // A VF of a PF held by vfio-pci opens only with the token its PF was given.
  const std::string name =
      number != 0 && have_token ? addr + " vf_token=" + uuid_text(token) : addr;
  return VfioFunction::open(std::move(group).value(), addr, name, number);
}

Status VfioCard::Impl::wait_for_node(const std::string& vf, const fs::path& node) const {
  const auto deadline = std::chrono::steady_clock::now() + options.vf_settle_timeout;
  std::error_code ec;
  while (!fs::exists(node, ec)) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return make_error(Errc::timeout, "VF " + vf + ": " + node.string() +
                                           " did not appear within " +
                                           std::to_string(options.vf_settle_timeout.count()) +
                                           " ms of enabling it");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return {};
}

Status VfioCard::Impl::open_vfs(unsigned n) {
  const auto list = sysfs.vf_addresses(address);
  if (!list.ok()) return list.error();
  if (list->size() < n) {
    return make_error(Errc::io_error, address + " has " + std::to_string(n) + " VFs but only " +
                                          std::to_string(list->size()) + " virtfn links in sysfs");
  }
  std::vector<std::unique_ptr<VfioFunction>> opened;
  for (unsigned i = 0; i < n; ++i) {
    const std::string& vf = (*list)[i];
    const auto driver = sysfs.driver(vf);
    if (!driver.ok()) return driver.error();
    if (*driver != kVfioPci) {
      if (!options.bind_vfs) {
        return make_error(Errc::unavailable,
                          "VF " + vf + " is bound to " +
                              (driver->empty() ? std::string("no driver") : *driver) +
                              ", not vfio-pci, and binding VFs is off");
      }
      if (Status st = sysfs.bind_to(vf, kVfioPci); !st.ok()) return st;
    }
    const auto group_number = sysfs.iommu_group(vf);
    if (!group_number.ok()) return as_unavailable(group_number.error());
    const fs::path node = fs::path(options.dev_root) / "vfio" / std::to_string(*group_number);
    if (Status st = wait_for_node(vf, node); !st.ok()) return st;
    auto fn = open_function(vf, i + 1);
    if (!fn.ok()) return fn.error();
    opened.push_back(std::move(fn).value());
  }
  vfs = std::move(opened);
  num_vfs.store(n, std::memory_order_release);
  if (watcher_wake.valid()) {
    const std::uint64_t one = 1;
    (void)!::write(watcher_wake.get(), &one, sizeof one);  // watch the new VFs too
  }
  return {};
}

Status VfioCard::Impl::disable() {
  for (auto& vf : vfs) {
    vf->close();
    retired.push_back(std::move(vf));
  }
  vfs.clear();
  num_vfs.store(0, std::memory_order_release);
  Status st = sysfs.set_num_vfs(address, 0);
  pf->write32(pf_regs::NUM_VFS, 0);
  return st;
}

// ------------------------------------------------------------------------------- VfioCard

VfioCard::VfioCard(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

VfioCard::~VfioCard() {
  if (impl_ == nullptr) return;
  impl_->stop_watcher();
  if (impl_->pf == nullptr) return;
  std::lock_guard lock(impl_->mu);
  if (impl_->num_vfs.load() != 0) (void)impl_->disable();
}

Result<std::unique_ptr<VfioCard>> VfioCard::open(std::string_view address,
                                                 const VfioOptions& options) {
  auto addr = pci::parse_pci_address(address);
  if (!addr.ok()) return addr.error();
  auto impl = std::make_unique<Impl>(options);
  impl->address = *addr;
  pci::SysfsSriov& sysfs = impl->sysfs;
  const fs::path devices = fs::path(options.sysfs_root) / "bus" / "pci" / "devices";
  if (!sysfs.exists(*addr)) {
    return make_error(Errc::unavailable, "no PCI device " + *addr + " in " + devices.string());
  }
  std::error_code ec;
  if (!fs::exists(impl->container_path(), ec)) {
    return make_error(Errc::unavailable,
                      impl->container_path() +
                          " not present: load vfio-pci (modprobe vfio-pci) and bind the card "
                          "to it (docs/boards.md)");
  }
  const auto group = sysfs.iommu_group(*addr);
  if (!group.ok()) return as_unavailable(group.error());
  const auto driver = sysfs.driver(*addr);
  if (!driver.ok()) return as_unavailable(driver.error());
  if (*driver != kVfioPci) {
    const std::string dev = (devices / *addr).string();
    return make_error(
        Errc::unavailable,
        *addr + " is bound to " + (driver->empty() ? std::string("no driver") : *driver) +
            ", not vfio-pci: hand it over with 'echo vfio-pci > " + dev +
            "/driver_override; echo " + *addr + " > " + dev + "/driver/unbind; echo " + *addr +
            " > " + options.sysfs_root + "/bus/pci/drivers_probe' (docs/boards.md)");
  }

  // A plain NVMe controller (an SR-IOV SSD's VF, QEMU's nvme, a VF of a keel card handed to
  // this process) is a card of that one function: it is VF 0, the PF is not on this
  // process's bus, as for a VM.
  if (const std::string cls = impl->pci_class(*addr); cls.rfind(kNvmeClass, 0) == 0) {
    auto fn = impl->open_function(*addr, 1);
    if (!fn.ok()) return fn.error();
    if (fn.value()->read32(pf_regs::ID) != regs::MAGIC) {
      impl->vfs.push_back(std::move(fn).value());
      impl->num_vfs.store(1, std::memory_order_release);
      impl->max_vfs = 1;
      impl->absent_pf = std::make_unique<AbsentFunction>(
          *addr +
          " is one NVMe function opened on its own; its PF (if any) is not this "
          "process's");
      impl->start_watcher();
      return std::unique_ptr<VfioCard>(new VfioCard(std::move(impl)));
    }
    fn.value()->close();  // a keel PF: opened below as the card's PF
    fn.value().reset();
    impl->groups.clear();
  }

  auto pf = impl->open_function(*addr, 0);
  if (!pf.ok()) return pf.error();
  impl->pf = std::move(pf).value();
  VfioFunction& p = *impl->pf;
  const std::uint32_t id = p.read32(pf_regs::ID);
  if (id != regs::MAGIC) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", id);
    return make_error(Errc::not_found, *addr + " does not answer as a keel card: PF ID reads " +
                                           buf +
                                           ", expected 0x4B45454C ('KEEL'); check that "
                                           "the keel bitstream is loaded");
  }
  const auto card_max = static_cast<unsigned>(regs::field_get(
      p.read32(pf_regs::CAPS), pf_regs::CAPS_MAX_VFS_MASK, pf_regs::CAPS_MAX_VFS_SHIFT));
  const auto total = sysfs.total_vfs(*addr);
  if (total.ok()) {
    impl->max_vfs = std::min(card_max, *total);
    if (impl->max_vfs == 0) impl->no_vfs_reason = "sriov_totalvfs or CAPS.MAX_VFS is 0";
  } else {
    impl->no_vfs_reason = total.error().message;
  }
  impl->token = random_uuid();
  impl->have_token = impl->max_vfs > 0 && p.set_vf_token(impl->token);

  // VFs created before we came (an administrator's sriov_numvfs) are adopted.
  if (const auto existing = sysfs.num_vfs(*addr); existing.ok() && *existing > 0) {
    std::lock_guard lock(impl->mu);
    p.write32(pf_regs::NUM_VFS, 0);
    p.write32(pf_regs::NUM_VFS, *existing);
    if (Status st = impl->open_vfs(*existing); !st.ok()) return st.error();
  }
  impl->start_watcher();
  return std::unique_ptr<VfioCard>(new VfioCard(std::move(impl)));
}

const std::string& VfioCard::address() const noexcept { return impl_->address; }

std::string VfioCard::describe() const {
  if (impl_->single()) {
    return "vfio NVMe function " + impl_->address + " (IOMMU group " +
           std::to_string(impl_->vfs[0]->group_number()) + "), opened on its own as VF 0";
  }
  VfioFunction& p = *impl_->pf;
  const std::uint32_t version = p.read32(pf_regs::VERSION);
  const std::uint64_t lbas = p.read64(pf_regs::STORAGE_LBAS);
  char buf[200];
  std::snprintf(buf, sizeof buf,
                "vfio card %s (IOMMU group %u): programming model %u.%u, %u of %u VFs, "
                "%llu MiB storage (%llu LBAs)",
                impl_->address.c_str(), p.group_number(), version >> 16, version & 0xFFFF,
                num_vfs(), max_vfs(), static_cast<unsigned long long>((lbas << 9) >> 20),
                static_cast<unsigned long long>(lbas));
  return buf;
}

bool VfioCard::owns_pf() const noexcept { return !impl_->single(); }

Function& VfioCard::pf() noexcept {
  if (impl_->single()) return *impl_->absent_pf;
  return *impl_->pf;
}

Result<Function*> VfioCard::vf(unsigned index) {
  std::lock_guard lock(impl_->mu);
  if (index >= impl_->vfs.size()) {
    return make_error(Errc::not_found, "VF " + std::to_string(index) + " is not present (" +
                                           std::to_string(impl_->vfs.size()) + " VFs are enabled)");
  }
  return static_cast<Function*>(impl_->vfs[index].get());
}

unsigned VfioCard::max_vfs() const noexcept { return impl_->max_vfs; }

unsigned VfioCard::num_vfs() const noexcept {
  return impl_->num_vfs.load(std::memory_order_acquire);
}

Status VfioCard::set_num_vfs(unsigned n) {
  Impl& c = *impl_;
  if (c.single()) {
    return make_error(Errc::unavailable,
                      c.address +
                          " is one NVMe function opened on its own: its VFs, if any, "
                          "are its PF's (keelctl --card nvme-pf:<PF address>)");
  }
  std::lock_guard lock(c.mu);
  if (n > c.max_vfs) {
    std::string msg =
        "the card has " + std::to_string(c.max_vfs) + " VFs; cannot enable " + std::to_string(n);
    if (!c.no_vfs_reason.empty()) msg += " (" + c.no_vfs_reason + ")";
    return make_error(Errc::invalid_argument, msg);
  }
  const unsigned cur = c.num_vfs.load();
  if (n == cur) return {};
  if (cur != 0 && n != 0) {
    return make_error(Errc::busy, std::to_string(cur) + " VFs are enabled; set the count to 0 " +
                                      "before changing it to " + std::to_string(n));
  }
  if (n == 0) return c.disable();

  // The card's logic first, then the bus: a VF is never on the bus without its controller.
  c.pf->write32(pf_regs::NUM_VFS, n);
  const std::uint32_t status = c.pf->read32(pf_regs::STATUS);
  if ((status & pf_regs::STATUS_NUM_VFS_ERR_MASK) != 0) {
    c.pf->write32(pf_regs::NUM_VFS, 0);
    return make_error(Errc::device_error, "the card refused NUM_VFS = " + std::to_string(n) +
                                              " (PF STATUS.NUM_VFS_ERR)");
  }
  if (Status st = c.sysfs.set_num_vfs(c.address, n); !st.ok()) {
    c.pf->write32(pf_regs::NUM_VFS, 0);
    return st;
  }
  if (Status st = c.open_vfs(n); !st.ok()) {
    (void)c.sysfs.set_num_vfs(c.address, 0);
    c.pf->write32(pf_regs::NUM_VFS, 0);
    return st;
  }
  return {};
}

std::uint64_t VfioCard::now_ns() const noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace keel::fpga::vfio
