// keel/wire/nvme.h - NVMe 1.4 queue entry formats and codes (the ones libnvme lacks).
//
// Shared by the card models (device side) and the drivers (host side). Identify data uses
// libnvme's struct nvme_id_ctrl / nvme_id_ns; everything on a queue is here.
#pragma once

#include <cstddef>
#include <cstdint>

namespace keel::nvme {

/// Submission queue entry (NVMe 1.4 figure 105), 64 bytes.
struct Sqe {
  std::uint8_t opc;    ///< Opcode.
  std::uint8_t flags;  ///< FUSE (1:0), PSDT (7:6): both must be 0 on keel.
  std::uint16_t cid;   ///< Command identifier.
  std::uint32_t nsid;
  std::uint32_t cdw2;
  std::uint32_t cdw3;
  std::uint64_t mptr;
  std::uint64_t prp1;
  std::uint64_t prp2;
  std::uint32_t cdw10;
  std::uint32_t cdw11;
  std::uint32_t cdw12;
  std::uint32_t cdw13;
  std::uint32_t cdw14;
  std::uint32_t cdw15;
};
static_assert(sizeof(Sqe) == 64, "NVMe SQE is 64 bytes");
static_assert(offsetof(Sqe, nsid) == 4 && offsetof(Sqe, prp1) == 24 && offsetof(Sqe, prp2) == 32 &&
                  offsetof(Sqe, cdw10) == 40 && offsetof(Sqe, cdw15) == 60,
              "NVMe SQE field offsets");

/// Completion queue entry (NVMe 1.4 figure 121), 16 bytes.
struct Cqe {
  std::uint32_t dw0;      ///< Command specific.
  std::uint32_t dw1;      ///< Reserved.
  std::uint16_t sq_head;  ///< SQ head pointer after this command was fetched.
  std::uint16_t sq_id;
  std::uint16_t cid;
  std::uint16_t status;  ///< Phase tag (bit 0) and status field (bits 15:1).
};
static_assert(sizeof(Cqe) == 16, "NVMe CQE is 16 bytes");
static_assert(offsetof(Cqe, sq_head) == 8 && offsetof(Cqe, cid) == 12 &&
                  offsetof(Cqe, status) == 14,
              "NVMe CQE field offsets");

inline constexpr std::size_t kSqeBytes = 64;
inline constexpr std::size_t kCqeBytes = 16;
inline constexpr unsigned kSqesLog2 = 6;
inline constexpr unsigned kCqesLog2 = 4;

namespace admin {
inline constexpr std::uint8_t kDeleteSq = 0x00;
inline constexpr std::uint8_t kCreateSq = 0x01;
inline constexpr std::uint8_t kGetLogPage = 0x02;
inline constexpr std::uint8_t kDeleteCq = 0x04;
inline constexpr std::uint8_t kCreateCq = 0x05;
inline constexpr std::uint8_t kIdentify = 0x06;
inline constexpr std::uint8_t kAbort = 0x08;
inline constexpr std::uint8_t kSetFeatures = 0x09;
inline constexpr std::uint8_t kGetFeatures = 0x0A;
inline constexpr std::uint8_t kAsyncEventRequest = 0x0C;
}  // namespace admin

namespace io {
inline constexpr std::uint8_t kFlush = 0x00;
inline constexpr std::uint8_t kWrite = 0x01;
inline constexpr std::uint8_t kRead = 0x02;
inline constexpr std::uint8_t kWriteZeroes = 0x08;
}  // namespace io

namespace cns {
inline constexpr std::uint8_t kNamespace = 0x00;
inline constexpr std::uint8_t kController = 0x01;
inline constexpr std::uint8_t kActiveNamespaces = 0x02;
}  // namespace cns

namespace feature {
inline constexpr std::uint8_t kNumberOfQueues = 0x07;
}  // namespace feature

namespace log_page {
inline constexpr std::uint8_t kErrorInfo = 0x01;
inline constexpr std::uint8_t kSmart = 0x02;
inline constexpr std::uint8_t kFirmwareSlot = 0x03;
}  // namespace log_page

/// A status as libnvme encodes it: (SCT << 8) | SC, with kDnr for "do not retry". This is the
/// CQE status field shifted right by one (dropping the phase tag).
using StatusCode = std::uint16_t;

inline constexpr StatusCode kDnr = 0x4000;
inline constexpr StatusCode kMore = 0x2000;

constexpr StatusCode status(unsigned sct, unsigned sc) noexcept {
  return static_cast<StatusCode>(((sct & 0x7u) << 8) | (sc & 0xFFu));
}
constexpr unsigned status_sct(StatusCode s) noexcept { return (s >> 8) & 0x7u; }
constexpr unsigned status_sc(StatusCode s) noexcept { return s & 0xFFu; }
/// The status without DNR/More/CRD: what to compare against the constants below.
constexpr StatusCode status_base(StatusCode s) noexcept {
  return static_cast<StatusCode>(s & 0x7FFu);
}
constexpr StatusCode cqe_status(const Cqe& c) noexcept {
  return static_cast<StatusCode>(c.status >> 1);
}
constexpr bool cqe_phase(const Cqe& c) noexcept { return (c.status & 1u) != 0; }

namespace sc {
// Generic command status (SCT 0).
inline constexpr StatusCode kSuccess = status(0, 0x00);
inline constexpr StatusCode kInvalidOpcode = status(0, 0x01);
inline constexpr StatusCode kInvalidField = status(0, 0x02);
inline constexpr StatusCode kCommandIdConflict = status(0, 0x03);
inline constexpr StatusCode kDataTransferError = status(0, 0x04);
inline constexpr StatusCode kInternalError = status(0, 0x06);
inline constexpr StatusCode kAbortRequested = status(0, 0x07);
inline constexpr StatusCode kAbortSqDeleted = status(0, 0x08);
inline constexpr StatusCode kInvalidNamespace = status(0, 0x0B);
inline constexpr StatusCode kCommandSequenceError = status(0, 0x0C);
inline constexpr StatusCode kPrpOffsetInvalid = status(0, 0x13);
inline constexpr StatusCode kLbaOutOfRange = status(0, 0x80);
// Command specific status (SCT 1).
inline constexpr StatusCode kCqInvalid = status(1, 0x00);
inline constexpr StatusCode kInvalidQueueId = status(1, 0x01);
inline constexpr StatusCode kInvalidQueueSize = status(1, 0x02);
inline constexpr StatusCode kAbortLimitExceeded = status(1, 0x03);
inline constexpr StatusCode kAsyncEventLimitExceeded = status(1, 0x05);
inline constexpr StatusCode kInvalidLogPage = status(1, 0x09);
inline constexpr StatusCode kInvalidInterruptVector = status(1, 0x08);
inline constexpr StatusCode kInvalidQueueDeletion = status(1, 0x0C);
inline constexpr StatusCode kFeatureNotChangeable = status(1, 0x0E);
}  // namespace sc

}  // namespace keel::nvme
