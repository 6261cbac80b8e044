#include "keel/fpga/vfio_user/channel.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "keel/clock.h"
#include "keel/fd_passing.h"

namespace keel::vfio_user {
namespace {

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// Waits until `fd` is readable or the deadline (steady clock, ns) passes.
Status wait_readable(int fd, std::uint64_t deadline_ns) {
  for (;;) {
    // Look first: data already there is read even when the bound is 0 or has passed.
    const std::uint64_t now = steady_clock().now_ns();
    const std::uint64_t left = deadline_ns > now ? deadline_ns - now : 0;
    const auto ms =
        static_cast<int>(std::min<std::uint64_t>((left + 999'999) / 1'000'000, 1'000'000));
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, ms);
    if (n > 0) return {};
    if (n < 0 && errno != EINTR) return make_error(Errc::io_error, errno_text("poll"));
    if (left == 0) return make_error(Errc::timeout, "no message from the vfio-user peer");
  }
}

}  // namespace

Status Channel::send(Header header, std::span<const std::byte> payload, std::span<const int> fds) {
  const std::size_t total = sizeof(Header) + payload.size();
  if (total > limits_.max_message_bytes) {
    return make_error(Errc::invalid_argument,
                      std::string(command_name(static_cast<std::uint16_t>(header.command))) +
                          ": a message of " + std::to_string(total) +
                          " bytes is over the limit of " +
                          std::to_string(limits_.max_message_bytes));
  }
  if (fds.size() > limits_.max_fds) {
    return make_error(Errc::invalid_argument, std::to_string(fds.size()) +
                                                  " fds with one message; the limit is " +
                                                  std::to_string(limits_.max_fds));
  }
  header.size = static_cast<std::uint32_t>(total);
  const std::span<const std::byte> parts[2] = {std::as_bytes(std::span(&header, 1)), payload};
  if (Status s = send_with_fds(fd_.get(), parts, fds); !s.ok()) {
    if (s.error().code == Errc::gone) {
      return make_error(Errc::gone, "the vfio-user peer closed the connection");
    }
    return s;
  }
  return {};
}

Status Channel::reply(const Header& request, std::span<const std::byte> payload,
                      std::span<const int> fds, std::uint32_t error) {
  Header h{};
  h.msg_id = request.msg_id;
  h.command = request.command;
  h.flags = kFlagTypeReply | (error != 0 ? kFlagError : 0);
  h.error = error;
  if (error != 0) return send(h, {}, {});  // a failed reply is the header alone
  return send(h, payload, fds);
}

Result<Message> Channel::receive(std::chrono::milliseconds timeout) {
  const std::uint64_t deadline = steady_clock().deadline_after(timeout);
  Message msg;
  bool fds_dropped = false;
  // Reads exactly `len` bytes into `dst`, taking any fds that come along.
  auto read_exact = [&](std::byte* dst, std::size_t len, bool first) -> Status {
    std::size_t got = 0;
    while (got < len) {
      if (Status s = wait_readable(fd_.get(), deadline); !s.ok()) {
        if (!first || got > 0) {
          return make_error(Errc::invalid_argument, "a vfio-user message was cut short (" +
                                                        std::to_string(got) + " of " +
                                                        std::to_string(len) + " bytes)");
        }
        return s;
      }
      auto r = recv_with_fds(fd_.get(), std::span(dst + got, len - got), msg.fds, limits_.max_fds);
      if (!r) {
        if (r.error().code == Errc::gone) {
          return make_error(Errc::gone, "the vfio-user peer went away");
        }
        return r.error();
      }
      if (r->again) continue;
      if (r->fds_truncated) fds_dropped = true;
      if (r->closed) {
        if (first && got == 0) return make_error(Errc::gone, "the vfio-user peer closed");
        return make_error(Errc::invalid_argument, "the vfio-user peer closed mid-message");
      }
      got += r->bytes;
    }
    return {};
  };
  if (Status s = read_exact(reinterpret_cast<std::byte*>(&msg.header), sizeof(Header), true);
      !s.ok()) {
    return s.error();
  }
  const Header& h = msg.header;
  const std::string what = command_name(static_cast<std::uint16_t>(h.command));
  if (h.size < sizeof(Header) || h.size > limits_.max_message_bytes) {
    return make_error(Errc::invalid_argument, what + ": message size " + std::to_string(h.size) +
                                                  " is not within 16.." +
                                                  std::to_string(limits_.max_message_bytes));
  }
  const std::uint32_t type = h.flags & kFlagTypeMask;
  if (type != kFlagTypeCommand && type != kFlagTypeReply) {
    return make_error(Errc::invalid_argument,
                      what + ": unknown message type " + std::to_string(type));
  }
  msg.payload.resize(h.size - sizeof(Header));
  if (!msg.payload.empty()) {
    if (Status s = read_exact(msg.payload.data(), msg.payload.size(), false); !s.ok()) {
      return s.error();
    }
  }
  if (fds_dropped || msg.fds.size() > limits_.max_fds) {
    return make_error(Errc::invalid_argument,
                      what + ": more fds than the limit of " + std::to_string(limits_.max_fds));
  }
  return msg;
}

std::vector<std::byte> encode_version(const Capabilities& caps, std::uint16_t major,
                                      std::uint16_t minor) {
  const nlohmann::json j = {
      {"capabilities",
       {{"max_msg_fds", caps.max_msg_fds}, {"max_data_xfer_size", caps.max_data_xfer_size}}}};
  const std::string text = j.dump();
  std::vector<std::byte> out(sizeof(Version) + text.size() + 1);
  const Version v{major, minor};
  std::memcpy(out.data(), &v, sizeof v);
  std::memcpy(out.data() + sizeof v, text.data(), text.size());  // NUL already there
  return out;
}

Result<VersionOffer> decode_version(std::span<const std::byte> payload) {
  if (payload.size() < sizeof(Version)) {
    return make_error(
        Errc::invalid_argument,
        "VERSION: payload of " + std::to_string(payload.size()) + " bytes; it needs at least 4");
  }
  VersionOffer o;
  Version v;
  std::memcpy(&v, payload.data(), sizeof v);
  o.major = v.major;
  o.minor = v.minor;
  const auto json = payload.subspan(sizeof(Version));
  if (json.empty()) return o;
  if (json.back() != std::byte{0}) {
    return make_error(Errc::invalid_argument, "VERSION: the JSON is not NUL-terminated");
  }
  const std::string_view text(reinterpret_cast<const char*>(json.data()),
                              ::strnlen(reinterpret_cast<const char*>(json.data()), json.size()));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return make_error(Errc::invalid_argument, "VERSION: the capabilities are not a JSON object");
  }
  const auto caps = j.find("capabilities");
  if (caps == j.end()) return o;
  if (!caps->is_object()) {
    return make_error(Errc::invalid_argument, "VERSION: \"capabilities\" is not an object");
  }
  auto take = [&](const char* name, std::uint32_t& out) -> Status {
    const auto it = caps->find(name);
    if (it == caps->end()) return {};
    if (!it->is_number_unsigned() || it->get<std::uint64_t>() == 0 ||
        it->get<std::uint64_t>() > UINT32_MAX) {
      return make_error(Errc::invalid_argument,
                        std::string("VERSION: ") + name + " is not a number in 1..2^32-1");
    }
    out = static_cast<std::uint32_t>(it->get<std::uint64_t>());
    return {};
  };
  if (Status s = take("max_msg_fds", o.caps.max_msg_fds); !s.ok()) return s.error();
  if (Status s = take("max_data_xfer_size", o.caps.max_data_xfer_size); !s.ok()) return s.error();
  return o;
}

Result<VersionOffer> negotiate(const VersionOffer& client, const Capabilities& server) {
  if (client.major != kMajor) {
    return make_error(Errc::invalid_argument,
                      "VERSION: the client speaks " + std::to_string(client.major) + "." +
                          std::to_string(client.minor) + ", keel speaks " + std::to_string(kMajor) +
                          "." + std::to_string(kMinor));
  }
  VersionOffer o;
  o.major = kMajor;
  o.minor = std::min(client.minor, kMinor);
  o.caps.max_msg_fds = std::min(client.caps.max_msg_fds, server.max_msg_fds);
  o.caps.max_data_xfer_size = std::min(client.caps.max_data_xfer_size, server.max_data_xfer_size);
  return o;
}

}  // namespace keel::vfio_user
