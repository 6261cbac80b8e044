// Card DDR of the simulated cards (model and sim): the disk image, mmapped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "keel/result.h"

namespace keel::fpga {

class CardStorage {
 public:
  /// Opens (creating if missing, sized to `bytes`) the image at `path`, or an anonymous
  /// in-memory image when `path` is empty. An existing image keeps its size, which must be a
  /// non-zero multiple of 512. Errors: io_error (open/stat/truncate/mmap), invalid_argument.
  static Result<std::unique_ptr<CardStorage>> open(const std::string& path, std::uint64_t bytes);
  ~CardStorage();
  CardStorage(const CardStorage&) = delete;
  CardStorage& operator=(const CardStorage&) = delete;

  std::byte* data() const noexcept { return base_; }
  std::uint64_t bytes() const noexcept { return bytes_; }
  /// Writes the byte range back to the image file (msync); no-op for anonymous images.
  /// Errors: io_error.
  Status flush(std::uint64_t offset, std::uint64_t length) noexcept;

 private:
  CardStorage() = default;
  std::byte* base_ = nullptr;
  std::uint64_t bytes_ = 0;
  int fd_ = -1;
  bool file_backed_ = false;
};

}  // namespace keel::fpga
