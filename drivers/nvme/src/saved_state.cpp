// The driver's saved state as bytes: a versioned, checksummed, bounds-checked blob.
#include "keel/drivers/nvme/saved_state.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#include "keel/crc32c.h"
#include "keel/wire/nvme.h"

namespace keel::drivers::nvme {

namespace {

constexpr std::array<char, 8> kMagic = {'K', 'E', 'E', 'L', 'N', 'V', 'M', 'S'};
// magic, version, length of the whole blob, CRC-32C of the whole blob with this field as 0.
constexpr std::size_t kHeaderBytes = 8 + 4 + 4 + 4;
constexpr std::size_t kCrcAt = 16;
constexpr std::uint32_t kMaxQueuePairs = 1024;
constexpr std::uint32_t kMaxEntries = 4096;

class Writer {
 public:
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  template <typename T>
  void num(T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i) {
      out_.push_back(static_cast<std::byte>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xFF));
    }
  }
  void flag(bool v) { num<std::uint8_t>(v ? 1 : 0); }
  void buffer(const SavedBuffer& b) {
    num(b.offset);
    num(b.bytes);
  }
  std::vector<std::byte>& out() { return out_; }

 private:
  std::vector<std::byte> out_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  bool bytes(void* p, std::size_t n) {
    if (in_.size() - at_ < n) return fail();
    std::memcpy(p, in_.data() + at_, n);
    at_ += n;
    return true;
  }
  template <typename T>
  bool num(T& v) {
    if (in_.size() - at_ < sizeof(T)) return fail();
    std::uint64_t x = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) {
      x |= static_cast<std::uint64_t>(in_[at_ + i]) << (8 * i);
    }
    v = static_cast<T>(x);
    at_ += sizeof(T);
    return true;
  }
  bool flag(bool& v) {
    std::uint8_t b = 0;
    if (!num(b)) return false;
    if (b > 1) return fail();
    v = b != 0;
    return true;
  }
  bool buffer(SavedBuffer& b) { return num(b.offset) && num(b.bytes); }
  bool ok() const { return ok_; }
  bool done() const { return at_ == in_.size(); }

 private:
  bool fail() {
    ok_ = false;
    return false;
  }
  std::span<const std::byte> in_;
  std::size_t at_ = 0;
  bool ok_ = true;
};

Error bad(const std::string& what) {
  return make_error(Errc::invalid_argument, "saved NVMe driver state: " + what);
}

// A buffer that can hold `need` bytes, in whole pages (the arena checks it is inside).
bool buffer_ok(const SavedBuffer& b, std::uint64_t need) {
  return b.bytes >= need && b.bytes % 4096 == 0 && b.offset % 4096 == 0 && b.bytes <= (1ull << 32);
}

}  // namespace

Status check(const SavedController& c) {
  if (c.admin_entries < 2 || c.admin_entries > kMaxEntries) return bad("admin queue size");
  if (c.asq_tail >= c.admin_entries || c.acq_head >= c.admin_entries) {
    return bad("admin queue position beyond the queue");
  }
  if (!buffer_ok(c.asq_buf, std::uint64_t{c.admin_entries} * keel::nvme::kSqeBytes) ||
      !buffer_ok(c.acq_buf, std::uint64_t{c.admin_entries} * keel::nvme::kCqeBytes) ||
      !buffer_ok(c.admin_buf, 4096)) {
    return bad("admin queue buffers");
  }
  if (c.block_bytes < 512 || c.block_bytes > 65536 || (c.block_bytes & (c.block_bytes - 1)) != 0) {
    return bad("block size " + std::to_string(c.block_bytes));
  }
  if (c.max_transfer < c.block_bytes) return bad("maximum transfer below one block");
  return {};
}

Status check(const SavedController& c, const SavedQueuePair& q) {
  const std::string name = "queue pair " + std::to_string(q.qid);
  if (q.qid == 0 || q.qid > c.io_queues) return bad(name + ": its id");
  if (q.entries < 2 || q.entries > std::min<std::uint32_t>(c.mqes + 1u, kMaxEntries)) {
    return bad(name + ": its size");
  }
  if (q.sq_tail >= q.entries || q.cq_head >= q.entries) return bad(name + ": a queue position");
  if (q.command_timeout_ns <= 0) return bad(name + ": its command timeout");
  if (!buffer_ok(q.sq, std::uint64_t{q.entries} * keel::nvme::kSqeBytes) ||
      !buffer_ok(q.cq, std::uint64_t{q.entries} * keel::nvme::kCqeBytes) ||
      !buffer_ok(q.prp_lists, std::uint64_t{q.entries - 1u} * 4096)) {
    return bad(name + ": its buffers");
  }
  if (q.slots.size() != q.entries - 1u) return bad(name + ": slot count");
  unsigned slot_bits = 0;
  while ((std::size_t{1} << slot_bits) < q.slots.size()) ++slot_bits;
  std::vector<bool> listed(q.slots.size(), false);
  for (std::uint16_t f : q.free_order) {
    if (f >= q.slots.size() || listed[f] || q.slots[f].busy) return bad(name + ": its free list");
    listed[f] = true;
  }
  for (std::size_t i = 0; i < q.slots.size(); ++i) {
    const SavedSlot& sl = q.slots[i];
    if ((sl.cid & ((1u << slot_bits) - 1)) != i) return bad(name + ": a CID of another slot");
    if (!sl.busy && !listed[i]) return bad(name + ": a free slot not on its free list");
    if (!sl.busy && sl.timed_out) return bad(name + ": a free slot marked timed out");
  }
  return {};
}

namespace {

Status check(const SavedDriver& s) {
  const SavedController& c = s.controller;
  if (Status st = check(c); !st.ok()) return st;
  if (s.queue_pairs.size() > std::min<std::uint32_t>(c.io_queues, kMaxQueuePairs)) {
    return bad("more queue pairs than the controller granted");
  }
  std::vector<bool> qid_seen(std::size_t{c.io_queues} + 1, false);
  for (const SavedQueuePair& q : s.queue_pairs) {
    if (Status st = check(c, q); !st.ok()) return st;
    if (qid_seen[q.qid]) return bad("queue pair " + std::to_string(q.qid) + " twice");
    qid_seen[q.qid] = true;
  }
  return {};
}

}  // namespace

std::vector<std::byte> encode(const SavedDriver& s) {
  Writer w;
  w.bytes(kMagic.data(), kMagic.size());
  w.num(kSavedDriverVersion);
  w.num<std::uint32_t>(0);  // length, patched below
  w.num<std::uint32_t>(0);  // CRC, patched below
  const SavedController& c = s.controller;
  w.num(c.cap);
  w.num(c.cc);
  w.num(c.aqa);
  w.num(c.asq);
  w.num(c.acq);
  w.buffer(c.asq_buf);
  w.buffer(c.acq_buf);
  w.buffer(c.admin_buf);
  w.num(c.admin_entries);
  w.num(c.asq_tail);
  w.num(c.acq_head);
  w.flag(c.acq_phase);
  w.num(c.next_cid);
  w.num(c.io_queues);
  w.num(c.mqes);
  w.num(c.block_bytes);
  w.num(c.max_transfer);
  w.bytes(&c.id_ctrl, sizeof c.id_ctrl);
  w.bytes(&c.id_ns, sizeof c.id_ns);
  w.num(static_cast<std::uint32_t>(s.queue_pairs.size()));
  for (const SavedQueuePair& q : s.queue_pairs) {
    w.num(q.qid);
    w.num(q.entries);
    w.flag(q.interrupts);
    w.num(q.command_timeout_ns);
    w.buffer(q.sq);
    w.buffer(q.cq);
    w.buffer(q.prp_lists);
    w.num(q.sq_tail);
    w.num(q.cq_head);
    w.flag(q.phase);
    w.num(static_cast<std::uint32_t>(q.slots.size()));
    for (const SavedSlot& sl : q.slots) {
      w.num(sl.tag);
      w.num(sl.cid);
      w.flag(sl.busy);
      w.flag(sl.timed_out);
    }
    w.num(static_cast<std::uint32_t>(q.free_order.size()));
    for (std::uint16_t f : q.free_order) w.num(f);
  }
  std::vector<std::byte>& out = w.out();
  const auto length = static_cast<std::uint32_t>(out.size());
  for (std::size_t i = 0; i < 4; ++i)
    out[12 + i] = static_cast<std::byte>((length >> (8 * i)) & 0xFF);
  const std::uint32_t crc = crc32c(out);
  for (std::size_t i = 0; i < 4; ++i)
    out[kCrcAt + i] = static_cast<std::byte>((crc >> (8 * i)) & 0xFF);
  return std::move(out);
}

Result<SavedDriver> decode(std::span<const std::byte> blob) {
  if (blob.size() < kHeaderBytes)
    return bad("truncated (" + std::to_string(blob.size()) + " bytes)");
  if (std::memcmp(blob.data(), kMagic.data(), kMagic.size()) != 0) return bad("not one (magic)");
  Reader h(blob.subspan(8));
  std::uint32_t version = 0, length = 0, crc = 0;
  h.num(version);
  h.num(length);
  h.num(crc);
  if (version != kSavedDriverVersion) {
    return bad("version " + std::to_string(version) + ", this driver reads " +
               std::to_string(kSavedDriverVersion));
  }
  if (length != blob.size()) {
    return bad("length " + std::to_string(length) + " but " + std::to_string(blob.size()) +
               " bytes were handed over");
  }
  std::vector<std::byte> copy(blob.begin(), blob.end());
  std::fill(copy.begin() + kCrcAt, copy.begin() + kCrcAt + 4, std::byte{0});
  if (crc32c(copy) != crc) return bad("checksum mismatch (corrupt)");

  Reader r(blob.subspan(kHeaderBytes));
  SavedDriver s;
  SavedController& c = s.controller;
  r.num(c.cap);
  r.num(c.cc);
  r.num(c.aqa);
  r.num(c.asq);
  r.num(c.acq);
  r.buffer(c.asq_buf);
  r.buffer(c.acq_buf);
  r.buffer(c.admin_buf);
  r.num(c.admin_entries);
  r.num(c.asq_tail);
  r.num(c.acq_head);
  r.flag(c.acq_phase);
  r.num(c.next_cid);
  r.num(c.io_queues);
  r.num(c.mqes);
  r.num(c.block_bytes);
  r.num(c.max_transfer);
  r.bytes(&c.id_ctrl, sizeof c.id_ctrl);
  r.bytes(&c.id_ns, sizeof c.id_ns);
  std::uint32_t pairs = 0;
  r.num(pairs);
  if (!r.ok() || pairs > kMaxQueuePairs) return bad("truncated or too many queue pairs");
  s.queue_pairs.resize(pairs);
  for (SavedQueuePair& q : s.queue_pairs) {
    r.num(q.qid);
    r.num(q.entries);
    r.flag(q.interrupts);
    r.num(q.command_timeout_ns);
    r.buffer(q.sq);
    r.buffer(q.cq);
    r.buffer(q.prp_lists);
    r.num(q.sq_tail);
    r.num(q.cq_head);
    r.flag(q.phase);
    std::uint32_t n = 0;
    r.num(n);
    if (!r.ok() || n > kMaxEntries) return bad("truncated or too many slots");
    q.slots.resize(n);
    for (SavedSlot& sl : q.slots) {
      r.num(sl.tag);
      r.num(sl.cid);
      r.flag(sl.busy);
      r.flag(sl.timed_out);
    }
    r.num(n);
    if (!r.ok() || n > kMaxEntries) return bad("truncated or too long a free list");
    q.free_order.resize(n);
    for (std::uint16_t& f : q.free_order) r.num(f);
  }
  if (!r.ok()) return bad("truncated");
  if (!r.done()) return bad("trailing bytes");
  if (Status st = check(s); !st.ok()) return st.error();
  return s;
}

}  // namespace keel::drivers::nvme
