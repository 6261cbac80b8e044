// keel/drivers/nvme/saved_state.h - what the driver hands to the next process (NVMe keepalive).
#pragma once

#include <nvme/types.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "keel/result.h"

namespace keel::drivers::nvme {

/// A DMA buffer by its place in the DmaArena (so, its IOVA): the new process claims it there.
struct SavedBuffer {
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
};

/// The controller as the driver left it running: the registers it relies on (checked against
/// the device at restore: a controller reset or FLR meanwhile changes them), the admin queue's
/// position, and what bring-up learned.
struct SavedController {
  std::uint64_t cap = 0;
  std::uint32_t cc = 0;
  std::uint32_t aqa = 0;
  std::uint64_t asq = 0, acq = 0;
  SavedBuffer asq_buf, acq_buf, admin_buf;
  std::uint16_t admin_entries = 0;
  std::uint16_t asq_tail = 0, acq_head = 0;
  bool acq_phase = true;
  std::uint16_t next_cid = 0;
  std::uint16_t io_queues = 0;
  std::uint16_t mqes = 0;
  std::uint32_t block_bytes = 0;
  std::uint32_t max_transfer = 0;
  nvme_id_ctrl id_ctrl{};
  nvme_id_ns id_ns{};
};

/// One command slot of a queue pair: its current CID, and whether a command (the caller's
/// `tag`) is in flight in it.
struct SavedSlot {
  std::uint64_t tag = 0;
  std::uint16_t cid = 0;
  bool busy = false;
  bool timed_out = false;
};

/// An IO queue pair, committed (every SQ entry written is behind the doorbell) and with its
/// CQ head told to the device: what the device knows of it is exactly this.
struct SavedQueuePair {
  std::uint16_t qid = 0;
  std::uint16_t entries = 0;
  bool interrupts = false;
  std::int64_t command_timeout_ns = 0;
  SavedBuffer sq, cq, prp_lists;
  std::uint16_t sq_tail = 0;
  std::uint16_t cq_head = 0;
  bool phase = true;
  std::vector<SavedSlot> slots;
  std::vector<std::uint16_t> free_order;  ///< Free slots, the one freed longest ago first.
};

struct SavedDriver {
  SavedController controller;
  std::vector<SavedQueuePair> queue_pairs;
};

/// The blob's version: a new process refuses any other (and then takes the reset path).
inline constexpr std::uint32_t kSavedDriverVersion = 1;

/// Bounds a state must keep to be restored: queue sizes, positions inside the queues, buffers
/// big enough, slots whose CIDs name them, a free list that is exactly the free slots.
/// Errors: invalid_argument, saying which.
Status check(const SavedController& c);
Status check(const SavedController& c, const SavedQueuePair& q);

/// Little-endian, field by field, behind a header (magic "KEELNVMS", version, length) and a
/// CRC-32C over all of it.
std::vector<std::byte> encode(const SavedDriver& state);
/// Errors: invalid_argument (truncated, bad magic, another version, bad checksum, or a field
/// out of its bounds: queue sizes, slot counts, CIDs, a free list that is not a permutation of
/// the free slots), each with what was wrong. Never reads outside `blob`.
Result<SavedDriver> decode(std::span<const std::byte> blob);

}  // namespace keel::drivers::nvme
