// The options of the NBD handshake (see nbd_handshake.h).
#include "nbd_handshake.h"

#include <cstring>

#include "keel/vmm/nbd_server.h"

namespace keel::vmm::nbd_internal {

namespace {

constexpr std::uint32_t kSector = 512;

template <typename M>
void append(std::string& out, const M& m) {
  const M w = nbd::to_wire(m);
  out.append(reinterpret_cast<const char*>(&w), sizeof w);
}
void append_be32(std::string& out, std::uint32_t v) {
  const std::uint32_t w = __builtin_bswap32(v);
  out.append(reinterpret_cast<const char*>(&w), 4);
}
void append_be16(std::string& out, std::uint16_t v) {
  const std::uint16_t w = __builtin_bswap16(v);
  out.append(reinterpret_cast<const char*>(&w), 2);
}
std::uint32_t load_be32(const std::byte* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
std::uint16_t load_be16(const std::byte* p) noexcept {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return __builtin_bswap16(v);
}

bool matches(const HandshakeExport& e, const std::string& name) {
  return name.empty() || name == e.name;
}

}  // namespace

OptionAnswer answer_option(const HandshakeExport& e, std::uint32_t opt, std::uint32_t length,
                           const std::string& d) {
  OptionAnswer a;
  auto reply = [&](OptionAnswer& to, std::uint32_t type, const std::string& data = {}) {
    append(to.out, nbd::OptionReply{nbd::kOptReplyMagic, opt, type,
                                    static_cast<std::uint32_t>(data.size())});
    to.out += data;
  };
  auto error = [&](OptionAnswer& to, std::uint32_t type, const std::string& message) {
    reply(to, type, message.substr(0, nbd::kMaxString));
  };
  if (length > nbd::kMaxOptionBytes) {
    error(a, nbd::kRepErrTooBig,
          std::string(nbd::option_name(opt)) + ": " + std::to_string(length) +
              " bytes of option data is more than this server takes");
    return a;
  }
  switch (opt) {
    case nbd::kOptExportName: {
      if (d.size() > nbd::kMaxString || !matches(e, d)) {
        a.next = OptionNext::drop;
        a.why = "NBD_OPT_EXPORT_NAME for unknown export '" + d.substr(0, 256) + "'";
        return a;
      }
      std::string m;
      append(m, nbd::ExportNameReply{e.size, e.tx_flags});
      if (!e.no_zeroes) m.append(124, '\0');
      a.out += m;
      a.next = OptionNext::transmission;
      return a;
    }
    case nbd::kOptAbort:
      reply(a, nbd::kRepAck);
      a.next = OptionNext::close_after_replies;
      return a;
    case nbd::kOptList: {
      if (!d.empty()) {
        error(a, nbd::kRepErrInvalid, "NBD_OPT_LIST takes no data");
        return a;
      }
      std::string s;
      append_be32(s, static_cast<std::uint32_t>(e.name.size()));
      s += e.name;
      s += e.description;
      reply(a, nbd::kRepServer, s);
      reply(a, nbd::kRepAck);
      return a;
    }
    case nbd::kOptInfo:
    case nbd::kOptGo: {
      if (d.size() < 6) {
        error(a, nbd::kRepErrInvalid, std::string(nbd::option_name(opt)) + ": too short");
        return a;
      }
      const auto* p = reinterpret_cast<const std::byte*>(d.data());
      const std::uint32_t nlen = load_be32(p);
      if (nlen > d.size() - 6) {
        error(a, nbd::kRepErrInvalid,
              std::string(nbd::option_name(opt)) + ": name longer than the option");
        return a;
      }
      const std::string name = d.substr(4, nlen);
      const std::uint16_t nreq = load_be16(p + 4 + nlen);
      if (d.size() != 6 + std::uint64_t{nlen} + 2ull * nreq) {
        error(a, nbd::kRepErrInvalid,
              std::string(nbd::option_name(opt)) + ": information request count " +
                  std::to_string(nreq) + " does not match the option's length");
        return a;
      }
      if (nlen > nbd::kMaxString) {
        error(a, nbd::kRepErrInvalid,
              "export name longer than " + std::to_string(nbd::kMaxString) + " bytes");
        return a;
      }
      if (!matches(e, name)) {
        error(
            a, nbd::kRepErrUnknown,
            "no export named '" + name.substr(0, 256) + "' (this server exports '" + e.name + "')");
        return a;
      }
      bool want_name = false, want_desc = false;
      for (std::uint16_t i = 0; i < nreq; ++i) {
        const std::uint16_t t = load_be16(p + 6 + nlen + 2u * i);
        want_name = want_name || t == nbd::kInfoName;
        want_desc = want_desc || t == nbd::kInfoDescription;
      }
      std::string s;
      append(s, nbd::InfoExport{nbd::kInfoExport, e.size, e.tx_flags});
      reply(a, nbd::kRepInfo, s);
      if (want_name) {
        s.clear();
        append_be16(s, nbd::kInfoName);
        s += e.name;
        reply(a, nbd::kRepInfo, s);
      }
      if (want_desc) {
        s.clear();
        append_be16(s, nbd::kInfoDescription);
        s += e.description;
        reply(a, nbd::kRepInfo, s);
      }
      // Always sent (the spec allows it unrequested): clients that honour it align.
      s.clear();
      append(s, nbd::InfoBlockSize{nbd::kInfoBlockSize, kSector, 4096, e.max_request_bytes});
      reply(a, nbd::kRepInfo, s);
      reply(a, nbd::kRepAck);
      if (opt == nbd::kOptGo) a.next = OptionNext::transmission;
      return a;
    }
    default:
      error(a, nbd::kRepErrUnsup,
            std::string("option ") + std::to_string(opt) + " (" + nbd::option_name(opt) +
                ") is not supported by this server");
      return a;
  }
  return a;
}

}  // namespace keel::vmm::nbd_internal
