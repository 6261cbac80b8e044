// nbd_buffers.h - the data buffers of NBD requests in guest memory. A buffer is a list of
// chunks of the shared pool (nbd_pool.h: who may take how many), seen as one contiguous run of
// bytes by the socket (iovecs, copies) and by the device (guest-physical segments).
//
// Threading: used by the server thread only.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "keel/vmm/blk_request.h"
#include "nbd_pool.h"

namespace keel::vmm::nbd_internal {

/// One request's data buffer.
struct Buffer {
  std::vector<std::uint32_t> chunks;  ///< Pool chunks, in order.
  std::int64_t scratch = -1;          ///< Chunk holding the edge sectors of an RMW (-1: none).
};

class DataBuffers {
 public:
  /// The pool: `chunks` chunks of guest memory at `gpa`, mapped at `host`, with a per-connection
  /// quota. Allocates; called once at setup.
  void init(std::byte* host, std::uint64_t gpa, std::uint32_t chunks, std::uint64_t quota);

  const ChunkPool& pool() const noexcept { return pool_; }
  std::uint64_t free_count() const noexcept { return pool_.free_count(); }
  bool within_quota(const PoolAccount& a, std::uint64_t n) const noexcept {
    return pool_.within_quota(a, n);
  }

  /// Takes `data` chunks for `b` and, with `scratch`, one more for an RMW's edge sectors, on
  /// `a`'s account (the caller checked the quota and free_count() first).
  void take(Buffer& b, PoolAccount& a, std::uint64_t data, bool scratch);
  /// Gives every chunk of `b` back to the pool (data chunks in order, then the scratch).
  void give(Buffer& b, PoolAccount& a);

  /// iovecs covering bytes [pos, pos + len) of `b`, at most `max`; returns how many.
  int iov(const Buffer& b, std::uint64_t pos, std::uint64_t len, iovec* out, int max) const;
  /// Copies `len` bytes into `b` at `pos`.
  void copy_in(Buffer& b, std::uint64_t pos, const std::byte* src, std::uint64_t len);
  /// The scratch chunk of `b` (which must have one).
  std::byte* scratch_host(const Buffer& b) const;
  /// Guest-physical segments of bytes [pos, pos + bytes) of `b`, or of its scratch chunk at `pos`
  /// with `scratch`; returns how many were written to `out` (one per chunk touched).
  std::size_t segments(const Buffer& b, bool scratch, std::uint32_t pos, std::uint32_t bytes,
                       DataSeg* out) const;

 private:
  std::byte* chunk_host(std::uint32_t chunk) const;

  ChunkPool pool_;
  std::byte* host_ = nullptr;
  std::uint64_t gpa_ = 0;
};

}  // namespace keel::vmm::nbd_internal
