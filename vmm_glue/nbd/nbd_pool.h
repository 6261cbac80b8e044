// nbd_pool.h - the NBD server's data-buffer pool: fixed-size chunks of guest memory shared by
// every connection, with a quota per connection so that no peer can hold the whole pool.
//
// Quota: a connection may hold at most
//     max(pool chunks / max_connections, chunks of one largest request)
// chunks at once (see ChunkPool::quota_for). The first term is a fair share; the second makes
// sure that a client can always have one request of the largest size it was promised in
// flight. A request that would take its connection past the quota waits on that connection
// only (the connection reads nothing more meanwhile); every other connection goes on. A request
// within its quota that finds the shared pool short waits in line (FIFO) for chunks to come
// back; chunks come back when replies are sent, and every reply has a send deadline, so that
// wait is bounded too.
//
// Threading: used by the server thread only.
#pragma once

#include <cstdint>
#include <vector>

namespace keel::vmm::nbd_internal {

/// What one holder (a connection) has taken from the pool.
struct PoolAccount {
  std::uint64_t held = 0;  ///< Chunks held now.
};

class ChunkPool {
 public:
  /// The per-connection quota for a pool of `chunks`, `max_connections` peers and requests of
  /// at most `request_chunks` chunks (never more than the pool).
  static std::uint64_t quota_for(std::uint64_t chunks, unsigned max_connections,
                                 std::uint64_t request_chunks) noexcept;

  /// Makes chunks 0..chunks-1 free. Allocates; called once at setup.
  void init(std::uint32_t chunks, std::uint64_t quota);

  std::uint64_t quota() const noexcept { return quota_; }
  std::uint64_t total() const noexcept { return total_; }
  std::uint64_t free_count() const noexcept { return free_.size(); }

  /// Whether `a` may hold `n` more chunks under its quota.
  bool within_quota(const PoolAccount& a, std::uint64_t n) const noexcept {
    return a.held + n <= quota_;
  }
  /// Takes one chunk for `a` (the caller checked free_count() and the quota first).
  std::uint32_t take(PoolAccount& a) noexcept;
  /// Gives a chunk `a` held back.
  void give(PoolAccount& a, std::uint32_t chunk) noexcept;

 private:
  std::vector<std::uint32_t> free_;
  std::uint64_t total_ = 0;
  std::uint64_t quota_ = 0;
};

}  // namespace keel::vmm::nbd_internal
