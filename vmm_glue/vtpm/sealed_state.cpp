#include "keel/vtpm/sealed_state.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "keel/vtpm/ctrl_protocol.h"

namespace keel::vtpm {
namespace {

constexpr char kMagic[8] = {'K', 'E', 'E', 'L', 'V', 'T', 'P', 'M'};
constexpr std::uint32_t kVersion = 1;
constexpr std::size_t kNonceBytes = 12;
constexpr std::size_t kTagBytes = 16;
constexpr std::size_t kMaxGuestName = 256;
constexpr std::size_t kMaxFile = 16u << 20;

Error sys_error(const std::string& what) {
  return make_error(Errc::io_error, what + ": " + std::strerror(errno));
}

struct CipherCtx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
};

void append_be16(std::vector<std::uint8_t>& out, std::uint16_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

Result<std::vector<std::uint8_t>> read_all(int fd, const std::string& path) {
  std::vector<std::uint8_t> out;
  std::uint8_t buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error("read " + path);
    if (n == 0) return out;
    out.insert(out.end(), buf, buf + n);
    if (out.size() > kMaxFile) {
      return make_error(
          Errc::invalid_argument,
          path + ": larger than " + std::to_string(kMaxFile >> 20) + " MiB, not a keel vTPM state");
    }
  }
}

void cleanse(std::map<std::string, std::vector<std::uint8_t>, std::less<>>& blobs) {
  for (auto& [name, data] : blobs) OPENSSL_cleanse(data.data(), data.size());
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Result<std::vector<std::uint8_t>> SealedState::read_key(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) {
      return make_error(Errc::invalid_argument,
                        "key file " + path + " does not exist (32 random bytes, mode 0600: " +
                            "head -c 32 /dev/urandom > " + path + ")");
    }
    return sys_error("open key file " + path);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sys_error("stat " + path);
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
    return make_error(Errc::invalid_argument, "key file " + path + " has mode " + mode +
                                                  ": group or others may read it (chmod 600)");
  }
  auto bytes = read_all(fd.get(), path);
  if (!bytes) return bytes.error();
  std::vector<std::uint8_t> key = std::move(*bytes);
  while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) {
    if (key.size() == 32) break;  // a raw key may end in 0x0a
    key.pop_back();
  }
  if (key.size() == 64) {
    std::vector<std::uint8_t> raw(32);
    for (std::size_t i = 0; i < 32; ++i) {
      int hi = hex_value(static_cast<char>(key[2 * i]));
      int lo = hex_value(static_cast<char>(key[2 * i + 1]));
      if (hi < 0 || lo < 0) {
        OPENSSL_cleanse(key.data(), key.size());
        return make_error(Errc::invalid_argument,
                          "key file " + path + ": 64 characters that are not all hex digits");
      }
      raw[i] = static_cast<std::uint8_t>(hi << 4 | lo);
    }
    OPENSSL_cleanse(key.data(), key.size());
    return raw;
  }
  if (key.size() != 32) {
    std::size_t n = key.size();
    OPENSSL_cleanse(key.data(), key.size());
    return make_error(Errc::invalid_argument,
                      "key file " + path + " holds " + std::to_string(n) +
                          " bytes; an AES-256 key is 32 bytes (or 64 hex digits)");
  }
  return key;
}

Result<std::vector<std::uint8_t>> SealedState::seal(
    std::span<const std::uint8_t, 32> key, std::string_view guest,
    const std::map<std::string, std::vector<std::uint8_t>, std::less<>>& blobs) {
  if (guest.size() > kMaxGuestName) {
    return make_error(Errc::invalid_argument, "guest name longer than 256 bytes");
  }
  std::vector<std::uint8_t> plain;
  append_be32(plain, static_cast<std::uint32_t>(blobs.size()));
  for (const auto& [name, data] : blobs) {
    append_be16(plain, static_cast<std::uint16_t>(name.size()));
    plain.insert(plain.end(), name.begin(), name.end());
    append_be32(plain, static_cast<std::uint32_t>(data.size()));
    plain.insert(plain.end(), data.begin(), data.end());
  }
  std::vector<std::uint8_t> out(kMagic, kMagic + sizeof kMagic);
  append_be32(out, kVersion);
  append_be32(out, static_cast<std::uint32_t>(guest.size()));
  out.insert(out.end(), guest.begin(), guest.end());
  std::uint8_t nonce[kNonceBytes];
  if (RAND_bytes(nonce, sizeof nonce) != 1) {
    return make_error(Errc::io_error, "RAND_bytes failed to make a nonce");
  }
  out.insert(out.end(), nonce, nonce + sizeof nonce);
  for (int shift = 56; shift >= 0; shift -= 8) {
    out.push_back(static_cast<std::uint8_t>(static_cast<std::uint64_t>(plain.size()) >> shift));
  }
  const std::size_t aad_len = out.size();
  CipherCtx c;
  int len = 0;
  std::size_t at = out.size();
  out.resize(at + plain.size() + kTagBytes);
  bool ok =
      c.ctx && EVP_EncryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) &&
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) &&
      EVP_EncryptInit_ex(c.ctx, nullptr, nullptr, key.data(), nonce) &&
      EVP_EncryptUpdate(c.ctx, nullptr, &len, out.data(), static_cast<int>(aad_len)) &&
      EVP_EncryptUpdate(c.ctx, out.data() + at, &len, plain.data(),
                        static_cast<int>(plain.size())) &&
      EVP_EncryptFinal_ex(c.ctx, out.data() + at + len, &len) &&
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_GET_TAG, kTagBytes, out.data() + at + plain.size());
  OPENSSL_cleanse(plain.data(), plain.size());
  if (!ok) return make_error(Errc::io_error, "AES-256-GCM encryption failed (OpenSSL)");
  return out;
}

Result<std::map<std::string, std::vector<std::uint8_t>, std::less<>>> SealedState::unseal(
    std::span<const std::uint8_t, 32> key, std::string_view guest,
    std::span<const std::uint8_t> file) {
  auto bad = [](std::string why) { return make_error(Errc::invalid_argument, std::move(why)); };
  if (file.size() < sizeof kMagic + 8 || std::memcmp(file.data(), kMagic, sizeof kMagic) != 0) {
    return bad("not a keel vTPM state (no KEELVTPM header)");
  }
  std::size_t at = sizeof kMagic;
  const std::uint32_t version = load_be32(file.data() + at);
  if (version != kVersion) {
    return bad("state format version " + std::to_string(version) + ", this keel reads " +
               std::to_string(kVersion));
  }
  const std::uint32_t name_len = load_be32(file.data() + at + 4);
  at += 8;
  if (name_len > kMaxGuestName || file.size() - at < name_len + kNonceBytes + 8 + kTagBytes) {
    return bad("truncated header");
  }
  std::string_view owner(reinterpret_cast<const char*>(file.data() + at), name_len);
  if (owner != guest) {
    return bad("the state belongs to guest '" + std::string(owner) + "', not to '" +
               std::string(guest) + "'");
  }
  at += name_len;
  const std::uint8_t* nonce = file.data() + at;
  at += kNonceBytes;
  std::uint64_t clen = 0;
  for (int i = 0; i < 8; ++i) clen = (clen << 8) | file[at + i];
  at += 8;
  if (clen != file.size() - at - kTagBytes) {
    return bad("truncated or padded: the header announces " + std::to_string(clen) +
               " bytes of ciphertext, the file carries " +
               std::to_string(file.size() - at - kTagBytes));
  }
  std::vector<std::uint8_t> plain(clen);
  CipherCtx c;
  int len = 0;
  std::uint8_t tag[kTagBytes];
  std::memcpy(tag, file.data() + at + clen, kTagBytes);
  bool ok =
      c.ctx && EVP_DecryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) &&
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) &&
      EVP_DecryptInit_ex(c.ctx, nullptr, nullptr, key.data(), nonce) &&
      EVP_DecryptUpdate(c.ctx, nullptr, &len, file.data(), static_cast<int>(at)) &&
      EVP_DecryptUpdate(c.ctx, plain.data(), &len, file.data() + at, static_cast<int>(clen)) &&
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) &&
      EVP_DecryptFinal_ex(c.ctx, plain.data() + len, &len) > 0;
  if (!ok) {
    OPENSSL_cleanse(plain.data(), plain.size());
    return bad("authentication failed: the state was tampered with, or sealed with another key");
  }
  std::map<std::string, std::vector<std::uint8_t>, std::less<>> blobs;
  // Authenticated bytes are ours, but a parser never trusts a length.
  std::size_t p = 0;
  auto need = [&](std::size_t n) { return plain.size() - p >= n; };
  if (!need(4)) return bad("empty state");
  std::uint32_t count = load_be32(plain.data());
  p = 4;
  for (std::uint32_t i = 0; i < count; ++i) {
    if (!need(2)) return bad("malformed blob table");
    std::size_t nlen = std::size_t{plain[p]} << 8 | plain[p + 1];
    p += 2;
    if (!need(nlen + 4)) return bad("malformed blob table");
    std::string name(reinterpret_cast<const char*>(plain.data() + p), nlen);
    p += nlen;
    std::uint32_t dlen = load_be32(plain.data() + p);
    p += 4;
    if (!need(dlen)) return bad("malformed blob table");
    blobs[name].assign(plain.begin() + static_cast<std::ptrdiff_t>(p),
                       plain.begin() + static_cast<std::ptrdiff_t>(p + dlen));
    p += dlen;
  }
  OPENSSL_cleanse(plain.data(), plain.size());
  return blobs;
}

Result<std::unique_ptr<SealedState>> SealedState::open(const SealedStateConfig& config,
                                                       StateProblem* problem) {
  auto fail = [&](StateProblem kind, Error e) {
    if (problem) *problem = kind;
    return e;
  };
  if (problem) *problem = StateProblem::none;
  if (config.path.empty()) {
    return fail(StateProblem::config, make_error(Errc::invalid_argument, "no state file named"));
  }
  std::unique_ptr<SealedState> s(new SealedState());
  s->config_ = config;
  auto key = read_key(config.key_path);
  if (!key) return fail(StateProblem::config, key.error());
  s->key_ = std::move(*key);
  const std::string lock_path = config.path + ".lock";
  s->lock_.reset(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!s->lock_.valid()) return fail(StateProblem::config, sys_error("open " + lock_path));
  if (::flock(s->lock_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return fail(StateProblem::config,
                  make_error(Errc::busy, "another vTPM serves the state " + config.path +
                                             " (it holds " + lock_path + ")"));
    }
    return fail(StateProblem::config, sys_error("flock " + lock_path));
  }
  // A crash mid-write leaves PATH.tmp; PATH itself is whole (old or new), so the leftover goes.
  ::unlink((config.path + ".tmp").c_str());
  UniqueFd fd(::open(config.path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return s;
    return fail(StateProblem::config, sys_error("open " + config.path));
  }
  auto bytes = read_all(fd.get(), config.path);
  if (!bytes) return fail(StateProblem::untrusted, bytes.error());
  auto blobs = unseal(std::span<const std::uint8_t, 32>(s->key_.data(), 32), config.guest, *bytes);
  if (!blobs) {
    return fail(StateProblem::untrusted,
                make_error(Errc::invalid_argument,
                           "state file " + config.path + ": " + blobs.error().message));
  }
  s->blobs_ = std::move(*blobs);
  return s;
}

SealedState::~SealedState() {
  if (!key_.empty()) OPENSSL_cleanse(key_.data(), key_.size());
  cleanse(blobs_);
}

std::optional<std::vector<std::uint8_t>> SealedState::load(std::string_view name) const {
  auto it = blobs_.find(name);
  if (it == blobs_.end()) return std::nullopt;
  return it->second;
}

Status SealedState::store(std::string_view name,
                          std::optional<std::span<const std::uint8_t>> data) {
  auto next = blobs_;
  if (data) {
    next[std::string(name)].assign(data->begin(), data->end());
  } else {
    auto it = next.find(name);
    if (it == next.end()) return {};
    next.erase(it);
  }
  auto bytes = seal(std::span<const std::uint8_t, 32>(key_.data(), 32), config_.guest, next);
  if (!bytes) {
    cleanse(next);
    return bytes.error();
  }
  if (Status st = write_file(*bytes); !st.ok()) {
    cleanse(next);
    return st;
  }
  cleanse(blobs_);
  blobs_ = std::move(next);
  ++writes_;
  return {};
}

Status SealedState::write_file(const std::vector<std::uint8_t>& bytes) {
  const std::string tmp = config_.path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return sys_error("create " + tmp);
  std::size_t done = 0;
  const std::size_t half = bytes.size() / 2;
  while (done < bytes.size()) {
    std::size_t chunk = bytes.size() - done;
    if (done < half) chunk = half - done;
    ssize_t n = ::write(fd.get(), bytes.data() + done, chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Error e = sys_error("write " + tmp);
      ::unlink(tmp.c_str());
      return e;
    }
    done += static_cast<std::size_t>(n);
    if (done == half && write_hook) write_hook(1);
  }
  if (write_hook) write_hook(2);
  if (::fsync(fd.get()) != 0) {
    Error e = sys_error("fsync " + tmp);
    ::unlink(tmp.c_str());
    return e;
  }
  fd.reset();
  if (write_hook) write_hook(3);
  if (::rename(tmp.c_str(), config_.path.c_str()) != 0) {
    Error e = sys_error("rename " + tmp + " over " + config_.path);
    ::unlink(tmp.c_str());
    return e;
  }
  if (write_hook) write_hook(4);
  std::string dir = config_.path;
  auto slash = dir.rfind('/');
  dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : dir.substr(0, slash));
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  // The rename is done; a directory that cannot be synced only weakens durability, not
  // atomicity, so it is not an error of the write.
  if (dfd.valid()) ::fsync(dfd.get());
  return {};
}

}  // namespace keel::vtpm
