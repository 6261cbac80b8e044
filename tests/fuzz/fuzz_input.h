// The fuzz input read front to back as little-endian fields; zeroes once it runs out, so every
// input is a complete script whatever its length. Shared by the fuzz targets.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace keel::fuzz {

class FuzzInput {
 public:
  FuzzInput(const std::uint8_t* d, std::size_t n) : d_(d), n_(n) {}
  bool empty() const { return n_ == 0; }
  std::uint8_t u8() {
    if (n_ == 0) return 0;
    --n_;
    return *d_++;
  }
  std::uint16_t u16() { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
  std::uint32_t u32() { return u16() | (std::uint32_t{u16()} << 16); }
  std::uint64_t u64() { return u32() | (std::uint64_t{u32()} << 32); }
  /// `k` bytes into `out`, zero-filled past the end of the input.
  void bytes(std::uint8_t* out, std::size_t k) {
    const std::size_t take = std::min(k, n_);
    if (take > 0) std::memcpy(out, d_, take);
    if (k > take) std::memset(out + take, 0, k - take);
    d_ += take;
    n_ -= take;
  }
  /// Up to `n` bytes (fewer at the end of the input).
  std::string bytes(std::size_t n) {
    n = std::min(n, n_);
    std::string s(reinterpret_cast<const char*>(d_), n);
    d_ += n;
    n_ -= n;
    return s;
  }

 private:
  const std::uint8_t* d_;
  std::size_t n_;
};

}  // namespace keel::fuzz
