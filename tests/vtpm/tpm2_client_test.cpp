// The TPM 2.0 client: commands byte-exact against encodings worked out by hand from TPM 2.0
// Part 2/3, truncated responses refused, and the whole sequence against a real swtpm reached
// the way QEMU reaches it (control socket, CMD_SET_DATAFD, CMD_INIT).
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "tpm2_client.h"

namespace keel::vtpm {
namespace {

Bytes hex(const char* s) {
  std::string clean;
  for (const char* p = s; *p; ++p) {
    if (*p != ' ') clean.push_back(*p);
  }
  return from_hex(clean);
}

Bytes sha256(const Bytes& in) {
  Bytes out(32);
  unsigned len = 0;
  EXPECT_EQ(EVP_Digest(in.data(), in.size(), out.data(), &len, EVP_sha256(), nullptr), 1);
  EXPECT_EQ(len, 32u);
  return out;
}

TEST(Marshal, Startup) { EXPECT_EQ(cmd::startup(kSuClear), hex("8001 0000000c 00000144 0000")); }

TEST(Marshal, GetRandom) { EXPECT_EQ(cmd::get_random(16), hex("8001 0000000c 0000017b 0010")); }

TEST(Marshal, PcrReadSelectsBitsLowFirst) {
  // TPML_PCR_SELECTION{1, {SHA256, 3, {0x00, 0x00, 0x81}}}: PCR 16 is bit 0 of byte 2, PCR 23
  // bit 7.
  EXPECT_EQ(cmd::pcr_read_sha256({16, 23}), hex("8001 00000014 0000017e 00000001 000b 03 000081"));
}

TEST(Marshal, PcrExtendWithPasswordSession) {
  Bytes want =
      hex("8002 00000041 00000182 00000017"
          " 00000009 40000009 0000 01 0000"  // authorizationSize, TPMS_AUTH_COMMAND
          " 00000001 000b");                 // TPML_DIGEST_VALUES{1, TPMT_HA{SHA256, ...}}
  Bytes d = sequence_extend_digest();
  want.insert(want.end(), d.begin(), d.end());
  EXPECT_EQ(cmd::pcr_extend_sha256(23, d), want);
}

TEST(Marshal, CreatePrimaryEccTemplate) {
  EXPECT_EQ(cmd::create_primary_ecc(kRhOwner),
            hex("8002 00000043 00000131 40000001"
                " 00000009 40000009 0000 01 0000"
                " 0004 0000 0000"  // TPM2B_SENSITIVE_CREATE: empty userAuth, empty data
                " 001a 0023 000b 00030472 0000"  // TPMT_PUBLIC: ECC, SHA256, attributes
                " 0006 0080 0043"                // symmetric AES-128-CFB
                " 0010 0003 0010"                // scheme NULL, NIST P-256, kdf NULL
                " 0000 0000"                     // unique: empty x, y
                " 0000 00000000"));              // outsideInfo, creationPCR
}

TEST(Marshal, UnsealWithPassword) {
  EXPECT_EQ(cmd::unseal(0x80000001, "pw"),
            hex("8002 0000001d 0000015e 80000001 0000000b 40000009 0000 01 0002 7077"));
}

TEST(Marshal, FlushContextHandleIsAParameter) {
  EXPECT_EQ(cmd::flush_context(0x80000001), hex("8001 0000000e 00000165 80000001"));
}

TEST(Marshal, NvDefineSpace) {
  EXPECT_EQ(cmd::nv_define_space(0x01500016, 12, kNvOwnerRw, ""),
            hex("8002 0000002d 0000012a 40000001 00000009 40000009 0000 01 0000"
                " 0000"                                      // auth
                " 000e 01500016 000b 02020002 0000 000c"));  // TPM2B_NV_PUBLIC
}

TEST(RcNames, DecodesFormatOneAndZero) {
  EXPECT_EQ(describe_rc(0x98e), "TPM_RC_AUTH_FAIL (session 1) (0x98e)");
  EXPECT_EQ(rc_name(0x9a2), "TPM_RC_BAD_AUTH (session 1)");
  EXPECT_EQ(rc_name(0x1df), "TPM_RC_INTEGRITY (parameter 1)");
  EXPECT_EQ(rc_name(0x18b), "TPM_RC_HANDLE (handle 1)");
  EXPECT_EQ(rc_name(0x09f), "TPM_RC_INTEGRITY");
  EXPECT_EQ(rc_name(0x100), "TPM_RC_INITIALIZE");
  EXPECT_EQ(rc_name(0x14a), "TPM_RC_NV_UNINITIALIZED");
  EXPECT_EQ(rc_name(0x902), "TPM_RC_OBJECT_MEMORY");
  EXPECT_EQ(rc_name(0), "TPM_RC_SUCCESS");
}

// Answers every command with one canned response.
struct Canned final : Transport {
  Bytes resp;
  Bytes transact(const Bytes&) override { return resp; }
};

// Every strict prefix of a valid response (size field made to agree) must be refused, as must
// a size field that disagrees with the bytes; the whole response must parse.
template <typename Call>
void expect_prefixes_refused(const Bytes& full, Call call) {
  Canned t;
  Tpm tpm(t);
  t.resp = full;
  EXPECT_NO_THROW(call(tpm));
  for (size_t n = 0; n < full.size(); ++n) {
    t.resp.assign(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    if (n >= 6) t.resp[5] = static_cast<uint8_t>(n);  // sizes here are < 256
    EXPECT_THROW(call(tpm), TpmError) << "prefix of " << n << " bytes";
  }
  t.resp = full;
  t.resp.push_back(0);
  EXPECT_THROW(call(tpm), TpmError) << "size field short of the bytes";
}

TEST(Parse, GetRandomTruncated) {
  expect_prefixes_refused(hex("8001 0000000e 00000000 0002 aabb"),
                          [](Tpm& tpm) { tpm.get_random(2); });
}

TEST(Parse, PcrReadTruncated) {
  Bytes r = hex("8001 00000000 00000000 00000007 00000001 000b 03 000081 00000002 0020");
  r.insert(r.end(), 32, 0x11);
  r.push_back(0x00);
  r.push_back(0x20);
  r.insert(r.end(), 32, 0x22);
  r[5] = static_cast<uint8_t>(r.size());
  expect_prefixes_refused(r, [](Tpm& tpm) {
    PcrReadResult p = tpm.pcr_read({16, 23});
    EXPECT_EQ(p.values.at(16), Bytes(32, 0x11));
    EXPECT_EQ(p.values.at(23), Bytes(32, 0x22));
  });
}

TEST(Parse, UnsealTruncatedIncludingTheAuthArea) {
  expect_prefixes_refused(hex("8002 00000017 00000000 00000004 0002 6869 0000 01 0000"),
                          [](Tpm& tpm) { EXPECT_EQ(tpm.unseal(0x80000001).data, hex("6869")); });
}

TEST(Parse, CreatePrimaryTruncated) {
  Bytes r =
      hex("8002 00000045 00000000 80000000 0000002e"  // header, objectHandle, parameterSize
          " 001c 0023 000b 00030472 0000 0006 0080 0043 0010 0003 0010 0001 aa 0001 bb"
          " 0000 0000 8021 40000001 0000"  // creationData, creationHash, creationTicket
          " 0002 000b"                     // name
          " 0000 01 0000");                // TPMS_AUTH_RESPONSE
  expect_prefixes_refused(r, [](Tpm& tpm) {
    CreatePrimaryResult p = tpm.create_primary();
    EXPECT_EQ(p.info.curve, kEccNistP256);
    EXPECT_EQ(p.info.x, hex("aa"));
    EXPECT_EQ(p.name, hex("000b"));
  });
}

TEST(Parse, ErrorResponseCarriesTheCode) {
  Canned t;
  t.resp = hex("8001 0000000a 0000098e");
  Tpm tpm(t);
  EXPECT_EQ(tpm.unseal(0x80000001).rc, 0x98eu);
  t.resp = hex("c4c4 0000000a 00000000");
  EXPECT_THROW(tpm.startup(), TpmError);
}

// A swtpm of its own in a temporary directory, exactly as QEMU's documentation starts one.
class Swtpm {
 public:
  Swtpm() {
    char tmpl[] = "/tmp/keel-vtpm-client-XXXXXX";
    if (!::mkdtemp(tmpl)) return;
    dir_ = tmpl;
    sock_ = dir_ + "/ctrl.sock";
    std::string ctrl = "type=unixio,path=" + sock_;
    std::string state = "dir=" + dir_;
    std::string log = "file=" + dir_ + "/swtpm.log";
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execlp("swtpm", "swtpm", "socket", "--tpm2", "--ctrl", ctrl.c_str(), "--tpmstate",
               state.c_str(), "--log", log.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    struct stat st;
    while (::stat(sock_.c_str(), &st) != 0 && std::chrono::steady_clock::now() < deadline) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ready_ = ::stat(sock_.c_str(), &st) == 0;
  }
  ~Swtpm() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
  bool ready() const { return ready_; }
  const std::string& sock() const { return sock_; }

 private:
  std::string dir_, sock_;
  pid_t pid_ = -1;
  bool ready_ = false;
};

bool have_swtpm() { return std::system("command -v swtpm >/dev/null 2>&1") == 0; }

#define REQUIRE_SWTPM(s)                                    \
  if (!have_swtpm()) GTEST_SKIP() << "swtpm not installed"; \
  Swtpm s;                                                  \
  ASSERT_TRUE(s.ready()) << "swtpm did not create its control socket"

const nlohmann::json& find_step(const nlohmann::json& steps, const std::string& cmd, int nth = 0) {
  for (const auto& s : steps) {
    if (s["cmd"] == cmd && nth-- == 0) return s;
  }
  static const nlohmann::json none;
  ADD_FAILURE() << "no step " << cmd;
  return none;
}

TEST(Swtpm, SwtpmSequence) {
  REQUIRE_SWTPM(swtpm);
  CtrlTransport t(swtpm.sock());
  nlohmann::json j = run_sequence(t);
  SCOPED_TRACE(j.dump(1));
  EXPECT_TRUE(j["ok"].get<bool>());
  const auto& steps = j["steps"];
  ASSERT_EQ(steps.size(), 15u);
  for (const auto& s : steps) EXPECT_EQ(s["rc"], 0) << s["cmd"];

  EXPECT_EQ(find_step(steps, "GetRandom")["length"], 16);
  const std::string zeros(64, '0');
  EXPECT_EQ(find_step(steps, "PCR_Read")["pcrs"]["16"], zeros);
  EXPECT_EQ(find_step(steps, "PCR_Read")["pcrs"]["23"], zeros);
  Bytes extended(32, 0);
  Bytes d = sequence_extend_digest();
  extended.insert(extended.end(), d.begin(), d.end());
  EXPECT_EQ(find_step(steps, "PCR_Read", 1)["pcrs"]["23"], to_hex(sha256(extended)));

  const auto& prim = find_step(steps, "CreatePrimary");
  EXPECT_EQ(prim["type"], kAlgEcc);
  EXPECT_EQ(prim["curve"], kEccNistP256);
  EXPECT_EQ(prim["name_alg"], kAlgSha256);
  EXPECT_EQ(prim["attributes"], kPrimaryAttributes);
  EXPECT_EQ(prim["x_len"], 32);
  EXPECT_EQ(prim["y_len"], 32);
  EXPECT_EQ(prim["name_len"], 34);
  EXPECT_EQ(find_step(steps, "Create")["type"], kAlgKeyedHash);
  EXPECT_EQ(find_step(steps, "Unseal")["data"], kSequenceSecret);
  EXPECT_EQ(find_step(steps, "NV_Read")["data"], kSequenceNvData);
  EXPECT_EQ(steps.back()["cmd"], "NV_UndefineSpace");

  // The NV index is gone and the TPM is started: a second run differs only in Startup and in
  // PCR 23, already extended once.
  nlohmann::json again = run_sequence(t);
  EXPECT_TRUE(again["ok"].get<bool>()) << again.dump();
  EXPECT_EQ(find_step(again["steps"], "Startup")["rc"], kRcInitialize);
}

TEST(Swtpm, ControlCommands) {
  REQUIRE_SWTPM(swtpm);
  CtrlTransport t(swtpm.sock());
  uint64_t caps = t.get_capability();
  EXPECT_EQ(caps >> 32, 0u);
  EXPECT_NE(caps & 0x1, 0u) << "PTM_CAP_INIT";
  EXPECT_EQ(t.get_tpm_established().result, 0u);
  EXPECT_NE(t.set_locality(5), 0u) << "locality 5 does not exist";
  CtrlTransport::BufferSize bs = t.set_buffersize(0);  // 0 = query, allowed while running
  EXPECT_EQ(bs.result, 0u);
  EXPECT_GE(bs.buffersize, bs.minsize);
  EXPECT_LE(bs.buffersize, bs.maxsize);
  EXPECT_GT(bs.buffersize, 0u);

  // An unknown command: the 4-byte TPM_BAD_ORDINAL (0x0a) reply alone. (A short CMD_INIT
  // payload makes swtpm 0.7 wait for the rest and then drop the connection.)
  EXPECT_EQ(t.ctrl_raw(hex("000000ff"), 16), hex("0000000a"));

  // Stopped, the TPM answers nothing until CMD_INIT; then it wants TPM2_Startup again.
  EXPECT_EQ(t.stop(), 0u);
  EXPECT_EQ(t.init(0), 0u);
  Tpm tpm(t);
  EXPECT_EQ(tpm.startup().rc, 0u);
  EXPECT_EQ(tpm.startup().rc, kRcInitialize);
  EXPECT_EQ(tpm.self_test().rc, 0u);
  PropertiesResult p = tpm.get_tpm_properties(0x100, 8);
  ASSERT_EQ(p.rc, 0u);
  ASSERT_FALSE(p.properties.empty());
  EXPECT_EQ(p.properties[0].first, 0x100u);
  EXPECT_EQ(p.properties[0].second, 0x322e3000u) << "TPM_PT_FAMILY_INDICATOR \"2.0\"";
  EXPECT_EQ(tpm.shutdown().rc, 0u);
  EXPECT_EQ(t.shutdown(), 0u);
}

TEST(Swtpm, UnsealWithTheWrongPasswordFails) {
  REQUIRE_SWTPM(swtpm);
  CtrlTransport t(swtpm.sock());
  Tpm tpm(t);
  ASSERT_EQ(tpm.startup().rc, 0u);
  CreatePrimaryResult prim = tpm.create_primary();
  ASSERT_EQ(prim.rc, 0u) << describe_rc(prim.rc);
  Bytes secret = hex("00ff10");
  CreateResult cr = tpm.create_sealed(prim.handle, secret, "right");
  ASSERT_EQ(cr.rc, 0u) << describe_rc(cr.rc);
  LoadResult ld = tpm.load(prim.handle, cr.out_private, cr.out_public);
  ASSERT_EQ(ld.rc, 0u) << describe_rc(ld.rc);
  DataResult bad = tpm.unseal(ld.handle, "wrong");
  // TPM_RC_BAD_AUTH, session 1: a noDA object's wrong password (TPM_RC_AUTH_FAIL would count
  // towards dictionary-attack lockout).
  EXPECT_EQ(bad.rc, 0x9a2u) << describe_rc(bad.rc);
  DataResult good = tpm.unseal(ld.handle, "right");
  ASSERT_EQ(good.rc, 0u) << describe_rc(good.rc);
  EXPECT_EQ(good.data, secret);

  // An AUTHWRITE|AUTHREAD index with its own password.
  ASSERT_EQ(tpm.nv_define_space(kDefaultNvIndex, 8, kNvAuthRw, "nvpw").rc, 0u);
  EXPECT_EQ(tpm.nv_read(kDefaultNvIndex, kDefaultNvIndex, 8, 0, "nvpw").rc, 0x14au)
      << "TPM_RC_NV_UNINITIALIZED before the first write";
  ASSERT_EQ(tpm.nv_write(kDefaultNvIndex, kDefaultNvIndex, hex("0102030405060708"), 0, "nvpw").rc,
            0u);
  EXPECT_EQ(tpm.nv_read(kDefaultNvIndex, kDefaultNvIndex, 8, 0, "nvpw").data,
            hex("0102030405060708"));
  EXPECT_EQ(tpm.nv_undefine_space(kDefaultNvIndex).rc, 0u);
}

}  // namespace
}  // namespace keel::vtpm
