// XrtCard: finding the board, loading the xclbin, opening the PF IP. XRT throws on failure;
// each call is wrapped and its reason becomes the message of a typed error.
#include "keel/fpga/xrt/xrt_card.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <vector>

#include <experimental/xrt_system.h>
#include <experimental/xrt_xclbin.h>
#include <keel/regs/keel_regs.h>

#include "xrt_pf.h"

namespace keel::fpga::xrt {

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// The IP that holds the PF registers: the one asked for, else the only one, else the only one
// whose name starts with "keel".
Result<std::pair<std::string, std::uint64_t>> pick_ip(const ::xrt::xclbin& xclbin,
                                                      const std::string& path, std::string wanted) {
  if (wanted.empty()) wanted = env("KEEL_XRT_IP");
  std::vector<::xrt::xclbin::ip> ips;
  try {
    ips = xclbin.get_ips();
  } catch (const std::exception& e) {
    return make_error(Errc::invalid_argument,
                      "cannot list the IPs of " + path + ": " + std::string(e.what()));
  }
  std::string names;
  std::vector<const ::xrt::xclbin::ip*> keel;
  for (const auto& ip : ips) {
    const std::string name = ip.get_name();
    names += names.empty() ? name : ", " + name;
    if (!wanted.empty() && (name == wanted || name.rfind(wanted + ":", 0) == 0)) {
      return std::make_pair(name, static_cast<std::uint64_t>(ip.get_size()));
    }
    if (name.rfind("keel", 0) == 0) keel.push_back(&ip);
  }
  if (!wanted.empty()) {
    return make_error(Errc::unavailable,
                      "the xclbin " + path + " has no IP named '" + wanted +
                          "' (it has: " + (names.empty() ? std::string("none") : names) + ")");
  }
  if (ips.size() == 1) {
    return std::make_pair(ips[0].get_name(), static_cast<std::uint64_t>(ips[0].get_size()));
  }
  if (keel.size() == 1) {
    return std::make_pair(keel[0]->get_name(), static_cast<std::uint64_t>(keel[0]->get_size()));
  }
  return make_error(Errc::unavailable, "cannot tell which IP of " + path +
                                           " holds the PF registers (it has: " +
                                           (names.empty() ? std::string("none") : names) +
                                           "): name it with KEEL_XRT_IP");
}

// The host memory bank host-only buffers go to, or -1.
int host_memory_group(const ::xrt::xclbin& xclbin) {
  try {
    for (const auto& mem : xclbin.get_mems()) {
      if (mem.get_type() == ::xrt::xclbin::mem::memory_type::host && mem.get_used()) {
        return mem.get_index();
      }
    }
  } catch (const std::exception&) {
    // No memory topology: no host memory.
  }
  return -1;
}

}  // namespace

struct XrtCard::Impl {
  unsigned index = 0;
  std::string xclbin;
  std::string ip_name;
  std::string device_name;
  std::unique_ptr<XrtPf> pf;
};

XrtCard::XrtCard(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
XrtCard::~XrtCard() = default;

Result<std::string> XrtCard::xclbin_path(const XrtOptions& options) {
  const std::string path = options.xclbin.empty() ? env("KEEL_XCLBIN") : options.xclbin;
  if (path.empty()) {
    return make_error(Errc::unavailable,
                      "no xclbin named: set KEEL_XCLBIN=/path/to/keel.xclbin (docs/boards.md)");
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return make_error(Errc::not_found, "xclbin " + path + " does not exist");
  }
  return path;
}

Result<std::unique_ptr<XrtCard>> XrtCard::open(unsigned index, const XrtOptions& options) {
  // Count first: constructing a device XRT cannot find is the one step that fails less
  // gracefully on some XRT versions.
  unsigned count = 0;
  try {
    count = ::xrt::system::enumerate_devices();
  } catch (const std::exception& e) {
    return make_error(Errc::unavailable, "XRT cannot enumerate devices: " + std::string(e.what()));
  }
  if (count == 0) {
    return make_error(Errc::unavailable,
                      "XRT sees no devices: no Xilinx board here, or its xocl/xclmgmt drivers "
                      "are not loaded (check with 'xbutil examine')");
  }
  if (index >= count) {
    return make_error(Errc::unavailable, "XRT sees " + std::to_string(count) +
                                             " device(s); there is no device " +
                                             std::to_string(index));
  }
  auto path = xclbin_path(options);
  if (!path.ok()) return path.error();

  auto impl = std::make_unique<Impl>();
  impl->index = index;
  impl->xclbin = *path;
  ::xrt::device device;
  try {
    device = ::xrt::device(index);
  } catch (const std::exception& e) {
    return make_error(Errc::unavailable, "XRT could not open device " + std::to_string(index) +
                                             ": " + std::string(e.what()));
  }
  try {
    impl->device_name = device.get_info<::xrt::info::device::name>();
  } catch (const std::exception&) {
    impl->device_name = "device " + std::to_string(index);
  }
  ::xrt::xclbin xclbin;
  try {
    xclbin = ::xrt::xclbin(*path);
  } catch (const std::exception& e) {
    return make_error(Errc::invalid_argument,
                      "cannot read xclbin " + *path + ": " + std::string(e.what()));
  }
  ::xrt::uuid uuid;
  try {
    uuid = device.load_xclbin(xclbin);
  } catch (const std::exception& e) {
    return make_error(Errc::unavailable, "loading " + *path + " onto " + impl->device_name +
                                             " failed: " + std::string(e.what()) +
                                             " (is it built for this board's shell?)");
  }
  auto ip_choice = pick_ip(xclbin, *path, options.ip_name);
  if (!ip_choice.ok()) return ip_choice.error();
  impl->ip_name = ip_choice->first;
  const std::uint64_t bar = ip_choice->second != 0 ? ip_choice->second : 64u << 10;
  ::xrt::ip ip;
  try {
    ip = ::xrt::ip(device, uuid, impl->ip_name);
  } catch (const std::exception& e) {
    return make_error(Errc::unavailable, "cannot open IP " + impl->ip_name + ": " +
                                             std::string(e.what()) +
                                             " (another process may hold it)");
  }
  impl->pf = std::make_unique<XrtPf>(device, std::move(ip), bar, host_memory_group(xclbin));
  const std::uint32_t id = impl->pf->read32(regs::pf::ID);
  if (id != regs::MAGIC) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", id);
    return make_error(Errc::not_found, "IP " + impl->ip_name + " of " + *path +
                                           " does not answer as a keel card: PF ID reads " + buf +
                                           ", expected 0x4B45454C ('KEEL')");
  }
  return std::unique_ptr<XrtCard>(new XrtCard(std::move(impl)));
}

std::string XrtCard::describe() const {
  XrtPf& p = *impl_->pf;
  const std::uint32_t version = p.read32(regs::pf::VERSION);
  const std::uint64_t lbas = p.read64(regs::pf::STORAGE_LBAS);
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "xrt card %u (%s, IP %s): programming model %u.%u, PF only (VFs need the vfio "
                "backend), %llu MiB storage (%llu LBAs)",
                impl_->index, impl_->device_name.c_str(), impl_->ip_name.c_str(), version >> 16,
                version & 0xFFFF, static_cast<unsigned long long>((lbas << 9) >> 20),
                static_cast<unsigned long long>(lbas));
  return buf;
}

Function& XrtCard::pf() noexcept { return *impl_->pf; }

Result<Function*> XrtCard::vf(unsigned index) {
  return make_error(Errc::not_found, "VF " + std::to_string(index) +
                                         " is not reachable through XRT (it reaches only the "
                                         "PF); open the card as vfio:<PF address> for VFs");
}

Status XrtCard::set_num_vfs(unsigned n) {
  if (n == 0) return {};
  return make_error(Errc::unavailable,
                    "XRT reaches only the PF's registers, not VFs; enable VFs with the vfio "
                    "backend (vfio:<PF address>, docs/boards.md)");
}

std::uint64_t XrtCard::now_ns() const noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace keel::fpga::xrt
