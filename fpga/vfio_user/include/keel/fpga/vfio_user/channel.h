// keel/fpga/vfio_user/channel.h - one end of a vfio-user socket: framing, file descriptors
// (SCM_RIGHTS) and the VERSION capabilities, with limits on everything the peer sends.
//
// Both sides use it: keel-card serving a PCI function, and the fpga/ backend reaching a card
// served that way. A peer is not trusted: a message that breaks a limit is an error that names
// the limit, and the fds that came with it are closed.
//
// Threading: one thread sends and one receives at a time (send() and receive() may run on two
// threads at once).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "keel/result.h"
#include "keel/unique_fd.h"
#include "keel/wire/vfio_user.h"

namespace keel::vfio_user {

/// What a channel accepts from its peer. Every member has a default.
struct ChannelLimits {
  /// Largest message (header included). The default holds the largest data transfer keel
  /// negotiates (kDefaultMaxDataXferSize) plus its access header.
  std::uint32_t max_message_bytes = kDefaultMaxDataXferSize + 64;
  /// Most fds with one message (DMA_MAP: 1; SET_IRQS: one per MSI-X vector).
  unsigned max_fds = 64;
};

/// One received message: header, payload (size - 16 bytes) and the fds that came with it.
struct Message {
  Header header{};
  std::vector<std::byte> payload;
  std::vector<UniqueFd> fds;
};

/// The fixed part of a message's payload as T (a wire struct). Errors: invalid_argument (the
/// payload is shorter than T), naming `what` (the command).
template <typename T>
Result<T> payload_as(const Message& m, const char* what) {
  if (m.payload.size() < sizeof(T)) {
    return make_error(Errc::invalid_argument, std::string(what) + ": payload of " +
                                                  std::to_string(m.payload.size()) +
                                                  " bytes; it needs " + std::to_string(sizeof(T)));
  }
  T v;
  std::memcpy(&v, m.payload.data(), sizeof v);
  return v;
}

class Channel {
 public:
  explicit Channel(UniqueFd socket, ChannelLimits limits = {}) noexcept
      : fd_(std::move(socket)), limits_(limits) {}

  int fd() const noexcept { return fd_.get(); }

  /// Sends one message: `header` (its size is set here) and `payload`, with `fds` as
  /// SCM_RIGHTS. Errors: invalid_argument (more fds than the limit, a message over
  /// max_message_bytes), gone (the peer closed), io_error.
  Status send(Header header, std::span<const std::byte> payload, std::span<const int> fds = {});
  /// A reply to `request`: same id and command, type reply; `error` (an errno) > 0 sends a
  /// failed reply with no payload.
  Status reply(const Header& request, std::span<const std::byte> payload,
               std::span<const int> fds = {}, std::uint32_t error = 0);

  /// Receives one whole message, waiting up to `timeout` for it to start and for the rest of
  /// it. Errors: timeout, gone (the peer closed between messages), invalid_argument (a framing
  /// error: size under 16 or over the limit, an unknown message type, too many fds or fds the
  /// kernel had to drop, a message cut short; the stream is out of step then: close the
  /// connection), io_error. Fds of a refused message are closed.
  Result<Message> receive(std::chrono::milliseconds timeout);

 private:
  UniqueFd fd_;
  ChannelLimits limits_;
};

/// What one side offers in VERSION (the spec's defaults when the JSON names nothing).
struct Capabilities {
  std::uint32_t max_msg_fds = kDefaultMaxMsgFds;
  std::uint32_t max_data_xfer_size = kDefaultMaxDataXferSize;
};

/// The VERSION payload: Version{major, minor} then the NUL-terminated JSON capabilities.
std::vector<std::byte> encode_version(const Capabilities& caps, std::uint16_t major = kMajor,
                                      std::uint16_t minor = kMinor);
/// Parses a VERSION payload. The JSON is optional; unknown capabilities are ignored.
/// Errors: invalid_argument (shorter than 4 bytes, JSON that does not parse, is not
/// NUL-terminated, or gives a capability of the wrong type or zero).
struct VersionOffer {
  std::uint16_t major = 0, minor = 0;
  Capabilities caps;
};
Result<VersionOffer> decode_version(std::span<const std::byte> payload);
/// The server's answer to a client's offer: the same major (else invalid_argument, naming both
/// versions), the lower minor, and the smaller of each capability.
Result<VersionOffer> negotiate(const VersionOffer& client, const Capabilities& server);

}  // namespace keel::vfio_user
