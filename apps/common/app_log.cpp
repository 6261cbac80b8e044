#include "app_log.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "keel/clock.h"
#include "keel/log.h"

namespace keel::apps {

void add_log_option(CLI::App& app, std::string& level) {
  app.add_option("--log-level", level, "Log level: trace, debug, info, warn, error, off")
      ->default_val("info");
}

bool start_logging(const char* program, const std::string& level) {
  auto parsed = log::parse_level(level);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s: --log-level: %s\n", program, parsed.error().message.c_str());
    return false;
  }
  const std::uint64_t t0 = steady_clock().now_ns();
  log::set_sink([program, t0](const log::Record& r) {
    const double s = static_cast<double>(steady_clock().now_ns() - t0) * 1e-9;
    char head[128];
    const int n = std::snprintf(head, sizeof head, "%s %10.3f %.*s %.*s: ", program, s,
                                static_cast<int>(r.component.size()), r.component.data(),
                                static_cast<int>(log::level_name(r.level).size()),
                                log::level_name(r.level).data());
    std::string line(head, n > 0 ? static_cast<std::size_t>(n) : 0);
    line.append(r.message).append("\n");
    (void)!::write(STDERR_FILENO, line.data(), line.size());
  });
  log::set_level(parsed.value());
  return true;
}

}  // namespace keel::apps
