#include "keel/vmm/blk_request.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>

namespace keel::vmm {

namespace blk = virtio::blk;

namespace {

// Copies `n` bytes starting `skip` bytes into the readable part of the chain. A buffer may
// cross from one memory region into an adjacent one: copied a region at a time.
bool gather(const GuestMemory& mem, std::span<const ChainSeg> chain, std::uint64_t skip, void* dst,
            std::size_t n) {
  auto* out = static_cast<std::byte*>(dst);
  for (const ChainSeg& s : chain) {
    if (s.device_writes || n == 0) break;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    while (n > 0 && skip < s.len) {
      const std::uint64_t gpa = s.gpa + skip;
      const std::size_t take = std::min<std::uint64_t>({n, s.len - skip, region_run(mem, gpa)});
      const std::byte* src = take == 0 ? nullptr : mem.translate(gpa, take);
      if (src == nullptr) return false;
      std::memcpy(out, src, take);
      out += take;
      n -= take;
      skip += take;
    }
    skip = 0;
  }
  return n == 0;
}

}  // namespace

bool write_blk_status(const GuestMemory& mem, const BlkRequest& r, std::uint8_t status) noexcept {
  std::byte* p = mem.translate(r.status_gpa, 1);
  if (p == nullptr) return false;
  *p = std::byte{status};
  return true;
}

ParseOutcome parse_blk_request(const GuestMemory& mem, const BlkLimits& limits, std::uint16_t head,
                               ChainError chain_error, std::span<const ChainSeg> chain,
                               BlkRequest& out) noexcept {
  out.head = head;
  out.type = 0;
  out.sector = out.sectors = 0;
  out.data.clear();
  out.status = blk::kStatusIoErr;
  out.written = 0;
  out.why = "";
  if (chain_error == ChainError::bad_index || chain_error == ChainError::loop ||
      chain_error == ChainError::indirect) {
    out.why = to_string(chain_error);
    return ParseOutcome::broken;
  }
  // Split the chain into its readable and writable byte counts; the status is the last
  // writable byte.
  std::uint64_t readable = 0, writable = 0;
  for (const ChainSeg& s : chain) (s.device_writes ? writable : readable) += s.len;
  if (writable == 0) {
    out.why = "no device-writable byte for the status";
    return ParseOutcome::broken;
  }
  std::uint64_t status_gpa = 0;
  {
    const ChainSeg* last = nullptr;
    for (const ChainSeg& s : chain) {
      if (s.device_writes && s.len > 0) last = &s;
    }
    status_gpa = last->gpa + last->len - 1;
  }
  out.status_gpa = status_gpa;
  out.written = 1;
  if (mem.translate(status_gpa, 1) == nullptr) {
    out.why = "status byte outside guest memory";
    return ParseOutcome::broken;
  }
  auto fail = [&](std::uint8_t status, const char* why) {
    out.status = status;
    out.why = why;
    return ParseOutcome::complete;
  };
  if (chain_error != ChainError::ok) return fail(blk::kStatusIoErr, to_string(chain_error));
  blk::OutHeader h{};
  if (readable < sizeof h || !gather(mem, chain, 0, &h, sizeof h)) {
    return fail(blk::kStatusIoErr, "request header shorter than 16 bytes");
  }
  out.type = h.type;
  out.sector = h.sector;

  // Collects [from, to) of the readable (or writable) byte stream as data segments, cut at
  // memory-region boundaries. Checks seg_max and size_max per descriptor and never holds more
  // than max_pieces segments (the capacity the caller reserved: no allocation).
  auto collect = [&](bool writes, std::uint64_t from, std::uint64_t to) -> const char* {
    std::uint64_t pos = 0;
    std::uint32_t descriptors = 0;
    for (const ChainSeg& s : chain) {
      if (s.device_writes != writes) continue;
      const std::uint64_t a = std::max(pos, from), b = std::min(pos + s.len, to);
      pos += s.len;
      if (a >= b) continue;
      if (++descriptors > limits.seg_max) return "more data descriptors than seg_max";
      if (b - a > limits.size_max) return "a data descriptor larger than size_max";
      for (std::uint64_t gpa = s.gpa + (a - (pos - s.len)), left = b - a; left > 0;) {
        const std::uint64_t take = std::min(left, region_run(mem, gpa));
        if (take == 0) return "buffer outside guest memory";
        if (out.data.size() >= limits.max_pieces) return "data crosses too many memory regions";
        out.data.push_back({gpa, static_cast<std::uint32_t>(take)});
        gpa += take;
        left -= take;
      }
    }
    return nullptr;
  };
  const std::uint64_t block_sectors = std::max<std::uint32_t>(limits.block_bytes, 512) / 512;
  switch (h.type) {
    case blk::kIn:
    case blk::kOut: {
      const bool in = h.type == blk::kIn;
      const std::uint64_t bytes = in ? writable - 1 : readable - sizeof h;
      if (!in && writable != 1)
        return fail(blk::kStatusIoErr, "write request with extra device-writable bytes");
      if (in && readable != sizeof h) {
        return fail(blk::kStatusIoErr, "read request whose data buffer is driver-readable only");
      }
      if (bytes % blk::kSectorBytes != 0)
        return fail(blk::kStatusIoErr, "data length not a multiple of 512");
      if (bytes > limits.max_request_bytes)
        return fail(blk::kStatusIoErr, "request larger than the per-request byte limit");
      out.sectors = bytes / blk::kSectorBytes;
      if (out.sector > limits.capacity_sectors ||
          out.sectors > limits.capacity_sectors - out.sector) {
        return fail(blk::kStatusIoErr, "sectors beyond the disk");
      }
      if (out.sector % block_sectors != 0 || out.sectors % block_sectors != 0)
        return fail(blk::kStatusIoErr, "request not aligned to the logical block size");
      const char* bad = in ? collect(true, 0, writable - 1) : collect(false, sizeof h, readable);
      if (bad != nullptr) return fail(blk::kStatusIoErr, bad);
      // used.len: the data and the status byte; bytes <= max_request_bytes, so it fits.
      if (in)
        out.written = static_cast<std::uint32_t>(std::min<std::uint64_t>(bytes + 1, UINT32_MAX));
      if (out.sectors == 0) return fail(blk::kStatusOk, "empty transfer");
      return ParseOutcome::submit;
    }
    case blk::kFlush: return ParseOutcome::submit;
    case blk::kWriteZeroes: {
      blk::DiscardWriteZeroes wz{};
      if (readable - sizeof h != sizeof wz || !gather(mem, chain, sizeof h, &wz, sizeof wz)) {
        return fail(blk::kStatusUnsupp, "write-zeroes needs exactly one 16-byte segment");
      }
      if ((wz.flags & ~1u) != 0) return fail(blk::kStatusUnsupp, "unknown write-zeroes flags");
      if (wz.num_sectors == 0 || wz.num_sectors > limits.max_write_zeroes_sectors) {
        return fail(blk::kStatusIoErr, "write-zeroes length out of range");
      }
      if (wz.sector > limits.capacity_sectors ||
          wz.num_sectors > limits.capacity_sectors - wz.sector) {
        return fail(blk::kStatusIoErr, "sectors beyond the disk");
      }
      if (wz.sector % block_sectors != 0 || wz.num_sectors % block_sectors != 0)
        return fail(blk::kStatusIoErr, "write-zeroes not aligned to the logical block size");
      out.sector = wz.sector;
      out.sectors = wz.num_sectors;
      return ParseOutcome::submit;
    }
    case blk::kGetId: {
      if (writable - 1 < blk::kIdBytes)
        return fail(blk::kStatusIoErr, "GET_ID buffer shorter than 20 bytes");
      char id[blk::kIdBytes] = {};
      // The id is up to 20 bytes, NUL-padded, not necessarily terminated.
      std::memcpy(id, limits.serial, std::min(sizeof id, std::strlen(limits.serial)));
      std::uint64_t left = sizeof id, pos = 0;
      for (const ChainSeg& s : chain) {
        if (!s.device_writes || left == 0) continue;
        for (std::uint64_t off = 0; left > 0 && off < s.len;) {
          // A region at a time: the buffer may cross into an adjacent region.
          const std::uint64_t n =
              std::min<std::uint64_t>({left, s.len - off, region_run(mem, s.gpa + off)});
          std::byte* p = n == 0 ? nullptr : mem.translate(s.gpa + off, n);
          if (p == nullptr) return fail(blk::kStatusIoErr, "GET_ID buffer outside guest memory");
          std::memcpy(p, id + pos, n);
          pos += n;
          left -= n;
          off += n;
        }
      }
      out.written = blk::kIdBytes + 1;
      return fail(blk::kStatusOk, "");
    }
    default: return fail(blk::kStatusUnsupp, "unknown request type");
  }
}

}  // namespace keel::vmm
