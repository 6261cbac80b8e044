// keel-tpm: TPM 2.0 commands from the command line, on a TPM device (a guest's /dev/tpmrm0) or
// a swtpm-protocol control socket (keel-vtpm, swtpm). Small on purpose: it is copied with its
// shared libraries into a busybox guest.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "tpm2_client.h"

namespace {

using keel::vtpm::Bytes;

struct Failure {
  std::string message;
};

void check(const char* what, uint32_t rc) {
  if (rc != keel::vtpm::kRcSuccess)
    throw Failure{std::string(what) + ": " + keel::vtpm::describe_rc(rc)};
}

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }

// Splits TPM2B_PUBLIC || TPM2B_PRIVATE, refusing anything but exactly those two.
void split_blob(const Bytes& blob, Bytes& pub, Bytes& priv) {
  size_t pos = 0;
  auto next = [&](Bytes& out) {
    if (blob.size() - pos < 2) throw Failure{"unseal: blob truncated"};
    size_t n = size_t{blob[pos]} << 8 | blob[pos + 1];
    if (blob.size() - pos - 2 < n) throw Failure{"unseal: blob truncated"};
    out.assign(blob.begin() + static_cast<std::ptrdiff_t>(pos),
               blob.begin() + static_cast<std::ptrdiff_t>(pos + 2 + n));
    pos += 2 + n;
  };
  next(pub);
  next(priv);
  if (pos != blob.size()) throw Failure{"unseal: trailing bytes after TPM2B_PRIVATE"};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-tpm: TPM 2.0 commands on a TPM device or a swtpm control socket"};
  app.require_subcommand(1);
  std::string device = "/dev/tpmrm0";
  std::string ctrl;
  auto* dev_opt = app.add_option("--device", device, "TPM character device")->capture_default_str();
  app.add_option("--ctrl", ctrl, "swtpm-protocol control socket (sends CMD_INIT)")
      ->excludes(dev_opt);
  bool no_init = false;
  app.add_flag("--no-init", no_init, "with --ctrl: do not send CMD_INIT");

  auto* startup = app.add_subcommand("startup", "TPM2_Startup(SU_CLEAR)");
  unsigned n_random = 0;
  auto* getrandom = app.add_subcommand("getrandom", "N random bytes, hex");
  getrandom->add_option("N", n_random)->required()->check(CLI::Range(1, 64));
  unsigned pcr = 0;
  auto* pcrread = app.add_subcommand("pcrread", "a SHA-256 PCR, hex");
  pcrread->add_option("IDX", pcr)->required()->check(CLI::Range(0, 23));
  std::string digest_hex;
  auto* pcrextend = app.add_subcommand("pcrextend", "extend a SHA-256 PCR by a digest");
  pcrextend->add_option("IDX", pcr)->required()->check(CLI::Range(0, 23));
  pcrextend->add_option("HEX32", digest_hex, "32-byte digest in hex")->required();
  std::string secret, password;
  auto* seal = app.add_subcommand(
      "seal", "seal SECRET under the owner ECC primary; prints TPM2B_PUBLIC||TPM2B_PRIVATE hex");
  seal->add_option("SECRET", secret)->required();
  seal->add_option("--password", password, "the sealed object's auth value");
  std::string blob_hex;
  auto* unseal = app.add_subcommand("unseal", "load a blob from `seal` and print its secret");
  unseal->add_option("HEXBLOB", blob_hex)->required();
  unseal->add_option("--password", password, "the sealed object's auth value");
  bool skip_startup = false;
  unsigned nv_index = keel::vtpm::kDefaultNvIndex;
  auto* sequence = app.add_subcommand("sequence", "the fixed test sequence, as JSON");
  sequence->add_flag("--skip-startup", skip_startup, "do not send TPM2_Startup");
  sequence->add_option("--nv-index", nv_index, "NV index to define and undefine");
  auto* props = app.add_subcommand("properties", "TPM_PT_* fixed properties, hex");

  CLI11_PARSE(app, argc, argv);

  try {
    std::unique_ptr<keel::vtpm::Transport> t;
    if (!ctrl.empty()) {
      t = std::make_unique<keel::vtpm::CtrlTransport>(ctrl, !no_init);
    } else {
      t = std::make_unique<keel::vtpm::DeviceTransport>(device);
    }
    keel::vtpm::Tpm tpm(*t);

    if (*startup) {
      check("Startup", tpm.startup().rc);
    } else if (*getrandom) {
      auto r = tpm.get_random(static_cast<uint16_t>(n_random));
      check("GetRandom", r.rc);
      std::cout << keel::vtpm::to_hex(r.bytes) << "\n";
    } else if (*pcrread) {
      auto r = tpm.pcr_read({pcr});
      check("PCR_Read", r.rc);
      if (!r.values.count(pcr)) throw Failure{"PCR_Read: the TPM returned no value"};
      std::cout << keel::vtpm::to_hex(r.values[pcr]) << "\n";
    } else if (*pcrextend) {
      Bytes d = keel::vtpm::from_hex(digest_hex);
      if (d.size() != 32) throw Failure{"pcrextend: HEX32 must be 32 bytes (64 hex digits)"};
      check("PCR_Extend", tpm.pcr_extend(pcr, d).rc);
    } else if (*seal || *unseal) {
      auto prim = tpm.create_primary();
      check("CreatePrimary", prim.rc);
      // Transient handles do not outlive the run; flush on every path so /dev/tpm0 (no
      // resource manager) is not left full.
      struct Flush {
        keel::vtpm::Tpm& tpm;
        uint32_t h;
        ~Flush() {
          if (h) tpm.flush_context(h);
        }
      } flush_primary{tpm, prim.handle};
      if (*seal) {
        auto cr = tpm.create_sealed(prim.handle, bytes_of(secret), password);
        check("Create", cr.rc);
        Bytes blob = cr.out_public;
        blob.insert(blob.end(), cr.out_private.begin(), cr.out_private.end());
        std::cout << keel::vtpm::to_hex(blob) << "\n";
      } else {
        Bytes pub, priv;
        split_blob(keel::vtpm::from_hex(blob_hex), pub, priv);
        auto ld = tpm.load(prim.handle, priv, pub);
        check("Load", ld.rc);
        Flush flush_sealed{tpm, ld.handle};
        auto us = tpm.unseal(ld.handle, password);
        check("Unseal", us.rc);
        std::cout << std::string(us.data.begin(), us.data.end()) << "\n";
      }
    } else if (*sequence) {
      keel::vtpm::SequenceOptions opts;
      opts.startup = !skip_startup;
      opts.nv_index = nv_index;
      auto j = keel::vtpm::run_sequence(*t, opts);
      std::cout << j.dump() << "\n";
      if (!j.value("ok", false)) {
        for (const auto& s : j["steps"]) {
          uint32_t rc = s["rc"].get<uint32_t>();
          if (rc != 0 && !s.contains("already_started")) {
            throw Failure{s["cmd"].get<std::string>() + ": " + keel::vtpm::describe_rc(rc)};
          }
        }
        throw Failure{"sequence: failed"};
      }
    } else if (*props) {
      auto r = tpm.get_tpm_properties(0x100, 64);  // PT_FIXED
      check("GetCapability", r.rc);
      for (const auto& [p, v] : r.properties) std::printf("0x%03x 0x%08x\n", p, v);
    }
  } catch (const Failure& f) {
    std::cerr << "keel-tpm: " << f.message << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "keel-tpm: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
