// The NBD server's configuration: what it checks and the guest memory it needs.
#include <algorithm>
#include <string>

#include "keel/vmm/nbd_server.h"
#include "nbd_device.h"
#include "nbd_layout.h"

namespace keel::vmm {

using nbd_internal::kChunk;
using nbd_internal::kRingArea;
using nbd_internal::max_request_chunks;

std::uint64_t NbdServer::guest_memory_bytes(const NbdServerConfig& config) noexcept {
  // Each worker's share of the buffers (nbd_server.cpp, Worker::pool_bytes), 2 MiB aligned.
  const std::uint64_t n = config.queues == 0 ? 1 : config.queues;
  const std::uint64_t share =
      std::max(config.buffer_bytes / n / kChunk * kChunk, max_request_chunks(config) * kChunk);
  const std::uint64_t pool = (share + (2u << 20) - 1) & ~std::uint64_t{(2u << 20) - 1};
  return kRingArea + n * pool;
}

Status check_nbd_config(const NbdServerConfig& config, const GuestMemory& memory) {
  auto bad = [](const std::string& what) { return make_error(Errc::invalid_argument, what); };
  const std::uint32_t mr = config.max_request_bytes;
  if (mr < 4096 || mr > nbd::kMaxPayload || (mr & (mr - 1)) != 0) {
    return bad("max_request_bytes " + std::to_string(mr) +
               ": must be a power of two from 4096 to 32 MiB");
  }
  if (config.queue_depth == 0 || config.queue_depth > nbd::kMaxQueueDepth) {
    return bad("queue_depth " + std::to_string(config.queue_depth) + ": must be 1.." +
               std::to_string(nbd::kMaxQueueDepth));
  }
  const std::uint16_t vq = config.virtqueue_size;
  if (vq < 8 || (vq & (vq - 1)) != 0) {
    return bad("virtqueue_size " + std::to_string(vq) + ": must be a power of two >= 8");
  }
  const std::uint32_t mv = config.max_virtio_bytes;
  if (mv == 0 || mv % kChunk != 0 || mv > (8u << 20) || mv / kChunk + 2 > vq) {
    return bad("max_virtio_bytes " + std::to_string(mv) +
               ": must be a multiple of 128 KiB, at most 8 MiB and fit the virtqueue");
  }
  if (config.buffer_bytes % kChunk != 0 ||
      config.buffer_bytes / kChunk < max_request_chunks(config)) {
    return bad("buffer_bytes " + std::to_string(config.buffer_bytes) +
               ": must be a multiple of 128 KiB holding max_request_bytes + 256 KiB");
  }
  if (config.max_connections == 0 || config.max_connections > nbd::kMaxConnections) {
    return bad("max_connections " + std::to_string(config.max_connections) + ": must be 1.." +
               std::to_string(nbd::kMaxConnections));
  }
  if (config.queues == 0 || config.queues > nbd::kMaxQueues) {
    return bad("queues " + std::to_string(config.queues) + ": must be 1.." +
               std::to_string(nbd::kMaxQueues));
  }
  if (config.export_name.size() > nbd::kMaxString || config.description.size() > nbd::kMaxString) {
    return bad("export name and description are limited to 4096 bytes");
  }
  if (memory.regions().empty() || memory.regions()[0].gpa != 0 ||
      memory.regions()[0].bytes < NbdServer::guest_memory_bytes(config)) {
    return bad("guest memory must have " + std::to_string(NbdServer::guest_memory_bytes(config)) +
               " bytes at GPA 0 for the NBD server");
  }
  return {};
}

}  // namespace keel::vmm
