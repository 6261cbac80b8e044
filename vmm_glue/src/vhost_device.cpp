// What every device behind the vhost-user server shares.
#include "keel/vmm/vhost_device.h"

namespace keel::vmm {

Status VhostDevice::write_config(std::uint32_t offset, std::span<const std::byte> bytes) {
  const std::vector<std::byte> space = config_bytes();
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const std::size_t at = offset + i;
    const std::byte now = at < space.size() ? space[at] : std::byte{0};
    if (bytes[i] != now) {
      return make_error(Errc::invalid_argument, "config byte " + std::to_string(at) +
                                                    " is read-only (the device has no "
                                                    "writable configuration field)");
    }
  }
  return {};  // writing what is already there changes nothing
}

}  // namespace keel::vmm
