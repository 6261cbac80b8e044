// The vTPM in process (keel/vtpm/vtpm.h): control messages and TPM commands as bytes, without
// sockets. libtpms has one TPM per process, so every test opens and closes its own Vtpm.
#include "keel/vtpm/vtpm.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

namespace keel::vtpm {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

Bytes msg(std::uint32_t code, Bytes payload = {}) {
  Bytes out;
  append_be32(out, code);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}
Bytes be32(std::uint32_t v) {
  Bytes out;
  append_be32(out, v);
  return out;
}
std::uint32_t result_of(const Bytes& reply) {
  return reply.size() >= 4 ? load_be32(reply.data()) : ~0u;
}
std::uint32_t rc_of(std::span<const std::uint8_t> resp) {
  return resp.size() >= 10 ? load_be32(resp.data() + 6) : ~0u;
}
// TPM2_Startup(SU_CLEAR) and TPM2_GetRandom(8).
const Bytes kStartup = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0};
const Bytes kGetRandom = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8};

class VtpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/keel-vtpm-unit-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    config_.path = dir_ + "/state";
    config_.key_path = dir_ + "/key";
    config_.guest = "unit-guest";
    int fd = ::open(config_.key_path.c_str(), O_WRONLY | O_CREAT, 0600);
    Bytes key(32, 0x5a);
    ASSERT_EQ(::write(fd, key.data(), key.size()), 32);
    ::close(fd);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::unique_ptr<Vtpm> open() {
    auto v = Vtpm::open(config_);
    EXPECT_TRUE(v.ok()) << (v.ok() ? "" : v.error().message);
    return v.ok() ? std::move(*v) : nullptr;
  }
  Bytes command(Vtpm& v, const Bytes& cmd) {
    auto r = v.command(cmd);
    return Bytes(r.begin(), r.end());
  }
  std::string dir_;
  SealedStateConfig config_;
};

TEST_F(VtpmTest, OnePerProcess) {
  auto v = open();
  ASSERT_TRUE(v);
  auto second = Vtpm::open(config_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Errc::busy);
  // The refused one never unhooked the first from libtpms: its state still gets written.
  ASSERT_EQ(result_of(v->control(msg(2, be32(0))).reply), 0u);
  ASSERT_EQ(rc_of(command(*v, kStartup)), 0u);
  const std::size_t writes = v->state()->writes();
  // TPM2_HierarchyChangeAuth(owner, empty), password session: the owner auth is persistent.
  const Bytes change_auth = {0x80, 0x02, 0, 0,    0, 29, 0,    0, 0x01, 0x29, 0x40, 0, 0, 0x01, 0,
                             0,    0,    9, 0x40, 0, 0,  0x09, 0, 0,    0x01, 0,    0, 0, 0};
  EXPECT_EQ(rc_of(command(*v, change_auth)), 0u);
  EXPECT_GT(v->state()->writes(), writes);
  EXPECT_FALSE(Vtpm::open(config_).ok()) << "a second vTPM after the refused one";
}

TEST_F(VtpmTest, LifecycleAsQemuDrivesIt) {
  auto v = open();
  ASSERT_TRUE(v);
  // QEMU probes the TPM's version on the data channel before INIT: a TPM 2.0 answers with
  // TPM_ST_NO_SESSIONS even when it is not running yet.
  Bytes early = command(*v, kGetRandom);
  EXPECT_EQ(early[0], 0x80);
  EXPECT_EQ(early[1], 0x01);
  EXPECT_EQ(rc_of(early), kRcFailure);
  auto caps = v->control(msg(1));
  ASSERT_EQ(caps.reply.size(), 8u);
  const std::uint32_t need = kCapInit | kCapShutdown | kCapGetTpmEstablished | kCapSetLocality |
                             kCapResetTpmEstablished | kCapSetDataFd | kCapStop | kCapSetBufferSize;
  EXPECT_EQ(load_be32(caps.reply.data() + 4) & need, need);
  EXPECT_EQ(result_of(v->control(msg(0x0e)).reply), 0u);  // STOP
  auto bs = v->control(msg(0x11, be32(3968))).reply;      // SET_BUFFERSIZE, as tpm-crb asks
  ASSERT_EQ(bs.size(), 16u);
  EXPECT_EQ(result_of(bs), 0u);
  EXPECT_EQ(load_be32(bs.data() + 4), 3968u);
  EXPECT_EQ(result_of(v->control(msg(2, be32(0))).reply), 0u);  // INIT
  EXPECT_TRUE(v->running());
  EXPECT_EQ(rc_of(command(*v, kStartup)), 0u);
  Bytes rnd = command(*v, kGetRandom);
  EXPECT_EQ(rc_of(rnd), 0u);
  EXPECT_EQ(rnd.size(), 10u + 2 + 8);
  // A running TPM refuses a new buffer size (it must be stopped first).
  EXPECT_EQ(result_of(v->control(msg(0x11, be32(2048))).reply), kResBadParameter);
  auto est = v->control(msg(4)).reply;
  ASSERT_EQ(est.size(), 8u);
  EXPECT_EQ(result_of(est), 0u);
  auto shut = v->control(msg(3));
  EXPECT_TRUE(shut.shutdown);
  EXPECT_FALSE(v->running());
  EXPECT_EQ(rc_of(command(*v, kGetRandom)), kRcFailure);
  EXPECT_EQ(v->counters().not_running.load(), 2u);
}

TEST_F(VtpmTest, MalformedControlMessagesGetTheirCommandsErrorReply) {
  auto v = open();
  ASSERT_TRUE(v);
  struct Case {
    Bytes in;
    std::size_t reply_bytes;
    std::uint32_t result;
  };
  const Case cases[] = {
      {{0x00, 0x02}, 4, kResBadParameter},                // no command code
      {msg(0x77), 4, kResBadOrdinal},                     // unknown command
      {msg(0), 4, kResBadOrdinal},                        // code 0
      {msg(2, {0, 0}), 4, kResBadParameter},              // INIT, 2 of 4 bytes
      {msg(5, {9, 0, 0, 0}), 4, kResBadLocality},         // SET_LOCALITY 9
      {msg(0x0b), 4, kResBadParameter},                   // RESET_TPMESTABLISHED, no locality
      {msg(7, be32(5000)), 4, kResBadParameter},          // HASH_DATA, 5000 > 4096
      {msg(7, {0, 0, 0, 8, 1, 2}), 4, kResBadParameter},  // HASH_DATA, 2 of 8 bytes
      {msg(0x0c, {0, 0, 0, 1}), 16, kResBadParameter},    // GET_STATEBLOB, short
      {msg(0x0c, {0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0}), 16, kResBadParameter},    // type 9
      {msg(0x0d, {0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 0, 0, 0}), 4, kResBadParameter},  // 2 GiB blob
      {msg(0x11, {1}), 16, kResBadParameter},     // SET_BUFFERSIZE, short
      {msg(0x12, {0, 0}), 12, kResBadParameter},  // GET_INFO, short
      {msg(0x13), 4, kResBadParameter},           // LOCK_STORAGE, no retries
  };
  for (const auto& c : cases) {
    auto out = v->control(c.in);
    EXPECT_EQ(out.reply.size(), c.reply_bytes) << testing::PrintToString(c.in);
    EXPECT_EQ(result_of(out.reply), c.result) << testing::PrintToString(c.in);
    EXPECT_FALSE(out.take_datafd);
    EXPECT_EQ(out.blob_rest, 0u);
  }
  // Refused as malformed: all but SET_LOCALITY 9 and GET_STATEBLOB of type 9, which are
  // well-formed requests the vTPM answers with an error.
  EXPECT_EQ(v->counters().ctrl_refused.load(), 12u);
  EXPECT_EQ(v->counters().ctrl_failed.load(), 2u);
  // None of that touched the TPM: it starts and answers.
  EXPECT_EQ(result_of(v->control(msg(2, be32(0))).reply), 0u);
  EXPECT_EQ(rc_of(command(*v, kStartup)), 0u);
}

TEST_F(VtpmTest, TpmCommandsOfAWrongSize) {
  auto v = open();
  ASSERT_TRUE(v);
  ASSERT_EQ(result_of(v->control(msg(2, be32(0))).reply), 0u);
  ASSERT_EQ(rc_of(command(*v, kStartup)), 0u);
  Bytes short_hdr = {0x80, 0x01, 0, 0};
  EXPECT_EQ(rc_of(command(*v, short_hdr)), kRcCommandSize);
  Bytes lies = kGetRandom;
  lies[5] = 40;  // says 40 bytes, carries 12
  EXPECT_EQ(rc_of(command(*v, lies)), kRcCommandSize);
  Bytes huge(kMaxTpmBuffer + 1, 0);
  huge[0] = 0x80;
  huge[1] = 0x01;
  huge[4] = static_cast<std::uint8_t>(huge.size() >> 8);
  huge[5] = static_cast<std::uint8_t>(huge.size());
  EXPECT_EQ(rc_of(command(*v, huge)), kRcCommandSize);
  // Garbage of a consistent size goes to the TPM, which answers with an error of its own.
  Bytes garbage = {0x12, 0x34, 0, 0, 0, 12, 0xde, 0xad, 0xbe, 0xef, 0, 0};
  auto g = command(*v, garbage);
  EXPECT_NE(rc_of(g), 0u);
  EXPECT_EQ(v->counters().bad_command_size.load(), 3u);
  EXPECT_EQ(rc_of(command(*v, kGetRandom)), 0u);
}

TEST_F(VtpmTest, StateBlobsRoundTrip) {
  {
    auto v = open();
    ASSERT_TRUE(v);
    ASSERT_EQ(result_of(v->control(msg(2, be32(0))).reply), 0u);
    ASSERT_EQ(rc_of(command(*v, kStartup)), 0u);
    ASSERT_EQ(result_of(v->control(msg(0x0e)).reply), 0u);  // STOP
    Bytes req;
    append_be32(req, 0);
    append_be32(req, kBlobPermanent);
    append_be32(req, 0);
    auto blob = v->control(msg(0x0c, req)).reply;
    ASSERT_GE(blob.size(), 16u);
    ASSERT_EQ(result_of(blob), 0u);
    const std::uint32_t total = load_be32(blob.data() + 8);
    ASSERT_EQ(blob.size(), 16u + total);
    ASSERT_GT(total, 100u);
    // The blob comes back in two parts, as QEMU sends it (header, then body).
    Bytes hdr;
    append_be32(hdr, 0);
    append_be32(hdr, kBlobPermanent);
    append_be32(hdr, total);
    auto out = v->control(msg(0x0d, hdr));
    ASSERT_EQ(out.blob_rest, total);
    CtrlParse parsed = parse_ctrl(msg(0x0d, hdr));
    ASSERT_TRUE(parsed.request);
    auto reply = v->set_blob(*parsed.request, std::span(blob).subspan(16));
    EXPECT_EQ(result_of(reply), 0u);
    ASSERT_EQ(result_of(v->control(msg(2, be32(0))).reply), 0u);
    EXPECT_EQ(rc_of(command(*v, kStartup)), 0u) << "the TPM did not come back from its blob";
    EXPECT_EQ(rc_of(command(*v, kGetRandom)), 0u);
    // A running TPM takes no blob.
    EXPECT_EQ(result_of(v->set_blob(*parsed.request, std::span(blob).subspan(16))),
              kResBadParameter);
  }
}

TEST_F(VtpmTest, UntrustedStateMeansFailureModeAndAnUntouchedFile) {
  {
    auto v = open();
    ASSERT_TRUE(v);
    ASSERT_EQ(result_of(v->control(msg(2, be32(0))).reply), 0u);
    ASSERT_EQ(rc_of(command(*v, kStartup)), 0u);
  }
  std::ifstream in(config_.path, std::ios::binary);
  Bytes file{std::istreambuf_iterator<char>(in), {}};
  ASSERT_GT(file.size(), 64u);
  file[file.size() - 20] ^= 0x04;  // in the ciphertext (the tag is the last 16 bytes)
  {
    std::ofstream out(config_.path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(file.data()),
              static_cast<std::streamsize>(file.size()));
  }
  auto v = open();
  ASSERT_TRUE(v);
  EXPECT_TRUE(v->in_failure_mode());
  EXPECT_NE(v->failure_reason().find("authentication failed"), std::string::npos)
      << v->failure_reason();
  EXPECT_EQ(result_of(v->control(msg(2, be32(0))).reply), 0u);  // QEMU still starts the guest
  EXPECT_EQ(rc_of(command(*v, kStartup)), kRcFailure);
  EXPECT_EQ(rc_of(command(*v, kGetRandom)), kRcFailure);
  EXPECT_EQ(v->counters().failure_mode.load(), 2u);
  Bytes req;
  append_be32(req, 0);
  append_be32(req, kBlobPermanent);
  append_be32(req, 0);
  EXPECT_EQ(result_of(v->control(msg(0x0c, req)).reply), kResFail);
  v.reset();
  std::ifstream again(config_.path, std::ios::binary);
  EXPECT_EQ(Bytes(std::istreambuf_iterator<char>(again), {}), file);
}

}  // namespace
}  // namespace keel::vtpm
