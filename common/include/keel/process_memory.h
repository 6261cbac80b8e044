// keel/process_memory.h - what a daemon's memory costs beyond what it serves: resident bytes
// of its mappings, leaving out the files it only maps (a guest's RAM, a card's storage image),
// which are the guest's and the disk's, not the daemon's (issue 15: at most 16 MiB per guest).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>

#include "keel/result.h"

namespace keel {

/// A file by identity (a memfd has no path worth comparing).
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const FileId&) const = default;
};

/// The file open at `fd`. Errors: io_error (fstat).
Result<FileId> file_id(int fd);
/// The file at `path`. Errors: io_error (stat).
Result<FileId> file_id(const std::string& path);

/// Resident bytes of this process (/proc/self/smaps, every mapping's Rss), leaving out the
/// mappings of the files in `exclude`. Errors: io_error (smaps unreadable).
Result<std::uint64_t> own_resident_bytes(std::span<const FileId> exclude);

}  // namespace keel
