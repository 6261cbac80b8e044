// keel-vtpm: one guest's TPM 2.0 as a process of its own, for a guest whose paravisor does not
// host it (keel-vhost-blk hosts it with --vtpm-ctrl) and for tests that hold it next to swtpm.
// Speaks the control-channel protocol of swtpm's `socket --ctrl type=unixio,path=...`, so QEMU
// starts the guest with
//   -chardev socket,id=chrtpm,path=CTRL -tpmdev emulator,id=tpm0,chardev=chrtpm
//   -device tpm-crb,tpmdev=tpm0
// The state lives in --state, sealed with the key in --key (docs/vtpm.md). Exits on SIGINT,
// SIGTERM, or when the client sends SHUTDOWN (as swtpm does), printing its counters.
#include <signal.h>

#include <CLI/CLI.hpp>

#include <cinttypes>
#include <cstdio>
#include <thread>

#include "app_log.h"
#include "keel/vtpm/vtpm_server.h"

namespace {
keel::vtpm::VtpmServer* g_server = nullptr;
void on_signal(int) {
  if (g_server) g_server->stop();
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-vtpm: a guest's TPM 2.0 (libtpms) on a swtpm-protocol control socket"};
  keel::vtpm::VtpmServerConfig config;
  config.exit_on_shutdown = true;
  app.add_option("--ctrl", config.ctrl_path,
                 "Control socket to listen on (QEMU: -chardev socket,path=... -tpmdev emulator)")
      ->required();
  app.add_option("--state", config.state.path,
                 "The guest's TPM state file, sealed with AES-256-GCM (created when missing)")
      ->required();
  app.add_option("--key", config.state.key_path,
                 "The state's 32-byte key: raw or 64 hex digits, mode 0600")
      ->required();
  app.add_option("--guest", config.state.guest,
                 "The guest's name; the state is bound to it (another guest's is refused)")
      ->required();
  bool stay = false;
  app.add_flag("--no-exit-on-shutdown", stay,
               "After SHUTDOWN wait for the next client instead of exiting");
  std::string log_level;
  keel::apps::add_log_option(app, log_level);
  CLI11_PARSE(app, argc, argv);
  if (!keel::apps::start_logging("keel-vtpm", log_level)) return 2;
  config.exit_on_shutdown = !stay;

  auto server = keel::vtpm::VtpmServer::create(config);
  if (!server) {
    std::fprintf(stderr, "keel-vtpm: %s\n", keel::to_string(server.error()).c_str());
    return 1;
  }
  g_server = server->get();
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  (*server)->run();
  g_server = nullptr;
  const auto& c = (*server)->vtpm().counters();
  std::printf(
      "keel-vtpm: %" PRIu64 " control messages (%" PRIu64 " refused, %" PRIu64 " failed), %" PRIu64
      " TPM commands (%" PRIu64 " of a bad size, %" PRIu64 " while stopped, %" PRIu64
      " in failure mode), %zu state writes (%" PRIu64 " failed)\n",
      c.ctrl_messages.load(), c.ctrl_refused.load(), c.ctrl_failed.load(), c.tpm_commands.load(),
      c.bad_command_size.load(), c.not_running.load(), c.failure_mode.load(),
      (*server)->vtpm().state() ? (*server)->vtpm().state()->writes() : std::size_t{0},
      c.state_write_errors.load());
  return (*server)->vtpm().in_failure_mode() ? 3 : 0;
}
