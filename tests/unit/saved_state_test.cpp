// The NVMe driver's saved state (servicing): CRC-32C, and a blob that is corrupt, truncated,
// of another version or out of bounds never decodes (the new process then resets instead).
#include "keel/drivers/nvme/saved_state.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string_view>

#include "keel/crc32c.h"

namespace keel::drivers::nvme {
namespace {

std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

TEST(Crc32c, KnownAnswers) {
  EXPECT_EQ(crc32c(as_bytes("123456789")), 0xE3069283u);
  EXPECT_EQ(crc32c(as_bytes("")), 0u);
  // In pieces, as one.
  EXPECT_EQ(crc32c(as_bytes("6789"), crc32c(as_bytes("12345"))), 0xE3069283u);
}

// A consistent state: one controller, two queue pairs, commands in flight in some slots.
SavedDriver sample() {
  SavedDriver s;
  SavedController& c = s.controller;
  c.cap = 0x0000'0020'0000'00FFull;
  c.cc = 0x00460001;
  c.aqa = 0x001F001F;
  c.asq = 0x1000;
  c.acq = 0x2000;
  c.asq_buf = {0, 4096};
  c.acq_buf = {4096, 4096};
  c.admin_buf = {8192, 4096};
  c.admin_entries = 32;
  c.asq_tail = 5;
  c.acq_head = 5;
  c.next_cid = 5;
  c.io_queues = 4;
  c.mqes = 1023;
  c.block_bytes = 512;
  c.max_transfer = 1 << 20;
  c.id_ctrl.vid = 0x1DED;
  c.id_ns.nsze = 131072;
  for (std::uint16_t qid = 1; qid <= 2; ++qid) {
    SavedQueuePair q;
    q.qid = qid;
    q.entries = 8;
    q.command_timeout_ns = 5'000'000'000;
    const std::uint64_t base = 16384 + (qid - 1) * 65536ull;
    q.sq = {base, 4096};
    q.cq = {base + 4096, 4096};
    q.prp_lists = {base + 8192, 7 * 4096};
    q.sq_tail = 3;
    q.cq_head = 1;
    q.slots.resize(7);
    for (std::uint16_t i = 0; i < 7; ++i) {
      q.slots[i].cid = static_cast<std::uint16_t>(i | (1u << 3));  // generation 1
      q.slots[i].busy = i < 2;
      q.slots[i].tag = 100 + i;
    }
    q.free_order = {4, 2, 3, 6, 5};
    s.queue_pairs.push_back(q);
  }
  return s;
}

TEST(SavedState, RoundTrips) {
  const SavedDriver s = sample();
  const auto blob = encode(s);
  auto d = decode(blob);
  ASSERT_TRUE(d.ok()) << to_string(d.error());
  EXPECT_EQ(d->controller.cc, s.controller.cc);
  EXPECT_EQ(d->controller.asq_tail, 5);
  EXPECT_EQ(d->controller.id_ctrl.vid, 0x1DED);
  EXPECT_EQ(d->controller.id_ns.nsze, 131072u);
  ASSERT_EQ(d->queue_pairs.size(), 2u);
  EXPECT_EQ(d->queue_pairs[1].free_order, s.queue_pairs[1].free_order);
  EXPECT_EQ(d->queue_pairs[1].slots[1].tag, 101u);
  EXPECT_TRUE(d->queue_pairs[1].slots[1].busy);
  EXPECT_EQ(encode(*d), blob) << "decode then encode changes nothing";
}

// Every single-bit flip anywhere in the blob is caught (header fields, checksum, body).
TEST(SavedState, EveryBitFlipIsRefused) {
  const auto blob = encode(sample());
  for (std::size_t i = 0; i < blob.size(); ++i) {
    for (int bit = 0; bit < 8; bit += 3) {
      auto bad = blob;
      bad[i] ^= static_cast<std::byte>(1u << bit);
      ASSERT_FALSE(decode(bad).ok()) << "byte " << i << " bit " << bit;
    }
  }
}

TEST(SavedState, TruncatedOrExtendedIsRefused) {
  const auto blob = encode(sample());
  for (std::size_t n : {std::size_t{0}, std::size_t{7}, std::size_t{19}, std::size_t{20},
                        blob.size() / 2, blob.size() - 1}) {
    EXPECT_FALSE(decode(std::span(blob).first(n)).ok()) << n << " bytes";
  }
  auto longer = blob;
  longer.push_back(std::byte{0});
  EXPECT_FALSE(decode(longer).ok());
}

// Re-encoding keeps the checksum right, so what is refused here is refused by the bounds.
TEST(SavedState, OutOfBoundsFieldsAreRefusedWithAChecksumThatMatches) {
  auto refused = [](auto mutate, const char* what) {
    SavedDriver s = sample();
    mutate(s);
    auto d = decode(encode(s));
    ASSERT_FALSE(d.ok()) << what;
    EXPECT_EQ(d.error().code, Errc::invalid_argument);
  };
  refused([](SavedDriver& s) { s.controller.admin_entries = 1; }, "admin queue of 1");
  refused([](SavedDriver& s) { s.controller.asq_tail = 32; }, "admin tail beyond");
  refused([](SavedDriver& s) { s.controller.block_bytes = 520; }, "block size");
  refused([](SavedDriver& s) { s.queue_pairs[0].qid = 0; }, "qid 0");
  refused([](SavedDriver& s) { s.queue_pairs[0].qid = 5; }, "qid beyond the granted");
  refused([](SavedDriver& s) { s.queue_pairs[1].qid = 1; }, "qid twice");
  refused([](SavedDriver& s) { s.queue_pairs[0].entries = 2048; }, "bigger than MQES");
  refused([](SavedDriver& s) { s.queue_pairs[0].cq_head = 8; }, "CQ head beyond");
  refused([](SavedDriver& s) { s.queue_pairs[0].sq.bytes = 256; }, "SQ buffer too small");
  refused([](SavedDriver& s) { s.queue_pairs[0].cq.offset = 100; }, "unaligned buffer");
  refused([](SavedDriver& s) { s.queue_pairs[0].slots.pop_back(); }, "slot count");
  refused([](SavedDriver& s) { s.queue_pairs[0].slots[3].cid = 2; }, "CID of another slot");
  refused([](SavedDriver& s) { s.queue_pairs[0].free_order.push_back(0); }, "busy slot free");
  refused([](SavedDriver& s) { s.queue_pairs[0].free_order.pop_back(); }, "free slot lost");
  refused([](SavedDriver& s) { s.queue_pairs[0].free_order[0] = 2; }, "free slot twice");
  refused([](SavedDriver& s) { s.queue_pairs[0].free_order[0] = 9; }, "free slot beyond");
  refused([](SavedDriver& s) { s.queue_pairs[0].command_timeout_ns = 0; }, "no timeout");
}

TEST(SavedState, AnotherVersionIsRefused) {
  auto blob = encode(sample());
  blob[8] = std::byte{2};  // version, little-endian
  auto d = decode(blob);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("version 2"), std::string::npos) << d.error().message;
}

}  // namespace
}  // namespace keel::drivers::nvme
