// nbd_handshake.h - the options of the NBD handshake (fixed newstyle): what the server answers
// to one option and what happens next. Pure logic (no sockets): the server feeds it each
// option once its data is in, within the limits in keel/vmm/nbd_server.h (nbd::kMax*).
#pragma once

#include <cstdint>
#include <string>

namespace keel::vmm::nbd_internal {

/// What the handshake offers.
struct HandshakeExport {
  const std::string& name;  ///< The export; "" is accepted as well.
  const std::string& description;
  std::uint64_t size = 0;      ///< Bytes.
  std::uint16_t tx_flags = 0;  ///< Transmission flags.
  std::uint32_t max_request_bytes = 0;
  bool no_zeroes = false;  ///< The client set C_NO_ZEROES.
};

enum class OptionNext : std::uint8_t {
  negotiate,            ///< Further options follow.
  transmission,         ///< GO or EXPORT_NAME succeeded: requests follow the replies.
  close_after_replies,  ///< ABORT: close once the replies are out.
  drop,                 ///< A violation the spec answers by closing (why says what).
};

struct OptionAnswer {
  std::string out;  ///< Every reply, in wire format, in order.
  OptionNext next = OptionNext::negotiate;
  std::string why;  ///< For drop.
};

/// Answers option `option` whose `length` bytes of data were announced and `data` kept
/// (empty when the option was longer than nbd::kMaxOptionBytes: it is refused TOO_BIG).
OptionAnswer answer_option(const HandshakeExport& e, std::uint32_t option, std::uint32_t length,
                           const std::string& data);

}  // namespace keel::vmm::nbd_internal
