#include "served.h"

#include <cinttypes>
#include <cstdio>

#include "keel/log.h"

namespace keel::card_app {
namespace {
constexpr log::Logger kLog{"keel-card"};
}  // namespace

Result<std::unique_ptr<Served>> serve_function(fpga::Function& fn, const std::string& dir,
                                               const std::string& name,
                                               vfio_user::FunctionServerConfig config) {
  auto s = std::make_unique<Served>();
  s->name = name;
  auto l = UnixListener::listen(dir + "/" + name + ".sock");
  if (!l) return l.error();
  s->listener = std::move(l.value());
  s->server = std::make_unique<vfio_user::FunctionServer>(fn, std::move(config));
  return s;
}

void drop_client(Served& s, const char* why) {
  if (!s.client) return;
  kLog.info("%s: client gone (%s); the function is reset", s.name.c_str(), why);
  s.client.reset();
  s.server->client_gone();
}

void print_counters(const Served& s) {
  const auto& c = s.server->counters();
  std::printf("%-4s connections=%" PRIu64 " turned_away=%" PRIu64 " commands=%" PRIu64
              " refused=%" PRIu64 " region_reads=%" PRIu64 " region_writes=%" PRIu64
              " dma_maps=%" PRIu64 " dma_unmaps=%" PRIu64 " interrupts=%" PRIu64 " resets=%" PRIu64
              " released=%" PRIu64 " config_writes=%" PRIu64 " doorbell_stores=%" PRIu64
              " enables=%" PRIu64 "\n",
              s.name.c_str(), s.connections, s.turned_away, c.commands, c.refused, c.region_reads,
              c.region_writes, c.dma_maps, c.dma_unmaps, c.interrupts_forwarded, c.resets,
              c.released, c.config_writes, c.doorbell_stores, c.enables);
}

}  // namespace keel::card_app
