`resetall
`timescale 1ns / 1ps
`default_nettype none

// Lifecycle of the keel card's VFs: NUM_VFS, function-level resets, controller enable and
// reset (CC.EN), shutdown (CC.SHN), CSTS, and the simulation fault-injection port.
//
// One task runs at a time. A reset of VF v (FLR, CC.EN 1 -> 0, VF disable, NUM_VFS change,
// surprise removal) first blocks the VF and bumps its generation, so every command of the VF
// still in the pipeline completes without a completion; once the VF has no command left in
// flight, the front end deletes its queues and the completion writer forgets its delayed and
// dropped completions. An FLR additionally clears the NVMe registers and the armed faults.
// The shell learns of each finished reset on the event port.
module keel_ctrl #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // Width of a command generation tag (derived default is plenty: a reset waits for the
  // previous generation to drain).
  parameter int GW = 4,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1
) (
  input  wire                   clk,
  input  wire                   rst,

  input  wire  [7:0]            cfg_max_vfs,

  // Requests from the PF registers (NUM_VFS writes, VFCFG FLR.GO and CTRL disable).
  input  wire                   req_valid,
  input  wire                   req_numvfs,
  input  wire  [VFW-1:0]        req_vf,
  input  wire  [7:0]            req_value,
  output logic                  req_ack,
  output logic                  res_reset_valid,
  output logic [VFW-1:0]        res_reset_vf,
  output logic                  regs_clear_valid,
  output logic [VFW-1:0]        regs_clear_vf,
  output logic [7:0]            num_vfs,
  output logic                  num_vfs_err,

  // Registers and resources the controller reads.
  input  wire  [NUM_VFS*32-1:0] vf_cc,
  input  wire  [NUM_VFS*32-1:0] vf_aqa,
  input  wire  [NUM_VFS*64-1:0] vf_asq,
  input  wire  [NUM_VFS*64-1:0] vf_acq,
  input  wire  [NUM_VFS-1:0]    res_enabled,
  input  wire  [NUM_VFS*64-1:0] res_base,
  input  wire  [NUM_VFS*64-1:0] res_lbas,

  // Shell: function-level reset requests (function number) and finished-reset events.
  input  wire                   s_flr_valid,
  output logic                  s_flr_ready,
  input  wire  [7:0]            s_flr_fn,
  output logic                  m_evt_valid,
  output logic [7:0]            m_evt_fn,
  output logic [1:0]            m_evt_kind,

  // Shell: fault injection (simulation only; tie s_dbg_valid low on hardware).
  input  wire                   s_dbg_valid,
  output logic                  s_dbg_ready,
  input  wire  [2:0]            s_dbg_op,
  input  wire  [7:0]            s_dbg_vf,
  input  wire  [31:0]           s_dbg_arg0,
  input  wire  [63:0]           s_dbg_arg1,
  output logic                  cqw_fault_valid,  // DROP / DELAY for the completion writer
  output logic [2:0]            cqw_fault_op,
  output logic [VFW-1:0]        cqw_fault_vf,
  output logic [31:0]           cqw_fault_arg0,
  output logic [63:0]           cqw_fault_arg1,

  // Fatal controller errors found by the pipeline.
  input  wire                   fe_fatal_valid,
  input  wire  [VFW-1:0]        fe_fatal_vf,
  input  wire                   cqw_fatal_valid,
  input  wire  [VFW-1:0]        cqw_fatal_vf,

  // Pipeline hand-shakes for resets and enables.
  input  wire  [NUM_VFS-1:0]    jobs_idle,
  output logic                  fe_op_valid,
  output logic                  fe_op_enable,      // 1: set up admin queues, 0: delete all queues
  output logic [VFW-1:0]        fe_op_vf,
  output logic [63:0]           fe_op_asq,
  output logic [63:0]           fe_op_acq,
  output logic [12:0]           fe_op_asqs,
  output logic [12:0]           fe_op_acqs,
  input  wire                   fe_op_done,
  output logic                  cqw_clr_valid,
  output logic [VFW-1:0]        cqw_clr_vf,
  output logic                  cqw_clr_flr,
  input  wire                   cqw_clr_done,
  output logic                  tok_reset_valid,
  output logic [VFW-1:0]        tok_reset_vf,

  // Persisting a VF's slice on shutdown.
  output logic                  m_flush_valid,
  input  wire                   m_flush_ready,
  output logic [63:0]           m_flush_addr,
  output logic [63:0]           m_flush_len,
  input  wire                   s_flush_done,
  input  wire                   s_flush_err,

  // State of every VF.
  output logic [NUM_VFS-1:0]    vf_present,
  output logic [NUM_VFS-1:0]    vf_removed,
  output logic [NUM_VFS-1:0]    vf_ready,
  output logic [NUM_VFS-1:0]    vf_fatal,
  output logic [NUM_VFS-1:0]    vf_blocked,
  output logic [NUM_VFS*GW-1:0] vf_gen,
  output logic [NUM_VFS*2-1:0]  vf_shst,        // CSTS.SHST

  // Simulation fast-forward: this clock stands for 1 + skip_cycles cycles (keel_card).
  input  wire                   skip_valid,
  input  wire  [31:0]           skip_cycles,
  output logic                  idle,           // no task running or waiting
  output logic [31:0]           wake            // cycles until a CSTS.RDY timer fires
);

  if (NUM_VFS < 1 || NUM_VFS > 64) begin : g_bad_vfs
    $fatal(1, "keel_ctrl: NUM_VFS must be 1..64");
  end
  if (GW < 2 || GW > 8) begin : g_bad_gw
    $fatal(1, "keel_ctrl: GW must be 2..8");
  end

  typedef enum logic [4:0] {
    S_IDLE, S_NUMVFS, S_NV_NEXT,
    S_R_START, S_R_DRAIN, S_R_FE, S_R_CQW, S_R_CLEAR, S_R_FIN,
    S_CC, S_EN_FE, S_SHN, S_FLUSH_REQ, S_FLUSH_WAIT, S_ACK
  } state_t;
  // What a reset returns to.
  typedef enum logic [1:0] {RET_IDLE, RET_NUMVFS, RET_ACK, RET_SHN} ret_t;

  state_t st_q;
  ret_t   ret_q;

  logic [NUM_VFS-1:0] removed_q;
  logic [NUM_VFS-1:0] ready_q;
  logic [NUM_VFS-1:0] rpend_q;
  logic [31:0]    rcnt_q     [NUM_VFS];
  logic [31:0]    rdelay_q   [NUM_VFS];
  logic [NUM_VFS-1:0] fatal_q;
  logic [NUM_VFS*GW-1:0] gen_q;
  logic [31:0]    last_cc_q  [NUM_VFS];
  logic [NUM_VFS*2-1:0] shst_q;
  logic [NUM_VFS-1:0] blocked_q;
  logic           flr_pend_q [NUM_VFS];
  logic           restore_q  [NUM_VFS];

  logic [7:0]     nv_q;          // NUM_VFS
  logic           nv_err_q;
  logic [7:0]     nv_target_q;   // NUM_VFS being installed
  logic [7:0]     nv_old_q;
  logic [6:0]     nv_idx_q;      // VF being reset by a NUM_VFS change

  logic           preq_q;        // latched PF request
  logic           preq_nv_q;
  logic [VFW-1:0] preq_vf_q;
  logic [7:0]     preq_val_q;

  logic [VFW-1:0] v_q;           // VF of the current task
  logic           rflr_q;        // current reset is an FLR
  logic [31:0]    cc_now_q, cc_old_q;

  always_comb begin
    num_vfs = nv_q;
    num_vfs_err = nv_err_q;
    s_flr_ready = 1'b1;
    s_dbg_ready = 1'b1;
    for (int i = 0; i < NUM_VFS; i++) vf_present[i] = 8'(i) < nv_q;
    vf_removed = removed_q;
    vf_ready = ready_q;
    vf_fatal = fatal_q;
    vf_blocked = blocked_q;
    vf_gen = gen_q;
    vf_shst = shst_q;
  end

  // Cycles this clock stands for; idleness and the next timer for the fast-forward.
  logic [31:0] tick;
  always_comb begin
    tick = 32'd1 + (skip_valid ? skip_cycles : 32'd0);
    wake = '1;
    if (rpend_q != '0) for (int i = 0; i < NUM_VFS; i++) begin
      if (rpend_q[i] && rcnt_q[i] < wake) wake = rcnt_q[i];
    end
  end
  // Task selection in S_IDLE.
  logic           any_flr, any_cc;
  logic [VFW-1:0] flr_v, cc_v;
  always_comb begin
    any_flr = 1'b0;
    flr_v = '0;
    any_cc = 1'b0;
    cc_v = '0;
    if (st_q == S_IDLE) for (int i = NUM_VFS - 1; i >= 0; i--) begin
      if (flr_pend_q[i]) begin
        any_flr = 1'b1;
        flr_v = VFW'(i);
      end
      if (8'(i) < nv_q && !removed_q[i] && !blocked_q[i] &&
          vf_cc[i*32 +: 32] != last_cc_q[i]) begin
        any_cc = 1'b1;
        cc_v = VFW'(i);
      end
    end
  end

  assign idle = st_q == S_IDLE && !preq_q && !any_flr && !any_cc && !req_valid &&
                !s_flr_valid && !s_dbg_valid;

  // Enable checks of VF v_q (NVMe registers as latched in cc_now_q).
  logic [31:0] e_aqa;
  logic [63:0] e_asq, e_acq, e_page_mask;
  logic [3:0]  e_mps;
  logic        e_bad;
  always_comb begin
    e_aqa = vf_aqa[32'(v_q)*32 +: 32];
    e_asq = vf_asq[32'(v_q)*64 +: 64];
    e_acq = vf_acq[32'(v_q)*64 +: 64];
    e_mps = cc_now_q[10:7];
    e_page_mask = (64'd4096 << e_mps[2:0]) - 64'd1;
    e_bad = !res_enabled[v_q] || cc_now_q[6:4] != 3'd0 || e_mps > 4'd4 ||
            e_aqa[11:0] == 12'd0 || e_aqa[27:16] == 12'd0 ||
            (e_asq & e_page_mask) != 64'd0 || (e_acq & e_page_mask) != 64'd0 ||
            e_asq == 64'd0 || e_acq == 64'd0;
    fe_op_asq = e_asq;
    fe_op_acq = e_acq;
    fe_op_asqs = {1'b0, e_aqa[11:0]} + 13'd1;
    fe_op_acqs = {1'b0, e_aqa[27:16]} + 13'd1;
    fe_op_vf = v_q;
    cqw_clr_vf = v_q;
    cqw_clr_flr = rflr_q;
    m_flush_addr = res_base[32'(v_q)*64 +: 64] << 9;
    m_flush_len = res_lbas[32'(v_q)*64 +: 64] << 9;
  end

  always_ff @(posedge clk) begin
    req_ack <= 1'b0;
    res_reset_valid <= 1'b0;
    regs_clear_valid <= 1'b0;
    m_evt_valid <= 1'b0;
    cqw_fault_valid <= 1'b0;
    tok_reset_valid <= 1'b0;
    if (rst) begin
      st_q <= S_IDLE;
      ret_q <= RET_IDLE;
      nv_q <= 8'd0;
      nv_err_q <= 1'b0;
      preq_q <= 1'b0;
      fe_op_valid <= 1'b0;
      cqw_clr_valid <= 1'b0;
      m_flush_valid <= 1'b0;
      rpend_q <= '0;
      removed_q <= '0;
      ready_q <= '0;
      fatal_q <= '0;
      gen_q <= '0;
      shst_q <= '0;
      blocked_q <= '0;
      for (int i = 0; i < NUM_VFS; i++) begin
        rcnt_q[i] <= 32'd0;
        rdelay_q[i] <= 32'd0;
        last_cc_q[i] <= 32'd0;
        flr_pend_q[i] <= 1'b0;
        restore_q[i] <= 1'b0;
      end
    end else begin
      // ---- CSTS.RDY timers
      if (rpend_q != '0) for (int i = 0; i < NUM_VFS; i++) begin
        if (rpend_q[i]) begin
          if (rcnt_q[i] == 32'd0) begin
            rpend_q[i] <= 1'b0;
            ready_q[i] <= 1'b1;
          end else begin
            rcnt_q[i] <= rcnt_q[i] > tick ? rcnt_q[i] - tick : 32'd0;
          end
        end
      end
      // ---- requests that are only latched
      if (req_valid) begin
        preq_q <= 1'b1;
        preq_nv_q <= req_numvfs;
        preq_vf_q <= req_vf;
        preq_val_q <= req_value;
      end
      if (s_flr_valid && s_flr_fn != 8'd0 && 32'(s_flr_fn) <= NUM_VFS) begin
        flr_pend_q[VFW'(s_flr_fn - 8'd1)] <= 1'b1;
      end
      if (s_dbg_valid && 32'(s_dbg_vf) < NUM_VFS) begin
        case (s_dbg_op)
          keel_pkg::DBG_DROP, keel_pkg::DBG_DELAY: begin
            cqw_fault_valid <= 1'b1;
            cqw_fault_op <= s_dbg_op;
            cqw_fault_vf <= VFW'(s_dbg_vf);
            cqw_fault_arg0 <= s_dbg_arg0;
            cqw_fault_arg1 <= s_dbg_arg1;
          end
          keel_pkg::DBG_READY_DELAY: rdelay_q[VFW'(s_dbg_vf)] <= s_dbg_arg1[31:0];
          keel_pkg::DBG_FATAL: fatal_q[VFW'(s_dbg_vf)] <= 1'b1;
          keel_pkg::DBG_REMOVE: begin
            removed_q[VFW'(s_dbg_vf)] <= 1'b1;
            flr_pend_q[VFW'(s_dbg_vf)] <= 1'b1;
          end
          keel_pkg::DBG_RESTORE: begin
            flr_pend_q[VFW'(s_dbg_vf)] <= 1'b1;
            restore_q[VFW'(s_dbg_vf)] <= 1'b1;
          end
          default: ;
        endcase
      end
      if (fe_fatal_valid) fatal_q[fe_fatal_vf] <= 1'b1;
      if (cqw_fatal_valid) fatal_q[cqw_fatal_vf] <= 1'b1;

      // ---- the task engine
      case (st_q)
        S_IDLE: begin
          if (preq_q) begin
            preq_q <= 1'b0;
            if (preq_nv_q) begin
              st_q <= S_NUMVFS;
            end else begin
              v_q <= preq_vf_q;
              rflr_q <= 1'b1;
              ret_q <= RET_ACK;
              st_q <= S_R_START;
            end
          end else if (any_flr) begin
            v_q <= flr_v;
            rflr_q <= 1'b1;
            ret_q <= RET_IDLE;
            flr_pend_q[flr_v] <= 1'b0;
            st_q <= S_R_START;
          end else if (any_cc) begin
            v_q <= cc_v;
            cc_now_q <= vf_cc[32'(cc_v)*32 +: 32];
            cc_old_q <= last_cc_q[cc_v];
            last_cc_q[cc_v] <= vf_cc[32'(cc_v)*32 +: 32];
            st_q <= S_CC;
          end
        end

        // ---- NUM_VFS
        S_NUMVFS: begin
          if (preq_val_q > cfg_max_vfs || 32'(preq_val_q) > NUM_VFS ||
              (nv_q != 8'd0 && preq_val_q != 8'd0 && preq_val_q != nv_q)) begin
            nv_err_q <= 1'b1;
            st_q <= S_ACK;
          end else begin
            nv_err_q <= 1'b0;
            if (preq_val_q == nv_q) begin
              st_q <= S_ACK;
            end else begin
              nv_target_q <= preq_val_q;
              nv_old_q <= nv_q;
              nv_idx_q <= 7'd0;
              if (preq_val_q == 8'd0) nv_q <= 8'd0;  // every VF leaves the bus at once
              st_q <= S_NV_NEXT;
            end
          end
        end
        S_NV_NEXT: begin
          // Reset VF nv_idx_q: the VFs that leave (n -> 0) or arrive (0 -> n).
          if ({1'b0, nv_idx_q} < (nv_target_q == 8'd0 ? nv_old_q : nv_target_q)) begin
            v_q <= VFW'(nv_idx_q);
            res_reset_valid <= 1'b1;
            res_reset_vf <= VFW'(nv_idx_q);
            removed_q[VFW'(nv_idx_q)] <= 1'b0;
            restore_q[VFW'(nv_idx_q)] <= 1'b0;
            flr_pend_q[VFW'(nv_idx_q)] <= 1'b0;
            nv_idx_q <= nv_idx_q + 7'd1;
            rflr_q <= 1'b1;
            ret_q <= RET_NUMVFS;
            st_q <= S_R_START;
          end else begin
            nv_q <= nv_target_q;
            st_q <= S_ACK;
          end
        end
        S_ACK: begin
          req_ack <= 1'b1;
          st_q <= S_IDLE;
        end

        // ---- reset of VF v_q
        S_R_START: begin
          blocked_q[v_q] <= 1'b1;
          gen_q[32'(v_q)*GW +: GW] <= gen_q[32'(v_q)*GW +: GW] + 1'b1;
          st_q <= S_R_DRAIN;
        end
        S_R_DRAIN: if (jobs_idle[v_q]) begin
          fe_op_valid <= 1'b1;
          fe_op_enable <= 1'b0;
          st_q <= S_R_FE;
        end
        S_R_FE: if (fe_op_done) begin
          fe_op_valid <= 1'b0;
          cqw_clr_valid <= 1'b1;
          st_q <= S_R_CQW;
        end
        S_R_CQW: if (cqw_clr_done) begin
          cqw_clr_valid <= 1'b0;
          if (rflr_q) begin
            // FLR: the register file goes back to reset values (takes effect next cycle,
            // while the VF is still blocked from CC processing).
            regs_clear_valid <= 1'b1;
            regs_clear_vf <= v_q;
          end
          st_q <= S_R_CLEAR;
        end
        S_R_CLEAR: st_q <= S_R_FIN;
        S_R_FIN: begin
          ready_q[v_q] <= 1'b0;
          rpend_q[v_q] <= 1'b0;
          fatal_q[v_q] <= 1'b0;
          shst_q[32'(v_q)*2 +: 2] <= 2'd0;
          blocked_q[v_q] <= 1'b0;
          m_evt_valid <= 1'b1;
          m_evt_fn <= 8'(v_q) + 8'd1;
          m_evt_kind <= rflr_q ? keel_pkg::EVT_FLR_DONE : keel_pkg::EVT_CTRL_RESET;
          if (rflr_q) begin
            last_cc_q[v_q] <= 32'd0;
            rdelay_q[v_q] <= 32'd0;
            if (restore_q[v_q]) begin
              restore_q[v_q] <= 1'b0;
              removed_q[v_q] <= 1'b0;
            end
          end
          case (ret_q)
            RET_NUMVFS: st_q <= S_NV_NEXT;
            RET_ACK: st_q <= S_ACK;
            RET_SHN: st_q <= S_SHN;
            default: st_q <= S_IDLE;
          endcase
        end

        // ---- CC changed
        S_CC: begin
          if (cc_old_q[0] && !cc_now_q[0]) begin
            rflr_q <= 1'b0;
            ret_q <= RET_SHN;
            st_q <= S_R_START;
          end else if (!cc_old_q[0] && cc_now_q[0]) begin
            if (e_bad) begin
              fatal_q[v_q] <= 1'b1;
              st_q <= S_SHN;
            end else begin
              fe_op_valid <= 1'b1;
              fe_op_enable <= 1'b1;
              st_q <= S_EN_FE;
            end
          end else begin
            st_q <= S_SHN;
          end
        end
        S_EN_FE: if (fe_op_done) begin
          fe_op_valid <= 1'b0;
          rpend_q[v_q] <= 1'b1;
          rcnt_q[v_q] <= rdelay_q[v_q];
          rdelay_q[v_q] <= 32'd0;
          tok_reset_valid <= 1'b1;
          tok_reset_vf <= v_q;
          st_q <= S_SHN;
        end
        S_SHN: begin
          if (cc_now_q[15:14] != 2'd0 && cc_old_q[15:14] == 2'd0) begin
            m_flush_valid <= 1'b1;
            st_q <= S_FLUSH_REQ;
          end else begin
            if (cc_now_q[15:14] == 2'd0 && cc_old_q[15:14] != 2'd0) shst_q[32'(v_q)*2 +: 2] <= 2'd0;
            st_q <= S_IDLE;
          end
        end
        S_FLUSH_REQ: if (m_flush_ready) begin
          m_flush_valid <= 1'b0;
          st_q <= S_FLUSH_WAIT;
        end
        S_FLUSH_WAIT: if (s_flush_done) begin
          shst_q[32'(v_q)*2 +: 2] <= 2'd2;
          st_q <= S_IDLE;
        end
        default: st_q <= S_IDLE;
      endcase
    end
  end

  logic unused_ok;
  always_comb unused_ok = ^{s_flush_err, s_dbg_vf[7:6], cc_now_q[31:16], cc_now_q[13:11],
                            cc_now_q[3:1], cc_old_q[31:16], cc_old_q[13:1], e_aqa[31:28],
                            e_aqa[15:12]};

endmodule
