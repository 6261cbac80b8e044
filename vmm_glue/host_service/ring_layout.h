// Wire format of a host-service channel: one memfd holding a header, a submission ring (SQ,
// client -> service) and a completion ring (CQ, service -> client). Both sides may live in
// different processes, so everything here is fixed-size, standard-layout and lock-free.
//
// Layout of the memfd (offsets from its start, all 64-byte aligned):
//   [0, sizeof(RingHeader))              RingHeader
//   [sq_offset, + entries * sizeof(RingSqe))  SQ entries
//   [cq_offset, + entries * sizeof(RingCqe))  CQ entries
// The service creates, sizes and seals the memfd (no shrink/grow), so a mapping of
// ring_bytes(entries) bytes is always backed.
//
// Indices are free-running uint32 counters; slot = index & (entries - 1). Each index has one
// writer: sq_tail and cq_head are the client's, sq_head and cq_tail the service's. A producer
// writes the entry, then stores its tail with release; a consumer loads the tail with acquire,
// copies the entry out, then stores its head with release. A consumer that sees more than
// `entries` between head and tail treats the ring as corrupt (the service stops serving the
// channel; the client ignores the excess) and never indexes outside the arrays.
//
// Wake-up protocol ("needs wake-up" flags, one per direction). The sleeper publishes its
// intention, then re-checks; the waker publishes work, then checks the intention:
//
//   sleeper:  flag.store(1, seq_cst); if (tail.load(seq_cst) moved) { flag.store(0); don't sleep }
//             else sleep on the eventfd (bounded), then flag.store(0)
//   waker:    tail.store(t, seq_cst);
//             if (flag.load(seq_cst) && flag.exchange(0)) write(eventfd)
//
// All four accesses are seq_cst, so they have one total order in which each side's store
// precedes its own load: at least one side sees the other's store. Either the sleeper sees the
// new tail and does not sleep, or the waker sees the flag and writes the eventfd (Dekker). On
// x86 the seq_cst store is one xchg; a seq_cst load is a plain load. No wake-up is lost, and while
// the sleeper is awake (flag 0) the waker writes no eventfd at all: steady-state IO costs no
// syscalls for notification. The exchange makes at most one eventfd write per sleep. Every sleep is
// bounded anyway (service: HostServiceConfig::idle_timeout_ms; client: the wait() timeout).
//
// Credit: the client keeps at most `entries` requests outstanding (submitted, completion not
// yet consumed). The service consumes an SQ entry only while (CQ entries in use) + (requests
// it holds) < entries, loading cq_head after sq_tail, so every request it takes has a CQ slot
// when it completes and a completion is never dropped or overwritten.
//
// Stop: the service stops consuming, completes what it took (IO in flight is cancelled or
// finishes), publishes cq_tail and its final sq_head, then stores service_state = stopped with
// release and writes every channel's completion eventfd. The client, having acquired
// `stopped`, completes every entry in [sq_head, its own tail) itself with -ECANCELED: each
// request is completed exactly once, by exactly one side.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace keel::vmm::detail {

inline constexpr std::uint32_t kRingMagic = 0x5253484b;  // "KHSR" little-endian
inline constexpr std::uint32_t kRingVersion = 1;
inline constexpr std::uint32_t kMaxSegments = 64;
inline constexpr std::uint32_t kMaxEntries = 32768;

inline constexpr std::uint32_t kServiceRunning = 0;
inline constexpr std::uint32_t kServiceStopped = 1;

struct WireSegment {
  std::uint64_t gpa;
  std::uint32_t bytes;
  std::uint32_t reserved;
};
static_assert(sizeof(WireSegment) == 16);

/// One request. Fixed size: room for kMaxSegments segments whatever the request uses.
struct RingSqe {
  std::uint64_t tag;            ///< Returned unchanged in the completion.
  std::uint64_t offset;         ///< Byte offset within the guest's slice.
  std::uint32_t zero_bytes;     ///< write_zeroes: bytes to zero.
  std::uint32_t segment_count;  ///< As submitted; more than kMaxSegments is refused (-EINVAL).
  std::uint8_t op;              ///< A HostOp; anything else is refused (-EINVAL).
  std::uint8_t reserved[39];
  WireSegment segments[kMaxSegments];
};
static_assert(sizeof(RingSqe) == 64 + kMaxSegments * sizeof(WireSegment));
static_assert(offsetof(RingSqe, segments) == 64, "SQE header is one cache line");
static_assert(std::is_trivially_copyable_v<RingSqe>);

struct RingCqe {
  std::uint64_t tag;
  std::int32_t result;  ///< 0 or -errno.
  std::uint32_t reserved;
};
static_assert(sizeof(RingCqe) == 16);

using RingIndex = std::atomic<std::uint32_t>;
static_assert(RingIndex::is_always_lock_free, "ring indices are shared between processes");
static_assert(sizeof(RingIndex) == sizeof(std::uint32_t));

/// The shared header. Each atomic has its own cache line (one writer per line in steady state).
struct RingHeader {
  // Written by the service before the channel is handed out; read-only afterwards.
  std::uint32_t magic;
  std::uint32_t version;
  std::uint32_t entries;
  std::uint32_t sqe_size;
  std::uint32_t cqe_size;
  std::uint32_t reserved0;
  std::uint64_t sq_offset;
  std::uint64_t cq_offset;
  std::uint64_t total_bytes;

  alignas(64) RingIndex sq_tail;               ///< Client: next SQ index to fill.
  alignas(64) RingIndex sq_head;               ///< Service: next SQ index to consume.
  alignas(64) RingIndex cq_tail;               ///< Service: next CQ index to fill.
  alignas(64) RingIndex cq_head;               ///< Client: next CQ index to consume.
  alignas(64) RingIndex service_needs_wakeup;  ///< 1: the service may sleep; kick submit_eventfd.
  alignas(64) RingIndex client_needs_wakeup;   ///< 1: the client may sleep; kick complete_eventfd.
  alignas(64) RingIndex service_state;         ///< kServiceRunning / kServiceStopped.
};
static_assert(std::is_standard_layout_v<RingHeader>);
static_assert(sizeof(RingHeader) == 8 * 64);
static_assert(offsetof(RingHeader, sq_tail) == 64);

inline constexpr std::uint64_t kSqOffset = sizeof(RingHeader);

constexpr std::uint64_t cq_offset(std::uint32_t entries) noexcept {
  return kSqOffset + std::uint64_t{entries} * sizeof(RingSqe);
}

/// Bytes of the memfd for a ring of `entries`, rounded up to 4 KiB.
constexpr std::uint64_t ring_bytes(std::uint32_t entries) noexcept {
  const std::uint64_t end = cq_offset(entries) + std::uint64_t{entries} * sizeof(RingCqe);
  return (end + 4095) & ~std::uint64_t{4095};
}

constexpr bool valid_entries(std::uint64_t entries) noexcept {
  return entries >= 1 && entries <= kMaxEntries && (entries & (entries - 1)) == 0;
}

}  // namespace keel::vmm::detail
