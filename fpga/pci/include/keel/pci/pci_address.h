// keel/pci/pci_address.h - PCI addresses ("BDF") as the kernel spells them in sysfs.
#pragma once

#include <string>
#include <string_view>

#include "keel/result.h"

namespace keel::pci {

/// Checks a PCI address and returns it in the canonical form sysfs uses, "dddd:bb:dd.f" in
/// lower-case hex: domain (4 to 8 hex digits), bus (2), device (2, at most 1f), function
/// (0 to 7). lspci's short form "bb:dd.f" is accepted and means domain 0000.
/// Errors: invalid_argument, with a message naming the offending part.
Result<std::string> parse_pci_address(std::string_view text);

}  // namespace keel::pci
