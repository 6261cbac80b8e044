// CPU time of the service: its own thread, and the kernel's io_uring workers serving its ring.
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "service_impl.h"

namespace keel::vmm {
namespace {

/// The first line of /proc/self/task/<tid>/comm, or "".
std::string comm_of(const char* tid) {
  const std::string path = std::string("/proc/self/task/") + tid + "/comm";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  char buf[32] = {};
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return {};
  std::string s(buf, static_cast<std::size_t>(n));
  if (const auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}

}  // namespace

std::uint64_t HostStorageService::thread_cpu_ns() const { return impl_->cpu.ns(); }

std::uint64_t HostStorageService::io_worker_cpu_ns() const {
  const int owner = impl_->thread_tid.load(std::memory_order_acquire);
  std::lock_guard lock(impl_->worker_mutex);
  if (owner != 0) {
    const std::string name = "iou-wrk-" + std::to_string(owner);
    if (DIR* dir = opendir("/proc/self/task")) {
      while (const dirent* e = readdir(dir)) {
        if (e->d_name[0] == '.' || comm_of(e->d_name) != name) continue;
        const int tid = std::atoi(e->d_name);
        // A worker that exits between readdir and here reads as 0: keep its last sample.
        if (const std::uint64_t ns = clock_ns(thread_cpu_clock_of_tid(tid)); ns != 0) {
          auto& last = impl_->worker_ns[tid];
          if (ns > last) last = ns;
        }
      }
      closedir(dir);
    }
  }
  std::uint64_t total = 0;
  for (const auto& [tid, ns] : impl_->worker_ns) total += ns;
  return total;
}

}  // namespace keel::vmm
