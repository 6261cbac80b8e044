`resetall
`timescale 1ns / 1ps
`default_nettype none

// Write side of the data mover (keel_mover): takes the jobs keel_read_mover passed on, in the
// same order, realigns the source stream to the destination's byte offset (PRP1 may start at any
// dword of a page), and writes host memory in chunks of at most 16 beats or card DDR in bursts
// of up to 64 beats; a Flush job persists the VF's slice once every earlier job is complete. A
// tracker collects the write responses of each job; when all of a job's responses are in, its
// completion record goes to the completion writer with the job's final status.
module keel_write_mover #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // Job slots per VF.
  parameter int JOBQ = 4,
  // Identify MDTS (segments per job: 2^MDTS).
  parameter int MDTS = 5,
  // Source FIFO depth in 512-bit beats (power of two).
  parameter int SRC_DEPTH = 64,
  // log2 of the largest host chunk in bytes (10: 16 beats).
  parameter int HOST_CHUNK_LOG2 = 10,
  // Largest card DDR burst in beats (power of two, <= 64: a burst stays in one 4 KiB page).
  parameter int DDR_BURST = 64,
  // Jobs in flight on the write side awaiting responses (power of two).
  parameter int TRK_DEPTH = 4,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Width of a job slot index (derived).
  parameter int JW = $clog2(JOBQ),
  // Width of a segment index (derived).
  parameter int SW = MDTS,
  // Width of a source FIFO count (derived).
  parameter int SCW = $clog2(SRC_DEPTH) + 1,
  // Width of a job FIFO entry: {skip, vf, slot, record} (derived).
  parameter int JFW = 1 + VFW + JW + keel_pkg::JR_W
) (
  input  wire                       clk,
  input  wire                       rst,

  // Job FIFO head (from the read side).
  input  wire                       jf_valid,
  input  wire  [JFW-1:0]            jf_out,
  output logic                      jf_pop,
  // Source FIFO head: beats {error, data}; one or two are popped per destination beat.
  input  wire  [512:0]              sf_d0,
  input  wire  [512:0]              sf_d1,
  input  wire  [SCW-1:0]            sf_count,
  output logic                      sf_pop1,
  output logic                      sf_pop2,
  // A job that wrote card DDR retired (its writes are complete).
  output logic                      wjob_done,

  // Segment RAM, destination side.
  output logic [VFW-1:0]            seg_d_vf,
  output logic [JW-1:0]             seg_d_slot,
  output logic [SW-1:0]             seg_d_idx,
  output logic                      seg_d_en,
  input  wire  [63:0]               seg_d_data,

  // Slice sizes (the length of a Flush).
  input  wire  [NUM_VFS*64-1:0]     res_lbas,

  // Host memory, write (AXI4, 512-bit; user: PCIe function number, echoed on B).
  output logic                      m_haw_valid,
  input  wire                       m_haw_ready,
  output logic [63:0]               m_haw_addr,
  output logic [7:0]                m_haw_len,
  output logic [7:0]                m_haw_fn,
  output logic                      m_hw_valid,
  input  wire                       m_hw_ready,
  output logic [511:0]              m_hw_data,
  output logic [63:0]               m_hw_strb,
  output logic                      m_hw_last,
  input  wire                       s_hb_valid,
  output logic                      s_hb_ready,
  input  wire  [1:0]                s_hb_resp,
  input  wire  [7:0]                s_hb_user,

  // Card DDR, write (AXI4, 512-bit).
  output logic                      m_daw_valid,
  input  wire                       m_daw_ready,
  output logic [63:0]               m_daw_addr,
  output logic [7:0]                m_daw_len,
  output logic                      m_dw_valid,
  input  wire                       m_dw_ready,
  output logic [511:0]              m_dw_data,
  output logic [63:0]               m_dw_strb,
  output logic                      m_dw_last,
  input  wire                       s_db_valid,
  output logic                      s_db_ready,
  input  wire  [1:0]                s_db_resp,

  // Flush (persist a byte range of card DDR).
  output logic                      m_flush_valid,
  input  wire                       m_flush_ready,
  output logic [63:0]               m_flush_addr,
  output logic [63:0]               m_flush_len,
  input  wire                       s_flush_done,
  input  wire                       s_flush_err,

  // Refused host writes.
  output logic                      bfault_valid,
  output logic [VFW-1:0]            bfault_vf,

  // Completion records, in job order.
  output logic                      m_rec_valid,
  input  wire                       m_rec_ready,
  output logic [keel_pkg::JR_W-1:0] m_rec,
  output logic [VFW-1:0]            m_rec_vf,

  // No job on the write side and no record waiting.
  output logic                      idle
);

  localparam int TW = $clog2(TRK_DEPTH);

  // Outputs of the FIFOs this module does not need.
  logic [19:0]         unused_wq_d1;
  logic [1:0]          unused_wq_count;
  logic [keel_pkg::JR_W+VFW-1:0] unused_out_d1;
  logic [2:0]          unused_out_count;

  // ================================================================ write side
  typedef enum logic [2:0] {WS_IDLE, WS_RUN, WS_FLUSH, WS_FLUSH_REQ, WS_FLUSH_WAIT} ws_t;
  ws_t            ws_q;
  logic           ws_ddr_q;      // destination is card DDR (else host)
  logic           ws_zero_q;     // zeroes, no source
  logic [VFW-1:0] ws_vf_q;
  logic [JW-1:0]  ws_slot_q;
  logic [2:0]     ws_kind_q;
  logic [63:0]    wd_addr_q;     // next DDR burst
  logic [31:0]    wd_left_q;     // DDR beats without a burst yet
  logic [TW:0]    cur_q;         // tracker entry of the current job

  // Realigner state (per job).
  logic [5:0]     rl_sh_q;
  logic           rl_dm1_q;      // destination lags the source by one beat (a < b)
  logic [31:0]    rl_ns_q, rl_nd_q, rl_k_q;

  // Tracker.
  logic [keel_pkg::JR_W-1:0] trk_rec [TRK_DEPTH];
  logic [VFW-1:0] trk_vf    [TRK_DEPTH];
  logic [15:0]    trk_hi    [TRK_DEPTH];
  logic [15:0]    trk_hr    [TRK_DEPTH];
  logic [15:0]    trk_di    [TRK_DEPTH];
  logic [15:0]    trk_dr    [TRK_DEPTH];
  logic           trk_final [TRK_DEPTH];
  logic           trk_skip  [TRK_DEPTH];
  logic           trk_herr  [TRK_DEPTH];   // host-side error: Data Transfer Error
  logic           trk_ierr  [TRK_DEPTH];   // card-side error: Internal Error
  logic [TW:0]    t_alloc_q, t_head_q, t_hb_q, t_db_q;

  // Chunks whose address was issued, waiting for their data beats.
  logic           wq_push, wq_ready, wq_valid, wq_pop;
  logic [19:0]    wq_in, wq_out;    // {last lane, first lane, beats}
  keel_fifo #(.WIDTH(20), .DEPTH(2)) u_wq (
    .clk, .rst,
    .s_valid(wq_push), .s_ready(wq_ready), .s_data(wq_in),
    .m_valid(wq_valid), .m_ready(wq_pop), .m_pop2(1'b0), .m_data(wq_out),
    .m_data1(unused_wq_d1), .count(unused_wq_count)
  );
  logic [7:0]     wb_q;             // beat within the current chunk

  // Job FIFO head.
  logic                 f_skip;
  logic [VFW-1:0]       f_vf;
  logic [JW-1:0]        f_slot;
  logic [keel_pkg::JR_W-1:0]      f_rec;
  logic [2:0]           f_kind;
  logic [31:0]          f_bytes;
  logic [63:0]          f_addr, f_prp1;
  logic [5:0]           f_a, f_b;
  logic                 ws_start;

  logic           dw_busy, dw_cvalid, dw_take;
  logic [63:0]    dw_c0, dw_c1;
  logic [31:0]    dw_nb;
  logic [7:0]     wd_nb;

  always_comb begin
    {f_skip, f_vf, f_slot, f_rec} = jf_out;
    f_kind = f_rec[keel_pkg::JR_KIND +: 3];
    f_bytes = f_rec[keel_pkg::JR_BYTES +: 32];
    f_addr = f_rec[keel_pkg::JR_ADDR +: 64];
    f_prp1 = f_rec[keel_pkg::JR_PRP1 +: 64];
    f_a = f_kind == keel_pkg::JOB_H2D ? f_prp1[5:0] : (f_kind == keel_pkg::JOB_I2H ? f_addr[5:0] : 6'd0);
    f_b = (f_kind == keel_pkg::JOB_D2H || f_kind == keel_pkg::JOB_I2H) ? f_prp1[5:0] : 6'd0;
    ws_start = ws_q == WS_IDLE && jf_valid && (t_alloc_q - t_head_q) != (TW+1)'(TRK_DEPTH);
    jf_pop = ws_start;
    seg_d_vf = ws_vf_q;
    seg_d_slot = ws_slot_q;
    dw_nb = 32'((dw_c1 - 64'd1) >> 6) - 32'(dw_c0 >> 6) + 32'd1;
    wd_nb = 8'(DDR_BURST) - {2'd0, wd_addr_q[6 +: 6] & 6'(DDR_BURST - 1)};
    if (32'(wd_nb) > wd_left_q) wd_nb = wd_left_q[7:0];
  end

  keel_seg_walker #(.CHUNK_LOG2(HOST_CHUNK_LOG2), .SW(SW)) u_dst_walker (
    .clk, .rst,
    .start(ws_start && !f_skip && (f_kind == keel_pkg::JOB_D2H || f_kind == keel_pkg::JOB_I2H)),
    .prp1(f_prp1), .bytes(f_bytes), .mps(f_rec[keel_pkg::JR_MPS +: 3]),
    .seg_idx(seg_d_idx), .seg_ren(seg_d_en), .seg_data(seg_d_data),
    .busy(dw_busy), .chunk_valid(dw_cvalid), .chunk_addr(dw_c0), .chunk_end(dw_c1),
    .chunk_take(dw_take)
  );

  // Address channels of the write side.
  always_comb begin
    m_daw_valid = ws_q == WS_RUN && ws_ddr_q && wd_left_q != 32'd0 && wq_ready;
    m_daw_addr = wd_addr_q;
    m_daw_len = wd_nb - 8'd1;
    m_haw_valid = ws_q == WS_RUN && !ws_ddr_q && dw_cvalid && wq_ready;
    m_haw_addr = {dw_c0[63:6], 6'd0};
    m_haw_len = 8'(dw_nb - 32'd1);
    m_haw_fn = 8'(ws_vf_q) + 8'd1;
    if (ws_ddr_q) wq_in = {6'd63, 6'd0, wd_nb};
    else wq_in = {6'((dw_c1 - 64'd1) & 64'd63), dw_c0[5:0], 8'(dw_nb)};
  end

  assign dw_take = m_haw_valid && m_haw_ready;
  assign wq_push = (m_daw_valid && m_daw_ready) || dw_take;

  // Realigner: destination beat rl_k from source beats (rl_k - rl_dm1) and the one after.
  logic         rl_lo_v, rl_hi_v, rl_need_hi, rl_last, rl_ready;
  logic [1:0]   rl_need, rl_popn;
  logic [511:0] rl_lo, rl_hi, rl_out;
  logic [1023:0] rl_cat;
  logic         rl_err;
  always_comb begin
    rl_lo_v = !rl_dm1_q || rl_k_q != 32'd0;
    rl_hi_v = (rl_k_q + (rl_dm1_q ? 32'd0 : 32'd1)) < rl_ns_q;
    rl_need_hi = rl_hi_v && (rl_sh_q != 6'd0 || !rl_lo_v);
    rl_last = rl_k_q + 32'd1 == rl_nd_q;
    rl_need = 2'(rl_lo_v) + 2'(rl_need_hi);
    rl_popn = rl_last ? 2'(rl_lo_v) + 2'(rl_hi_v) : 2'(rl_lo_v);
    rl_ready = {1'b0, sf_count} >= (SCW+1)'(rl_need) && {1'b0, sf_count} >= (SCW+1)'(rl_popn);
    rl_lo = rl_lo_v ? sf_d0[511:0] : 512'd0;
    rl_hi = !rl_need_hi ? 512'd0 : (rl_lo_v ? sf_d1[511:0] : sf_d0[511:0]);
    if (rl_sh_q == 6'd0) begin  // source and destination aligned alike: no shifter
      rl_cat = '0;
      rl_out = rl_lo;
    end else begin
      rl_cat = {rl_hi, rl_lo} >> {rl_sh_q, 3'b000};
      rl_out = rl_cat[511:0];
    end
    rl_err = (rl_lo_v && sf_d0[512]) || (rl_need_hi && (rl_lo_v ? sf_d1[512] : sf_d0[512]));
  end

  // Data channels of the write side.
  logic        w_fire;
  logic [7:0]  w_nb;
  logic [5:0]  w_first_lane, w_last_lane;
  logic        w_first, w_last_beat;
  logic [63:0] w_mask;
  always_comb begin
    w_nb = wq_out[7:0];
    w_first_lane = wq_out[13:8];
    w_last_lane = wq_out[19:14];
    w_first = wb_q == 8'd0;
    w_last_beat = wb_q + 8'd1 == w_nb;
    w_mask = '1;
    if (w_first) w_mask = w_mask & ~((64'd1 << w_first_lane) - 64'd1);
    if (w_last_beat) w_mask = w_mask & ((64'd2 << w_last_lane) - 64'd1);
    m_dw_valid = ws_q == WS_RUN && ws_ddr_q && wq_valid && (ws_zero_q || rl_ready);
    m_hw_valid = ws_q == WS_RUN && !ws_ddr_q && wq_valid && rl_ready;
    m_dw_data = ws_zero_q ? 512'd0 : rl_out;
    m_dw_strb = (!ws_zero_q && rl_err) ? 64'd0 : 64'hFFFF_FFFF_FFFF_FFFF;
    m_dw_last = w_last_beat;
    m_hw_data = rl_out;
    m_hw_strb = rl_err ? 64'd0 : w_mask;
    m_hw_last = w_last_beat;
    w_fire = (m_dw_valid && m_dw_ready) || (m_hw_valid && m_hw_ready);
    wq_pop = w_fire && w_last_beat;
    sf_pop1 = w_fire && !ws_zero_q && rl_popn == 2'd1;
    sf_pop2 = w_fire && !ws_zero_q && rl_popn == 2'd2;
  end

  // Responses and completion.
  logic          trk_pop;
  logic [TW-1:0] hb_i, db_i, head_i, cur_i;
  logic          out_ready;
  logic [keel_pkg::JR_W-1:0] out_rec;
  logic [14:0]   out_status;
  logic [2:0]    out_kind;
  always_comb begin
    hb_i = t_hb_q[TW-1:0];
    db_i = t_db_q[TW-1:0];
    head_i = t_head_q[TW-1:0];
    cur_i = cur_q[TW-1:0];
    s_hb_ready = t_hb_q != t_alloc_q && trk_hr[hb_i] != trk_hi[hb_i];
    s_db_ready = t_db_q != t_alloc_q && trk_dr[db_i] != trk_di[db_i];
    bfault_valid = s_hb_valid && s_hb_ready && s_hb_resp != keel_pkg::AXI_RESP_OKAY;
    bfault_vf = VFW'(s_hb_user - 8'd1);
    trk_pop = t_head_q != t_alloc_q && trk_final[head_i] && t_hb_q != t_head_q &&
              t_db_q != t_head_q && out_ready;
    out_rec = '0;
    out_status = '0;
    out_kind = '0;
    wjob_done = 1'b0;
    if (t_head_q != t_alloc_q) begin
      out_kind = trk_rec[head_i][keel_pkg::JR_KIND +: 3];
      wjob_done = trk_pop && !trk_skip[head_i] &&
                  (out_kind == keel_pkg::JOB_H2D || out_kind == keel_pkg::JOB_ZERO);
      out_rec = trk_rec[head_i];
      out_status = out_rec[keel_pkg::JR_STATUS +: 15];
      if (out_status == keel_pkg::SC_SUCCESS && trk_herr[head_i]) out_status = keel_pkg::SC_DATA_XFER_ERROR;
      if (out_status == keel_pkg::SC_SUCCESS && trk_ierr[head_i]) out_status = keel_pkg::SC_INTERNAL_ERROR;
      out_rec[keel_pkg::JR_STATUS +: 15] = out_status;
      out_rec[keel_pkg::JR_DATA_OK] = !trk_skip[head_i] && out_status == keel_pkg::SC_SUCCESS &&
                                      (out_kind == keel_pkg::JOB_D2H || out_kind == keel_pkg::JOB_H2D ||
                                       out_kind == keel_pkg::JOB_ZERO || out_kind == keel_pkg::JOB_I2H);
    end
    m_flush_valid = ws_q == WS_FLUSH_REQ;
    m_flush_addr = trk_rec[cur_i][keel_pkg::JR_ADDR +: 64];
    m_flush_len = {res_lbas[32'(ws_vf_q)*64 +: 55], 9'd0};
  end

  keel_fifo #(.WIDTH(keel_pkg::JR_W + VFW), .DEPTH(4)) u_out_fifo (
    .clk, .rst,
    .s_valid(trk_pop), .s_ready(out_ready), .s_data({trk_vf[head_i], out_rec}),
    .m_valid(m_rec_valid), .m_ready(m_rec_ready), .m_pop2(1'b0), .m_data({m_rec_vf, m_rec}),
    .m_data1(unused_out_d1), .count(unused_out_count)
  );

  always_ff @(posedge clk) begin
    if (rst) begin
      ws_q <= WS_IDLE;
      t_alloc_q <= '0;
      t_head_q <= '0;
      t_hb_q <= '0;
      t_db_q <= '0;
      wb_q <= '0;
      for (int i = 0; i < TRK_DEPTH; i++) trk_final[i] <= 1'b0;
    end else begin
      // ---- write responses
      if (s_hb_valid && s_hb_ready) begin
        trk_hr[hb_i] <= trk_hr[hb_i] + 16'd1;
        if (s_hb_resp != keel_pkg::AXI_RESP_OKAY) trk_herr[hb_i] <= 1'b1;
      end else if (t_hb_q != t_alloc_q && trk_final[hb_i] && trk_hr[hb_i] == trk_hi[hb_i]) begin
        t_hb_q <= t_hb_q + 1'b1;
      end
      if (s_db_valid && s_db_ready) begin
        trk_dr[db_i] <= trk_dr[db_i] + 16'd1;
        if (s_db_resp != keel_pkg::AXI_RESP_OKAY) trk_ierr[db_i] <= 1'b1;
      end else if (t_db_q != t_alloc_q && trk_final[db_i] && trk_dr[db_i] == trk_di[db_i]) begin
        t_db_q <= t_db_q + 1'b1;
      end
      if (trk_pop) begin
        t_head_q <= t_head_q + 1'b1;
        trk_final[head_i] <= 1'b0;
      end

      // ---- beats
      if (w_fire) begin
        wb_q <= w_last_beat ? 8'd0 : wb_q + 8'd1;
        if (!ws_zero_q) rl_k_q <= rl_k_q + 32'd1;
        if (!ws_zero_q && rl_err) begin
          if (ws_kind_q == keel_pkg::JOB_H2D) trk_herr[cur_i] <= 1'b1;
          else trk_ierr[cur_i] <= 1'b1;
        end
      end
      if (m_daw_valid && m_daw_ready) begin
        wd_addr_q <= wd_addr_q + {50'd0, wd_nb, 6'd0};
        wd_left_q <= wd_left_q - 32'(wd_nb);
        trk_di[cur_i] <= trk_di[cur_i] + 16'd1;
      end
      if (dw_take) trk_hi[cur_i] <= trk_hi[cur_i] + 16'd1;

      case (ws_q)
        WS_IDLE: if (ws_start) begin
          logic [TW-1:0] e;
          logic [31:0] ns, nd;
          e = t_alloc_q[TW-1:0];
          t_alloc_q <= t_alloc_q + 1'b1;
          cur_q <= t_alloc_q;
          trk_rec[e] <= f_rec;
          trk_vf[e] <= f_vf;
          trk_hi[e] <= '0;
          trk_hr[e] <= '0;
          trk_di[e] <= '0;
          trk_dr[e] <= '0;
          trk_skip[e] <= f_skip;
          trk_herr[e] <= 1'b0;
          trk_ierr[e] <= 1'b0;
          trk_final[e] <= 1'b1;
          ws_vf_q <= f_vf;
          ws_slot_q <= f_slot;
          ws_kind_q <= f_kind;
          ws_zero_q <= f_kind == keel_pkg::JOB_ZERO;
          ws_ddr_q <= f_kind == keel_pkg::JOB_H2D || f_kind == keel_pkg::JOB_ZERO;
          wd_addr_q <= f_addr;
          wd_left_q <= f_bytes >> 6;
          ns = ({26'd0, f_a} + f_bytes + 32'd63) >> 6;
          nd = ({26'd0, f_b} + f_bytes + 32'd63) >> 6;
          rl_ns_q <= ns;
          rl_nd_q <= nd;
          rl_k_q <= '0;
          rl_sh_q <= f_a - f_b;
          rl_dm1_q <= f_a < f_b;
          wb_q <= '0;
          if (!f_skip) begin
            case (f_kind)
              keel_pkg::JOB_D2H, keel_pkg::JOB_H2D, keel_pkg::JOB_I2H, keel_pkg::JOB_ZERO: begin
                trk_final[e] <= 1'b0;
                ws_q <= WS_RUN;
              end
              keel_pkg::JOB_FLUSH: begin
                trk_final[e] <= 1'b0;
                ws_q <= WS_FLUSH;
              end
              default: ;
            endcase
          end
        end
        WS_RUN: begin
          // Done when every address is issued and every beat written.
          if ((ws_ddr_q ? wd_left_q == 32'd0 : !dw_busy) && !wq_valid && !wq_push) begin
            trk_final[cur_i] <= 1'b1;
            ws_q <= WS_IDLE;
          end
        end
        WS_FLUSH: if (t_head_q == cur_q) ws_q <= WS_FLUSH_REQ;
        WS_FLUSH_REQ: if (m_flush_ready) ws_q <= WS_FLUSH_WAIT;
        WS_FLUSH_WAIT: if (s_flush_done) begin
          if (s_flush_err) trk_ierr[cur_i] <= 1'b1;
          trk_final[cur_i] <= 1'b1;
          ws_q <= WS_IDLE;
        end
        default: ws_q <= WS_IDLE;
      endcase
    end
  end

  assign idle = ws_q == WS_IDLE && t_alloc_q == t_head_q && !m_rec_valid;

  logic unused_ok;
  always_comb unused_ok = ^{rl_cat[1023:512], f_slot};

endmodule
