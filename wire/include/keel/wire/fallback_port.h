// keel/wire/fallback_port.h - how a paravisor's virtio-net device reaches the host's software
// switch (the network fallback path) and how that switch answers.
//
// A unix SOCK_SEQPACKET connection from the paravisor to the switch's listening socket; one
// record per message, starting with a RecordHeader. The paravisor sends HELLO first (its
// guest's MAC and MTU; the switch closes the connection if the MAC is taken or invalid), then
// STATE whenever its guest's traffic moves between its VF and this port, and FRAMEs. The
// switch sends only FRAMEs. A frame is a whole Ethernet frame without FCS, 14 bytes to
// kMaxFrame. Fields are in host byte order (both ends are on one host); reserved bytes are
// sent as 0 and ignored. Until its first STATE a port is not on_fallback: a paravisor whose
// guest starts on the fallback path sends STATE on_fallback = 1 right after HELLO.
//
// The switch delivers frames for the guest's MAC to this port only while the port's state is
// on_fallback; while the guest is on its VF they go out of the switch's uplink to the card,
// whose embedded switch has the guest's MAC. Frames the guest sends through the port are
// checked against its MAC (anti-spoofing) in either state: during a move both paths carry
// traffic for a moment.
#pragma once

#include <cstddef>
#include <cstdint>

namespace keel::fallback_port {

enum class RecordType : std::uint8_t {
  hello = 1,  ///< Body: Hello.
  state = 2,  ///< Body: State.
  frame = 3,  ///< Body: the frame.
};

struct RecordHeader {
  RecordType type;
  std::uint8_t reserved[3];
};
static_assert(sizeof(RecordHeader) == 4);

struct Hello {
  std::uint8_t mac[6];
  std::uint16_t mtu;  ///< The guest's MTU (68..9000): frames up to mtu + 18 bytes.
};
static_assert(sizeof(Hello) == 8);

struct State {
  std::uint8_t on_fallback;  ///< 1: deliver my guest's frames here; 0: it is on its VF.
  std::uint8_t reserved[3];
};
static_assert(sizeof(State) == 4);

/// Largest frame (MTU 9000 + 18) and record.
inline constexpr std::size_t kMaxFrame = 9018;
inline constexpr std::size_t kMaxRecord = sizeof(RecordHeader) + kMaxFrame;

}  // namespace keel::fallback_port
