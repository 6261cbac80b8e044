#include "keel/fpga/vfio_user/config_space.h"

#include <cstdio>
#include <string>

namespace keel::vfio_user {
namespace {

void put16(std::array<std::uint8_t, kConfigSpaceBytes>& c, std::size_t at, unsigned v) {
  c[at] = static_cast<std::uint8_t>(v);
  c[at + 1] = static_cast<std::uint8_t>(v >> 8);
}

unsigned get16(std::span<const std::uint8_t> c, std::size_t at) {
  return static_cast<unsigned>(c[at]) | static_cast<unsigned>(c[at + 1]) << 8;
}

constexpr std::uint8_t kCapVendorSpecific = 0x09;
constexpr unsigned kStatusCapList = 1u << 4;
constexpr std::uint8_t kCapVersion = 1;

}  // namespace

std::array<std::uint8_t, kConfigSpaceBytes> build_config_space(const FunctionIdentity& id) {
  std::array<std::uint8_t, kConfigSpaceBytes> c{};
  const std::uint16_t device = id.is_nic() ? (id.is_pf() ? kPciDeviceNicPf : kPciDeviceNicVf)
                                           : (id.is_pf() ? kPciDevicePf : kPciDeviceVf);
  put16(c, 0x00, kPciVendorId);
  put16(c, 0x02, device);
  put16(c, 0x06, kStatusCapList);
  c[0x08] = 1;  // revision
  if (id.is_nic()) {
    c[0x09] = 0x00;  // no programming interface
    c[0x0A] = 0x00;  // Ethernet controller
    c[0x0B] = 0x02;  // network controller
  } else {
    c[0x09] = 0x02;  // NVM Express
    c[0x0A] = 0x08;  // non-volatile memory controller
    c[0x0B] = 0x01;  // mass storage
  }
  c[0x0E] = 0x00;  // type-0 header
  c[0x10] = 0x04;  // BAR0: memory, 64-bit, not prefetchable
  put16(c, 0x2C, kPciVendorId);
  put16(c, 0x2E, device);
  c[0x34] = kKeelCapOffset;
  c[kKeelCapOffset + 0] = kCapVendorSpecific;
  c[kKeelCapOffset + 1] = 0;  // last capability
  c[kKeelCapOffset + 2] = kKeelCapLength;
  c[kKeelCapOffset + 3] = kCapVersion;
  put16(c, kKeelCapOffset + 4, id.number);
  put16(c, kKeelCapOffset + 6, id.max_vfs);
  put16(c, kKeelCapOffset + kKeelCapNumVfs, id.num_vfs);
  put16(c, kKeelCapOffset + kKeelCapRemovedVfs, id.removed_vfs & 0xffffu);
  put16(c, kKeelCapOffset + kKeelCapRemovedVfs + 2, id.removed_vfs >> 16);
  return c;
}

Result<FunctionIdentity> parse_config_space(std::span<const std::uint8_t> c) {
  if (c.size() < kConfigSpaceBytes) {
    return make_error(Errc::invalid_argument,
                      "configuration space of " + std::to_string(c.size()) + " bytes, not 256");
  }
  const unsigned vendor = get16(c, 0x00), device = get16(c, 0x02);
  const bool pf_id = device == kPciDevicePf || device == kPciDeviceNicPf;
  const bool nic_id = device == kPciDeviceNicPf || device == kPciDeviceNicVf;
  if (vendor != kPciVendorId || (!pf_id && !nic_id && device != kPciDeviceVf)) {
    char b[96];
    std::snprintf(b, sizeof b, "PCI ID %04x:%04x is not a keel card function", vendor, device);
    return make_error(Errc::invalid_argument, b);
  }
  // Walk the capability list (bounded: 48 entries fit in 192 bytes) for the keel capability.
  unsigned at = (get16(c, 0x06) & kStatusCapList) != 0 ? c[0x34] & 0xFCu : 0;
  for (unsigned hops = 0; at >= 0x40 && at + kKeelCapLength <= c.size() && hops < 48; ++hops) {
    if (c[at] == kCapVendorSpecific && c[at + 2] >= kKeelCapLength && c[at + 3] == kCapVersion) {
      FunctionIdentity id;
      id.number = get16(c, at + 4);
      id.max_vfs = get16(c, at + 6);
      id.num_vfs = get16(c, at + kKeelCapNumVfs);
      id.removed_vfs = get16(c, at + kKeelCapRemovedVfs) |
                       static_cast<std::uint32_t>(get16(c, at + kKeelCapRemovedVfs + 2)) << 16;
      if (pf_id != id.is_pf() || nic_id != id.is_nic() || id.num_vfs > id.max_vfs) {
        return make_error(Errc::invalid_argument,
                          "the keel capability contradicts the device ID (function " +
                              std::to_string(id.number) + ")");
      }
      return id;
    }
    at = c[at + 1] & 0xFCu;
  }
  return make_error(Errc::invalid_argument, "the function has no keel capability");
}

}  // namespace keel::vfio_user
