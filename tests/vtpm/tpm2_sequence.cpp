// Response-code names, hex, and the fixed command sequence the vTPM tests compare between
// keel-vtpm, swtpm and a guest's /dev/tpmrm0.
#include <cstdio>

#include "tpm2_client.h"

namespace keel::vtpm {
namespace {

struct RcName {
  uint32_t code;
  const char* name;
};

// Format-one codes (the error number with RC_FMT1 set, Part 2 §6.6.3).
constexpr RcName kFmt1[] = {
    {0x081, "TPM_RC_ASYMMETRIC"}, {0x082, "TPM_RC_ATTRIBUTES"}, {0x083, "TPM_RC_HASH"},
    {0x084, "TPM_RC_VALUE"},      {0x085, "TPM_RC_HIERARCHY"},  {0x087, "TPM_RC_KEY_SIZE"},
    {0x088, "TPM_RC_MGF"},        {0x089, "TPM_RC_MODE"},       {0x08A, "TPM_RC_TYPE"},
    {0x08B, "TPM_RC_HANDLE"},     {0x08C, "TPM_RC_KDF"},        {0x08D, "TPM_RC_RANGE"},
    {0x08E, "TPM_RC_AUTH_FAIL"},  {0x08F, "TPM_RC_NONCE"},      {0x090, "TPM_RC_PP"},
    {0x092, "TPM_RC_SCHEME"},     {0x095, "TPM_RC_SIZE"},       {0x096, "TPM_RC_SYMMETRIC"},
    {0x097, "TPM_RC_TAG"},        {0x098, "TPM_RC_SELECTOR"},   {0x09A, "TPM_RC_INSUFFICIENT"},
    {0x09B, "TPM_RC_SIGNATURE"},  {0x09C, "TPM_RC_KEY"},        {0x09D, "TPM_RC_POLICY_FAIL"},
    {0x09F, "TPM_RC_INTEGRITY"},  {0x0A0, "TPM_RC_TICKET"},     {0x0A1, "TPM_RC_RESERVED_BITS"},
    {0x0A2, "TPM_RC_BAD_AUTH"},   {0x0A3, "TPM_RC_EXPIRED"},    {0x0A4, "TPM_RC_POLICY_CC"},
    {0x0A5, "TPM_RC_BINDING"},    {0x0A6, "TPM_RC_CURVE"},      {0x0A7, "TPM_RC_ECC_POINT"},
};

// Format-zero codes: errors (RC_VER1) and warnings (RC_WARN).
constexpr RcName kFmt0[] = {
    {0x100, "TPM_RC_INITIALIZE"},
    {0x101, "TPM_RC_FAILURE"},
    {0x103, "TPM_RC_SEQUENCE"},
    {0x10B, "TPM_RC_PRIVATE"},
    {0x119, "TPM_RC_HMAC"},
    {0x120, "TPM_RC_DISABLED"},
    {0x121, "TPM_RC_EXCLUSIVE"},
    {0x124, "TPM_RC_AUTH_TYPE"},
    {0x125, "TPM_RC_AUTH_MISSING"},
    {0x126, "TPM_RC_POLICY"},
    {0x127, "TPM_RC_PCR"},
    {0x128, "TPM_RC_PCR_CHANGED"},
    {0x12D, "TPM_RC_UPGRADE"},
    {0x12E, "TPM_RC_TOO_MANY_CONTEXTS"},
    {0x12F, "TPM_RC_AUTH_UNAVAILABLE"},
    {0x130, "TPM_RC_REBOOT"},
    {0x131, "TPM_RC_UNBALANCED"},
    {0x142, "TPM_RC_COMMAND_SIZE"},
    {0x143, "TPM_RC_COMMAND_CODE"},
    {0x144, "TPM_RC_AUTHSIZE"},
    {0x145, "TPM_RC_AUTH_CONTEXT"},
    {0x146, "TPM_RC_NV_RANGE"},
    {0x147, "TPM_RC_NV_SIZE"},
    {0x148, "TPM_RC_NV_LOCKED"},
    {0x149, "TPM_RC_NV_AUTHORIZATION"},
    {0x14A, "TPM_RC_NV_UNINITIALIZED"},
    {0x14B, "TPM_RC_NV_SPACE"},
    {0x14C, "TPM_RC_NV_DEFINED"},
    {0x150, "TPM_RC_BAD_CONTEXT"},
    {0x151, "TPM_RC_CPHASH"},
    {0x152, "TPM_RC_PARENT"},
    {0x153, "TPM_RC_NEEDS_TEST"},
    {0x154, "TPM_RC_NO_RESULT"},
    {0x155, "TPM_RC_SENSITIVE"},
    {0x901, "TPM_RC_CONTEXT_GAP"},
    {0x902, "TPM_RC_OBJECT_MEMORY"},
    {0x903, "TPM_RC_SESSION_MEMORY"},
    {0x904, "TPM_RC_MEMORY"},
    {0x905, "TPM_RC_SESSION_HANDLES"},
    {0x906, "TPM_RC_OBJECT_HANDLES"},
    {0x907, "TPM_RC_LOCALITY"},
    {0x908, "TPM_RC_YIELDED"},
    {0x909, "TPM_RC_CANCELED"},
    {0x90A, "TPM_RC_TESTING"},
    {0x920, "TPM_RC_NV_RATE"},
    {0x921, "TPM_RC_LOCKOUT"},
    {0x922, "TPM_RC_RETRY"},
    {0x923, "TPM_RC_NV_UNAVAILABLE"},
};

template <size_t N>
std::string lookup(const RcName (&table)[N], uint32_t code, const char* fallback) {
  for (const RcName& e : table) {
    if (e.code == code) return e.name;
  }
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%s 0x%03x", fallback, code);
  return buf;
}

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string string_of(const Bytes& b) { return std::string(b.begin(), b.end()); }

}  // namespace

std::string rc_name(uint32_t rc) {
  if (rc == kRcSuccess) return "TPM_RC_SUCCESS";
  if (rc & 0x080) {
    // Format one: bits 0-5 the error, bit 6 P (a parameter number in bits 8-11), else bit 11
    // says session (bits 8-10) or handle (bits 8-10, 0 = unspecified).
    std::string name = lookup(kFmt1, 0x080 | (rc & 0x3f), "format-one error");
    unsigned n = (rc >> 8) & 0xf;
    if (rc & 0x040) return name + " (parameter " + std::to_string(n) + ")";
    if (rc & 0x800) return name + " (session " + std::to_string(n & 7) + ")";
    if (n & 7) return name + " (handle " + std::to_string(n & 7) + ")";
    return name;
  }
  if (!(rc & 0x100)) return "TPM 1.2 response code";
  if (rc & 0x400) return "vendor-defined response code";
  if (rc & 0x800) return lookup(kFmt0, 0x900 | (rc & 0x7f), "warning");
  return lookup(kFmt0, 0x100 | (rc & 0x7f), "error");
}

std::string describe_rc(uint32_t rc) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%x", rc);
  return rc_name(rc) + " (" + buf + ")";
}

std::string to_hex(const Bytes& b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(b.size() * 2);
  for (uint8_t v : b) {
    s.push_back(kDigits[v >> 4]);
    s.push_back(kDigits[v & 0xf]);
  }
  return s;
}

Bytes from_hex(const std::string& hex) {
  if (hex.size() % 2) throw TpmError("hex string of odd length");
  auto nibble = [](char c) -> uint8_t {
    if (c >= '0' && c <= '9') return static_cast<uint8_t>(c - '0');
    if (c >= 'a' && c <= 'f') return static_cast<uint8_t>(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return static_cast<uint8_t>(c - 'A' + 10);
    throw TpmError(std::string("not a hex digit: '") + c + "'");
  };
  Bytes out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
  }
  return out;
}

Bytes sequence_extend_digest() {
  Bytes d(32);
  for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<uint8_t>(i);
  return d;
}

nlohmann::json run_sequence(Transport& t, const SequenceOptions& opts) {
  using nlohmann::json;
  Tpm tpm(t);
  json steps = json::array();
  bool ok = true;
  auto step = [&](const char* name, uint32_t rc, json extra = json::object()) {
    extra["cmd"] = name;
    extra["rc"] = rc;
    steps.push_back(std::move(extra));
    if (rc != kRcSuccess) ok = false;
    return rc == kRcSuccess;
  };
  uint32_t primary = 0, sealed = 0;
  bool nv_defined = false;
  auto cleanup_and_finish = [&] {
    if (sealed) step("FlushContext", tpm.flush_context(sealed).rc, {{"object", "sealed"}});
    if (primary) step("FlushContext", tpm.flush_context(primary).rc, {{"object", "primary"}});
    if (nv_defined) step("NV_UndefineSpace", tpm.nv_undefine_space(opts.nv_index).rc);
    return json{{"steps", steps}, {"ok", ok}};
  };

  if (opts.startup) {
    uint32_t rc = tpm.startup(kSuClear).rc;
    if (rc == kRcInitialize) {
      steps.push_back({{"cmd", "Startup"}, {"rc", rc}, {"already_started", true}});
    } else if (!step("Startup", rc)) {
      return cleanup_and_finish();
    }
  }
  RandomResult rnd = tpm.get_random(16);
  if (!step("GetRandom", rnd.rc, {{"length", rnd.bytes.size()}})) return cleanup_and_finish();

  PcrReadResult before = tpm.pcr_read({16, 23});
  json pcrs = json::object();
  for (const auto& [idx, v] : before.values) pcrs[std::to_string(idx)] = to_hex(v);
  if (!step("PCR_Read", before.rc, {{"pcrs", pcrs}})) return cleanup_and_finish();

  Bytes digest = sequence_extend_digest();
  Result ext = tpm.pcr_extend(23, digest);
  if (!step("PCR_Extend", ext.rc, {{"pcr", 23}, {"digest", to_hex(digest)}})) {
    return cleanup_and_finish();
  }
  PcrReadResult after = tpm.pcr_read({23});
  json pcrs_after = json::object();
  for (const auto& [idx, v] : after.values) pcrs_after[std::to_string(idx)] = to_hex(v);
  if (!step("PCR_Read", after.rc, {{"pcrs", pcrs_after}})) return cleanup_and_finish();

  CreatePrimaryResult prim = tpm.create_primary(kRhOwner);
  json pinfo = json::object();
  if (prim.ok()) {
    primary = prim.handle;
    pinfo = {{"type", prim.info.type},
             {"name_alg", prim.info.name_alg},
             {"attributes", prim.info.attributes},
             {"curve", prim.info.curve},
             {"x_len", prim.info.x.size()},
             {"y_len", prim.info.y.size()},
             {"name_len", prim.name.size()}};
  }
  if (!step("CreatePrimary", prim.rc, pinfo)) return cleanup_and_finish();

  CreateResult cr = tpm.create_sealed(primary, bytes_of(kSequenceSecret));
  json cinfo = json::object();
  if (cr.ok()) {
    PublicInfo pi = parse_public(cr.out_public);
    cinfo = {{"type", pi.type}, {"name_alg", pi.name_alg}, {"attributes", pi.attributes}};
  }
  if (!step("Create", cr.rc, cinfo)) return cleanup_and_finish();

  LoadResult ld = tpm.load(primary, cr.out_private, cr.out_public);
  if (ld.ok()) sealed = ld.handle;
  if (!step("Load", ld.rc, {{"name_len", ld.name.size()}})) return cleanup_and_finish();

  DataResult us = tpm.unseal(sealed);
  if (!step("Unseal", us.rc, {{"data", string_of(us.data)}})) return cleanup_and_finish();

  bool flushed = step("FlushContext", tpm.flush_context(sealed).rc, {{"object", "sealed"}});
  sealed = 0;
  if (!flushed) return cleanup_and_finish();
  flushed = step("FlushContext", tpm.flush_context(primary).rc, {{"object", "primary"}});
  primary = 0;
  if (!flushed) return cleanup_and_finish();

  const Bytes nv_data = bytes_of(kSequenceNvData);
  const auto nv_size = static_cast<uint16_t>(nv_data.size());
  Result def = tpm.nv_define_space(opts.nv_index, nv_size, kNvOwnerRw);
  nv_defined = def.ok();
  if (!step("NV_DefineSpace", def.rc, {{"size", nv_size}})) return cleanup_and_finish();
  if (!step("NV_Write", tpm.nv_write(kRhOwner, opts.nv_index, nv_data).rc)) {
    return cleanup_and_finish();
  }
  DataResult rd = tpm.nv_read(kRhOwner, opts.nv_index, nv_size);
  if (!step("NV_Read", rd.rc, {{"data", string_of(rd.data)}})) return cleanup_and_finish();
  nv_defined = false;
  step("NV_UndefineSpace", tpm.nv_undefine_space(opts.nv_index).rc);
  return cleanup_and_finish();
}

}  // namespace keel::vtpm
