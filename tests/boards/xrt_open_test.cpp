// XrtCard without a board: the xclbin is found from options or KEEL_XCLBIN, and a missing
// board, driver or xclbin is named.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <optional>
#include <string>

#include "fake_sysfs.h"
#include "keel/fpga/xrt/xrt_card.h"

namespace keel::fpga::xrt {
namespace {

using keel::testing::TempDir;

/// Sets or unsets an environment variable for one test and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value == nullptr) {
      ::unsetenv(name);
    } else {
      ::setenv(name, value, 1);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(XrtXclbin, OptionWins) {
  TempDir dir;
  const std::string path = (dir.path() / "keel.xclbin").string();
  std::ofstream(path) << "xclbin2";
  ScopedEnv env("KEEL_XCLBIN", "/nonexistent/other.xclbin");
  XrtOptions o;
  o.xclbin = path;

  const auto found = XrtCard::xclbin_path(o);

  ASSERT_TRUE(found.ok()) << to_string(found.error());
  EXPECT_EQ(*found, path);
}

TEST(XrtXclbin, EnvironmentNamesIt) {
  TempDir dir;
  const std::string path = (dir.path() / "keel.xclbin").string();
  std::ofstream(path) << "xclbin2";
  ScopedEnv env("KEEL_XCLBIN", path.c_str());

  const auto found = XrtCard::xclbin_path({});

  ASSERT_TRUE(found.ok()) << to_string(found.error());
  EXPECT_EQ(*found, path);
}

TEST(XrtXclbin, NoneNamedSaysWhichVariableToSet) {
  ScopedEnv env("KEEL_XCLBIN", nullptr);

  const auto found = XrtCard::xclbin_path({});

  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().code, Errc::unavailable);
  EXPECT_NE(found.error().message.find("KEEL_XCLBIN"), std::string::npos);
}

TEST(XrtXclbin, MissingFileIsNamed) {
  XrtOptions o;
  o.xclbin = "/nonexistent/keel.xclbin";

  const auto found = XrtCard::xclbin_path(o);

  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().code, Errc::not_found);
  EXPECT_NE(found.error().message.find("/nonexistent/keel.xclbin"), std::string::npos);
}

// XRT is asked first whether it sees a board at all; without one that is the answer, even
// when no xclbin is named.
TEST(XrtOpen, NoBoardIsUnavailable) {
  ScopedEnv env("KEEL_XCLBIN", nullptr);

  const auto card = XrtCard::open(0);

  if (card.ok()) GTEST_SKIP() << "an XRT board answers: " << (*card)->describe();
  EXPECT_EQ(card.error().code, Errc::unavailable) << to_string(card.error());
  EXPECT_NE(card.error().message.find("XRT"), std::string::npos) << card.error().message;
}

}  // namespace
}  // namespace keel::fpga::xrt
