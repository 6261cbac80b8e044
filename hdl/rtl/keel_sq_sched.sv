`resetall
`timescale 1ns / 1ps
`default_nettype none

// Submission-queue scheduler of keel_frontend. Each cycle it looks at one VF (the scan pointer
// walks the present VFs round robin) and picks a submission queue with commands and
// completion-queue room: the admin SQ first, then the IO SQs round robin from the VF's
// pointer. It sizes the batch to fetch: pending SQEs, CQ room, free job slots, no wrap and one
// FETCH_MAX-aligned group (an admin batch is always one SQE).
//
// The queue contexts (keel_qctx port a), doorbells and CQ state it reads are those of the
// scanned VF, valid while `en`.
module keel_sq_sched #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // IO queue pairs per VF the hardware implements (1..255).
  parameter int NUM_IOQ = 8,
  // Job slots per VF.
  parameter int JOBQ = 4,
  // Largest number of SQEs fetched in one host read (power of two, <= 8).
  parameter int FETCH_MAX = 4,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Queues per VF including the admin queue (derived).
  parameter int QN = NUM_IOQ + 1,
  // Width of a queue index within a VF (derived).
  parameter int QW = $clog2(QN),
  // Width of a job slot index (derived).
  parameter int JW = $clog2(JOBQ),
  // Width of a batch size, 0..FETCH_MAX (derived).
  parameter int FW = $clog2(FETCH_MAX) + 1
) (
  input  wire                       clk,
  input  wire                       rst,

  // Look at the scanned VF this cycle (the front end is idle and has a free job slot there).
  input  wire                       en,
  // Move the scan pointer to the next present VF.
  input  wire                       advance,
  // The pick is taken: the VF's IO round robin moves past the picked queue.
  input  wire                       take,
  // VF rst_vf was disabled: its IO round robin starts again at queue 1.
  input  wire                       rst_vf_valid,
  input  wire  [VFW-1:0]            rst_vf,

  // VF state.
  input  wire  [NUM_VFS-1:0]        vf_present,
  input  wire  [NUM_VFS-1:0]        vf_removed,
  input  wire  [NUM_VFS-1:0]        vf_ready,
  input  wire  [NUM_VFS-1:0]        vf_fatal,
  input  wire  [NUM_VFS-1:0]        vf_blocked,
  input  wire  [NUM_VFS-1:0]        rate_allow,
  input  wire  [NUM_VFS-1:0]        jq_idle,

  // The scanned VF: its free job slots, doorbells, CQ state and queue contexts.
  output logic [VFW-1:0]            scan_vf,
  input  wire  [JW:0]               free_slots,
  input  wire  [QN*17-1:0]          db_sq_tail,
  input  wire  [QN*17-1:0]          db_cq_head,
  input  wire  [QN*16-1:0]          cq_tail,
  input  wire  [QN*17-1:0]          cq_reserved,
  input  wire  [QN-1:0]             a_sq_live,
  input  wire  [QN*17-1:0]          a_sq_size,
  input  wire  [QN*16-1:0]          a_sq_head,
  input  wire  [QN*QW-1:0]          a_sq_cqid,
  input  wire  [QN-1:0]             a_cq_live,
  input  wire  [QN*17-1:0]          a_cq_size,
  input  wire  [QN*17-1:0]          a_cq_infl,

  // The pick: SQ pick_q of the scanned VF, its CQ, pick_k SQEs from head pick_head (the head
  // after them: pick_next_head), the SQ's size.
  output logic                      pick_valid,
  output logic [QW-1:0]             pick_q,
  output logic [QW-1:0]             pick_c,
  output logic [FW-1:0]             pick_k,
  output logic [15:0]               pick_head,
  output logic [15:0]               pick_next_head,
  output logic [16:0]               pick_size
);

  logic [VFW-1:0] sv_q;                 // scanned VF
  logic [QW-1:0]  rr_q [NUM_VFS];       // next IO SQ to look at first, per VF

  logic [QN-1:0]  s_has, s_room;
  logic [16:0]    s_pend  [QN];
  logic [17:0]    s_avail [QN];
  logic           s_vf_ok;
  logic [QW-1:0]  s_rrq;
  logic [16:0]    s_tail, s_head, s_csz, s_ch, s_used, s_ct, s_k, s_lim, s_hd, s_nh;
  logic [QW-1:0]  s_c;

  always_comb begin
    scan_vf = sv_q;
    s_vf_ok = en && vf_present[sv_q] && !vf_removed[sv_q] && vf_ready[sv_q] &&
              !vf_fatal[sv_q] && !vf_blocked[sv_q];
    s_c = '0;
    s_tail = '0;
    s_head = '0;
    s_csz = '0;
    s_ch = '0;
    s_ct = '0;
    s_used = '0;
    s_has = '0;
    s_room = '0;
    for (int q = 0; q < QN; q++) begin
      s_pend[q] = '0;
      s_avail[q] = '0;
    end
    if (s_vf_ok) for (int q = 0; q < QN; q++) begin
      s_c = a_sq_cqid[q*QW +: QW];
      s_tail = db_sq_tail[q*17 +: 17];
      s_head = {1'b0, a_sq_head[q*16 +: 16]};
      s_has[q] = a_sq_live[q] && s_tail < a_sq_size[q*17 +: 17] && s_tail != s_head;
      s_pend[q] = s_tail >= s_head ? s_tail - s_head : s_tail + a_sq_size[q*17 +: 17] - s_head;
      s_csz = a_cq_size[32'(s_c)*17 +: 17];
      s_ch = db_cq_head[32'(s_c)*17 +: 17];
      s_ct = {1'b0, cq_tail[32'(s_c)*16 +: 16]};
      s_used = s_ct >= s_ch ? s_ct - s_ch : s_ct + s_csz - s_ch;
      s_avail[q] = {1'b0, s_csz} - 18'd1 - {1'b0, s_used} -
                   {1'b0, cq_reserved[32'(s_c)*17 +: 17]} - {1'b0, a_cq_infl[32'(s_c)*17 +: 17]};
      s_room[q] = a_cq_live[s_c] && s_ch < s_csz && !s_avail[q][17] && s_avail[q] != 18'd0;
    end
    // The admin queue goes first; while it has a command that could run, IO of the VF waits
    // (and the admin command itself waits until the VF has no command in flight).
    pick_valid = 1'b0;
    pick_q = '0;
    s_rrq = '0;
    if (s_vf_ok && s_has[0] && s_room[0]) begin
      pick_valid = jq_idle[sv_q];
    end else if (s_vf_ok && rate_allow[sv_q] && free_slots != '0) begin
      for (int n = QN - 1; n >= 1; n--) begin
        // queues rr, rr + 1, ... (1..QN-1): the earliest eligible one wins
        s_rrq = QW'((32'(rr_q[sv_q]) - 1 + n - 1) % (QN - 1) + 1);
        if (s_has[s_rrq] && s_room[s_rrq]) begin
          pick_valid = 1'b1;
          pick_q = s_rrq;
        end
      end
    end
    // Batch: pending SQEs, CQ room, free job slots, no wrap, one FETCH_MAX-aligned group.
    pick_c = a_sq_cqid[32'(pick_q)*QW +: QW];
    s_hd = {1'b0, a_sq_head[32'(pick_q)*16 +: 16]};
    s_k = 17'(FETCH_MAX) - (s_hd & 17'(FETCH_MAX - 1));
    if (s_pend[pick_q] < s_k) s_k = s_pend[pick_q];
    s_lim = a_sq_size[32'(pick_q)*17 +: 17] - s_hd;
    if (s_lim < s_k) s_k = s_lim;
    if (s_avail[pick_q][16:0] < s_k) s_k = s_avail[pick_q][16:0];
    if (17'(free_slots) < s_k) s_k = 17'(free_slots);
    pick_k = pick_q != '0 ? FW'(s_k) : FW'(1);
    s_nh = s_hd + 17'(pick_k);
    if (s_nh >= a_sq_size[32'(pick_q)*17 +: 17]) s_nh = s_nh - a_sq_size[32'(pick_q)*17 +: 17];
    pick_head = s_hd[15:0];
    pick_next_head = s_nh[15:0];
    pick_size = a_sq_size[32'(pick_q)*17 +: 17];
  end

  // Next present VF after sv_q.
  logic [VFW-1:0] sv_next, sv_cand;
  always_comb begin
    sv_next = sv_q;
    sv_cand = sv_q;
    for (int n = NUM_VFS; n >= 1; n--) begin
      sv_cand = VFW'((32'(sv_q) + n) % NUM_VFS);
      if (vf_present[sv_cand]) sv_next = sv_cand;
    end
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      sv_q <= '0;
      for (int i = 0; i < NUM_VFS; i++) rr_q[i] <= QW'(1);
    end else begin
      if (advance) sv_q <= sv_next;
      if (take && pick_q != '0) begin
        rr_q[sv_q] <= 32'(pick_q) == QN - 1 ? QW'(1) : pick_q + QW'(1);
      end
      if (rst_vf_valid) rr_q[rst_vf] <= QW'(1);
    end
  end

endmodule
