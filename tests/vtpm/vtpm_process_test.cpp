// keel-vtpm as a process, reached the way QEMU reaches it (control socket, CMD_SET_DATAFD,
// CMD_INIT): the same answers as swtpm, state that survives a restart and a SIGKILL at any
// point, a state that fails authentication refused without being touched, bad input answered
// without stopping the server, and the state blob round trip of a migration.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <random>

#include "tpm_process.h"

namespace keel::vtpm {
namespace {

using namespace std::chrono_literals;
using namespace proc;

constexpr uint32_t kRcFailure = 0x101;

// Expects a clean CMD_SHUTDOWN exit (0, or 3 in failure mode) and returns the counters.
proc::VtpmCountersLine shutdown_and_wait(KeelVtpm& k, std::unique_ptr<CtrlTransport>& t,
                                         int want_exit = 0) {
  EXPECT_EQ(t->shutdown(), 0u);
  t.reset();
  auto st = k.proc().wait_exit();
  EXPECT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == want_exit)
      << proc::describe_status(st) << "\nstderr:\n"
      << k.err();
  proc::VtpmCountersLine c = k.counters();
  EXPECT_TRUE(c.found) << "no counters line in stdout:\n" << k.out();
  return c;
}

#define START(k) ASSERT_TRUE((k).start()) << "keel-vtpm did not come up:\n" << (k).err()

#define REQUIRE_SWTPM() \
  if (!proc::have_swtpm()) GTEST_SKIP() << "swtpm not installed"

// ---------------------------------------------------------------------------------------------

TEST(VtpmProcess, SameAnswersAsSwtpm) {
  REQUIRE_SWTPM();
  TempDir kd, sd;
  KeelVtpm k(kd);
  START(k);
  proc::SwtpmProcess s(sd);
  ASSERT_TRUE(s.ready()) << "swtpm did not create its control socket";
  auto kt = proc::connect_ctrl(k.sock());
  auto st = proc::connect_ctrl(s.sock());

  // What QEMU 7.2's tpm_emulator requires of a TPM 2.0 backend: INIT, SHUTDOWN,
  // GET_TPMESTABLISHED, SET_LOCALITY, RESET_TPMESTABLISHED, SET_DATAFD, STOP, SET_BUFFERSIZE.
  constexpr uint64_t kQemuTpm2Caps =
      1u << 0 | 1u << 1 | 1u << 2 | 1u << 3 | 1u << 7 | 1u << 12 | 1u << 10 | 1u << 13;
  const uint64_t kcaps = kt->get_capability(), scaps = st->get_capability();
  EXPECT_EQ(kcaps & kQemuTpm2Caps, kQemuTpm2Caps) << std::hex << "keel-vtpm caps 0x" << kcaps;
  EXPECT_EQ(scaps & kQemuTpm2Caps, kQemuTpm2Caps) << std::hex << "swtpm caps 0x" << scaps;
  EXPECT_EQ(kcaps >> 32, 0u) << "result in the upper half";

  const auto kb = kt->set_buffersize(0), sb = st->set_buffersize(0);
  EXPECT_EQ(kb.result, 0u);
  EXPECT_EQ(sb.result, 0u);
  EXPECT_EQ(kb.buffersize, sb.buffersize);
  EXPECT_EQ(kb.minsize, sb.minsize);
  EXPECT_EQ(kb.maxsize, sb.maxsize);
  EXPECT_EQ(kb.buffersize, 4096u);

  const auto ke = kt->get_tpm_established(), se = st->get_tpm_established();
  EXPECT_EQ(ke.result, 0u);
  EXPECT_EQ(ke.result, se.result);
  EXPECT_EQ(ke.bit, se.bit);

  nlohmann::json kj = run_sequence(*kt), sj = run_sequence(*st);
  EXPECT_TRUE(kj["ok"].get<bool>()) << kj.dump(1);
  EXPECT_TRUE(sj["ok"].get<bool>()) << sj.dump(1);
  EXPECT_EQ(kj, sj) << "keel-vtpm:\n" << kj.dump(1) << "\nswtpm:\n" << sj.dump(1);
  // Again: the TPM is started (TPM_RC_INITIALIZE) and PCR 23 extended twice, on both.
  nlohmann::json kj2 = run_sequence(*kt), sj2 = run_sequence(*st);
  EXPECT_EQ(kj2, sj2) << "keel-vtpm:\n" << kj2.dump(1) << "\nswtpm:\n" << sj2.dump(1);

  auto c = shutdown_and_wait(k, kt);
  EXPECT_EQ(c.refused + c.failed + c.bad_size + c.stopped + c.failure_mode + c.write_errors, 0u)
      << k.out();
  EXPECT_GT(c.writes, 0u);
}

// ---------------------------------------------------------------------------------------------

// A started TPM with `data` (10 bytes) in an owner NV index.
void start_and_write_nv(Tpm& tpm, const char* data = "persist me") {
  ASSERT_EQ(tpm.startup().rc, 0u);
  ASSERT_EQ(tpm.nv_define_space(kDefaultNvIndex, 10).rc, 0u);
  ASSERT_EQ(tpm.nv_write(kRhOwner, kDefaultNvIndex, text(data)).rc, 0u);
}

TEST(VtpmProcess, PersistsAcrossRestart) {
  TempDir d;
  KeelVtpm k(d);
  START(k);
  auto t = proc::connect_ctrl(k.sock());
  Tpm tpm(*t);
  ASSERT_NO_FATAL_FAILURE(start_and_write_nv(tpm));
  CreatePrimaryResult prim = tpm.create_primary();
  ASSERT_EQ(prim.rc, 0u) << describe_rc(prim.rc);
  const Bytes secret = text("sealed across a restart");
  CreateResult sealed = tpm.create_sealed(prim.handle, secret);
  ASSERT_EQ(sealed.rc, 0u) << describe_rc(sealed.rc);
  auto c = shutdown_and_wait(k, t);
  EXPECT_EQ(c.write_errors, 0u);
  EXPECT_GT(c.writes, 0u);

  START(k);
  t = proc::connect_ctrl(k.sock());
  Tpm again(*t);
  ASSERT_EQ(again.startup().rc, 0u);
  DataResult nv = again.nv_read(kRhOwner, kDefaultNvIndex, 10);
  ASSERT_EQ(nv.rc, 0u) << describe_rc(nv.rc);
  EXPECT_EQ(nv.data, text("persist me"));
  CreatePrimaryResult prim2 = again.create_primary();
  ASSERT_EQ(prim2.rc, 0u) << describe_rc(prim2.rc);
  EXPECT_EQ(prim2.out_public, prim.out_public) << "the owner seed did not persist";
  LoadResult ld = again.load(prim2.handle, sealed.out_private, sealed.out_public);
  ASSERT_EQ(ld.rc, 0u) << describe_rc(ld.rc);
  DataResult un = again.unseal(ld.handle);
  ASSERT_EQ(un.rc, 0u) << describe_rc(un.rc);
  EXPECT_EQ(un.data, secret);
  c = shutdown_and_wait(k, t);
  EXPECT_EQ(c.write_errors, 0u);
}

TEST(VtpmProcess, PersistsAcrossSigkill) {
  TempDir d;
  KeelVtpm k(d);
  START(k);
  auto t = proc::connect_ctrl(k.sock());
  Tpm tpm(*t);
  ASSERT_NO_FATAL_FAILURE(start_and_write_nv(tpm));
  // No clean shutdown: the NV write must already be in the file.
  k.proc().signal(SIGKILL);
  auto st = k.proc().wait_exit();
  ASSERT_TRUE(st && WIFSIGNALED(*st)) << proc::describe_status(st);
  t.reset();

  START(k);
  t = proc::connect_ctrl(k.sock());
  Tpm again(*t);
  ASSERT_EQ(again.startup().rc, 0u);
  DataResult nv = again.nv_read(kRhOwner, kDefaultNvIndex, 10);
  ASSERT_EQ(nv.rc, 0u) << describe_rc(nv.rc);
  EXPECT_EQ(nv.data, text("persist me"));
  shutdown_and_wait(k, t);
}

TEST(VtpmProcess, SigtermExitsCleanlyWithCounters) {
  TempDir d;
  KeelVtpm k(d);
  START(k);
  auto t = proc::connect_ctrl(k.sock());
  Tpm tpm(*t);
  ASSERT_EQ(tpm.startup().rc, 0u);
  ASSERT_TRUE(tpm.get_random(8).ok());
  k.proc().signal(SIGTERM);
  auto st = k.proc().wait_exit();
  EXPECT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << proc::describe_status(st);
  auto c = k.counters();
  ASSERT_TRUE(c.found) << k.out();
  EXPECT_EQ(c.commands, 2u);
  EXPECT_FALSE(proc::is_socket(k.sock())) << "the socket is removed on a clean exit";
}

// ---------------------------------------------------------------------------------------------

TEST(VtpmProcess, CrashAtAnyPointNeverTearsState) {
  TempDir d;
  KeelVtpm k(d);
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> delay_us(0, 30000);
  uint64_t acked = 0, attempted = 0, total_acked = 0, torn_writes = 0;
  for (int iter = 0; iter < 15; ++iter) {
    SCOPED_TRACE("iteration " + std::to_string(iter));
    START(k);
    auto t = proc::connect_ctrl(k.sock());
    Tpm tpm(*t);
    const uint32_t rc = tpm.startup().rc;
    ASSERT_TRUE(rc == kRcSuccess || rc == kRcInitialize) << describe_rc(rc) << "\nstderr:\n"
                                                         << k.err();
    if (iter == 0) {
      ASSERT_EQ(tpm.nv_define_space(kDefaultNvIndex, 8).rc, 0u);
      ASSERT_EQ(tpm.nv_write(kRhOwner, kDefaultNvIndex, be64(0)).rc, 0u);
    } else {
      DataResult r = tpm.nv_read(kRhOwner, kDefaultNvIndex, 8);
      ASSERT_EQ(r.rc, 0u) << describe_rc(r.rc) << "\nstderr:\n" << k.err();
      const uint64_t v = get64(r.data);
      ASSERT_GE(v, acked) << "an acknowledged NV write was lost";
      ASSERT_LE(v, attempted) << "a value never written";
      acked = v;  // read back: durable
    }
    attempted = acked;
    const pid_t pid = k.proc().pid();
    const auto delay = std::chrono::microseconds(delay_us(rng));
    std::thread killer([pid, delay] {
      std::this_thread::sleep_for(delay);  // a random moment, not a synchronisation
      ::kill(pid, SIGKILL);
    });
    const auto give_up = proc::Clock::now() + 10s;
    uint32_t write_rc = 0;
    while (proc::Clock::now() < give_up) {
      const uint64_t next = attempted + 1;
      attempted = next;
      try {
        write_rc = tpm.nv_write(kRhOwner, kDefaultNvIndex, be64(next)).rc;
      } catch (const TpmError&) {
        break;  // the process died mid-command
      }
      if (write_rc != 0) break;
      acked = next;
      ++total_acked;
    }
    killer.join();
    ASSERT_EQ(write_rc, 0u) << describe_rc(write_rc);
    // A kill during a state write leaves PATH.tmp behind (the next start removes it).
    if (std::filesystem::exists(k.state() + ".tmp")) ++torn_writes;
    auto st = k.proc().wait_exit();
    ASSERT_TRUE(st && WIFSIGNALED(*st) && WTERMSIG(*st) == SIGKILL) << proc::describe_status(st);
  }
  // A last start must find a whole state and no leftover temporary file in the way.
  START(k);
  auto t = proc::connect_ctrl(k.sock());
  Tpm tpm(*t);
  ASSERT_EQ(tpm.startup().rc, 0u) << k.err();
  DataResult r = tpm.nv_read(kRhOwner, kDefaultNvIndex, 8);
  ASSERT_EQ(r.rc, 0u) << describe_rc(r.rc);
  EXPECT_GE(get64(r.data), acked);
  EXPECT_LE(get64(r.data), attempted);
  auto c = shutdown_and_wait(k, t);
  EXPECT_EQ(c.failure_mode, 0u);
  EXPECT_GT(total_acked, 0u) << "no kill landed among acknowledged writes";
  EXPECT_FALSE(std::filesystem::exists(k.state() + ".tmp"));
  std::printf(
      "[ info ] %llu NV writes acknowledged across 15 SIGKILLs, %llu of which landed "
      "mid-write\n",
      static_cast<unsigned long long>(total_acked), static_cast<unsigned long long>(torn_writes));
}

// ---------------------------------------------------------------------------------------------

// Starts keel-vtpm on a state it must refuse: the refusal on stderr naming `want_err`, every
// TPM command TPM_RC_FAILURE, exit 3, the file untouched.
void expect_refused(KeelVtpm& k, const std::vector<std::string>& want_err) {
  const Bytes before = proc::read_file_bytes(k.state());
  START(k);
  for (const auto& w : want_err) {
    EXPECT_TRUE(proc::wait_until([&] { return k.err().find(w) != std::string::npos; }, 5s))
        << "stderr lacks '" << w << "':\n"
        << k.err();
  }
  auto t = proc::connect_ctrl(k.sock());
  Tpm tpm(*t);
  EXPECT_EQ(tpm.startup().rc, kRcFailure);
  EXPECT_EQ(tpm.get_random(8).rc, kRcFailure);
  EXPECT_EQ(tpm.nv_read(kRhOwner, kDefaultNvIndex, 10).rc, kRcFailure);
  EXPECT_EQ(t->get_capability() >> 32, 0u) << "the control channel still works";
  auto c = shutdown_and_wait(k, t, 3);
  EXPECT_EQ(c.failure_mode, 3u);
  EXPECT_EQ(c.writes, 0u);
  EXPECT_EQ(proc::read_file_bytes(k.state()), before) << "a refused state was rewritten";
}

TEST(VtpmProcess, TamperedStateIsRefused) {
  TempDir d;
  KeelVtpm k(d, "guest-a");
  START(k);
  auto t = proc::connect_ctrl(k.sock());
  {
    Tpm tpm(*t);
    ASSERT_EQ(tpm.startup().rc, 0u);
    ASSERT_EQ(tpm.nv_define_space(kDefaultNvIndex, 10).rc, 0u);
    ASSERT_EQ(tpm.nv_write(kRhOwner, kDefaultNvIndex, text("persist me")).rc, 0u);
  }
  shutdown_and_wait(k, t);
  const Bytes good = proc::read_file_bytes(k.state());
  ASSERT_GT(good.size(), 100u);

  {
    SCOPED_TRACE("one byte flipped");
    Bytes bad = good;
    bad[bad.size() / 2] ^= 0x01;
    ASSERT_TRUE(proc::write_file_bytes(k.state(), bad));
    expect_refused(k, {"authentication failed"});
  }
  ASSERT_TRUE(proc::write_file_bytes(k.state(), good));
  {
    SCOPED_TRACE("another key");
    const std::string original_key = k.key();
    k.set_key(d / "other-key");
    ASSERT_TRUE(proc::write_random_key(k.key()));
    expect_refused(k, {"authentication failed"});
    k.set_key(original_key);
  }
  {
    SCOPED_TRACE("another guest");
    k.set_guest("guest-b");
    expect_refused(k, {"belongs to guest", "guest-a", "guest-b"});
    k.set_guest("guest-a");
  }
  {
    SCOPED_TRACE("the right key and guest still open it");
    START(k);
    t = proc::connect_ctrl(k.sock());
    Tpm tpm(*t);
    ASSERT_EQ(tpm.startup().rc, 0u);
    EXPECT_EQ(tpm.nv_read(kRhOwner, kDefaultNvIndex, 10).data, text("persist me"));
    shutdown_and_wait(k, t);
  }
}

TEST(VtpmProcess, BadConfigurationIsRefusedAtStart) {
  TempDir d;
  KeelVtpm k(d);
  START(k);
  // A second server on the same state (another socket) must not start.
  KeelVtpm second(d);
  second.set_sock(d / "second.sock");
  second.set_name("second");
  second.spawn();
  auto st = second.proc().wait_exit();
  EXPECT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 1) << proc::describe_status(st);
  EXPECT_NE(second.err().find("another vTPM serves the state"), std::string::npos) << second.err();
  k.proc().signal(SIGTERM);
  k.proc().wait_exit();

  // A key file others may read.
  TempDir d2;
  KeelVtpm loose(d2);
  ASSERT_TRUE(proc::write_file_bytes(loose.key(), Bytes(32, 0x5a), 0644));
  loose.spawn();
  st = loose.proc().wait_exit();
  EXPECT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 1) << proc::describe_status(st);
  EXPECT_NE(loose.err().find("group or others may read it"), std::string::npos) << loose.err();
  EXPECT_FALSE(std::filesystem::exists(loose.state()));
}

// ---------------------------------------------------------------------------------------------

TEST(VtpmProcess, BadInputIsAnsweredNotFatal) {
  TempDir d;
  KeelVtpm k(d);
  START(k);
  auto t = proc::connect_ctrl(k.sock());
  const Bytes bad_parameter = be32(3);
  auto refusal = [](size_t n) {
    Bytes r = be32(3);
    r.resize(n, 0);
    return r;
  };
  // Each reply read with room for more than it should be, so a longer one shows.
  EXPECT_EQ(t->ctrl_raw({0x00, 0x01}, 64), bad_parameter) << "2 bytes: no command code";
  EXPECT_EQ(t->ctrl_raw(be32(0x77), 64), be32(0x0a)) << "unknown command";
  EXPECT_EQ(t->ctrl_raw(cat(be32(0x02), {0, 0}), 64), bad_parameter) << "INIT, 2-byte payload";
  EXPECT_EQ(t->ctrl_raw(cat(be32(0x05), {9, 0, 0, 0}), 64), be32(0x3d)) << "SET_LOCALITY 9";
  EXPECT_EQ(t->set_locality(5), 0x3du);
  EXPECT_EQ(t->ctrl_raw(cat(cat(be32(0x07), be32(5000)), Bytes(64, 0xee)), 64), bad_parameter)
      << "HASH_DATA announcing 5000 bytes";
  EXPECT_EQ(t->ctrl_raw(cat(cat(be32(0x07), be32(100)), Bytes(10, 0xee)), 64), bad_parameter)
      << "HASH_DATA announcing 100 bytes, carrying 10";
  EXPECT_EQ(t->ctrl_raw(be32(0x10), 64), bad_parameter) << "SET_DATAFD without an fd";
  for (size_t nfds : {2, 3}) {
    int p2[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p2), 0);
    std::vector<int> fds(nfds, p2[1]);
    ASSERT_TRUE(send_msg(t->ctrl_fd(), be32(0x10), fds));
    EXPECT_EQ(read_n(t->ctrl_fd(), 4), bad_parameter) << "SET_DATAFD with " << nfds << " fds";
    EXPECT_TRUE(read_n(t->ctrl_fd(), 1, 300).empty()) << "more than the 4-byte reply";
    ::close(p2[0]);
    ::close(p2[1]);
  }
  EXPECT_EQ(t->ctrl_raw(cat(be32(0x0c), be32(0)), 64), refusal(16)) << "short GET_STATEBLOB";
  EXPECT_EQ(t->ctrl_raw(be32(0x11), 64), refusal(16)) << "short SET_BUFFERSIZE";
  EXPECT_EQ(t->ctrl_raw(cat(be32(0x12), be32(0)), 64), refusal(12)) << "short GET_INFO";
  EXPECT_EQ(t->ctrl_raw(cat(be32(0x0d), be32(0)), 64), bad_parameter) << "short SET_STATEBLOB";

  // The data channel: a size below the header, and one far above the buffer.
  const int data = t->data_fd();
  const Bytes command_size = {0x80, 0x01, 0, 0, 0, 0x0a, 0, 0, 0x01, 0x42};
  ASSERT_TRUE(write_all(data, cat({0x80, 0x01}, cat(be32(4), be32(0x17b)))));
  EXPECT_EQ(read_n(data, 10), command_size) << "size 4";
  ASSERT_TRUE(write_all(data, cat({0x80, 0x01}, cat(be32(100000), be32(0x17b)))));
  EXPECT_EQ(read_n(data, 10), command_size) << "size 100000";
  ASSERT_TRUE(write_all(data, cat({0x80, 0x01}, cat(be32(4097), be32(0x17b)))));
  EXPECT_EQ(read_n(data, 10), command_size) << "size 4097";

  // None of it stopped the server or lost the data channel.
  Tpm tpm(*t);
  ASSERT_EQ(tpm.startup().rc, 0u);
  RandomResult r = tpm.get_random(8);
  ASSERT_EQ(r.rc, 0u) << describe_rc(r.rc);
  EXPECT_EQ(r.bytes.size(), 8u);

  // A second client waits in the backlog while the first is served, and is served after it.
  const int second = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(second, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", k.sock().c_str());
  ASSERT_EQ(::connect(second, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0)
      << std::strerror(errno);
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_TRUE(send_msg(second, be32(0x10), {pair[1]}));  // SET_DATAFD
  ::close(pair[1]);
  for (int i = 0; i < 5; ++i) {
    RandomResult again = tpm.get_random(16);
    ASSERT_EQ(again.rc, 0u) << "the first client broke while a second one waited";
  }
  EXPECT_EQ(t->get_capability() >> 32, 0u);
  EXPECT_TRUE(read_n(second, 4, 300).empty()) << "the second client was served alongside";
  t.reset();  // the first client leaves
  EXPECT_EQ(read_n(second, 4), be32(0)) << "SET_DATAFD of the second client";
  ASSERT_TRUE(send_msg(second, cat(be32(0x02), be32(0))));  // INIT
  EXPECT_EQ(read_n(second, 4), be32(0));
  ASSERT_TRUE(write_all(pair[0], cmd::startup(kSuClear)));
  EXPECT_EQ(read_n(pair[0], 10), Bytes({0x80, 0x01, 0, 0, 0, 0x0a, 0, 0, 0, 0}));
  ASSERT_TRUE(write_all(pair[0], cmd::get_random(4)));
  Bytes rand = read_n(pair[0], 16);
  ASSERT_EQ(rand.size(), 16u);
  EXPECT_EQ(get32(rand, 6), 0u);

  ASSERT_TRUE(send_msg(second, be32(0x03)));  // SHUTDOWN
  EXPECT_EQ(read_n(second, 4), be32(0));
  ::close(second);
  ::close(pair[0]);
  auto st = k.proc().wait_exit();
  EXPECT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << proc::describe_status(st);
  auto c = k.counters();
  ASSERT_TRUE(c.found) << k.out();
  EXPECT_GT(c.refused, 0u) << k.out();
  EXPECT_GE(c.bad_size, 2u) << k.out();
  EXPECT_EQ(c.failure_mode, 0u);
}

// ---------------------------------------------------------------------------------------------

// CMD_GET_STATEBLOB as QEMU reads it: the 16-byte header, then `length` blob bytes.
Bytes get_state_blob(CtrlTransport& t, uint32_t type) {
  Bytes hdr = t.ctrl_raw(cat(be32(0x0c), cat(be32(0), cat(be32(type), be32(0)))), 16);
  EXPECT_EQ(hdr.size(), 16u);
  if (hdr.size() != 16) return {};
  EXPECT_EQ(get32(hdr, 0), 0u) << "GET_STATEBLOB result";
  EXPECT_EQ(get32(hdr, 4) & 2, 0u) << "an encrypted blob";
  EXPECT_EQ(get32(hdr, 8), get32(hdr, 12)) << "the whole blob in one reply";
  Bytes blob = read_n(t.ctrl_fd(), get32(hdr, 12));
  EXPECT_EQ(blob.size(), get32(hdr, 12));
  return blob;
}

// CMD_SET_STATEBLOB as QEMU writes it: the header, then the blob in a second write.
uint32_t set_state_blob(CtrlTransport& t, uint32_t type, const Bytes& blob) {
  const Bytes hdr = cat(be32(0x0d), cat(be32(0), cat(be32(type), be32(uint32_t(blob.size())))));
  EXPECT_TRUE(t.ctrl_raw(hdr, 0).empty());
  Bytes r = t.ctrl_raw(blob, 4);
  EXPECT_EQ(r.size(), 4u);
  return r.size() == 4 ? get32(r, 0) : 0xffffffffu;
}

TEST(VtpmProcess, StateBlobRoundTrip) {
  TempDir d;
  KeelVtpm k(d);
  START(k);
  auto t = proc::connect_ctrl(k.sock());
  Tpm tpm(*t);
  ASSERT_NO_FATAL_FAILURE(start_and_write_nv(tpm, "blob state"));
  ASSERT_EQ(t->stop(), 0u);
  const Bytes permanent = get_state_blob(*t, 1);
  ASSERT_GT(permanent.size(), 100u);

  // Change the NV index, then put the saved state back: the old contents return.
  ASSERT_EQ(t->init(0), 0u);
  ASSERT_EQ(tpm.startup().rc, 0u);
  ASSERT_EQ(tpm.nv_write(kRhOwner, kDefaultNvIndex, text("overwrote!")).rc, 0u);
  ASSERT_EQ(t->stop(), 0u);
  EXPECT_EQ(set_state_blob(*t, 1, permanent), 0u);
  ASSERT_EQ(t->init(0), 0u);
  ASSERT_EQ(tpm.startup().rc, 0u);
  DataResult nv = tpm.nv_read(kRhOwner, kDefaultNvIndex, 10);
  ASSERT_EQ(nv.rc, 0u) << describe_rc(nv.rc);
  EXPECT_EQ(nv.data, text("blob state"));

  // SET_STATEBLOB while running is refused; the TPM keeps working.
  EXPECT_EQ(set_state_blob(*t, 1, permanent), 3u);
  EXPECT_TRUE(tpm.get_random(8).ok());
  auto c = shutdown_and_wait(k, t);
  EXPECT_EQ(c.write_errors, 0u);
}

// A migration's destination: the blobs QEMU sets, then INIT with no TPM2_Startup (the guest runs
// on). The state set must be the guest's state from then on, also after a crash.
TEST(VtpmProcess, SetStateBlobIsDurable) {
  TempDir d;
  KeelVtpm k(d);
  START(k);
  auto t = proc::connect_ctrl(k.sock());
  Tpm tpm(*t);
  ASSERT_NO_FATAL_FAILURE(start_and_write_nv(tpm, "blob state"));
  ASSERT_EQ(t->stop(), 0u);
  const Bytes permanent = get_state_blob(*t, 1);
  ASSERT_EQ(t->init(0), 0u);
  ASSERT_EQ(tpm.startup().rc, 0u);
  ASSERT_EQ(tpm.nv_write(kRhOwner, kDefaultNvIndex, text("overwrote!")).rc, 0u);
  ASSERT_EQ(t->stop(), 0u);
  ASSERT_EQ(set_state_blob(*t, 1, permanent), 0u);
  ASSERT_EQ(t->init(0), 0u);
  k.proc().signal(SIGKILL);
  k.proc().wait_exit();
  t.reset();

  START(k);
  t = proc::connect_ctrl(k.sock());
  Tpm again(*t);
  ASSERT_EQ(again.startup().rc, 0u);
  DataResult nv = again.nv_read(kRhOwner, kDefaultNvIndex, 10);
  ASSERT_EQ(nv.rc, 0u) << describe_rc(nv.rc);
  EXPECT_EQ(nv.data, text("blob state")) << "the state set by SET_STATEBLOB was not stored";
  shutdown_and_wait(k, t);
}

}  // namespace
}  // namespace keel::vtpm
