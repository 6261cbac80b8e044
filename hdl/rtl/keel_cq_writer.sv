`resetall
`timescale 1ns / 1ps
`default_nettype none

// Completion writer: posts phase-tagged CQEs into host completion queues and raises MSI-X.
//
// Takes completion records in order from the data mover. A record of a VF that was reset,
// is not ready or is fatal only retires its job slot. Otherwise it updates the VF's counters
// and either posts its CQE, or (fault injection) parks it among the stuck completions (never
// posted; Abort or Delete I/O SQ finishes them) or the delayed completions (posted when due,
// holding a CQ slot meanwhile). Only after the CQE is in host memory does the record retire,
// so the front end's CQ-room accounting never runs ahead. A refused CQE write is a
// controller fatal status.
module keel_cq_writer #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // IO queue pairs per VF the hardware implements.
  parameter int NUM_IOQ = 8,
  // Width of a generation tag.
  parameter int GW = 4,
  // Stuck (dropped) completions the card can hold.
  parameter int ST_DEPTH = 16,
  // Delayed completions the card can hold.
  parameter int PD_DEPTH = 16,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Queues per VF including the admin queue (derived).
  parameter int QN = NUM_IOQ + 1,
  // Width of a queue index within a VF (derived).
  parameter int QW = $clog2(QN),
  // Width of a global queue index (derived).
  parameter int GQW = $clog2(NUM_VFS * QN)
) (
  input  wire                       clk,
  input  wire                       rst,
  input  wire  [63:0]               cycles,

  // Completion records from the data mover.
  input  wire                       s_rec_valid,
  output logic                      s_rec_ready,
  input  wire  [keel_pkg::JR_W-1:0] s_rec,
  input  wire  [VFW-1:0]            s_rec_vf,

  input  wire  [NUM_VFS*GW-1:0]     vf_gen,
  input  wire  [NUM_VFS-1:0]        vf_ready,
  input  wire  [NUM_VFS-1:0]        vf_fatal,
  input  wire  [NUM_VFS-1:0]        vf_removed,

  // A record left the pipeline: its job slot and its CQ's in-flight count.
  output logic                      retire_valid,
  output logic [VFW-1:0]            retire_vf,
  output logic [GQW-1:0]            retire_g,

  // CQ context (front end), CQ head doorbells (MMIO).
  output logic [GQW-1:0]            cx_g,
  input  wire                       cx_live,
  input  wire  [63:0]               cx_base,
  input  wire  [16:0]               cx_size,
  input  wire                       cx_ien,
  input  wire  [15:0]               cx_iv,
  output logic [GQW-1:0]            db_head_g,
  input  wire  [16:0]               db_head,

  // CQ tails and reserved slots of one VF (for the front end's scheduler, when scan_en).
  input  wire                       scan_en,
  input  wire  [VFW-1:0]            scan_vf,
  output logic [QN*16-1:0]          scan_tail,
  output logic [QN*17-1:0]          scan_reserved,
  input  wire                       cq_init_valid,
  input  wire  [GQW-1:0]            cq_init_g,

  // Operations from the front end (admin commands) and keel_ctrl (resets).
  input  wire                       op_valid,
  input  wire  [1:0]                op_kind,     // 0 abort, 1 SQ deleted, 2 CQ deleted
  input  wire  [VFW-1:0]            op_vf,
  input  wire  [15:0]               op_qid,
  input  wire  [15:0]               op_cid,
  output logic                      op_done,
  output logic [31:0]               op_dw0,
  input  wire                       clr_valid,
  input  wire  [VFW-1:0]            clr_vf,
  input  wire                       clr_flr,
  output logic                      clr_done,
  input  wire                       cfg_valid,   // keel_pkg::DBG_DROP / keel_pkg::DBG_DELAY
  input  wire  [2:0]                cfg_op,
  input  wire  [VFW-1:0]            cfg_vf,
  input  wire  [31:0]               cfg_arg0,
  input  wire  [63:0]               cfg_arg1,

  // Host memory writes (one beat per CQE).
  output logic                      m_aw_valid,
  input  wire                       m_aw_ready,
  output logic [63:0]               m_aw_addr,
  output logic [7:0]                m_aw_len,
  output logic [7:0]                m_aw_fn,
  output logic                      m_w_valid,
  input  wire                       m_w_ready,
  output logic [511:0]              m_w_data,
  output logic [63:0]               m_w_strb,
  output logic                      m_w_last,
  input  wire                       s_b_valid,
  output logic                      s_b_ready,
  input  wire  [1:0]                s_b_resp,

  // MSI-X requests.
  output logic                      m_msix_valid,
  input  wire                       m_msix_ready,
  output logic [7:0]                m_msix_fn,
  output logic [15:0]               m_msix_vector,

  // Counters and rate limiter.
  output logic                      cnt_cmd_valid,
  output logic [VFW-1:0]            cnt_cmd_vf,
  output logic                      cnt_cmd_err,
  output logic                      cnt_work_valid,
  output logic [VFW-1:0]            cnt_work_vf,
  output logic [31:0]               cnt_work_busy,
  output logic [31:0]               cnt_work_bytes,
  output logic                      cnt_smart_valid,
  output logic [VFW-1:0]            cnt_smart_vf,
  output logic                      cnt_smart_write,
  output logic [16:0]               cnt_smart_nlb,
  output logic                      tok_valid,
  output logic [VFW-1:0]            tok_vf,
  output logic [31:0]               tok_bytes,

  output logic                      fatal_valid,
  output logic [VFW-1:0]            fatal_vf,
  output logic                      fault_valid,
  output logic [VFW-1:0]            fault_vf,

  output logic                      idle,        // nothing to post now
  output logic [31:0]               wake         // cycles until a delayed completion is due
);

  localparam int NG = NUM_VFS * QN;
  localparam int STW = $clog2(ST_DEPTH);
  localparam int PDW = $clog2(PD_DEPTH);

  if ((1 << STW) != ST_DEPTH || (1 << PDW) != PD_DEPTH) begin : g_bad_depth
    $fatal(1, "keel_cq_writer: ST_DEPTH and PD_DEPTH must be powers of two");
  end

  // ---------------------------------------------------------------- state
  // Tail, phase and reserved slots of every CQ: set when the CQ is created (cq_init).
  logic [15:0] tail_q [NG];
  logic        phase_q [NG];
  logic [16:0] res_q [NG];
  logic [31:0] drop_q [NUM_VFS];
  logic [31:0] dly_n_q [NUM_VFS];
  logic [63:0] dly_c_q [NUM_VFS];

  logic [ST_DEPTH-1:0] st_v_q;
  logic [31:0]    st_seq_q [ST_DEPTH];
  logic [VFW-1:0] st_vf_q [ST_DEPTH];
  logic [15:0]    st_sq_q [ST_DEPTH];
  logic [QW-1:0]  st_cq_q [ST_DEPTH];
  logic [15:0]    st_cid_q [ST_DEPTH];
  logic [15:0]    st_hd_q [ST_DEPTH];

  logic [PD_DEPTH-1:0] pd_v_q;
  logic [31:0]    pd_seq_q [PD_DEPTH];
  logic [VFW-1:0] pd_vf_q [PD_DEPTH];
  logic [QW-1:0]  pd_cq_q [PD_DEPTH];
  logic [63:0]    pd_due_q [PD_DEPTH];
  logic [31:0]    pd_dw0_q [PD_DEPTH];
  logic [15:0]    pd_hd_q [PD_DEPTH];
  logic [15:0]    pd_sq_q [PD_DEPTH];
  logic [15:0]    pd_cid_q [PD_DEPTH];
  logic [14:0]    pd_st_q [PD_DEPTH];
  logic [31:0]    seq_q;

  typedef enum logic [3:0] {
    C_IDLE, C_REC, C_POST, C_POST_B, C_MSIX, C_RETIRE, C_ABORT_PD, C_DELSQ
  } state_t;
  typedef enum logic [1:0] {AFT_RETIRE, AFT_IDLE, AFT_ABORT_DONE, AFT_DELSQ} after_t;
  state_t st_q;
  after_t after_q;

  // The CQE being posted.
  logic [VFW-1:0] p_vf_q;
  logic [GQW-1:0] p_g_q;
  logic [31:0]    p_dw0_q;
  logic [15:0]    p_hd_q, p_sq_q, p_cid_q;
  logic [14:0]    p_st_q;
  logic           p_aw_q, p_w_q;     // address / data handshakes done
  logic [63:0]    p_addr_q;
  logic [15:0]    p_iv_q;
  logic           p_ien_q;
  // The record being retired.
  logic [VFW-1:0] r_vf_q;
  logic [GQW-1:0] r_g_q;

  // ---------------------------------------------------------------- scheduler read port
  always_comb begin
    scan_tail = '0;
    scan_reserved = '0;
    if (scan_en) begin
      for (int q = 0; q < QN; q++) begin
        scan_tail[q*16 +: 16] = tail_q[GQW'(32'(scan_vf) * QN + q)];
        scan_reserved[q*17 +: 17] = res_q[GQW'(32'(scan_vf) * QN + q)];
      end
    end
  end

  // ---------------------------------------------------------------- searches
  // Oldest stuck completion matching the current operation; oldest due delayed completion;
  // oldest delayed completion matching an abort.
  logic           sf_found, pdue_found, pab_found, st_full, pd_full;
  logic [STW-1:0] sf_i, st_free_i;
  logic [PDW-1:0] pdue_i, pab_i, pd_free_i;
  logic [31:0]    sf_seq, pdue_seq, pab_seq;
  logic [VFW-1:0] o_vf;
  logic [15:0]    o_qid, o_cid;
  logic [1:0]     o_kind;

  // (The searches are guarded so that an idle completion writer costs a simulator nothing.)
  always_comb begin
    sf_found = 1'b0;
    sf_i = '0;
    sf_seq = '0;
    st_full = 1'b1;
    st_free_i = '0;
    if (st_q == C_REC) begin
      for (int i = ST_DEPTH - 1; i >= 0; i--) begin
        if (!st_v_q[i]) begin
          st_full = 1'b0;
          st_free_i = STW'(i);
        end
      end
    end
    if (st_v_q != '0 && ((st_q == C_IDLE && op_valid) || st_q == C_DELSQ)) begin
      for (int i = 0; i < ST_DEPTH; i++) begin
        if (st_v_q[i] && st_vf_q[i] == o_vf && st_sq_q[i] == o_qid &&
            (o_kind == 2'd1 || st_cid_q[i] == o_cid) && (!sf_found || st_seq_q[i] < sf_seq)) begin
          sf_found = 1'b1;
          sf_i = STW'(i);
          sf_seq = st_seq_q[i];
        end
      end
    end
    pdue_found = 1'b0;
    pdue_i = '0;
    pdue_seq = '0;
    pab_found = 1'b0;
    pab_i = '0;
    pab_seq = '0;
    pd_full = 1'b1;
    pd_free_i = '0;
    if (st_q == C_REC) begin
      for (int i = PD_DEPTH - 1; i >= 0; i--) begin
        if (!pd_v_q[i]) begin
          pd_full = 1'b0;
          pd_free_i = PDW'(i);
        end
      end
    end
    if (pd_v_q != '0) begin
      for (int i = 0; i < PD_DEPTH; i++) begin
        if (pd_v_q[i] && pd_due_q[i] <= cycles && vf_ready[pd_vf_q[i]] &&
            !vf_fatal[pd_vf_q[i]] && !vf_removed[pd_vf_q[i]] &&
            (!pdue_found || pd_seq_q[i] < pdue_seq)) begin
          pdue_found = 1'b1;
          pdue_i = PDW'(i);
          pdue_seq = pd_seq_q[i];
        end
        if (pd_v_q[i] && pd_vf_q[i] == o_vf && pd_sq_q[i] == o_qid && pd_cid_q[i] == o_cid &&
            (!pab_found || pd_seq_q[i] < pab_seq)) begin
          pab_found = 1'b1;
          pab_i = PDW'(i);
          pab_seq = pd_seq_q[i];
        end
      end
    end
  end

  // ---------------------------------------------------------------- fast-forward
  logic [63:0] wk_left;
  always_comb begin
    wake = '1;
    wk_left = '0;
    if (pd_v_q != '0) begin
      for (int i = 0; i < PD_DEPTH; i++) begin
        wk_left = pd_due_q[i] - cycles;
        if (pd_v_q[i] && vf_ready[pd_vf_q[i]] && !vf_fatal[pd_vf_q[i]] &&
            !vf_removed[pd_vf_q[i]] && pd_due_q[i] > cycles && (wk_left[63:32] == 32'd0) &&
            wk_left[31:0] < wake) begin
          wake = wk_left[31:0];
        end
      end
    end
  end
  assign idle = st_q == C_IDLE && !s_rec_valid && !pdue_found && !op_valid && !clr_valid;

  // ---------------------------------------------------------------- record decode
  logic [GW-1:0]  rv_gen;
  logic           rv_stale;
  logic [GQW-1:0] rv_g;
  logic [1:0]     rv_ctr;
  logic [31:0]    rv_bytes;
  logic           rv_ok;
  always_comb begin
    rv_gen = s_rec[keel_pkg::JR_GEN +: GW];
    rv_stale = rv_gen != vf_gen[32'(s_rec_vf)*GW +: GW] || !vf_ready[s_rec_vf] ||
               vf_fatal[s_rec_vf] || vf_removed[s_rec_vf];
    rv_g = GQW'(32'(s_rec_vf) * QN + 32'(s_rec[keel_pkg::JR_CQID +: QW]));
    rv_ctr = s_rec[keel_pkg::JR_CTR +: 2];
    rv_bytes = s_rec[keel_pkg::JR_BYTES +: 32];
    rv_ok = s_rec[keel_pkg::JR_DATA_OK];
    s_rec_ready = st_q == C_REC;
  end

  // ---------------------------------------------------------------- CQ room (reference rule)
  // cx_g / db_head_g select the CQ: the one being posted, or the stuck entry's CQ in an op.
  logic [16:0] rm_head, rm_size, rm_used, rm_tail;
  logic        rm_ok;
  logic [GQW-1:0] sel_g;
  always_comb begin
    if (st_q == C_IDLE && op_valid && sf_found) sel_g = GQW'(32'(op_vf) * QN + 32'(st_cq_q[sf_i]));
    else if (st_q == C_DELSQ && sf_found) sel_g = GQW'(32'(o_vf) * QN + 32'(st_cq_q[sf_i]));
    else sel_g = p_g_q;
  end
  assign cx_g = sel_g;
  assign db_head_g = sel_g;
  always_comb begin
    rm_head = db_head;
    rm_size = cx_size;
    rm_tail = {1'b0, tail_q[sel_g]};
    rm_used = rm_tail >= rm_head ? rm_tail - rm_head : rm_tail + rm_size - rm_head;
    rm_ok = rm_head < rm_size && ({1'b0, rm_used} + {1'b0, res_q[sel_g]} + 18'd1) < {1'b0, rm_size};
  end

  // ---------------------------------------------------------------- host write of the CQE
  logic [127:0] cqe;
  logic [5:0]   lane;
  always_comb begin
    cqe = {p_st_q, phase_q[p_g_q], p_cid_q, p_sq_q, p_hd_q, 32'd0, p_dw0_q};
    lane = p_addr_q[5:0];
    m_aw_valid = st_q == C_POST_B && !p_aw_q;
    m_aw_addr = {p_addr_q[63:6], 6'd0};
    m_aw_len = 8'd0;
    m_aw_fn = 8'(p_vf_q) + 8'd1;
    m_w_valid = st_q == C_POST_B && !p_w_q;
    if (st_q == C_POST_B) begin
      m_w_data = {384'd0, cqe} << {lane, 3'b000};
      m_w_strb = 64'hFFFF << lane;
    end else begin
      m_w_data = '0;
      m_w_strb = '0;
    end
    m_w_last = 1'b1;
    s_b_ready = st_q == C_POST_B && p_aw_q && p_w_q;
    m_msix_valid = st_q == C_MSIX;
    m_msix_fn = 8'(p_vf_q) + 8'd1;
    m_msix_vector = p_iv_q;
    o_vf = st_q == C_IDLE ? op_vf : p_vf_q;
    o_qid = st_q == C_IDLE ? op_qid : p_sq_q;
    o_cid = st_q == C_IDLE ? op_cid : p_cid_q;
    o_kind = st_q == C_IDLE ? op_kind : 2'd1;
  end

  // ---------------------------------------------------------------- FSM
  always_ff @(posedge clk) begin
    op_done <= 1'b0;
    clr_done <= 1'b0;
    retire_valid <= 1'b0;
    cnt_cmd_valid <= 1'b0;
    cnt_work_valid <= 1'b0;
    cnt_smart_valid <= 1'b0;
    tok_valid <= 1'b0;
    fatal_valid <= 1'b0;
    fault_valid <= 1'b0;
    if (rst) begin
      st_q <= C_IDLE;
      seq_q <= '0;
      for (int i = 0; i < NUM_VFS; i++) begin
        drop_q[i] <= '0;
        dly_n_q[i] <= '0;
        dly_c_q[i] <= '0;
      end
      st_v_q <= '0;
      pd_v_q <= '0;
    end else begin
      if (cq_init_valid) begin
        tail_q[cq_init_g] <= '0;
        phase_q[cq_init_g] <= 1'b1;
        res_q[cq_init_g] <= '0;
      end
      if (cfg_valid) begin
        if (cfg_op == keel_pkg::DBG_DROP) drop_q[cfg_vf] <= drop_q[cfg_vf] + cfg_arg0;
        else if (cfg_op == keel_pkg::DBG_DELAY) begin
          dly_n_q[cfg_vf] <= cfg_arg0;
          dly_c_q[cfg_vf] <= cfg_arg1;
        end
      end

      case (st_q)
        C_IDLE: begin
          if (clr_valid) begin
            for (int i = 0; i < ST_DEPTH; i++) if (st_vf_q[i] == clr_vf) st_v_q[i] <= 1'b0;
            for (int i = 0; i < PD_DEPTH; i++) if (pd_vf_q[i] == clr_vf) pd_v_q[i] <= 1'b0;
            if (clr_flr) begin
              drop_q[clr_vf] <= '0;
              dly_n_q[clr_vf] <= '0;
              dly_c_q[clr_vf] <= '0;
            end
            clr_done <= 1'b1;
          end else if (op_valid) begin
            p_vf_q <= op_vf;
            p_sq_q <= op_qid;
            p_cid_q <= op_cid;
            case (op_kind)
              2'd0: begin  // Abort: a stuck command first, then a delayed completion
                if (sf_found && rm_ok) begin
                  st_v_q[sf_i] <= 1'b0;
                  p_g_q <= sel_g;
                  p_hd_q <= st_hd_q[sf_i];
                  p_dw0_q <= 32'd0;
                  p_st_q <= keel_pkg::SC_ABORT_REQUESTED;
                  after_q <= AFT_ABORT_DONE;
                  st_q <= C_POST;
                end else begin
                  st_q <= C_ABORT_PD;
                end
              end
              2'd1: st_q <= C_DELSQ;
              default: begin  // CQ deleted: its delayed completions go away
                for (int i = 0; i < PD_DEPTH; i++) begin
                  if (pd_vf_q[i] == op_vf && 16'(pd_cq_q[i]) == op_qid) pd_v_q[i] <= 1'b0;
                end
                op_dw0 <= 32'd0;
                op_done <= 1'b1;
              end
            endcase
          end else if (pdue_found) begin
            logic [GQW-1:0] g;
            g = GQW'(32'(pd_vf_q[pdue_i]) * QN + 32'(pd_cq_q[pdue_i]));
            pd_v_q[pdue_i] <= 1'b0;
            if (res_q[g] != 17'd0) res_q[g] <= res_q[g] - 17'd1;
            p_vf_q <= pd_vf_q[pdue_i];
            p_g_q <= g;
            p_dw0_q <= pd_dw0_q[pdue_i];
            p_hd_q <= pd_hd_q[pdue_i];
            p_sq_q <= pd_sq_q[pdue_i];
            p_cid_q <= pd_cid_q[pdue_i];
            p_st_q <= pd_st_q[pdue_i];
            after_q <= AFT_IDLE;
            st_q <= C_POST;
          end else if (s_rec_valid) begin
            st_q <= C_REC;
          end
        end

        C_REC: begin
          r_vf_q <= s_rec_vf;
          r_g_q <= rv_g;
          p_vf_q <= s_rec_vf;
          p_g_q <= rv_g;
          p_dw0_q <= s_rec[keel_pkg::JR_DW0 +: 32];
          p_hd_q <= s_rec[keel_pkg::JR_SQHEAD +: 16];
          p_sq_q <= s_rec[keel_pkg::JR_SQID +: 16];
          p_cid_q <= s_rec[keel_pkg::JR_CID +: 16];
          p_st_q <= s_rec[keel_pkg::JR_STATUS +: 15];
          after_q <= AFT_RETIRE;
          st_q <= C_RETIRE;
          if (!rv_stale) begin
            cnt_work_valid <= 1'b1;
            cnt_work_vf <= s_rec_vf;
            cnt_work_busy <= 32'd16 + ((rv_ok && rv_ctr != 2'd0) ? (rv_bytes + 32'd63) >> 6 : 32'd0);
            cnt_work_bytes <= (rv_ok && (rv_ctr == 2'd1 || rv_ctr == 2'd2)) ? rv_bytes : 32'd0;
            if (rv_ok && (rv_ctr == 2'd1 || rv_ctr == 2'd2)) begin
              cnt_smart_valid <= 1'b1;
              cnt_smart_vf <= s_rec_vf;
              cnt_smart_write <= rv_ctr == 2'd2;
              cnt_smart_nlb <= s_rec[keel_pkg::JR_NLB +: 17];
              tok_valid <= 1'b1;
              tok_vf <= s_rec_vf;
              tok_bytes <= rv_bytes;
            end
            if (s_rec[keel_pkg::JR_NOCQE]) begin
              st_q <= C_RETIRE;
            end else if (drop_q[s_rec_vf] != 32'd0 && !st_full) begin
              drop_q[s_rec_vf] <= drop_q[s_rec_vf] - 32'd1;
              st_v_q[st_free_i] <= 1'b1;
              st_seq_q[st_free_i] <= seq_q;
              st_vf_q[st_free_i] <= s_rec_vf;
              st_sq_q[st_free_i] <= s_rec[keel_pkg::JR_SQID +: 16];
              st_cq_q[st_free_i] <= s_rec[keel_pkg::JR_CQID +: QW];
              st_cid_q[st_free_i] <= s_rec[keel_pkg::JR_CID +: 16];
              st_hd_q[st_free_i] <= s_rec[keel_pkg::JR_SQHEAD +: 16];
              seq_q <= seq_q + 32'd1;
            end else if (dly_n_q[s_rec_vf] != 32'd0 && !pd_full) begin
              dly_n_q[s_rec_vf] <= dly_n_q[s_rec_vf] - 32'd1;
              pd_v_q[pd_free_i] <= 1'b1;
              pd_seq_q[pd_free_i] <= seq_q;
              pd_vf_q[pd_free_i] <= s_rec_vf;
              pd_cq_q[pd_free_i] <= s_rec[keel_pkg::JR_CQID +: QW];
              pd_due_q[pd_free_i] <= cycles + dly_c_q[s_rec_vf];
              pd_dw0_q[pd_free_i] <= s_rec[keel_pkg::JR_DW0 +: 32];
              pd_hd_q[pd_free_i] <= s_rec[keel_pkg::JR_SQHEAD +: 16];
              pd_sq_q[pd_free_i] <= s_rec[keel_pkg::JR_SQID +: 16];
              pd_cid_q[pd_free_i] <= s_rec[keel_pkg::JR_CID +: 16];
              pd_st_q[pd_free_i] <= s_rec[keel_pkg::JR_STATUS +: 15];
              res_q[rv_g] <= res_q[rv_g] + 17'd1;
              seq_q <= seq_q + 32'd1;
            end else begin
              st_q <= C_POST;
            end
          end
        end

        C_POST: begin
          // CQ context of p_g_q is on cx_* now.
          if (!cx_live) begin
            st_q <= after_q == AFT_RETIRE ? C_RETIRE : C_IDLE;
            if (after_q == AFT_ABORT_DONE) begin
              op_dw0 <= 32'd0;
              op_done <= 1'b1;
            end else if (after_q == AFT_DELSQ) begin
              st_q <= C_DELSQ;
            end
          end else begin
            p_addr_q <= cx_base + {44'd0, tail_q[p_g_q], 4'd0};
            p_ien_q <= cx_ien;
            p_iv_q <= cx_iv;
            p_aw_q <= 1'b0;
            p_w_q <= 1'b0;
            st_q <= C_POST_B;
          end
        end
        C_POST_B: begin
          if (m_aw_valid && m_aw_ready) p_aw_q <= 1'b1;
          if (m_w_valid && m_w_ready) p_w_q <= 1'b1;
          if (s_b_valid && s_b_ready) begin
            if (s_b_resp != keel_pkg::AXI_RESP_OKAY) begin
              // The controller cannot reach its own completion queue.
              fatal_valid <= 1'b1;
              fatal_vf <= p_vf_q;
              fault_valid <= 1'b1;
              fault_vf <= p_vf_q;
              st_q <= after_q == AFT_RETIRE ? C_RETIRE : (after_q == AFT_DELSQ ? C_DELSQ : C_IDLE);
              if (after_q == AFT_ABORT_DONE) begin
                op_dw0 <= 32'd0;
                op_done <= 1'b1;
              end
            end else begin
              logic [16:0] nt;
              nt = {1'b0, tail_q[p_g_q]} + 17'd1;
              if (nt == cx_size) begin
                tail_q[p_g_q] <= '0;
                phase_q[p_g_q] <= !phase_q[p_g_q];
              end else begin
                tail_q[p_g_q] <= nt[15:0];
              end
              cnt_cmd_valid <= 1'b1;
              cnt_cmd_vf <= p_vf_q;
              cnt_cmd_err <= p_st_q != keel_pkg::SC_SUCCESS;
              if (p_ien_q) begin
                st_q <= C_MSIX;
              end else begin
                st_q <= after_q == AFT_RETIRE ? C_RETIRE : (after_q == AFT_DELSQ ? C_DELSQ : C_IDLE);
                if (after_q == AFT_ABORT_DONE) begin
                  op_dw0 <= 32'd0;
                  op_done <= 1'b1;
                end
              end
            end
          end
        end
        C_MSIX: if (m_msix_ready) begin
          st_q <= after_q == AFT_RETIRE ? C_RETIRE : (after_q == AFT_DELSQ ? C_DELSQ : C_IDLE);
          if (after_q == AFT_ABORT_DONE) begin
            op_dw0 <= 32'd0;
            op_done <= 1'b1;
          end
        end
        C_RETIRE: begin
          retire_valid <= 1'b1;
          retire_vf <= r_vf_q;
          retire_g <= r_g_q;
          st_q <= C_IDLE;
        end

        C_ABORT_PD: begin
          // (o_* still select the operation: p_vf_q / p_sq_q / p_cid_q.)
          if (pab_found) begin
            pd_st_q[pab_i] <= keel_pkg::SC_ABORT_REQUESTED;
            pd_due_q[pab_i] <= cycles;
            op_dw0 <= 32'd0;
          end else begin
            op_dw0 <= 32'd1;  // not aborted: already completed or unknown
          end
          op_done <= 1'b1;
          st_q <= C_IDLE;
        end
        C_DELSQ: begin
          // Every stuck command of the deleted SQ completes as aborted (if its CQ has room).
          if (!sf_found) begin
            op_dw0 <= 32'd0;
            op_done <= 1'b1;
            st_q <= C_IDLE;
          end else begin
            st_v_q[sf_i] <= 1'b0;
            if (rm_ok) begin
              p_g_q <= sel_g;
              p_hd_q <= st_hd_q[sf_i];
              p_cid_q <= st_cid_q[sf_i];
              p_dw0_q <= 32'd0;
              p_st_q <= keel_pkg::SC_ABORT_SQ_DELETED;
              after_q <= AFT_DELSQ;
              st_q <= C_POST;
            end
          end
        end
        default: st_q <= C_IDLE;
      endcase
    end
  end

endmodule
