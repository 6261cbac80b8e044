// A test-side TPM 2.0 command client, written from TPM 2.0 Part 2 (structures) and Part 3
// (commands): the byte-exact commands a guest's TPM stack would send, reaching a TPM either
// through a character device (/dev/tpmrm0) or through the swtpm control-channel protocol that
// QEMU's `-tpmdev emulator` speaks (keel-vtpm and swtpm alike).
//
// Transport failures and malformed responses throw TpmError; a TPM that answers with a non-zero
// response code is not an exception: every helper returns the code in its result's `rc`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace keel::vtpm {

using Bytes = std::vector<uint8_t>;

struct TpmError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Constants of TPM 2.0 Part 2 the tests need by name.
inline constexpr uint16_t kStNoSessions = 0x8001;
inline constexpr uint16_t kStSessions = 0x8002;
inline constexpr uint16_t kSuClear = 0x0000;
inline constexpr uint16_t kSuState = 0x0001;
inline constexpr uint32_t kRsPw = 0x40000009;
inline constexpr uint32_t kRhOwner = 0x40000001;
inline constexpr uint32_t kRhNull = 0x40000007;
inline constexpr uint16_t kAlgSha256 = 0x000B;
inline constexpr uint16_t kAlgEcc = 0x0023;
inline constexpr uint16_t kAlgKeyedHash = 0x0008;
inline constexpr uint16_t kAlgAes = 0x0006;
inline constexpr uint16_t kAlgCfb = 0x0043;
inline constexpr uint16_t kAlgNull = 0x0010;
inline constexpr uint16_t kEccNistP256 = 0x0003;
inline constexpr uint32_t kCapTpmProperties = 0x00000006;
inline constexpr uint32_t kDefaultNvIndex = 0x01500016;

inline constexpr uint32_t kRcSuccess = 0x000;
inline constexpr uint32_t kRcInitialize = 0x100;  // TPM2_Startup already done

// TPMA_OBJECT of the templates below.
inline constexpr uint32_t kPrimaryAttributes = 0x00030472;  // fixedTPM fixedParent
                                                            // sensitiveDataOrigin userWithAuth
                                                            // noDA restricted decrypt
inline constexpr uint32_t kSealedAttributes = 0x00000452;   // fixedTPM fixedParent userWithAuth
                                                            // noDA

// TPMA_NV choices for NV_DefineSpace (TPM_NT_ORDINARY, NO_DA so a bad-password test cannot
// lock the TPM out).
inline constexpr uint32_t kNvOwnerRw = 0x00020002 | 0x02000000;  // OWNERWRITE | OWNERREAD
inline constexpr uint32_t kNvAuthRw = 0x00040004 | 0x02000000;   // AUTHWRITE | AUTHREAD

// "TPM_RC_AUTH_FAIL (session 1)", with the format-one handle/parameter/session number decoded.
std::string rc_name(uint32_t rc);
// "TPM_RC_AUTH_FAIL (session 1) (0x98e)".
std::string describe_rc(uint32_t rc);
std::string to_hex(const Bytes& b);
Bytes from_hex(const std::string& hex);  // throws TpmError on odd length or a non-hex digit

class Transport {
 public:
  virtual ~Transport() = default;
  // One TPM command in, its complete response out (at least the 10-byte header).
  virtual Bytes transact(const Bytes& cmd) = 0;
};

// A TPM character device (/dev/tpm0, /dev/tpmrm0).
class DeviceTransport final : public Transport {
 public:
  explicit DeviceTransport(const std::string& path);
  ~DeviceTransport() override;
  DeviceTransport(const DeviceTransport&) = delete;
  DeviceTransport& operator=(const DeviceTransport&) = delete;
  Bytes transact(const Bytes& cmd) override;

 private:
  int fd_ = -1;
};

// The swtpm control-channel protocol over a unix stream socket, as QEMU's tpm_emulator uses it:
// the data channel is one end of a socketpair handed over with CMD_SET_DATAFD.
class CtrlTransport final : public Transport {
 public:
  // Connects, hands over the data channel and, when `send_init`, sends CMD_INIT(flags 0).
  // Throws TpmError if a step fails (naming the step and the result code).
  explicit CtrlTransport(const std::string& socket_path, bool send_init = true,
                         int timeout_ms = 30000);
  ~CtrlTransport() override;
  CtrlTransport(const CtrlTransport&) = delete;
  CtrlTransport& operator=(const CtrlTransport&) = delete;

  Bytes transact(const Bytes& cmd) override;

  // Control commands; each returns the server's result (0 = success) as read off the wire.
  uint64_t get_capability();          // CMD_GET_CAPABILITY: the be64 reply
  uint32_t init(uint32_t flags = 0);  // CMD_INIT
  uint32_t shutdown();                // CMD_SHUTDOWN
  struct Established {
    uint32_t result = 0;
    uint8_t bit = 0;
  };
  Established get_tpm_established();                 // CMD_GET_TPMESTABLISHED
  uint32_t set_locality(uint8_t locality);           // CMD_SET_LOCALITY
  uint32_t reset_tpm_established(uint8_t locality);  // CMD_RESET_TPMESTABLISHED
  uint32_t stop();                                   // CMD_STOP
  uint32_t set_datafd(int fd);                       // CMD_SET_DATAFD (fd passed, not kept)
  struct BufferSize {
    uint32_t result = 0, buffersize = 0, minsize = 0, maxsize = 0;
  };
  BufferSize set_buffersize(uint32_t size);  // CMD_SET_BUFFERSIZE

  // Sends `bytes` as one message (with `pass_fd` as SCM_RIGHTS when >= 0) and returns what the
  // server answers: up to `expected_reply_len` bytes, fewer if it closes the connection or
  // sends nothing more within the timeout. For bad-input tests.
  Bytes ctrl_raw(const Bytes& bytes, size_t expected_reply_len, int pass_fd = -1);

  int ctrl_fd() const { return ctrl_; }
  int data_fd() const { return data_; }

 private:
  Bytes ctrl_cmd(uint32_t code, const Bytes& payload, size_t reply_len, int pass_fd = -1);

  int ctrl_ = -1;
  int data_ = -1;
  int timeout_ms_;
};

// Command marshalling (exposed for byte-exact tests).
namespace cmd {
Bytes startup(uint16_t su);
Bytes shutdown(uint16_t su);
Bytes self_test(bool full);
Bytes get_random(uint16_t n);
Bytes pcr_read_sha256(const std::vector<unsigned>& pcrs);
Bytes pcr_extend_sha256(uint32_t pcr, const Bytes& digest32);
Bytes create_primary_ecc(uint32_t hierarchy);
Bytes create_sealed(uint32_t parent, const Bytes& secret, const std::string& password);
Bytes load(uint32_t parent, const Bytes& tpm2b_private, const Bytes& tpm2b_public);
Bytes unseal(uint32_t item, const std::string& password);
Bytes flush_context(uint32_t handle);
Bytes nv_define_space(uint32_t index, uint16_t size, uint32_t attributes,
                      const std::string& password);
Bytes nv_write(uint32_t auth_handle, uint32_t index, const Bytes& data, uint16_t offset,
               const std::string& password);
Bytes nv_read(uint32_t auth_handle, uint32_t index, uint16_t size, uint16_t offset,
              const std::string& password);
Bytes nv_undefine_space(uint32_t index);
Bytes get_capability(uint32_t capability, uint32_t property, uint32_t count);
}  // namespace cmd

// A response split per Part 1 §18: header checked, handle taken, parameter area isolated (the
// parameterSize of a sessions response honoured, the auth area after it skipped).
struct Response {
  uint16_t tag = 0;
  uint32_t rc = 0;
  uint32_t handle = 0;  // when the command returns one
  Bytes params;
};
// Throws TpmError on a size field disagreeing with the bytes, a short handle or parameter area.
Response parse_response(const Bytes& resp, bool has_handle);

// Results: `rc` is the TPM's response code; the other fields are valid only when rc == 0.
struct Result {
  uint32_t rc = 0;
  bool ok() const { return rc == kRcSuccess; }
};
struct RandomResult : Result {
  Bytes bytes;
};
struct PcrReadResult : Result {
  uint32_t update_counter = 0;
  std::map<unsigned, Bytes> values;  // by PCR index
};
struct PublicInfo {
  uint16_t type = 0, name_alg = 0;
  uint32_t attributes = 0;
  uint16_t curve = 0;  // ECC only
  Bytes x, y;          // ECC only: the public point
};
struct CreatePrimaryResult : Result {
  uint32_t handle = 0;
  Bytes out_public;  // TPM2B_PUBLIC, size field included
  PublicInfo info;
  Bytes name;
};
struct CreateResult : Result {
  Bytes out_private;  // TPM2B_PRIVATE, size field included
  Bytes out_public;   // TPM2B_PUBLIC, size field included
};
struct LoadResult : Result {
  uint32_t handle = 0;
  Bytes name;
};
struct DataResult : Result {
  Bytes data;
};
struct PropertiesResult : Result {
  bool more = false;
  std::vector<std::pair<uint32_t, uint32_t>> properties;
};

// Throws TpmError when the TPMT_PUBLIC inside a TPM2B_PUBLIC is truncated.
PublicInfo parse_public(const Bytes& tpm2b_public);

class Tpm {
 public:
  explicit Tpm(Transport& t) : t_(t) {}

  Result startup(uint16_t su = kSuClear);
  Result shutdown(uint16_t su = kSuClear);
  Result self_test(bool full = true);
  RandomResult get_random(uint16_t n);
  PcrReadResult pcr_read(const std::vector<unsigned>& pcrs);  // SHA-256 bank
  Result pcr_extend(uint32_t pcr, const Bytes& sha256_digest);
  CreatePrimaryResult create_primary(uint32_t hierarchy = kRhOwner);
  CreateResult create_sealed(uint32_t parent, const Bytes& secret,
                             const std::string& password = "");
  LoadResult load(uint32_t parent, const Bytes& tpm2b_private, const Bytes& tpm2b_public);
  DataResult unseal(uint32_t item, const std::string& password = "");
  Result flush_context(uint32_t handle);
  Result nv_define_space(uint32_t index, uint16_t size, uint32_t attributes = kNvOwnerRw,
                         const std::string& password = "");
  // auth_handle: kRhOwner for an OWNERWRITE/OWNERREAD index, the index itself for AUTH*.
  Result nv_write(uint32_t auth_handle, uint32_t index, const Bytes& data, uint16_t offset = 0,
                  const std::string& password = "");
  DataResult nv_read(uint32_t auth_handle, uint32_t index, uint16_t size, uint16_t offset = 0,
                     const std::string& password = "");
  Result nv_undefine_space(uint32_t index);
  PropertiesResult get_tpm_properties(uint32_t first_property, uint32_t count);
  Bytes transact(const Bytes& cmd) { return t_.transact(cmd); }

 private:
  Transport& t_;
};

// The fixed inputs of run_sequence, for tests that recompute the expected values.
inline constexpr const char* kSequenceSecret = "keel sealed secret";
inline constexpr const char* kSequenceNvData = "keel nv data";
Bytes sequence_extend_digest();  // 32 bytes: 0x00, 0x01, ... 0x1f

struct SequenceOptions {
  bool startup = true;  // false where firmware or the kernel already sent TPM2_Startup
  uint32_t nv_index = kDefaultNvIndex;
};
// Startup, GetRandom(16), PCR_Read(16, 23), PCR_Extend(23), PCR_Read(23), CreatePrimary,
// Create, Load, Unseal, FlushContext x2, NV define/write/read/undefine. Returns the
// deterministic parts: {"steps": [{"cmd": ..., "rc": ..., details}...], "ok": bool}; a failed
// step ends the sequence after best-effort cleanup (flush, undefine). Startup answering
// TPM_RC_INITIALIZE counts as success (recorded as such with "already_started").
nlohmann::json run_sequence(Transport& t, const SequenceOptions& opts = {});

}  // namespace keel::vtpm
