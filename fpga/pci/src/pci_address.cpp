// PCI address parsing: the one check every sysfs path built from user input goes through.
#include "keel/pci/pci_address.h"

#include <cctype>
#include <cstddef>
#include <utility>

namespace keel::pci {

namespace {

bool all_hex(std::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    if (std::isxdigit(static_cast<unsigned char>(c)) == 0) return false;
  }
  return true;
}

unsigned hex_value(std::string_view s) {
  unsigned v = 0;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(std::tolower(static_cast<unsigned char>(c)));
    v = v * 16 + static_cast<unsigned>(u <= '9' ? u - '0' : u - 'a' + 10);
  }
  return v;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Error bad(std::string_view text, std::string_view why) {
  // Appended piece by piece: `"literal" + std::string` trips GCC 12's -Wrestrict false
  // positive (PR 105329) in optimised builds.
  std::string msg = "'";
  msg.append(text).append("' is not a PCI address (").append(why);
  msg.append("): expected dddd:bb:dd.f in hex, e.g. 0000:3b:00.1");
  return make_error(Errc::invalid_argument, std::move(msg));
}

}  // namespace

Result<std::string> parse_pci_address(std::string_view text) {
  const std::size_t dot = text.rfind('.');
  if (dot == std::string_view::npos) return bad(text, "no '.' before the function number");
  const std::string_view function = text.substr(dot + 1);
  const std::string_view head = text.substr(0, dot);
  const std::size_t last_colon = head.rfind(':');
  if (last_colon == std::string_view::npos) return bad(text, "no ':' before the device number");
  const std::string_view device = head.substr(last_colon + 1);
  const std::string_view rest = head.substr(0, last_colon);
  const std::size_t first_colon = rest.rfind(':');
  const std::string_view bus =
      first_colon == std::string_view::npos ? rest : rest.substr(first_colon + 1);
  const std::string_view domain = first_colon == std::string_view::npos
                                      ? std::string_view("0000")
                                      : rest.substr(0, first_colon);

  if (domain.size() < 4 || domain.size() > 8 || !all_hex(domain)) {
    return bad(text, "the domain must be 4 to 8 hex digits");
  }
  if (bus.size() != 2 || !all_hex(bus)) return bad(text, "the bus must be 2 hex digits");
  if (device.size() != 2 || !all_hex(device)) return bad(text, "the device must be 2 hex digits");
  if (hex_value(device) > 0x1f) return bad(text, "the device number is at most 1f");
  if (function.size() != 1 || function[0] < '0' || function[0] > '7') {
    return bad(text, "the function must be one digit from 0 to 7");
  }
  return lower(domain) + ":" + lower(bus) + ":" + lower(device) + "." + std::string(function);
}

}  // namespace keel::pci
