// SR-IOV through sysfs: sriov_totalvfs/sriov_numvfs, virtfn links, driver binding, IOMMU
// groups. Reads and writes use plain POSIX calls so every failure keeps its errno.
#include "keel/pci/sysfs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <system_error>

#include "keel/pci/pci_address.h"

namespace keel::pci {

namespace fs = std::filesystem;

namespace {

std::string errno_text(int err) { return std::generic_category().message(err); }

bool permission_errno(int err) { return err == EACCES || err == EPERM; }

Error permission_error(const fs::path& path, std::string_view verb) {
  return make_error(Errc::unavailable, "permission denied " + std::string(verb) + " " +
                                           path.string() +
                                           ": run as root or grant access to the attribute "
                                           "(for example with a udev rule)");
}

// Reads a whole sysfs attribute and strips the trailing newline and blanks.
Result<std::string> read_text(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (permission_errno(err)) return permission_error(path, "reading");
    if (err == ENOENT) return make_error(Errc::not_found, path.string() + " does not exist");
    return make_error(Errc::io_error, "cannot open " + path.string() + ": " + errno_text(err));
  }
  std::string text;
  char buf[256];
  for (;;) {
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int err = errno;
      ::close(fd);
      return make_error(Errc::io_error, "reading " + path.string() + " failed: " + errno_text(err));
    }
    if (got == 0) break;
    text.append(buf, static_cast<std::size_t>(got));
    if (text.size() > 4096) break;  // sysfs attributes are one page at most
  }
  ::close(fd);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\t')) {
    text.pop_back();
  }
  return text;
}

// The last path component of a symlink's target ("../../../bus/pci/drivers/vfio-pci" ->
// "vfio-pci"), or "" when the link does not exist.
Result<std::string> link_name(const fs::path& link) {
  std::error_code ec;
  const fs::path target = fs::read_symlink(link, ec);
  if (ec == std::errc::no_such_file_or_directory) return std::string();
  if (ec) {
    if (permission_errno(ec.value())) return permission_error(link, "reading");
    return make_error(Errc::io_error, "cannot read link " + link.string() + ": " + ec.message());
  }
  return target.filename().string();
}

Result<unsigned> parse_unsigned(const fs::path& path, std::string_view text) {
  unsigned value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty()) {
    return make_error(Errc::io_error, "unexpected content '" + std::string(text) + "' in " +
                                          path.string() + " (expected a number)");
  }
  return value;
}

struct WriteOutcome {
  int err = 0;           // 0 on success
  bool at_open = false;  // the attribute could not be opened (vs. the kernel refusing the value)
};

// Writes `value` with one write(2), as sysfs wants, and keeps the errno of a failure.
WriteOutcome write_attribute(const SysfsConfig& config, const fs::path& attribute,
                             std::string_view value) {
  const int fd = ::open(attribute.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) return {errno, true};
  int err = config.on_write ? config.on_write(attribute, value) : 0;
  if (err == 0) {
    ssize_t put;
    do {
      put = ::write(fd, value.data(), value.size());
    } while (put < 0 && errno == EINTR);
    if (put < 0) {
      err = errno;
    } else if (static_cast<std::size_t>(put) != value.size()) {
      err = EIO;  // sysfs takes a value in one piece or not at all
    }
  }
  ::close(fd);
  return {err, false};
}

Error write_error(const fs::path& attribute, std::string_view value, const WriteOutcome& out) {
  if (permission_errno(out.err)) return permission_error(attribute, "writing");
  if (out.at_open && out.err == ENOENT) {
    return make_error(Errc::not_found, attribute.string() + " does not exist");
  }
  const std::string shown = value == "\n" ? std::string("''") : std::string(value);
  return make_error(Errc::io_error, "writing " + shown + " to " + attribute.string() +
                                        " failed: " + errno_text(out.err));
}

}  // namespace

SysfsSriov::SysfsSriov(SysfsConfig config) : config_(std::move(config)) {}

fs::path SysfsSriov::device_dir(std::string_view address) const {
  return config_.root / "bus" / "pci" / "devices" / std::string(address);
}

bool SysfsSriov::exists(std::string_view address) const {
  const auto a = parse_pci_address(address);
  if (!a.ok()) return false;
  std::error_code ec;
  return fs::is_directory(device_dir(*a), ec);
}

Result<std::string> SysfsSriov::checked(std::string_view address) const {
  auto a = parse_pci_address(address);
  if (!a.ok()) return a.error();
  std::error_code ec;
  if (!fs::is_directory(device_dir(*a), ec)) {
    return make_error(Errc::not_found, "no PCI device " + *a + " in " +
                                           (config_.root / "bus" / "pci" / "devices").string());
  }
  return a;
}

Result<unsigned> SysfsSriov::read_count(std::string_view pf, const char* attribute) const {
  const auto a = checked(pf);
  if (!a.ok()) return a.error();
  const fs::path path = device_dir(*a) / attribute;
  const auto text = read_text(path);
  if (!text.ok()) {
    if (text.error().code == Errc::not_found) {
      return make_error(Errc::unavailable,
                        *a + " is not SR-IOV capable (it has no " + std::string(attribute) + ")");
    }
    return text.error();
  }
  return parse_unsigned(path, *text);
}

Result<unsigned> SysfsSriov::total_vfs(std::string_view pf) const {
  return read_count(pf, "sriov_totalvfs");
}

Result<unsigned> SysfsSriov::num_vfs(std::string_view pf) const {
  return read_count(pf, "sriov_numvfs");
}

Status SysfsSriov::write(const fs::path& attribute, std::string_view value) const {
  const WriteOutcome out = write_attribute(config_, attribute, value);
  if (out.err == 0) return {};
  return write_error(attribute, value, out);
}

Status SysfsSriov::set_drivers_autoprobe(std::string_view pf, bool on) {
  const auto a = checked(pf);
  if (!a.ok()) return a.error();
  return write(device_dir(*a) / "sriov_drivers_autoprobe", on ? "1" : "0");
}

Status SysfsSriov::set_num_vfs(std::string_view pf, unsigned n) {
  const auto a = checked(pf);
  if (!a.ok()) return a.error();
  const auto total = total_vfs(*a);
  if (!total.ok()) return total.error();
  if (n > *total) {
    return make_error(Errc::invalid_argument, "asked for " + std::to_string(n) + " VFs but " + *a +
                                                  " supports at most " + std::to_string(*total) +
                                                  " (sriov_totalvfs)");
  }
  const auto current = num_vfs(*a);
  if (!current.ok()) return current.error();
  if (*current == n) return {};

  const fs::path attribute = device_dir(*a) / "sriov_numvfs";
  auto write_count = [&](unsigned count) -> Status {
    const std::string value = std::to_string(count);
    const WriteOutcome out = write_attribute(config_, attribute, value);
    if (out.err == 0) return {};
    if (out.at_open) return write_error(attribute, value, out);
    // The kernel's refusals, named (drivers/pci/iov.c, sriov_numvfs_store).
    switch (out.err) {
      case ENOENT:
        return make_error(Errc::unavailable,
                          "the kernel cannot create VFs on " + *a +
                              ": no driver is bound to it, or its driver does not support "
                              "SR-IOV configuration (for vfio-pci: modprobe vfio-pci "
                              "enable_sriov=1)");
      case EBUSY:
        return make_error(Errc::busy, "the kernel refused to change the VF count of " + *a +
                                          " to " + value +
                                          ": VFs are enabled or in use; release them and set 0 "
                                          "first");
      case ERANGE:
        return make_error(Errc::invalid_argument, "the kernel refused " + value + " VFs on " + *a +
                                                      ": more than sriov_totalvfs");
      default: return write_error(attribute, value, out);
    }
  };
  if (*current != 0 && n != 0) {
    if (Status st = write_count(0); !st.ok()) return st;
  }
  return write_count(n);
}

Result<std::vector<std::string>> SysfsSriov::vf_addresses(std::string_view pf) const {
  const auto a = checked(pf);
  if (!a.ok()) return a.error();
  std::map<unsigned, std::string> by_index;
  std::error_code ec;
  for (fs::directory_iterator it(device_dir(*a), ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    constexpr std::string_view kPrefix = "virtfn";
    if (name.size() <= kPrefix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0) continue;
    unsigned index = 0;
    const char* first = name.data() + kPrefix.size();
    const char* last = name.data() + name.size();
    const auto [ptr, perr] = std::from_chars(first, last, index);
    if (perr != std::errc() || ptr != last) continue;
    const auto vf = link_name(it->path());
    if (!vf.ok()) return vf.error();
    by_index[index] = *vf;
  }
  if (ec) {
    return make_error(Errc::io_error,
                      "cannot list " + device_dir(*a).string() + ": " + ec.message());
  }
  std::vector<std::string> out;
  out.reserve(by_index.size());
  for (auto& [index, vf] : by_index) out.push_back(std::move(vf));
  return out;
}

Result<std::string> SysfsSriov::driver(std::string_view address) const {
  const auto a = checked(address);
  if (!a.ok()) return a.error();
  return link_name(device_dir(*a) / "driver");
}

Status SysfsSriov::set_driver_override(std::string_view address, std::string_view driver_name) {
  const auto a = checked(address);
  if (!a.ok()) return a.error();
  // An empty write never reaches the kernel; a lone newline clears the override.
  Status st = write(device_dir(*a) / "driver_override", driver_name.empty() ? "\n" : driver_name);
  if (!st.ok() && st.error().code == Errc::not_found) {
    return make_error(Errc::unavailable,
                      *a + " has no driver_override: the kernel is too old (3.16 or later needed)");
  }
  return st;
}

Status SysfsSriov::unbind(std::string_view address) {
  const auto a = checked(address);
  if (!a.ok()) return a.error();
  const auto current = link_name(device_dir(*a) / "driver");
  if (!current.ok()) return current.error();
  if (current->empty()) return {};
  return write(device_dir(*a) / "driver" / "unbind", *a);
}

Status SysfsSriov::bind(std::string_view address, std::string_view driver_name) {
  const auto a = checked(address);
  if (!a.ok()) return a.error();
  const fs::path drivers = config_.root / "bus" / "pci" / "drivers";
  const fs::path dir = drivers / std::string(driver_name);
  std::error_code ec;
  if (driver_name.empty() || driver_name.find('/') != std::string_view::npos ||
      !fs::is_directory(dir, ec)) {
    return make_error(Errc::unavailable, "no driver '" + std::string(driver_name) + "' in " +
                                             drivers.string() + ": load it (modprobe " +
                                             std::string(driver_name) + ")");
  }
  if (fs::exists(dir / "bind", ec)) return write(dir / "bind", *a);
  return write(config_.root / "bus" / "pci" / "drivers_probe", *a);
}

Status SysfsSriov::bind_to(std::string_view address, std::string_view driver_name) {
  const auto a = checked(address);
  if (!a.ok()) return a.error();
  const auto current = driver(*a);
  if (!current.ok()) return current.error();
  if (*current == driver_name) return {};
  if (Status st = set_driver_override(*a, driver_name); !st.ok()) return st;
  if (Status st = unbind(*a); !st.ok()) return st;
  return bind(*a, driver_name);
}

Result<unsigned> SysfsSriov::iommu_group(std::string_view address) const {
  const auto a = checked(address);
  if (!a.ok()) return a.error();
  const fs::path link = device_dir(*a) / "iommu_group";
  const auto group = link_name(link);
  if (!group.ok()) return group.error();
  if (group->empty()) {
    return make_error(Errc::unavailable,
                      *a + " has no IOMMU group: the IOMMU is off or absent (enable VT-d/AMD-Vi "
                           "in the firmware and add intel_iommu=on or amd_iommu=on to the kernel "
                           "command line)");
  }
  return parse_unsigned(link, *group);
}

}  // namespace keel::pci
