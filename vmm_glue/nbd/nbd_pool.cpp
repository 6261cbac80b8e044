// The NBD server's chunk pool and its per-connection quota (see nbd_pool.h).
#include "nbd_pool.h"

#include <algorithm>

namespace keel::vmm::nbd_internal {

std::uint64_t ChunkPool::quota_for(std::uint64_t chunks, unsigned max_connections,
                                   std::uint64_t request_chunks) noexcept {
  const std::uint64_t share = chunks / std::max(1u, max_connections);
  return std::min(chunks, std::max(share, request_chunks));
}

void ChunkPool::init(std::uint32_t chunks, std::uint64_t quota) {
  free_.clear();
  free_.reserve(chunks);
  for (std::uint32_t i = chunks; i-- > 0;) free_.push_back(i);
  total_ = chunks;
  quota_ = quota;
}

std::uint32_t ChunkPool::take(PoolAccount& a) noexcept {
  const std::uint32_t c = free_.back();
  free_.pop_back();
  ++a.held;
  return c;
}

void ChunkPool::give(PoolAccount& a, std::uint32_t chunk) noexcept {
  free_.push_back(chunk);  // capacity reserved for every chunk at init: never allocates
  if (a.held > 0) --a.held;
}

}  // namespace keel::vmm::nbd_internal
