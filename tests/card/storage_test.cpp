// The card's storage is the disk image: data written through a VF is in the file, at the
// VF's slice offset, and survives the card.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "card_fixture.h"

namespace keel::testing {
namespace {

class Storage : public CardTest {};

TEST_P(Storage, WritesLandInTheImageAtTheSliceOffset) {
  if (GetParam() != "model" && GetParam() != "sim") GTEST_SKIP() << "needs a simulated card";
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("keel-storage-test-" + std::to_string(getpid()) + ".img"))
                               .string();
  std::filesystem::remove(path);
  FixtureOptions o;
  o.image_path = path;
  o.storage_bytes = 8ull << 20;
  open(o);
  enable_vfs(2, 4096);  // VF 1's slice starts at byte 2 MiB
  {
    auto h = ready_host(1);
    auto b = h->fn().alloc_dma(4096);
    ASSERT_TRUE(b.ok());
    fill_pattern(b->data(), 4096, 16, 5);
    ASSERT_EQ(sc_of(*h->run(1, h->rw_cmd(true, 16, 8, b->iova(), 4096))), nvme::sc::kSuccess);
    nvme::Sqe flush{};
    flush.opc = nvme::io::kFlush;
    flush.nsid = 1;
    ASSERT_EQ(sc_of(*h->run(1, flush)), nvme::sc::kSuccess);
  }
  card_.reset();
  EXPECT_EQ(std::filesystem::file_size(path), 8ull << 20);
  std::vector<std::byte> data(4096);
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pread(fd, data.data(), 4096, (4096 + 16) * 512), 4096);
  close(fd);
  EXPECT_EQ(check_pattern(data.data(), 4096, 16, 5), -1);

  // A new card on the same image reads it back.
  open(o);
  enable_vfs(2, 4096);
  {
    auto h = ready_host(1);
    auto b = h->fn().alloc_dma(4096);
    ASSERT_TRUE(b.ok());
    ASSERT_EQ(sc_of(*h->run(1, h->rw_cmd(false, 16, 8, b->iova(), 4096))), nvme::sc::kSuccess);
    EXPECT_EQ(check_pattern(b->data(), 4096, 16, 5), -1);
  }
  card_.reset();
  std::filesystem::remove(path);
}

KEEL_INSTANTIATE_CARD_SUITE(Storage);

}  // namespace
}  // namespace keel::testing
