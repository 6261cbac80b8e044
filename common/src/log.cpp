#include "keel/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string>

namespace keel::log {
namespace {

std::atomic<Level> g_level{Level::info};

// The default sink: one write(2) per record, so lines from threads do not interleave.
void stderr_sink(const Record& r) {
  std::string line;
  line.reserve(r.component.size() + r.message.size() + 16);
  line.append("keel ").append(r.component).append(" ").append(level_name(r.level));
  line.append(": ").append(r.message).append("\n");
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

struct SinkSlot {
  std::mutex mu;
  Sink sink;
};

SinkSlot& slot() {
  static SinkSlot* s = new SinkSlot();  // never destroyed: threads may log during exit
  return *s;
}

void vlog(Level level, std::string_view component, const char* format, va_list args) {
  if (!enabled(level)) return;
  char small[256];
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(small, sizeof small, format, copy);
  va_end(copy);
  if (n < 0) return;
  if (static_cast<std::size_t>(n) < sizeof small) {
    write(level, component, std::string_view(small, static_cast<std::size_t>(n)));
    return;
  }
  std::string big(static_cast<std::size_t>(n) + 1, '\0');
  std::vsnprintf(big.data(), big.size(), format, args);
  big.resize(static_cast<std::size_t>(n));
  write(level, component, big);
}

}  // namespace

std::string_view level_name(Level level) noexcept {
  switch (level) {
    case Level::trace: return "trace";
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
    case Level::off: return "off";
  }
  return "?";
}

Result<Level> parse_level(std::string_view text) {
  for (Level l : {Level::trace, Level::debug, Level::info, Level::warn, Level::error, Level::off}) {
    if (text == level_name(l)) return l;
  }
  if (text == "warning") return Level::warn;
  return make_error(Errc::invalid_argument,
                    "log level '" + std::string(text) +
                        "' is not one of trace, debug, info, warn, error, off");
}

void set_sink(Sink sink) {
  SinkSlot& s = slot();
  std::lock_guard lock(s.mu);
  s.sink = std::move(sink);
}

void set_level(Level level) noexcept { g_level.store(level, std::memory_order_relaxed); }

Level level() noexcept { return g_level.load(std::memory_order_relaxed); }

void write(Level level, std::string_view component, std::string_view message) {
  if (!enabled(level)) return;
  // One line per record: a message that ends in a newline loses it.
  while (!message.empty() && message.back() == '\n') message.remove_suffix(1);
  const Record r{level, component, message};
  SinkSlot& s = slot();
  std::lock_guard lock(s.mu);
  if (s.sink) {
    s.sink(r);
  } else {
    stderr_sink(r);
  }
}

void Logger::logf(Level level, const char* format, ...) const {
  va_list args;
  va_start(args, format);
  vlog(level, component_, format, args);
  va_end(args);
}

#define KEEL_LOG_LEVEL_FN(name, lvl)                  \
  void Logger::name(const char* format, ...) const { \
    va_list args;                                     \
    va_start(args, format);                           \
    vlog(lvl, component_, format, args);              \
    va_end(args);                                     \
  }
KEEL_LOG_LEVEL_FN(trace, Level::trace)
KEEL_LOG_LEVEL_FN(debug, Level::debug)
KEEL_LOG_LEVEL_FN(info, Level::info)
KEEL_LOG_LEVEL_FN(warn, Level::warn)
KEEL_LOG_LEVEL_FN(error, Level::error)
#undef KEEL_LOG_LEVEL_FN

}  // namespace keel::log
