`resetall
`timescale 1ns / 1ps
`default_nettype none

// Front end of the keel card: the command processor shared by every VF's NVMe controller.
//
// It owns the queue-context RAM (every SQ and CQ of every VF). Each cycle it looks at one VF
// (scan pointer, round robin over present VFs) and picks a submission queue with commands and
// completion-queue room: the admin SQ first, then the IO SQs round robin. It fetches up to
// FETCH_MAX consecutive SQEs in one host read, then handles them one by one:
//   - admin commands execute (queue create/delete, features, abort, AER) or become an
//     internal-data job (Identify, Get Log Page). An admin command runs only when the VF has no
//     command in flight, so it sees the controller exactly as the reference model does.
//   - IO commands are validated; Read/Write/Identify/Get Log Page walk PRP1/PRP2/PRP lists
//     (reading lists from host memory) into the job's segment RAM, then every list and data
//     region is checked on the address-translation port before any data moves.
// Each command leaves as one record in its VF's job queue (keel_jobq).
//
// This module is the sequencer (pick, fetch, decode, execute, push) and builds the job record;
// its parts do the work: keel_sq_sched picks the SQ and the batch, keel_sqe_fetch reads the
// SQEs, keel_cmd_decode decodes and validates one, keel_admin_exec carries out admin commands
// and keel_ctrl's operations, keel_prp_walker walks a transfer's PRPs and checks them,
// keel_qctx holds the queue contexts.
module keel_frontend #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // IO queue pairs per VF the hardware implements (1..255).
  parameter int NUM_IOQ = 8,
  // CAP.MQES (0-based largest queue).
  parameter int MQES = 1023,
  // Identify MDTS: largest transfer is 2^MDTS pages of 4 KiB.
  parameter int MDTS = 5,
  // Job slots per VF.
  parameter int JOBQ = 4,
  // Largest number of SQEs fetched in one host read (power of two, <= 8).
  parameter int FETCH_MAX = 4,
  // Width of a generation tag.
  parameter int GW = 4,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Queues per VF including the admin queue (derived).
  parameter int QN = NUM_IOQ + 1,
  // Width of a queue index within a VF (derived).
  parameter int QW = $clog2(QN),
  // Width of a global queue index (derived).
  parameter int GQW = $clog2(NUM_VFS * QN),
  // Width of a job slot index (derived).
  parameter int JW = $clog2(JOBQ),
  // Width of a segment index (derived).
  parameter int SW = MDTS
) (
  input  wire                       clk,
  input  wire                       rst,

  input  wire  [7:0]                cfg_max_ioq,

  // VF state.
  input  wire  [NUM_VFS-1:0]        vf_present,
  input  wire  [NUM_VFS-1:0]        vf_removed,
  input  wire  [NUM_VFS-1:0]        vf_ready,
  input  wire  [NUM_VFS-1:0]        vf_fatal,
  input  wire  [NUM_VFS-1:0]        vf_blocked,
  input  wire  [NUM_VFS*GW-1:0]     vf_gen,
  input  wire  [NUM_VFS-1:0]        rate_allow,
  input  wire  [NUM_VFS*32-1:0]     vf_cc,
  input  wire  [NUM_VFS*8-1:0]      res_ioq,
  input  wire  [NUM_VFS*64-1:0]     res_base,
  input  wire  [NUM_VFS*64-1:0]     res_lbas,

  // Doorbells and CQ state of the scanned VF (looked at only while scan_en).
  output logic                      scan_en,
  output logic [VFW-1:0]            scan_vf,
  input  wire  [QN*17-1:0]          db_sq_tail,
  input  wire  [QN*17-1:0]          db_cq_head,
  input  wire  [QN*16-1:0]          cq_tail,
  input  wire  [QN*17-1:0]          cq_reserved,
  output logic                      db_clr_valid,
  output logic [GQW-1:0]            db_clr_g,
  output logic [1:0]                db_clr_mask,
  output logic                      cq_init_valid,
  output logic [GQW-1:0]            cq_init_g,

  // CQ context read port (completion writer).
  input  wire  [GQW-1:0]            cx_g,
  output logic                      cx_live,
  output logic [63:0]               cx_base,
  output logic [16:0]               cx_size,
  output logic                      cx_ien,
  output logic [15:0]               cx_iv,
  // A command of CQ retire_g left the pipeline.
  input  wire                       retire_valid,
  input  wire  [GQW-1:0]            retire_g,

  // Job queues.
  input  wire  [NUM_VFS*(JW+1)-1:0] jq_free_slots,
  input  wire  [NUM_VFS*JW-1:0]     jq_next_slot,
  input  wire  [NUM_VFS-1:0]        jq_idle,
  output logic                      push_valid,
  output logic [VFW-1:0]            push_vf,
  output logic [keel_pkg::JR_W-1:0] push_rec,
  output logic                      seg_wr_valid,
  output logic [VFW-1:0]            seg_wr_vf,
  output logic [JW-1:0]             seg_wr_slot,
  output logic [SW-1:0]             seg_wr_idx,
  output logic [63:0]               seg_wr_data,
  output logic [VFW-1:0]            seg_rd_vf,
  output logic [JW-1:0]             seg_rd_slot,
  output logic [SW-1:0]             seg_rd_idx,
  output logic                      seg_rd_en,
  input  wire  [63:0]               seg_rd_data,
  output logic [NUM_VFS-1:0]        jobs_idle,

  // Operations from keel_ctrl.
  input  wire                       op_valid,
  input  wire                       op_enable,
  input  wire  [VFW-1:0]            op_vf,
  input  wire  [63:0]               op_asq,
  input  wire  [63:0]               op_acq,
  input  wire  [12:0]               op_asqs,
  input  wire  [12:0]               op_acqs,
  output logic                      op_done,
  output logic                      fatal_valid,
  output logic [VFW-1:0]            fatal_vf,

  // Operations on the completion writer's stuck and delayed completions.
  output logic                      cq_op_valid,
  output logic [1:0]                cq_op_kind,   // 0 abort, 1 SQ deleted, 2 CQ deleted
  output logic [VFW-1:0]            cq_op_vf,
  output logic [15:0]               cq_op_qid,
  output logic [15:0]               cq_op_cid,
  input  wire                       cq_op_done,
  input  wire  [31:0]               cq_op_dw0,

  // Host reads (SQEs, PRP lists).
  output logic                      m_ar_valid,
  input  wire                       m_ar_ready,
  output logic [63:0]               m_ar_addr,
  output logic [7:0]                m_ar_len,
  output logic [7:0]                m_ar_fn,
  input  wire                       s_r_valid,
  output logic                      s_r_ready,
  input  wire  [511:0]              s_r_data,
  input  wire  [1:0]                s_r_resp,
  input  wire                       s_r_last,

  // Address translation checks (ATS-style): is [addr, addr + len) mapped for the function?
  output logic                      m_ats_valid,
  input  wire                       m_ats_ready,
  output logic [7:0]                m_ats_fn,
  output logic [63:0]               m_ats_addr,
  output logic [31:0]               m_ats_len,
  input  wire                       s_ats_resp_valid,
  input  wire                       s_ats_resp_ok,

  // A host DMA request of this block was refused.
  output logic                      fault_valid,
  output logic [VFW-1:0]            fault_vf,

  // Idle: a full scan of the VFs found nothing to fetch (kick restarts the count).
  input  wire                       kick,
  output logic                      idle
);

  if (NUM_VFS < 1 || NUM_VFS > 64) begin : g_bad_vfs
    $fatal(1, "keel_frontend: NUM_VFS must be 1..64");
  end
  if (NUM_IOQ < 1 || NUM_IOQ > 255) begin : g_bad_ioq
    $fatal(1, "keel_frontend: NUM_IOQ must be 1..255");
  end
  if (MDTS < 1 || MDTS > 8) begin : g_bad_mdts
    $fatal(1, "keel_frontend: MDTS must be 1..8");
  end
  if (FETCH_MAX < 1 || FETCH_MAX > 8 || (FETCH_MAX & (FETCH_MAX - 1)) != 0) begin : g_bad_fetch
    $fatal(1, "keel_frontend: FETCH_MAX must be 1, 2, 4 or 8");
  end
  if (JOBQ < FETCH_MAX) begin : g_bad_jobq
    $fatal(1, "keel_frontend: JOBQ must be >= FETCH_MAX");
  end

  localparam int FW = $clog2(FETCH_MAX) + 1;   // holds 0..FETCH_MAX
  localparam int FI = (FETCH_MAX > 1) ? $clog2(FETCH_MAX) : 1;

  // S_FETCH: keel_sqe_fetch reads the batch; S_CQOP: keel_admin_exec waits for the completion
  // writer; S_WALK: keel_prp_walker walks the command's PRPs, its last cycle is the push.
  typedef enum logic [2:0] {
    S_IDLE, S_OP, S_FETCH, S_DEC, S_CQOP, S_WALK, S_PUSH
  } state_t;
  state_t st_q;

  // ---------------------------------------------------------------- batch state
  logic [VFW-1:0] v_q;                  // VF of the batch
  logic [QW-1:0]  q_q;                  // SQ of the batch
  logic [QW-1:0]  c_q;                  // its CQ
  logic [GW-1:0]  gen_q;
  logic [15:0]    head0_q;              // SQ head before the batch
  logic [16:0]    size_q;               // SQ size
  logic [FW-1:0]  k_q, i_q;             // batch size, current SQE
  logic [JW-1:0]  slot_q;               // job slot of the current SQE
  logic [7:0]     nopick_q;             // consecutive scans without work

  // ---------------------------------------------------------------- record being built
  logic [2:0]     r_kind_q, r_src_q, r_mps_q;
  logic [14:0]    r_status_q;
  logic [31:0]    r_dw0_q, r_bytes_q;
  logic           r_nocqe_q, r_srcarg_q;
  logic [63:0]    r_addr_q, r_prp1_q, r_prp2_q;
  logic [1:0]     r_ctr_q;
  logic [16:0]    r_nlb_q;
  logic [15:0]    r_cid_q, r_sqhead_q;

  // ---------------------------------------------------------------- queue contexts
  logic           x_sq_set, x_sq_kill, x_hd_we, x_cq_set, x_cq_kill, x_ref_we, x_infl_add;
  logic           x_vf_clr;
  logic [GQW-1:0] x_sq_g, x_hd_g, x_cq_g, x_ref_g, x_infl_g, x_b_g;
  logic [63:0]    x_sq_base, x_cq_base, x_b_base;
  logic [16:0]    x_sq_size, x_cq_size;
  logic [QW-1:0]  x_sq_cqid;
  logic [15:0]    x_hd, x_cq_iv;
  logic           x_cq_ien;
  logic [8:0]     x_ref;
  logic [3:0]     x_infl_k;
  logic [QN-1:0]  a_sq_live, a_cq_live, d_sq_live, d_cq_live;
  logic [QN*17-1:0] a_sq_size, a_cq_size, a_cq_infl;
  logic [QN*16-1:0] a_sq_head;
  logic [QN*QW-1:0] a_sq_cqid, d_sq_cqid;
  logic [QN*9-1:0]  d_cq_refs;

  keel_qctx #(.NUM_VFS(NUM_VFS), .NUM_IOQ(NUM_IOQ)) u_qctx (
    .clk, .rst,
    .sq_set(x_sq_set), .sq_kill(x_sq_kill), .sq_g(x_sq_g), .sq_base_in(x_sq_base),
    .sq_size_in(x_sq_size), .sq_cqid_in(x_sq_cqid),
    .hd_we(x_hd_we), .hd_g(x_hd_g), .hd_in(x_hd),
    .cq_set(x_cq_set), .cq_kill(x_cq_kill), .cq_g(x_cq_g), .cq_base_in(x_cq_base),
    .cq_size_in(x_cq_size), .cq_ien_in(x_cq_ien), .cq_iv_in(x_cq_iv),
    .ref_we(x_ref_we), .ref_g(x_ref_g), .ref_in(x_ref),
    .infl_add(x_infl_add), .infl_add_g(x_infl_g), .infl_add_k(x_infl_k),
    .infl_dec(retire_valid), .infl_dec_g(retire_g),
    .vf_clr(x_vf_clr), .vf_clr_vf(op_vf),
    .a_en(scan_en), .a_vf(scan_vf), .a_sq_live, .a_sq_size, .a_sq_head, .a_sq_cqid, .a_cq_live, .a_cq_size,
    .a_cq_infl,
    .b_g(x_b_g), .b_sq_base(x_b_base),
    .c_g(cx_g), .c_cq_live(cx_live), .c_cq_base(cx_base), .c_cq_size(cx_size),
    .c_cq_ien(cx_ien), .c_cq_iv(cx_iv),
    .d_en(st_q == S_DEC || st_q == S_CQOP), .d_vf(v_q), .d_sq_live, .d_cq_live, .d_cq_refs, .d_sq_cqid
  );

  // ---------------------------------------------------------------- scheduler (scan VF)
  logic           pick_valid;
  logic [QW-1:0]  pick_q, pick_c;
  logic [FW-1:0]  pick_k;
  logic [15:0]    pick_head, pick_next_head;
  logic [16:0]    pick_size;
  logic [JW:0]    s_free;

  // A VF without a free job slot has commands in flight: it can take neither an IO command
  // (no slot) nor an admin command (not idle), so the scan skips it without looking further.
  assign s_free = jq_free_slots[32'(scan_vf)*(JW+1) +: JW+1];
  assign scan_en = st_q == S_IDLE && !op_valid && s_free != '0;

  keel_sq_sched #(.NUM_VFS(NUM_VFS), .NUM_IOQ(NUM_IOQ), .JOBQ(JOBQ), .FETCH_MAX(FETCH_MAX)) u_sched (
    .clk, .rst, .en(scan_en), .advance(st_q == S_IDLE), .take(x_hd_we),
    .rst_vf_valid(x_vf_clr), .rst_vf(op_vf),
    .vf_present, .vf_removed, .vf_ready, .vf_fatal, .vf_blocked, .rate_allow, .jq_idle,
    .scan_vf, .free_slots(s_free), .db_sq_tail, .db_cq_head, .cq_tail, .cq_reserved,
    .a_sq_live, .a_sq_size, .a_sq_head, .a_sq_cqid, .a_cq_live, .a_cq_size, .a_cq_infl,
    .pick_valid, .pick_q, .pick_c, .pick_k, .pick_head, .pick_next_head, .pick_size
  );

  // ---------------------------------------------------------------- decoder (SQE i_q)
  logic [511:0] sqe;
  logic         stale;
  logic [2:0]   dk, dsrc, dmps;
  logic [14:0]  dst;
  logic [31:0]  ddw0, dbytes;
  logic         dnocqe, dsrcarg, dxfer;
  logic [63:0]  daddr;
  logic [1:0]   dctr;
  logic [16:0]  dnlb, dqsize;
  logic         dcreate_cq, dcreate_sq, ddelete_sq, ddelete_cq, dabort, daer, dsetq;
  logic [15:0]  dqid, dcqid, div, dab_sqid, dab_cid;
  logic         dien;
  logic [8:0]   dnsqa, dncqa;

  assign stale = vf_gen[32'(v_q)*GW +: GW] != gen_q;

  // ---------------------------------------------------------------- SQE fetch
  logic        f_done, f_err, f_ar_valid, f_r_ready, f_fault;
  logic [63:0] f_ar_addr;
  logic [7:0]  f_ar_len;

  keel_sqe_fetch #(.FETCH_MAX(FETCH_MAX)) u_fetch (
    .clk, .rst, .start(x_hd_we), .addr(x_b_base + {42'd0, pick_head, 6'd0}),
    .len(8'(pick_k) - 8'd1), .done(f_done), .err(f_err), .idx(i_q[FI-1:0]), .sqe,
    .m_ar_valid(f_ar_valid), .m_ar_ready, .m_ar_addr(f_ar_addr), .m_ar_len(f_ar_len),
    .s_r_valid, .s_r_ready(f_r_ready), .s_r_data, .s_r_resp, .s_r_last,
    .fault_valid(f_fault)
  );

  keel_cmd_decode #(.NUM_IOQ(NUM_IOQ), .MQES(MQES), .MDTS(MDTS)) u_decode (
    .en(st_q == S_DEC), .sqe, .admin(q_q == '0), .cfg_max_ioq, .res_ioq(res_ioq[32'(v_q)*8 +: 8]),
    .res_base(res_base[32'(v_q)*64 +: 64]), .res_lbas(res_lbas[32'(v_q)*64 +: 64]),
    .nsqa, .ncqa, .aers, .cc(vf_cc[32'(v_q)*32 +: 32]),
    .sq_live(d_sq_live), .cq_live(d_cq_live), .cq_refs(d_cq_refs),
    .o_kind(dk), .o_status(dst), .o_dw0(ddw0), .o_nocqe(dnocqe), .o_src(dsrc),
    .o_srcarg(dsrcarg), .o_addr(daddr), .o_bytes(dbytes), .o_ctr(dctr), .o_nlb(dnlb),
    .o_mps(dmps), .o_xfer(dxfer),
    .o_create_cq(dcreate_cq), .o_create_sq(dcreate_sq), .o_delete_sq(ddelete_sq),
    .o_delete_cq(ddelete_cq), .o_abort(dabort), .o_aer(daer), .o_set_queues(dsetq),
    .o_qid(dqid), .o_qsize(dqsize), .o_cqid(dcqid), .o_ien(dien), .o_iv(div),
    .o_abort_sqid(dab_sqid), .o_abort_cid(dab_cid), .o_nsqa(dnsqa), .o_ncqa(dncqa)
  );

  // ---------------------------------------------------------------- admin execution
  logic [8:0] nsqa, ncqa;
  logic [3:0] aers;
  logic       cq_op_start;

  keel_admin_exec #(.NUM_VFS(NUM_VFS), .NUM_IOQ(NUM_IOQ)) u_admin (
    .clk, .rst, .in_op(st_q == S_OP), .in_dec(st_q == S_DEC), .stale, .in_cqop(st_q == S_CQOP),
    .v(v_q), .op_enable, .op_vf, .op_asq, .op_acq, .op_asqs, .op_acqs, .op_done,
    .sqe_prp1(sqe[255:192]), .sqe_cid(sqe[31:16]),
    .d_create_cq(dcreate_cq), .d_create_sq(dcreate_sq), .d_delete_sq(ddelete_sq),
    .d_delete_cq(ddelete_cq), .d_abort(dabort), .d_aer(daer), .d_set_queues(dsetq),
    .d_qid(dqid), .d_qsize(dqsize), .d_cqid(dcqid), .d_ien(dien), .d_iv(div),
    .d_abort_sqid(dab_sqid), .d_abort_cid(dab_cid), .d_nsqa(dnsqa), .d_ncqa(dncqa),
    .nsqa, .ncqa, .aers, .d_cq_refs, .d_sq_cqid,
    .x_vf_clr, .x_sq_set, .x_sq_kill, .x_sq_g, .x_sq_base, .x_sq_size, .x_sq_cqid,
    .x_cq_set, .x_cq_kill, .x_cq_g, .x_cq_base, .x_cq_size, .x_cq_ien, .x_cq_iv,
    .x_ref_we, .x_ref_g, .x_ref,
    .db_clr_valid, .db_clr_g, .db_clr_mask, .cq_init_valid, .cq_init_g,
    .cq_op_start, .cq_op_valid, .cq_op_kind, .cq_op_qid, .cq_op_cid, .cq_op_done
  );

  // ---------------------------------------------------------------- PRP walk
  logic        walk_start, walk_busy, walk_done, walk_err;
  logic [14:0] walk_status;
  logic [SW:0] nseg;
  logic        w_ar_valid, w_r_ready, w_fault;
  logic [63:0] w_ar_addr;
  logic [7:0]  w_ar_len;

  // A transfer command that stays in the front end (not a queue deletion or an abort).
  assign walk_start = st_q == S_DEC && !stale && dxfer && !cq_op_start;

  keel_prp_walker #(.SW(SW)) u_walker (
    .clk, .rst, .clr(st_q == S_DEC), .start(walk_start), .prp1(r_prp1_q), .prp2(r_prp2_q),
    .bytes(r_bytes_q), .mps(r_mps_q),
    .busy(walk_busy), .done(walk_done), .err(walk_err), .err_status(walk_status), .nseg,
    .seg_wr_valid, .seg_wr_idx, .seg_wr_data, .seg_rd_idx, .seg_rd_en, .seg_rd_data,
    .m_ar_valid(w_ar_valid), .m_ar_ready, .m_ar_addr(w_ar_addr), .m_ar_len(w_ar_len),
    .s_r_valid, .s_r_ready(w_r_ready), .s_r_data, .s_r_resp,
    .m_ats_valid, .m_ats_ready, .m_ats_addr, .m_ats_len, .s_ats_resp_valid, .s_ats_resp_ok,
    .fault_valid(w_fault)
  );

  // The walker's last cycle is the push; a failed walk replaces the decoder's verdict.
  logic        pushing, push_fail;
  assign pushing = st_q == S_PUSH || (st_q == S_WALK && walk_done);
  assign push_fail = st_q == S_WALK && walk_err;

  // ---------------------------------------------------------------- outputs
  always_comb begin
    push_vf = v_q;
    push_rec = '0;
    if (pushing) begin
      push_rec[keel_pkg::JR_KIND +: 3] = push_fail ? keel_pkg::JOB_NONE : r_kind_q;
      push_rec[keel_pkg::JR_GEN +: 8] = 8'(gen_q);
      push_rec[keel_pkg::JR_SQID +: 16] = 16'(q_q);
      push_rec[keel_pkg::JR_CQID +: 16] = 16'(c_q);
      push_rec[keel_pkg::JR_CID +: 16] = r_cid_q;
      push_rec[keel_pkg::JR_SQHEAD +: 16] = r_sqhead_q;
      push_rec[keel_pkg::JR_STATUS +: 15] = push_fail ? walk_status : r_status_q;
      push_rec[keel_pkg::JR_DW0 +: 32] = r_dw0_q;
      push_rec[keel_pkg::JR_NOCQE] = r_nocqe_q;
      push_rec[keel_pkg::JR_SRC +: 3] = r_src_q;
      push_rec[keel_pkg::JR_ADDR +: 64] = r_addr_q;
      push_rec[keel_pkg::JR_BYTES +: 32] = r_bytes_q;
      push_rec[keel_pkg::JR_PRP1 +: 64] = r_prp1_q;
      push_rec[keel_pkg::JR_MPS +: 3] = r_mps_q;
      push_rec[keel_pkg::JR_NSEG +: 16] = 16'(nseg);
      push_rec[keel_pkg::JR_CTR +: 2] = r_ctr_q;
      push_rec[keel_pkg::JR_NLB +: 17] = r_nlb_q;
      push_rec[keel_pkg::JR_SRCARG] = r_srcarg_q;
    end
    push_valid = pushing;

    seg_wr_vf = v_q;
    seg_wr_slot = slot_q;
    seg_rd_vf = v_q;
    seg_rd_slot = slot_q;
    // Host reads: the SQE fetch, or the walker's PRP-list reads while it runs.
    m_ar_valid = f_ar_valid || w_ar_valid;
    m_ar_addr = walk_busy ? w_ar_addr : f_ar_addr;
    m_ar_len = walk_busy ? w_ar_len : f_ar_len;
    m_ar_fn = 8'(v_q) + 8'd1;
    m_ats_fn = 8'(v_q) + 8'd1;
    cq_op_vf = v_q;
    fault_valid = f_fault || w_fault;
    fault_vf = v_q;
    fatal_vf = v_q;
    // SQE beats are taken as they come; PRP list beats as the walker wants them.
    s_r_ready = f_r_ready || w_r_ready;
    for (int i = 0; i < NUM_VFS; i++) begin
      jobs_idle[i] = jq_idle[i] && !(st_q != S_IDLE && st_q != S_OP && v_q == VFW'(i));
    end

    // Queue-context writes of the scheduler's pick (keel_admin_exec makes the others).
    x_hd_we = st_q == S_IDLE && !op_valid && pick_valid;
    x_hd_g = GQW'(32'(scan_vf) * QN + 32'(pick_q));
    x_hd = pick_next_head;
    x_infl_add = x_hd_we;
    x_infl_g = GQW'(32'(scan_vf) * QN + 32'(pick_c));
    x_infl_k = 4'(pick_k);
    x_b_g = x_hd_g;
  end

  logic unused_ok;
  always_comb unused_ok = ^{sqe[511:320], sqe[191:32], sqe[15:0]};

  // ---------------------------------------------------------------- the FSM
  assign idle = st_q == S_IDLE && !op_valid && 32'(nopick_q) > NUM_VFS;

  always_ff @(posedge clk) begin
    if (rst || kick || st_q != S_IDLE || op_valid || pick_valid || retire_valid) begin
      nopick_q <= '0;
    end else if (32'(nopick_q) <= NUM_VFS) begin
      nopick_q <= nopick_q + 8'd1;
    end
  end

  always_ff @(posedge clk) begin
    fatal_valid <= 1'b0;
    if (rst) begin
      st_q <= S_IDLE;
    end else begin
      case (st_q)
        S_IDLE: begin
          if (op_valid) begin
            st_q <= S_OP;
          end else if (pick_valid) begin
            v_q <= scan_vf;
            q_q <= pick_q;
            c_q <= pick_c;
            gen_q <= vf_gen[32'(scan_vf)*GW +: GW];
            head0_q <= pick_head;
            size_q <= pick_size;
            k_q <= pick_k;
            st_q <= S_FETCH;
          end
        end

        // keel_admin_exec carries out the operation.
        S_OP: st_q <= S_IDLE;

        S_FETCH: if (f_done) begin
          i_q <= '0;
          if (f_err) begin
            // The controller cannot fetch its own queue: controller fatal status.
            fatal_valid <= 1'b1;
            st_q <= S_IDLE;
          end else begin
            st_q <= S_DEC;
          end
        end

        S_DEC: begin
          logic [16:0] sh;
          sh = {1'b0, head0_q} + 17'(i_q) + 17'd1;
          if (sh >= size_q) sh = sh - size_q;
          r_sqhead_q <= sh[15:0];
          r_cid_q <= sqe[31:16];
          slot_q <= jq_next_slot[32'(v_q)*JW +: JW];
          r_kind_q <= dk;
          r_status_q <= dst;
          r_dw0_q <= ddw0;
          r_nocqe_q <= dnocqe;
          r_src_q <= dsrc;
          r_srcarg_q <= dsrcarg;
          r_addr_q <= daddr;
          r_bytes_q <= dbytes;
          r_ctr_q <= dctr;
          r_nlb_q <= dnlb;
          r_mps_q <= dmps;
          r_prp1_q <= sqe[255:192];
          r_prp2_q <= sqe[319:256];
          st_q <= S_PUSH;
          if (stale) begin
            // The VF was reset after the fetch: the record only retires its slot.
            r_kind_q <= keel_pkg::JOB_NONE;
            r_status_q <= keel_pkg::SC_SUCCESS;
            r_nocqe_q <= 1'b0;
          end else if (cq_op_start) begin
            st_q <= S_CQOP;
          end else if (dxfer) begin
            st_q <= S_WALK;
          end
        end

        // Abort's result is the operation's DW0.
        S_CQOP: if (cq_op_done) begin
          if (cq_op_kind == 2'd0) r_dw0_q <= cq_op_dw0;
          st_q <= S_PUSH;
        end

        S_WALK: if (walk_done) begin
          i_q <= i_q + 1'b1;
          st_q <= (i_q + 1'b1 == k_q) ? S_IDLE : S_DEC;
        end

        S_PUSH: begin
          i_q <= i_q + 1'b1;
          st_q <= (i_q + 1'b1 == k_q) ? S_IDLE : S_DEC;
        end
        default: st_q <= S_IDLE;
      endcase
    end
  end

endmodule
