// Request data buffers over the chunk pool (nbd_buffers.h).
#include "nbd_buffers.h"

#include <algorithm>
#include <cstring>

#include "nbd_layout.h"

namespace keel::vmm::nbd_internal {

void DataBuffers::init(std::byte* host, std::uint64_t gpa, std::uint32_t chunks,
                       std::uint64_t quota) {
  host_ = host;
  gpa_ = gpa;
  pool_.init(chunks, quota);
}

void DataBuffers::take(Buffer& b, PoolAccount& a, std::uint64_t data, bool scratch) {
  for (std::uint64_t i = 0; i < data; ++i) b.chunks.push_back(pool_.take(a));
  if (scratch) b.scratch = pool_.take(a);
}

void DataBuffers::give(Buffer& b, PoolAccount& a) {
  for (std::uint32_t ch : b.chunks) pool_.give(a, ch);
  b.chunks.clear();
  if (b.scratch >= 0) pool_.give(a, static_cast<std::uint32_t>(b.scratch));
  b.scratch = -1;
}

std::byte* DataBuffers::chunk_host(std::uint32_t chunk) const {
  return host_ + std::uint64_t{chunk} * kChunk;
}

int DataBuffers::iov(const Buffer& b, std::uint64_t pos, std::uint64_t len, iovec* out,
                     int max) const {
  int n = 0;
  while (len > 0 && n < max) {
    const std::uint64_t ci = pos / kChunk, off = pos % kChunk;
    const std::uint64_t take = std::min<std::uint64_t>(len, kChunk - off);
    out[n++] = {chunk_host(b.chunks[ci]) + off, take};
    pos += take;
    len -= take;
  }
  return n;
}

void DataBuffers::copy_in(Buffer& b, std::uint64_t pos, const std::byte* src, std::uint64_t len) {
  while (len > 0) {
    const std::uint64_t ci = pos / kChunk, off = pos % kChunk;
    const std::uint64_t take = std::min<std::uint64_t>(len, kChunk - off);
    std::memcpy(chunk_host(b.chunks[ci]) + off, src, take);
    pos += take;
    src += take;
    len -= take;
  }
}

std::byte* DataBuffers::scratch_host(const Buffer& b) const {
  return chunk_host(static_cast<std::uint32_t>(b.scratch));
}

std::size_t DataBuffers::segments(const Buffer& b, bool scratch, std::uint32_t pos,
                                  std::uint32_t bytes, DataSeg* out) const {
  if (scratch) {
    out[0] = {gpa_ + std::uint64_t(b.scratch) * kChunk + pos, bytes};
    return 1;
  }
  std::size_t n = 0;
  for (std::uint64_t p = pos, left = bytes; left > 0;) {
    const std::uint64_t ci = p / kChunk, off = p % kChunk;
    const std::uint64_t take = std::min<std::uint64_t>(left, kChunk - off);
    out[n++] = {gpa_ + std::uint64_t{b.chunks[ci]} * kChunk + off,
                static_cast<std::uint32_t>(take)};
    p += take;
    left -= take;
  }
  return n;
}

}  // namespace keel::vmm::nbd_internal
