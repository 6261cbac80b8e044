// The vfio-user wire format against the spec's tables (docs/devel/vfio-user.rst): a message's
// bytes at the offsets the spec gives, and the names used in logs.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "keel/wire/vfio_user.h"

namespace keel::vfio_user {
namespace {

template <typename T>
T at(const std::vector<std::uint8_t>& b, std::size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

TEST(VfioUserWire, DmaMapMessageHasTheSpecsLayout) {
  // The spec: "This structure is 32 bytes in size, so the message size is 16 + 32 bytes."
  const Header h{7, Command::dma_map, sizeof(Header) + sizeof(DmaMap), kFlagTypeCommand, 0};
  const DmaMap m{sizeof(DmaMap), kDmaRead | kDmaWrite, 0x1000, 0x40000000, 0x200000};
  std::vector<std::uint8_t> msg(h.size);
  std::memcpy(msg.data(), &h, sizeof h);
  std::memcpy(msg.data() + sizeof h, &m, sizeof m);
  ASSERT_EQ(msg.size(), 48u);
  EXPECT_EQ(at<std::uint16_t>(msg, 0), 7u);                 // message id
  EXPECT_EQ(at<std::uint16_t>(msg, 2), 2u);                 // command: DMA_MAP
  EXPECT_EQ(at<std::uint32_t>(msg, 4), 48u);                // size, header included
  EXPECT_EQ(at<std::uint32_t>(msg, 16 + 4), 3u);            // flags: readable | writeable
  EXPECT_EQ(at<std::uint64_t>(msg, 16 + 8), 0x1000u);       // offset in the fd
  EXPECT_EQ(at<std::uint64_t>(msg, 16 + 16), 0x40000000u);  // DMA address
  EXPECT_EQ(at<std::uint64_t>(msg, 16 + 24), 0x200000u);    // size
}

TEST(VfioUserWire, ReplyAndErrorFlagsAreTheSpecsBits) {
  EXPECT_EQ(kFlagTypeReply & kFlagTypeMask, 1u);
  EXPECT_EQ(kFlagNoReply, 0x10u);
  EXPECT_EQ(kFlagError, 0x20u);
  // SET_IRQS: data kinds in bits 0-2, actions in bits 3-5, as <linux/vfio.h>.
  EXPECT_EQ(kIrqSetDataEventfd | kIrqSetActionTrigger, 0x24u);
  EXPECT_EQ(kIrqSetDataMask & kIrqSetActionMaskBits, 0u);
}

TEST(VfioUserWire, CommandsHaveTheirNumbersAndNames) {
  EXPECT_EQ(static_cast<unsigned>(Command::version), 1u);
  EXPECT_EQ(static_cast<unsigned>(Command::device_reset), 13u);
  EXPECT_STREQ(command_name(1), "VERSION");
  EXPECT_STREQ(command_name(5), "DEVICE_GET_REGION_INFO");
  EXPECT_STREQ(command_name(8), "DEVICE_SET_IRQS");
  EXPECT_STREQ(command_name(13), "DEVICE_RESET");
  EXPECT_STREQ(command_name(0), "unknown");
  EXPECT_STREQ(command_name(14), "unknown");
}

}  // namespace
}  // namespace keel::vfio_user
