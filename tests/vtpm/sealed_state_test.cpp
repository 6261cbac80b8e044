// The vTPM's state at rest (keel/vtpm/sealed_state.h): sealed, bound to its guest, refused
// when anything changed, and never torn by a crash in the middle of a write.
#include "keel/vtpm/sealed_state.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace keel::vtpm {
namespace {

namespace fs = std::filesystem;
using Blobs = std::map<std::string, std::vector<std::uint8_t>, std::less<>>;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/keel-sealed-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::vector<std::uint8_t>& bytes, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::fchmod(fd, mode);
  ::close(fd);
}

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

std::vector<std::uint8_t> key_bytes(std::uint8_t seed) {
  std::vector<std::uint8_t> k(32);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(seed * 31 + i);
  return k;
}

std::span<const std::uint8_t, 32> key_span(const std::vector<std::uint8_t>& k) {
  return std::span<const std::uint8_t, 32>(k.data(), 32);
}

const Blobs kBlobs = {{"permall", {1, 2, 3, 4, 5, 6, 7, 8}}, {"volatilestate", {9, 9}}};

TEST(SealedState, RoundTrip) {
  auto key = key_bytes(1);
  auto file = SealedState::seal(key_span(key), "guest-a", kBlobs);
  ASSERT_TRUE(file.ok());
  auto back = SealedState::unseal(key_span(key), "guest-a", *file);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, kBlobs);
  // A fresh nonce per seal: the same state never gives the same file twice.
  auto again = SealedState::seal(key_span(key), "guest-a", kBlobs);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(*file, *again);
}

TEST(SealedState, EveryChangedByteIsRefused) {
  auto key = key_bytes(2);
  auto file = SealedState::seal(key_span(key), "guest-a", kBlobs);
  ASSERT_TRUE(file.ok());
  for (std::size_t i = 0; i < file->size(); ++i) {
    for (std::uint8_t bit : {0x01, 0x80}) {
      auto bad = *file;
      bad[i] ^= bit;
      EXPECT_FALSE(SealedState::unseal(key_span(key), "guest-a", bad).ok())
          << "byte " << i << " bit " << int(bit) << " flipped and still accepted";
    }
  }
}

TEST(SealedState, TruncatedOrPaddedIsRefused) {
  auto key = key_bytes(3);
  auto file = SealedState::seal(key_span(key), "guest-a", kBlobs);
  ASSERT_TRUE(file.ok());
  for (std::size_t n = 0; n < file->size(); ++n) {
    std::vector<std::uint8_t> cut(file->begin(), file->begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_FALSE(SealedState::unseal(key_span(key), "guest-a", cut).ok()) << n << " bytes";
  }
  auto padded = *file;
  padded.push_back(0);
  auto r = SealedState::unseal(key_span(key), "guest-a", padded);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("truncated or padded"), std::string::npos);
}

TEST(SealedState, AnotherKeyOrGuestIsRefusedWithTheReason) {
  auto key = key_bytes(4);
  auto file = SealedState::seal(key_span(key), "guest-a", kBlobs);
  ASSERT_TRUE(file.ok());
  auto other_key = key_bytes(5);
  auto r = SealedState::unseal(key_span(other_key), "guest-a", *file);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("authentication failed"), std::string::npos);
  r = SealedState::unseal(key_span(key), "guest-b", *file);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("belongs to guest 'guest-a', not to 'guest-b'"),
            std::string::npos)
      << r.error().message;
  // Renaming the owner in the file does not help: the name is authenticated.
  auto renamed = *file;
  auto at =
      std::search(renamed.begin(), renamed.end(), std::begin("guest-a"), std::end("guest-a") - 1);
  ASSERT_NE(at, renamed.end());
  at[6] = 'b';
  r = SealedState::unseal(key_span(key), "guest-b", renamed);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("authentication failed"), std::string::npos);
}

TEST(SealedState, KeyFiles) {
  TempDir dir;
  const auto raw = key_bytes(6);
  write_file(dir / "raw", raw, 0600);
  auto k = SealedState::read_key(dir / "raw");
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_EQ(*k, raw);
  std::string hex;
  for (auto b : raw) {
    char buf[3];
    std::snprintf(buf, sizeof buf, "%02x", b);
    hex += buf;
  }
  hex += "\n";
  write_file(dir / "hex", std::vector<std::uint8_t>(hex.begin(), hex.end()), 0600);
  k = SealedState::read_key(dir / "hex");
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_EQ(*k, raw);

  write_file(dir / "open", raw, 0644);
  k = SealedState::read_key(dir / "open");
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.error().message.find("chmod 600"), std::string::npos) << k.error().message;
  write_file(dir / "short", std::vector<std::uint8_t>(raw.begin(), raw.begin() + 31), 0600);
  k = SealedState::read_key(dir / "short");
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.error().message.find("31 bytes"), std::string::npos) << k.error().message;
  std::string nothex(64, 'g');
  write_file(dir / "nothex", std::vector<std::uint8_t>(nothex.begin(), nothex.end()), 0600);
  EXPECT_FALSE(SealedState::read_key(dir / "nothex").ok());
  k = SealedState::read_key(dir / "missing");
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.error().message.find("does not exist"), std::string::npos);
}

class SealedStateFile : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file(dir_ / "key", key_bytes(7), 0600);
    config_.path = dir_ / "state";
    config_.key_path = dir_ / "key";
    config_.guest = "guest-a";
  }
  TempDir dir_;
  SealedStateConfig config_;
};

TEST_F(SealedStateFile, StoresAndReopens) {
  {
    auto s = SealedState::open(config_);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_FALSE((*s)->load("permall"));
    std::vector<std::uint8_t> data = {1, 2, 3};
    ASSERT_TRUE((*s)->store("permall", data).ok());
    ASSERT_TRUE((*s)->store("volatilestate", data).ok());
    ASSERT_TRUE((*s)->store("volatilestate", std::nullopt).ok());
    EXPECT_EQ((*s)->writes(), 3u);
    struct stat st {};
    ASSERT_EQ(::stat(config_.path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 077, 0u) << "the state is readable by others";
  }
  auto s = SealedState::open(config_);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ((*s)->load("permall"), (std::vector<std::uint8_t>{1, 2, 3}));
  EXPECT_FALSE((*s)->load("volatilestate"));
}

TEST_F(SealedStateFile, OneOpenerAtATime) {
  auto first = SealedState::open(config_);
  ASSERT_TRUE(first.ok());
  StateProblem problem{};
  auto second = SealedState::open(config_, &problem);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Errc::busy);
  EXPECT_EQ(problem, StateProblem::config);
  first->reset();
  EXPECT_TRUE(SealedState::open(config_).ok());
}

TEST_F(SealedStateFile, UntrustedFileIsNamedAndLeftAlone) {
  {
    auto s = SealedState::open(config_);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->store("permall", std::vector<std::uint8_t>(100, 7)).ok());
  }
  auto bytes = read_file(config_.path);
  bytes[bytes.size() / 2] ^= 0x10;
  write_file(config_.path, bytes, 0600);
  StateProblem problem{};
  auto s = SealedState::open(config_, &problem);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(problem, StateProblem::untrusted);
  EXPECT_NE(s.error().message.find(config_.path), std::string::npos);
  EXPECT_EQ(read_file(config_.path), bytes);
}

// A process that dies at each step of a write leaves the old state or the new one, whole.
TEST_F(SealedStateFile, CrashAtEveryStepOfAWrite) {
  const std::vector<std::uint8_t> old_data(3000, 0x11), new_data(5000, 0x22);
  {
    auto s = SealedState::open(config_);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE((*s)->store("permall", old_data).ok());
  }
  for (int step = 1; step <= 4; ++step) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto s = SealedState::open(config_);
      if (!s.ok()) ::_exit(10);
      (*s)->write_hook = [step](int at) {
        if (at == step) ::_exit(0);  // dies here, as a crash would: no destructor runs
      };
      (void)(*s)->store("permall", new_data);
      ::_exit(11);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0) << "step " << step << " was never reached";
    auto s = SealedState::open(config_);
    ASSERT_TRUE(s.ok()) << "step " << step << ": " << s.error().message;
    auto got = (*s)->load("permall");
    ASSERT_TRUE(got);
    // Until the rename the old file stands; from it on, the new one.
    EXPECT_EQ(*got, step < 4 ? old_data : new_data) << "step " << step;
    EXPECT_FALSE(fs::exists(config_.path + ".tmp")) << "step " << step;
    if (step == 4) {
      ASSERT_TRUE((*s)->store("permall", old_data).ok());
    }
  }
}

}  // namespace
}  // namespace keel::vtpm
