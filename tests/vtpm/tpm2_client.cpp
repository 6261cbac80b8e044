// TPM 2.0 commands and responses, marshalled from TPM 2.0 Part 2 and Part 3: big-endian
// integers, TPM2B = 16-bit size then bytes, sessions as Part 1 §18 lays them out.
#include "tpm2_client.h"

#include <cstdio>

namespace keel::vtpm {
namespace {

constexpr uint32_t kCcNvUndefineSpace = 0x122;
constexpr uint32_t kCcNvDefineSpace = 0x12A;
constexpr uint32_t kCcCreatePrimary = 0x131;
constexpr uint32_t kCcNvWrite = 0x137;
constexpr uint32_t kCcSelfTest = 0x143;
constexpr uint32_t kCcStartup = 0x144;
constexpr uint32_t kCcShutdown = 0x145;
constexpr uint32_t kCcNvRead = 0x14E;
constexpr uint32_t kCcCreate = 0x153;
constexpr uint32_t kCcLoad = 0x157;
constexpr uint32_t kCcUnseal = 0x15E;
constexpr uint32_t kCcFlushContext = 0x165;
constexpr uint32_t kCcGetCapability = 0x17A;
constexpr uint32_t kCcGetRandom = 0x17B;
constexpr uint32_t kCcPcrRead = 0x17E;
constexpr uint32_t kCcPcrExtend = 0x182;

constexpr uint16_t kAlgRsa = 0x0001;
constexpr uint16_t kAlgHmac = 0x0005;
constexpr uint16_t kAlgXor = 0x000A;
constexpr uint16_t kAlgEcdaa = 0x001A;
constexpr uint16_t kAlgSymCipher = 0x0025;

class Writer {
 public:
  void u8(uint8_t v) { b_.push_back(v); }
  void u16(uint16_t v) {
    u8(static_cast<uint8_t>(v >> 8));
    u8(static_cast<uint8_t>(v));
  }
  void u32(uint32_t v) {
    u16(static_cast<uint16_t>(v >> 16));
    u16(static_cast<uint16_t>(v));
  }
  void bytes(const Bytes& v) { b_.insert(b_.end(), v.begin(), v.end()); }
  void tpm2b(const Bytes& v) {
    if (v.size() > 0xffff) throw TpmError("TPM2B of " + std::to_string(v.size()) + " bytes");
    u16(static_cast<uint16_t>(v.size()));
    bytes(v);
  }
  void patch32(size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) b_[at + i] = static_cast<uint8_t>(v >> (24 - 8 * i));
  }
  size_t size() const { return b_.size(); }
  Bytes take() { return std::move(b_); }

 private:
  Bytes b_;
};

class Reader {
 public:
  Reader(const Bytes& b, const char* what) : b_(b), what_(what) {}
  uint8_t u8() {
    need(1);
    return b_[pos_++];
  }
  uint16_t u16() {
    uint16_t hi = u8();
    return static_cast<uint16_t>(hi << 8 | u8());
  }
  uint32_t u32() {
    uint32_t hi = u16();
    return hi << 16 | u16();
  }
  Bytes take(size_t n) {
    need(n);
    Bytes v(b_.begin() + static_cast<std::ptrdiff_t>(pos_),
            b_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
    pos_ += n;
    return v;
  }
  Bytes tpm2b() { return take(u16()); }
  // The TPM2B with its size field, as a later command takes it back.
  Bytes tpm2b_whole() {
    size_t start = pos_;
    size_t n = u16();
    need(n);
    pos_ += n;
    return Bytes(b_.begin() + static_cast<std::ptrdiff_t>(start),
                 b_.begin() + static_cast<std::ptrdiff_t>(pos_));
  }
  size_t remaining() const { return b_.size() - pos_; }

 private:
  void need(size_t n) {
    if (remaining() < n) {
      throw TpmError(std::string(what_) + ": truncated (needed " + std::to_string(n) +
                     " more bytes at offset " + std::to_string(pos_) + " of " +
                     std::to_string(b_.size()) + ")");
    }
  }
  const Bytes& b_;
  const char* what_;
  size_t pos_ = 0;
};

class Command {
 public:
  Command(uint32_t cc, bool sessions) {
    w_.u16(sessions ? kStSessions : kStNoSessions);
    w_.u32(0);  // commandSize, patched by finish()
    w_.u32(cc);
  }
  Command& handle(uint32_t h) {
    w_.u32(h);
    return *this;
  }
  // One password session (TPM_RS_PW): empty nonce, continueSession, the password as hmac.
  Command& password_session(const std::string& password) {
    w_.u32(4 + 2 + 1 + 2 + static_cast<uint32_t>(password.size()));
    w_.u32(kRsPw);
    w_.u16(0);
    w_.u8(0x01);
    w_.tpm2b(Bytes(password.begin(), password.end()));
    return *this;
  }
  Writer& params() { return w_; }
  Bytes finish() {
    w_.patch32(2, static_cast<uint32_t>(w_.size()));
    return w_.take();
  }

 private:
  Writer w_;
};

void pcr_selection_sha256(Writer& w, const std::vector<unsigned>& pcrs) {
  uint8_t select[3] = {0, 0, 0};
  for (unsigned p : pcrs) {
    if (p >= 24) throw TpmError("PCR index " + std::to_string(p) + " out of range");
    select[p / 8] |= static_cast<uint8_t>(1u << (p % 8));
  }
  w.u32(1);  // TPML_PCR_SELECTION.count
  w.u16(kAlgSha256);
  w.u8(3);  // sizeofSelect: PCRs 0-23
  for (uint8_t s : select) w.u8(s);
}

// TPM2B_PUBLIC of the storage primary: ECC NIST P-256, restricted decrypt, AES-128-CFB.
Bytes primary_template() {
  Writer t;
  t.u16(kAlgEcc);
  t.u16(kAlgSha256);
  t.u32(kPrimaryAttributes);
  t.u16(0);  // authPolicy
  t.u16(kAlgAes);
  t.u16(128);
  t.u16(kAlgCfb);
  t.u16(kAlgNull);  // scheme
  t.u16(kEccNistP256);
  t.u16(kAlgNull);  // kdf
  t.u16(0);         // unique.x
  t.u16(0);         // unique.y
  Writer w;
  w.tpm2b(t.take());
  return w.take();
}

// TPM2B_PUBLIC of a sealed data object: KEYEDHASH with scheme NULL.
Bytes sealed_template() {
  Writer t;
  t.u16(kAlgKeyedHash);
  t.u16(kAlgSha256);
  t.u32(kSealedAttributes);
  t.u16(0);  // authPolicy
  t.u16(kAlgNull);
  t.u16(0);  // unique
  Writer w;
  w.tpm2b(t.take());
  return w.take();
}

// TPM2B_SENSITIVE_CREATE, TPM2B_PUBLIC, TPM2B_DATA outsideInfo, TPML_PCR_SELECTION creationPCR.
void create_params(Writer& w, const std::string& password, const Bytes& data,
                   const Bytes& tpm2b_pub) {
  Writer s;
  s.tpm2b(Bytes(password.begin(), password.end()));
  s.tpm2b(data);
  w.tpm2b(s.take());
  w.bytes(tpm2b_pub);
  w.u16(0);
  w.u32(0);
}

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }

void skip_sym_def(Reader& r) {
  if (r.u16() != kAlgNull) {
    r.u16();  // keyBits
    r.u16();  // mode
  }
}

void skip_scheme(Reader& r) {
  uint16_t scheme = r.u16();
  if (scheme == kAlgNull) return;
  r.u16();                           // hashAlg
  if (scheme == kAlgEcdaa) r.u16();  // count
}

}  // namespace

namespace cmd {

Bytes startup(uint16_t su) {
  Command c(kCcStartup, false);
  c.params().u16(su);
  return c.finish();
}

Bytes shutdown(uint16_t su) {
  Command c(kCcShutdown, false);
  c.params().u16(su);
  return c.finish();
}

Bytes self_test(bool full) {
  Command c(kCcSelfTest, false);
  c.params().u8(full ? 1 : 0);
  return c.finish();
}

Bytes get_random(uint16_t n) {
  Command c(kCcGetRandom, false);
  c.params().u16(n);
  return c.finish();
}

Bytes pcr_read_sha256(const std::vector<unsigned>& pcrs) {
  Command c(kCcPcrRead, false);
  pcr_selection_sha256(c.params(), pcrs);
  return c.finish();
}

Bytes pcr_extend_sha256(uint32_t pcr, const Bytes& digest32) {
  if (digest32.size() != 32) throw TpmError("PCR_Extend: a SHA-256 digest is 32 bytes");
  Command c(kCcPcrExtend, true);
  c.handle(pcr).password_session("");
  c.params().u32(1);  // TPML_DIGEST_VALUES.count
  c.params().u16(kAlgSha256);
  c.params().bytes(digest32);
  return c.finish();
}

Bytes create_primary_ecc(uint32_t hierarchy) {
  Command c(kCcCreatePrimary, true);
  c.handle(hierarchy).password_session("");
  create_params(c.params(), "", {}, primary_template());
  return c.finish();
}

Bytes create_sealed(uint32_t parent, const Bytes& secret, const std::string& password) {
  Command c(kCcCreate, true);
  c.handle(parent).password_session("");
  create_params(c.params(), password, secret, sealed_template());
  return c.finish();
}

Bytes load(uint32_t parent, const Bytes& tpm2b_private, const Bytes& tpm2b_public) {
  Command c(kCcLoad, true);
  c.handle(parent).password_session("");
  c.params().bytes(tpm2b_private);
  c.params().bytes(tpm2b_public);
  return c.finish();
}

Bytes unseal(uint32_t item, const std::string& password) {
  Command c(kCcUnseal, true);
  c.handle(item).password_session(password);
  return c.finish();
}

Bytes flush_context(uint32_t handle) {
  Command c(kCcFlushContext, false);
  c.params().u32(handle);  // a parameter, not a handle-area entry (Part 3 §28.4)
  return c.finish();
}

Bytes nv_define_space(uint32_t index, uint16_t size, uint32_t attributes,
                      const std::string& password) {
  Command c(kCcNvDefineSpace, true);
  c.handle(kRhOwner).password_session("");
  Writer& w = c.params();
  w.tpm2b(bytes_of(password));
  Writer pub;
  pub.u32(index);
  pub.u16(kAlgSha256);
  pub.u32(attributes);
  pub.u16(0);  // authPolicy
  pub.u16(size);
  w.tpm2b(pub.take());
  return c.finish();
}

Bytes nv_write(uint32_t auth_handle, uint32_t index, const Bytes& data, uint16_t offset,
               const std::string& password) {
  Command c(kCcNvWrite, true);
  c.handle(auth_handle).handle(index).password_session(password);
  c.params().tpm2b(data);
  c.params().u16(offset);
  return c.finish();
}

Bytes nv_read(uint32_t auth_handle, uint32_t index, uint16_t size, uint16_t offset,
              const std::string& password) {
  Command c(kCcNvRead, true);
  c.handle(auth_handle).handle(index).password_session(password);
  c.params().u16(size);
  c.params().u16(offset);
  return c.finish();
}

Bytes nv_undefine_space(uint32_t index) {
  Command c(kCcNvUndefineSpace, true);
  c.handle(kRhOwner).handle(index).password_session("");
  return c.finish();
}

Bytes get_capability(uint32_t capability, uint32_t property, uint32_t count) {
  Command c(kCcGetCapability, false);
  c.params().u32(capability);
  c.params().u32(property);
  c.params().u32(count);
  return c.finish();
}

}  // namespace cmd

Response parse_response(const Bytes& resp, bool has_handle) {
  Reader r(resp, "response");
  Response out;
  out.tag = r.u16();
  uint32_t size = r.u32();
  out.rc = r.u32();
  if (size != resp.size()) {
    throw TpmError("response size field " + std::to_string(size) + " but " +
                   std::to_string(resp.size()) + " bytes arrived");
  }
  if (out.tag != kStNoSessions && out.tag != kStSessions) {
    char t[16];
    std::snprintf(t, sizeof(t), "0x%04x", out.tag);
    throw TpmError(std::string("response tag ") + t);
  }
  if (out.rc != kRcSuccess) return out;
  if (has_handle) out.handle = r.u32();
  if (out.tag == kStSessions) {
    uint32_t param_size = r.u32();
    out.params = r.take(param_size);
    // What follows is one TPMS_AUTH_RESPONSE per session (every command here sends one).
    do {
      r.tpm2b();
      r.u8();
      r.tpm2b();
    } while (r.remaining() > 0);
  } else {
    out.params = r.take(r.remaining());
  }
  return out;
}

PublicInfo parse_public(const Bytes& tpm2b_public) {
  Reader outer(tpm2b_public, "TPM2B_PUBLIC");
  Bytes area = outer.tpm2b();
  if (outer.remaining() != 0) throw TpmError("TPM2B_PUBLIC: trailing bytes");
  Reader r(area, "TPMT_PUBLIC");
  PublicInfo p;
  p.type = r.u16();
  p.name_alg = r.u16();
  p.attributes = r.u32();
  r.tpm2b();  // authPolicy
  switch (p.type) {
    case kAlgEcc:
      skip_sym_def(r);
      skip_scheme(r);
      p.curve = r.u16();
      if (r.u16() != kAlgNull) r.u16();  // kdf and its hash
      p.x = r.tpm2b();
      p.y = r.tpm2b();
      break;
    case kAlgKeyedHash: {
      uint16_t scheme = r.u16();
      if (scheme == kAlgHmac) r.u16();
      if (scheme == kAlgXor) {
        r.u16();
        r.u16();
      }
      r.tpm2b();
      break;
    }
    case kAlgRsa:
      skip_sym_def(r);
      skip_scheme(r);
      r.u16();  // keyBits
      r.u32();  // exponent
      r.tpm2b();
      break;
    case kAlgSymCipher:
      skip_sym_def(r);
      r.tpm2b();
      break;
    default: throw TpmError("TPMT_PUBLIC: unknown type " + std::to_string(p.type));
  }
  if (r.remaining() != 0) throw TpmError("TPMT_PUBLIC: trailing bytes");
  return p;
}

Result Tpm::startup(uint16_t su) {
  return {parse_response(t_.transact(cmd::startup(su)), false).rc};
}

Result Tpm::shutdown(uint16_t su) {
  return {parse_response(t_.transact(cmd::shutdown(su)), false).rc};
}

Result Tpm::self_test(bool full) {
  return {parse_response(t_.transact(cmd::self_test(full)), false).rc};
}

RandomResult Tpm::get_random(uint16_t n) {
  Response resp = parse_response(t_.transact(cmd::get_random(n)), false);
  RandomResult out;
  out.rc = resp.rc;
  if (!out.ok()) return out;
  Reader r(resp.params, "GetRandom");
  out.bytes = r.tpm2b();
  return out;
}

PcrReadResult Tpm::pcr_read(const std::vector<unsigned>& pcrs) {
  Response resp = parse_response(t_.transact(cmd::pcr_read_sha256(pcrs)), false);
  PcrReadResult out;
  out.rc = resp.rc;
  if (!out.ok()) return out;
  Reader r(resp.params, "PCR_Read");
  out.update_counter = r.u32();
  // The TPM answers with the selection it served and the digests in ascending PCR order.
  std::vector<unsigned> served;
  uint32_t banks = r.u32();
  for (uint32_t b = 0; b < banks; ++b) {
    uint16_t alg = r.u16();
    uint8_t n = r.u8();
    Bytes select = r.take(n);
    for (unsigned i = 0; i < n * 8u; ++i) {
      if (select[i / 8] & (1u << (i % 8))) {
        if (alg != kAlgSha256) throw TpmError("PCR_Read: answered a bank not asked for");
        served.push_back(i);
      }
    }
  }
  uint32_t count = r.u32();
  if (count != served.size()) throw TpmError("PCR_Read: digest count != selection");
  for (unsigned idx : served) out.values[idx] = r.tpm2b();
  return out;
}

Result Tpm::pcr_extend(uint32_t pcr, const Bytes& sha256_digest) {
  return {parse_response(t_.transact(cmd::pcr_extend_sha256(pcr, sha256_digest)), false).rc};
}

CreatePrimaryResult Tpm::create_primary(uint32_t hierarchy) {
  Response resp = parse_response(t_.transact(cmd::create_primary_ecc(hierarchy)), true);
  CreatePrimaryResult out;
  out.rc = resp.rc;
  if (!out.ok()) return out;
  out.handle = resp.handle;
  Reader r(resp.params, "CreatePrimary");
  out.out_public = r.tpm2b_whole();
  r.tpm2b();  // creationData
  r.tpm2b();  // creationHash
  r.u16();    // creationTicket: tag, hierarchy, digest
  r.u32();
  r.tpm2b();
  out.name = r.tpm2b();
  out.info = parse_public(out.out_public);
  return out;
}

CreateResult Tpm::create_sealed(uint32_t parent, const Bytes& secret, const std::string& password) {
  Response resp = parse_response(t_.transact(cmd::create_sealed(parent, secret, password)), false);
  CreateResult out;
  out.rc = resp.rc;
  if (!out.ok()) return out;
  Reader r(resp.params, "Create");
  out.out_private = r.tpm2b_whole();
  out.out_public = r.tpm2b_whole();
  parse_public(out.out_public);
  return out;
}

LoadResult Tpm::load(uint32_t parent, const Bytes& tpm2b_private, const Bytes& tpm2b_public) {
  Response resp = parse_response(t_.transact(cmd::load(parent, tpm2b_private, tpm2b_public)), true);
  LoadResult out;
  out.rc = resp.rc;
  if (!out.ok()) return out;
  out.handle = resp.handle;
  Reader r(resp.params, "Load");
  out.name = r.tpm2b();
  return out;
}

DataResult Tpm::unseal(uint32_t item, const std::string& password) {
  Response resp = parse_response(t_.transact(cmd::unseal(item, password)), false);
  DataResult out;
  out.rc = resp.rc;
  if (!out.ok()) return out;
  Reader r(resp.params, "Unseal");
  out.data = r.tpm2b();
  return out;
}

Result Tpm::flush_context(uint32_t handle) {
  return {parse_response(t_.transact(cmd::flush_context(handle)), false).rc};
}

Result Tpm::nv_define_space(uint32_t index, uint16_t size, uint32_t attributes,
                            const std::string& password) {
  Bytes c = cmd::nv_define_space(index, size, attributes, password);
  return {parse_response(t_.transact(c), false).rc};
}

Result Tpm::nv_write(uint32_t auth_handle, uint32_t index, const Bytes& data, uint16_t offset,
                     const std::string& password) {
  Bytes c = cmd::nv_write(auth_handle, index, data, offset, password);
  return {parse_response(t_.transact(c), false).rc};
}

DataResult Tpm::nv_read(uint32_t auth_handle, uint32_t index, uint16_t size, uint16_t offset,
                        const std::string& password) {
  Bytes c = cmd::nv_read(auth_handle, index, size, offset, password);
  Response resp = parse_response(t_.transact(c), false);
  DataResult out;
  out.rc = resp.rc;
  if (!out.ok()) return out;
  Reader r(resp.params, "NV_Read");
  out.data = r.tpm2b();
  return out;
}

Result Tpm::nv_undefine_space(uint32_t index) {
  return {parse_response(t_.transact(cmd::nv_undefine_space(index)), false).rc};
}

PropertiesResult Tpm::get_tpm_properties(uint32_t first_property, uint32_t count) {
  Bytes c = cmd::get_capability(kCapTpmProperties, first_property, count);
  Response resp = parse_response(t_.transact(c), false);
  PropertiesResult out;
  out.rc = resp.rc;
  if (!out.ok()) return out;
  Reader r(resp.params, "GetCapability");
  out.more = r.u8() != 0;
  if (r.u32() != kCapTpmProperties) throw TpmError("GetCapability: another capability");
  uint32_t n = r.u32();
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t prop = r.u32();
    out.properties.emplace_back(prop, r.u32());
  }
  return out;
}

}  // namespace keel::vtpm
