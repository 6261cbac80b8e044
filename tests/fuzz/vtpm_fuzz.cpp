// What a guest's QEMU can send the paravisor's vTPM (vmm_glue/vtpm): control-channel messages
// and TPM commands through a real Vtpm (libtpms), plus state files through the sealed-state
// parser. The input is a script of records: u8 kind, u16 length, bytes. kind 0: a control
// message (a SET_STATEBLOB that wants more bytes takes them from the script); 1: a TPM command;
// 2: a state file to unseal. The first byte's low bit starts the TPM (INIT, Startup) first, so
// the fuzzer reaches libtpms' command parsers at once.
// Invariants: no crash or sanitizer report; every control reply is at least its command's fixed
// size; every TPM response is a whole response (its size field is its length, at least 10
// bytes, at most the buffer); the state file on disk always unseals (a refused state is never
// written).
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "fuzz_input.h"
#include "keel/log.h"
#include "keel/vtpm/sealed_state.h"
#include "keel/vtpm/vtpm.h"

namespace {

namespace vt = keel::vtpm;
using Bytes = std::vector<std::uint8_t>;

struct Setup {
  std::string dir;
  vt::SealedStateConfig config;
  Bytes key = Bytes(32, 0x42);
  Bytes template_state;  ///< a manufactured TPM, so each input starts from the same state
  Setup() {
    keel::log::set_level(keel::log::Level::off);
    char tmpl[] = "/tmp/keel-vtpm-fuzz-XXXXXX";
    dir = ::mkdtemp(tmpl);
    config.path = dir + "/state";
    config.key_path = dir + "/key";
    config.guest = "fuzz";
    int fd = ::open(config.key_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ::write(fd, key.data(), key.size()) != 32) std::abort();
    ::close(fd);
    {
      auto v = vt::Vtpm::open(config);
      if (!v.ok()) std::abort();
      Bytes init = {0, 0, 0, 2, 0, 0, 0, 0};
      (void)(*v)->control(init);
    }
    std::ifstream in(config.path, std::ios::binary);
    template_state.assign(std::istreambuf_iterator<char>(in), {});
    if (template_state.empty()) std::abort();
  }
  void reset_state() const {
    std::ofstream out(config.path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(template_state.data()),
              static_cast<std::streamsize>(template_state.size()));
  }
};

std::size_t fixed_reply(std::uint32_t code) {
  switch (code) {
    case 0x01:
    case 0x04:
    case 0x0f: return 8;
    case 0x0c:
    case 0x11: return 16;
    case 0x12: return 12;
    default: return 4;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Setup setup;
  setup.reset_state();
  keel::fuzz::FuzzInput in(data, size);
  auto opened = vt::Vtpm::open(setup.config);
  if (!opened.ok()) std::abort();
  vt::Vtpm& v = **opened;
  if (in.u8() & 1) {
    const Bytes init = {0, 0, 0, 2, 0, 0, 0, 0};
    const Bytes startup = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0};
    (void)v.control(init);
    (void)v.command(startup);
  }
  for (int records = 0; !in.empty() && records < 64; ++records) {
    const std::uint8_t kind = in.u8() % 3;
    const std::size_t len = in.u16() % 6000;
    std::string s = in.bytes(len);
    Bytes msg(s.begin(), s.end());
    if (kind == 0) {
      vt::CtrlOutcome out = v.control(msg);
      const std::uint32_t code = msg.size() >= 4 ? vt::load_be32(msg.data()) : 0;
      if (out.blob_rest) {
        vt::CtrlParse parsed = vt::parse_ctrl(msg);
        if (!parsed.request) std::abort();
        Bytes blob(parsed.request->data.begin(), parsed.request->data.end());
        std::string rest = in.bytes(out.blob_rest);
        blob.insert(blob.end(), rest.begin(), rest.end());
        blob.resize(parsed.request->length, 0);
        out.reply = v.set_blob(*parsed.request, blob);
      }
      if (out.reply.size() < fixed_reply(code)) std::abort();
    } else if (kind == 1) {
      auto resp = v.command(msg);
      if (resp.size() < vt::kTpmHeaderBytes || resp.size() > vt::kMaxTpmBuffer ||
          vt::load_be32(resp.data() + 2) != resp.size()) {
        std::abort();
      }
    } else {
      (void)vt::SealedState::unseal(std::span<const std::uint8_t, 32>(setup.key.data(), 32), "fuzz",
                                    msg);
    }
  }
  opened->reset();
  // Whatever the guest did, what is on disk is a state the vTPM takes back.
  std::ifstream state(setup.config.path, std::ios::binary);
  Bytes file{std::istreambuf_iterator<char>(state), {}};
  if (!vt::SealedState::unseal(std::span<const std::uint8_t, 32>(setup.key.data(), 32), "fuzz",
                               file)
           .ok()) {
    std::abort();
  }
  return 0;
}
