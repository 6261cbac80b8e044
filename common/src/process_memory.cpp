#include "keel/process_memory.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace keel {

Result<FileId> file_id(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return make_error(Errc::io_error, std::string("fstat: ") + std::strerror(errno));
  }
  return FileId{st.st_dev, st.st_ino};
}

Result<FileId> file_id(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return make_error(Errc::io_error, "stat " + path + ": " + std::strerror(errno));
  }
  return FileId{st.st_dev, st.st_ino};
}

Result<std::uint64_t> own_resident_bytes(std::span<const FileId> exclude) {
  std::ifstream smaps("/proc/self/smaps");
  if (!smaps) return make_error(Errc::io_error, "cannot read /proc/self/smaps");
  std::uint64_t total = 0;
  bool counted = true;  // the mapping whose fields follow
  std::string line;
  while (std::getline(smaps, line)) {
    // A mapping's header: "start-end perms offset major:minor inode [path]".
    unsigned long long start = 0, end = 0, offset = 0, inode = 0;
    unsigned major = 0, minor = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%llx-%llx %7s %llx %x:%x %llu", &start, &end, perms, &offset,
                    &major, &minor, &inode) == 7) {
      const FileId id{makedev(major, minor), static_cast<ino_t>(inode)};
      counted = inode == 0 || std::find(exclude.begin(), exclude.end(), id) == exclude.end();
      continue;
    }
    unsigned long long kb = 0;
    if (counted && std::sscanf(line.c_str(), "Rss: %llu kB", &kb) == 1) total += kb * 1024;
  }
  return total;
}

}  // namespace keel
