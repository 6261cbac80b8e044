// keel/vtpm/sealed_state.h - a guest's TPM state at rest: encrypted and authenticated with
// AES-256-GCM under a key only the guest's paravisor reads, bound to the guest's name, and
// replaced atomically.
//
// File layout (integers big-endian):
//   "KEELVTPM" | u32 version (1) | u32 n | guest name (n bytes) | 12-byte nonce
//   | u64 c | ciphertext (c bytes) | 16-byte GCM tag
// Everything before the ciphertext is the GCM additional data, so a changed name, version or
// nonce fails authentication just as a changed ciphertext does. The plaintext is the blobs
// libtpms keeps (by name: "permall", "volatilestate", "savestate"):
//   u32 count | count x (u16 name length | name | u32 data length | data)
// Each write takes a fresh random nonce and goes to PATH.tmp, is fsynced, renamed over PATH, and
// the directory is fsynced: a crash at any point leaves the old file or the new one, whole.
//
// The key file holds the 32-byte key, raw or as 64 hex digits (a trailing newline is allowed),
// and must not be readable by group or others. PATH.lock is held (flock) while the store is
// open, so two vTPMs never share one state.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "keel/result.h"
#include "keel/unique_fd.h"

namespace keel::vtpm {

struct SealedStateConfig {
  std::string path;      ///< The state file.
  std::string key_path;  ///< The key file.
  std::string guest;     ///< Whose state this is; a file of another guest is refused.
};

/// Why opening a store failed, for the caller that must choose between refusing to start (bad
/// configuration) and serving a TPM in failure mode (a state that is not to be trusted).
enum class StateProblem { none, config, untrusted };

class SealedState {
 public:
  /// Reads the key, takes the lock and (when the file exists) decrypts and checks it; a missing
  /// file is a fresh, empty state. A leftover PATH.tmp (a crash mid-write) is removed.
  /// Errors: invalid_argument (key file missing, malformed or readable by others; a file that
  /// is not a keel vTPM state, of another guest, of an unknown version, truncated, or failing
  /// authentication: "tampered with, or sealed with another key"), busy (another vTPM holds
  /// the lock), io_error. `problem` (optional) says which of the two kinds it was.
  static Result<std::unique_ptr<SealedState>> open(const SealedStateConfig& config,
                                                   StateProblem* problem = nullptr);
  ~SealedState();
  SealedState(const SealedState&) = delete;
  SealedState& operator=(const SealedState&) = delete;

  /// The blob stored under `name`, if any.
  std::optional<std::vector<std::uint8_t>> load(std::string_view name) const;
  /// Stores (or with an empty optional, removes) a blob and rewrites the file at once.
  /// Errors: io_error (the old file is left whole).
  Status store(std::string_view name, std::optional<std::span<const std::uint8_t>> data);
  std::size_t writes() const noexcept { return writes_; }
  const SealedStateConfig& config() const noexcept { return config_; }

  /// For crash tests: called at each step of a write (1: half the new file written, 2: all of it
  /// written, 3: fsynced, 4: renamed), where a test process may die.
  std::function<void(int step)> write_hook;

  /// Encrypts `blobs` into the file format above (exposed for tests and the fuzzer).
  static Result<std::vector<std::uint8_t>> seal(
      std::span<const std::uint8_t, 32> key, std::string_view guest,
      const std::map<std::string, std::vector<std::uint8_t>, std::less<>>& blobs);
  /// The inverse of seal(). Errors: invalid_argument naming what is wrong.
  static Result<std::map<std::string, std::vector<std::uint8_t>, std::less<>>> unseal(
      std::span<const std::uint8_t, 32> key, std::string_view guest,
      std::span<const std::uint8_t> file);
  /// Reads a key file (format above). Errors: invalid_argument, io_error.
  static Result<std::vector<std::uint8_t>> read_key(const std::string& path);

 private:
  SealedState() = default;
  Status write_file(const std::vector<std::uint8_t>& bytes);

  SealedStateConfig config_;
  std::vector<std::uint8_t> key_;
  UniqueFd lock_;
  std::map<std::string, std::vector<std::uint8_t>, std::less<>> blobs_;
  std::size_t writes_ = 0;
};

}  // namespace keel::vtpm
