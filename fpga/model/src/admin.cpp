// Admin command set of the reference card's NVMe controller (NVMe 1.4 section 5).
#include <nvme/types.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include <keel/regs/keel_regs.h>

#include "vf_controller.h"

namespace keel::fpga::model {

namespace nv = regs::nvme;
namespace sc = nvme::sc;
using nvme::Sqe;

namespace {

constexpr std::uint16_t kVendorId = 0x10EE;  // Xilinx: the card is an FPGA design
constexpr unsigned kAerLimit = 4;
constexpr unsigned kAbortLimit = 4;

void put_padded(char* dst, std::size_t n, const char* src) {
  std::memset(dst, ' ', n);
  std::memcpy(dst, src, std::min(n, std::strlen(src)));
}

}  // namespace

VfController::Outcome VfController::admin(const Sqe& sqe, std::uint64_t now_ns) noexcept {
  if (sqe.flags != 0) return fail(sc::kInvalidField);  // no fused ops, no SGLs
  switch (sqe.opc) {
    case nvme::admin::kIdentify: return identify(sqe);
    case nvme::admin::kCreateCq: return create_cq(sqe);
    case nvme::admin::kCreateSq: return create_sq(sqe);
    case nvme::admin::kDeleteCq: return delete_cq(sqe);
    case nvme::admin::kDeleteSq: return delete_sq(sqe);
    case nvme::admin::kSetFeatures: return features(sqe, true);
    case nvme::admin::kGetFeatures: return features(sqe, false);
    case nvme::admin::kGetLogPage: return get_log_page(sqe);
    case nvme::admin::kAbort: return abort_cmd(sqe, now_ns);
    case nvme::admin::kAsyncEventRequest:
      if (aers_.size() >= kAerLimit) return fail(sc::kAsyncEventLimitExceeded);
      aers_.push_back(sqe.cid);
      return {sc::kSuccess, 0, true};
    default: return fail(sc::kInvalidOpcode);
  }
}

VfController::Outcome VfController::identify(const Sqe& sqe) noexcept {
  const unsigned cns = sqe.cdw10 & 0xFF;
  std::memset(scratch_.data(), 0, 4096);
  switch (cns) {
    case nvme::cns::kController: {
      auto* id = reinterpret_cast<nvme_id_ctrl*>(scratch_.data());  // staging buffer
      id->vid = kVendorId;
      id->ssvid = kVendorId;
      char sn[21];
      std::snprintf(sn, sizeof sn, "KEELVF%04u", p_.vf_index);
      put_padded(id->sn, sizeof id->sn, sn);
      put_padded(id->mn, sizeof id->mn, "keel SR-IOV NVMe VF (reference model)");
      put_padded(id->fr, sizeof id->fr, "0.1");
      id->rab = 6;
      id->mdts = static_cast<std::uint8_t>(p_.mdts);
      id->cntlid = static_cast<std::uint16_t>(p_.vf_index + 1);
      id->ver = static_cast<std::uint32_t>(regs::NVME_VS_1_4);
      id->acl = kAbortLimit - 1;
      id->aerl = kAerLimit - 1;
      id->frmw = 0x3;  // slot 1 read-only, one slot
      id->elpe = 0;
      id->npss = 0;
      id->sqes = 0x66;
      id->cqes = 0x44;
      id->maxcmd = static_cast<std::uint16_t>(p_.mqes + 1);
      id->nn = 1;
      id->oncs = 1u << 3;  // Write Zeroes
      id->vwc = 0;
      id->sgls = 0;
      std::snprintf(id->subnqn, sizeof id->subnqn, "nqn.2026-11.dev.keel:card:vf%u", p_.vf_index);
      break;
    }
    case nvme::cns::kNamespace: {
      if (sqe.nsid != 1 && sqe.nsid != 0xFFFFFFFFu) return fail(sc::kInvalidNamespace);
      auto* ns = reinterpret_cast<nvme_id_ns*>(scratch_.data());  // staging buffer
      if (sqe.nsid == 1) {
        ns->nsze = res_.slice_lbas;
        ns->ncap = res_.slice_lbas;
        ns->nuse = res_.slice_lbas;
      }
      ns->nlbaf = 0;
      ns->flbas = 0;
      ns->lbaf[0].ds = static_cast<std::uint8_t>(p_.lba_shift);
      break;
    }
    case nvme::cns::kActiveNamespaces: {
      if (sqe.nsid >= 0xFFFFFFFEu) return fail(sc::kInvalidNamespace);
      if (sqe.nsid < 1) {
        const std::uint32_t one = 1;
        std::memcpy(scratch_.data(), &one, sizeof one);
      }
      break;
    }
    default: return fail(sc::kInvalidField);
  }
  return {transfer(sqe, scratch_.data(), 4096, true)};
}

VfController::Outcome VfController::create_cq(const Sqe& sqe) noexcept {
  const unsigned qid = sqe.cdw10 & 0xFFFF;
  const unsigned qsize = (sqe.cdw10 >> 16) + 1;
  const bool pc = (sqe.cdw11 & 1) != 0;
  const bool ien = (sqe.cdw11 & 2) != 0;
  const unsigned iv = sqe.cdw11 >> 16;
  const unsigned granted = ncqa_ != 0 ? ncqa_ : res_.ioq;
  if (qid == 0 || qid > granted || qid > p_.max_ioq || cqs_[qid].live) {
    return fail(sc::kInvalidQueueId);
  }
  if (qsize < 2 || qsize > p_.mqes + 1) return fail(sc::kInvalidQueueSize);
  if (!pc) return fail(sc::kInvalidField);  // CAP.CQR: contiguous queues only
  if (regs::field_get(last_cc_, nv::CC_IOCQES_MASK, nv::CC_IOCQES_SHIFT) != nvme::kCqesLog2) {
    return fail(sc::kInvalidField);
  }
  if (ien && iv >= irq_.vectors()) return fail(sc::kInvalidInterruptVector);
  if (sqe.prp1 % page_bytes() != 0 || sqe.prp1 == 0) return fail(sc::kPrpOffsetInvalid);
  cqs_[qid] = Cq{true,
                 sqe.prp1,
                 static_cast<std::uint16_t>(qsize),
                 0,
                 true,
                 ien,
                 static_cast<std::uint16_t>(iv),
                 0,
                 0,
                 {},
                 false};
  doorbells_[2 * qid + 1].store(0, std::memory_order_relaxed);
  return {};
}

VfController::Outcome VfController::create_sq(const Sqe& sqe) noexcept {
  const unsigned qid = sqe.cdw10 & 0xFFFF;
  const unsigned qsize = (sqe.cdw10 >> 16) + 1;
  const bool pc = (sqe.cdw11 & 1) != 0;
  const unsigned cqid = sqe.cdw11 >> 16;
  const unsigned granted = nsqa_ != 0 ? nsqa_ : res_.ioq;
  if (qid == 0 || qid > granted || qid > p_.max_ioq || sqs_[qid].live) {
    return fail(sc::kInvalidQueueId);
  }
  if (cqid == 0 || cqid > p_.max_ioq || !cqs_[cqid].live) return fail(sc::kCqInvalid);
  if (qsize < 2 || qsize > p_.mqes + 1) return fail(sc::kInvalidQueueSize);
  if (!pc) return fail(sc::kInvalidField);
  if (regs::field_get(last_cc_, nv::CC_IOSQES_MASK, nv::CC_IOSQES_SHIFT) != nvme::kSqesLog2) {
    return fail(sc::kInvalidField);
  }
  if (sqe.prp1 % page_bytes() != 0 || sqe.prp1 == 0) return fail(sc::kPrpOffsetInvalid);
  sqs_[qid] =
      Sq{true, sqe.prp1, static_cast<std::uint16_t>(qsize), 0, static_cast<std::uint16_t>(cqid)};
  ++cqs_[cqid].sq_refs;
  doorbells_[2 * qid].store(0, std::memory_order_relaxed);
  return {};
}

VfController::Outcome VfController::delete_sq(const Sqe& sqe) noexcept {
  const unsigned qid = sqe.cdw10 & 0xFFFF;
  if (qid == 0 || qid > p_.max_ioq || !sqs_[qid].live) return fail(sc::kInvalidQueueId);
  // Commands of this SQ that never completed are aborted by the deletion.
  std::size_t keep = 0;
  for (const Stuck& s : stuck_) {
    if (s.sqid != qid) {
      stuck_[keep++] = s;
      continue;
    }
    nvme::Cqe cqe{};
    cqe.sq_head = s.sq_head;
    cqe.sq_id = s.sqid;
    cqe.cid = s.cid;
    cqe.status = static_cast<std::uint16_t>(sc::kAbortSqDeleted << 1);
    if (cq_has_room(cqs_[s.cqid])) post(s.cqid, cqe);
  }
  stuck_.resize(keep);
  --cqs_[sqs_[qid].cqid].sq_refs;
  sqs_[qid] = Sq{};
  return {};
}

VfController::Outcome VfController::delete_cq(const Sqe& sqe) noexcept {
  const unsigned qid = sqe.cdw10 & 0xFFFF;
  if (qid == 0 || qid > p_.max_ioq || !cqs_[qid].live) return fail(sc::kInvalidQueueId);
  if (cqs_[qid].sq_refs != 0) return fail(sc::kInvalidQueueDeletion);
  std::erase_if(pending_, [&](const Pending& p) { return p.cqid == qid; });
  cqs_[qid] = Cq{};
  return {};
}

VfController::Outcome VfController::features(const Sqe& sqe, bool set) noexcept {
  const unsigned fid = sqe.cdw10 & 0xFF;
  if (fid != nvme::feature::kNumberOfQueues) return fail(sc::kInvalidField);
  if (set) {
    if ((sqe.cdw10 >> 31) != 0) return fail(sc::kInvalidField);  // not saveable
    const unsigned nsqr = sqe.cdw11 & 0xFFFF;
    const unsigned ncqr = sqe.cdw11 >> 16;
    if (nsqr == 0xFFFF || ncqr == 0xFFFF) return fail(sc::kInvalidField);
    for (std::size_t q = 1; q < sqs_.size(); ++q) {
      if (sqs_[q].live || cqs_[q].live) return fail(sc::kCommandSequenceError);
    }
    nsqa_ = std::min(nsqr + 1, res_.ioq);
    ncqa_ = std::min(ncqr + 1, res_.ioq);
  }
  const unsigned sqa = nsqa_ != 0 ? nsqa_ : res_.ioq;
  const unsigned cqa = ncqa_ != 0 ? ncqa_ : res_.ioq;
  return {sc::kSuccess, ((cqa - 1) << 16) | (sqa - 1)};
}

VfController::Outcome VfController::get_log_page(const Sqe& sqe) noexcept {
  const unsigned lid = sqe.cdw10 & 0xFF;
  const std::uint64_t numd = ((std::uint64_t{sqe.cdw11} & 0xFFFF) << 16 | (sqe.cdw10 >> 16)) + 1;
  const std::uint64_t bytes = numd * 4;
  const std::uint64_t offset = sqe.cdw12 | (std::uint64_t{sqe.cdw13} << 32);
  std::size_t log_bytes = 0;
  std::memset(scratch_.data(), 0, scratch_.size());
  switch (lid) {
    case nvme::log_page::kErrorInfo:
      log_bytes = 64 * 4;  // four entries, all empty: the model records no errors
      break;
    case nvme::log_page::kSmart: {
      auto* s = reinterpret_cast<nvme_smart_log*>(scratch_.data());  // staging buffer
      auto put128 = [](std::uint8_t* dst, std::uint64_t v) { std::memcpy(dst, &v, sizeof v); };
      s->temperature[0] = 0x3B;  // 315 K
      s->temperature[1] = 0x01;
      s->avail_spare = 100;
      s->spare_thresh = 10;
      put128(s->data_units_read, (units_read_ + 999) / 1000);
      put128(s->data_units_written, (units_written_ + 999) / 1000);
      put128(s->host_reads, host_reads_);
      put128(s->host_writes, host_writes_);
      log_bytes = sizeof(nvme_smart_log);
      break;
    }
    case nvme::log_page::kFirmwareSlot: {
      auto* f = reinterpret_cast<nvme_firmware_slot*>(scratch_.data());  // staging buffer
      f->afi = 1;
      put_padded(f->frs[0], sizeof f->frs[0], "0.1");
      log_bytes = sizeof(nvme_firmware_slot);
      break;
    }
    default: return fail(sc::kInvalidLogPage);
  }
  if (offset % 4 != 0 || offset >= log_bytes) return fail(sc::kInvalidField);
  const std::uint64_t mdts_bytes = (1ull << p_.mdts) * 4096;
  if (bytes > mdts_bytes || offset + bytes > scratch_.size()) {
    return fail(sc::kInvalidField);
  }
  return {transfer(sqe, scratch_.data() + offset, static_cast<std::size_t>(bytes), true)};
}

VfController::Outcome VfController::abort_cmd(const Sqe& sqe, std::uint64_t now_ns) noexcept {
  const std::uint16_t sqid = static_cast<std::uint16_t>(sqe.cdw10 & 0xFFFF);
  const std::uint16_t cid = static_cast<std::uint16_t>(sqe.cdw10 >> 16);
  for (std::size_t i = 0; i < stuck_.size(); ++i) {
    const Stuck s = stuck_[i];
    if (s.sqid != sqid || s.cid != cid) continue;
    if (faults_.swallow_aborts > 0) {  // acknowledged, yet the command stays stuck
      --faults_.swallow_aborts;
      return {sc::kSuccess, 0};
    }
    if (!cq_has_room(cqs_[s.cqid])) break;
    nvme::Cqe cqe{};
    cqe.sq_head = s.sq_head;
    cqe.sq_id = s.sqid;
    cqe.cid = s.cid;
    cqe.status = static_cast<std::uint16_t>(sc::kAbortRequested << 1);
    stuck_.erase(stuck_.begin() + static_cast<std::ptrdiff_t>(i));
    post(s.cqid, cqe);
    return {sc::kSuccess, 0};
  }
  for (Pending& p : pending_) {
    if (p.cqe.sq_id != sqid || p.cqe.cid != cid) continue;
    p.cqe.status = static_cast<std::uint16_t>(sc::kAbortRequested << 1);
    p.due_ns = now_ns;
    return {sc::kSuccess, 0};
  }
  return {sc::kSuccess, 1};  // dw0 bit 0: command not aborted (already completed or unknown)
}

}  // namespace keel::fpga::model
