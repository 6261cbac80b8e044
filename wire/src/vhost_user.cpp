// The vhost-user wire format: names of requests, for logs and tests.
#include <string>

#include "keel/wire/vhost_user.h"

namespace keel::vhost_user {

std::string request_name(std::uint32_t request) {
  switch (static_cast<Request>(request)) {
    case Request::get_features: return "GET_FEATURES";
    case Request::set_features: return "SET_FEATURES";
    case Request::set_owner: return "SET_OWNER";
    case Request::reset_owner: return "RESET_OWNER";
    case Request::set_mem_table: return "SET_MEM_TABLE";
    case Request::set_log_base: return "SET_LOG_BASE";
    case Request::set_log_fd: return "SET_LOG_FD";
    case Request::set_vring_num: return "SET_VRING_NUM";
    case Request::set_vring_addr: return "SET_VRING_ADDR";
    case Request::set_vring_base: return "SET_VRING_BASE";
    case Request::get_vring_base: return "GET_VRING_BASE";
    case Request::set_vring_kick: return "SET_VRING_KICK";
    case Request::set_vring_call: return "SET_VRING_CALL";
    case Request::set_vring_err: return "SET_VRING_ERR";
    case Request::get_protocol_features: return "GET_PROTOCOL_FEATURES";
    case Request::set_protocol_features: return "SET_PROTOCOL_FEATURES";
    case Request::get_queue_num: return "GET_QUEUE_NUM";
    case Request::set_vring_enable: return "SET_VRING_ENABLE";
    case Request::get_config: return "GET_CONFIG";
    case Request::set_config: return "SET_CONFIG";
    case Request::get_inflight_fd: return "GET_INFLIGHT_FD";
    case Request::set_inflight_fd: return "SET_INFLIGHT_FD";
    case Request::reset_device: return "RESET_DEVICE";
  }
  return "request " + std::to_string(request);
}

}  // namespace keel::vhost_user
