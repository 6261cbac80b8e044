// Card DDR of the simulated card: the disk image, mmapped (same rules as the reference model's
// storage: memfd when no path, an existing image keeps its size).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "keel/result.h"

namespace keel::fpga::sim {

class SimStorage {
 public:
  /// Opens (creating if missing, sized to `bytes`) the image at `path`, or an anonymous
  /// in-memory image when `path` is empty. Errors: io_error, invalid_argument (size not a
  /// non-zero multiple of 512).
  static Result<std::unique_ptr<SimStorage>> open(const std::string& path, std::uint64_t bytes);
  ~SimStorage();
  SimStorage(const SimStorage&) = delete;
  SimStorage& operator=(const SimStorage&) = delete;

  std::byte* data() const noexcept { return base_; }
  std::uint64_t bytes() const noexcept { return bytes_; }
  /// msync of the byte range; no-op for anonymous images. Errors: io_error.
  Status flush(std::uint64_t offset, std::uint64_t length) noexcept;

 private:
  SimStorage() = default;
  std::byte* base_ = nullptr;
  std::uint64_t bytes_ = 0;
  int fd_ = -1;
  bool file_backed_ = false;
};

}  // namespace keel::fpga::sim
