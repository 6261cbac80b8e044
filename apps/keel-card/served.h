// keel-card: one served function (its socket, its one client, the vfio-user server state),
// shared by the NVMe half (keel_card.cpp) and the NIC half (nic_serving.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "keel/fpga/vfio_user/function_server.h"
#include "keel/unix_listener.h"

namespace keel::card_app {

struct Served {
  std::string name;  // "pf", "vf0", "nicpf", "nicvf0", ...
  UnixListener listener;
  std::unique_ptr<vfio_user::Channel> client;
  std::unique_ptr<vfio_user::FunctionServer> server;
  std::uint64_t connections = 0, turned_away = 0;
};

/// A socket `<dir>/<name>.sock` serving `fn`. Errors: those of UnixListener::listen.
Result<std::unique_ptr<Served>> serve_function(fpga::Function& fn, const std::string& dir,
                                               const std::string& name,
                                               vfio_user::FunctionServerConfig config);

/// The client goes (the function is reset as after its process closed it).
void drop_client(Served& s, const char* why);

/// One line of the function's counters on stdout.
void print_counters(const Served& s);

}  // namespace keel::card_app
