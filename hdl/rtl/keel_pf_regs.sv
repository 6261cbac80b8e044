`resetall
`timescale 1ns / 1ps
`default_nettype none

// PF BAR0 of the keel card: identity, NUM_VFS, per-VF resources (VFCFG) and counter readback.
//
// Writes arrive from keel_mmio one at a time (wr_valid pulse, wr_done pulse when the write has
// taken effect). A write that changes the VF population (NUM_VFS, VFCFG CTRL disable, FLR.GO)
// is handed to keel_ctrl and completes when keel_ctrl acknowledges it; enabling a VF validates
// its resources against the card and the other enabled VFs, one VF per cycle.
//
// 64-bit writes: the upper half of an 8-byte word is a separate 32-bit register for ID/VERSION,
// CAPS/NUM_VFS, STATUS/CLOCK_MHZ, CTRL/STATUS, IOQ/QOS and RATE/FLR; a write with both halves'
// strobes writes only the lower register there (what a 64-bit store to a 32-bit register
// does on the reference model). Everywhere else both halves are written.
module keel_pf_regs #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // Card clock in MHz (PF CLOCK_MHZ).
  parameter int CLOCK_MHZ = 250,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1
) (
  input  wire                  clk,
  input  wire                  rst,

  // Straps from the shell: run-time limits of this card instance.
  input  wire  [7:0]           cfg_max_vfs,
  input  wire  [7:0]           cfg_max_ioq,
  input  wire  [63:0]          cfg_storage_lbas,

  // Register access from keel_mmio. Addresses are 8-byte aligned PF BAR offsets.
  input  wire                  wr_valid,
  input  wire  [13:0]          wr_addr,
  input  wire                  wr_lo,
  input  wire                  wr_hi,
  input  wire  [63:0]          wr_data,
  output logic                 wr_done,
  input  wire                  rd_en,            // a PF read is in progress
  input  wire  [13:0]          rd_addr,
  output logic [63:0]          rd_data,

  // VF population, owned by keel_ctrl.
  input  wire  [7:0]           num_vfs,
  input  wire                  num_vfs_err,
  input  wire  [NUM_VFS-1:0]   vf_removed,
  output logic                 ctrl_req_valid,
  output logic                 ctrl_req_numvfs,  // 1: NUM_VFS write, 0: FLR of ctrl_req_vf
  output logic [VFW-1:0]       ctrl_req_vf,
  output logic [7:0]           ctrl_req_value,
  input  wire                  ctrl_ack,
  input  wire                  res_reset_valid,  // VF resources back to their reset values
  input  wire  [VFW-1:0]       res_reset_vf,

  // Counters: per-VF readback of the VF addressed by rd_addr, and card totals.
  output logic [VFW-1:0]       cnt_rd_vf,
  input  wire  [64*5-1:0]      cnt_rd_data,  // {cmd_errors, dma_faults, busy, bytes, cmds}
  input  wire  [63:0]          tot_dma_faults,
  input  wire  [63:0]          tot_cmds,
  input  wire  [63:0]          tot_bytes,
  input  wire  [63:0]          cycles,

  // Committed resources of every VF.
  output logic [NUM_VFS-1:0]   res_enabled,
  output logic [NUM_VFS*8-1:0] res_ioq,
  output logic [NUM_VFS*8-1:0] res_weight,
  output logic [NUM_VFS*32-1:0] res_rate,
  output logic [NUM_VFS*64-1:0] res_base,
  output logic [NUM_VFS*64-1:0] res_lbas,
  output logic                  idle
);

  if (NUM_VFS < 1 || NUM_VFS > 64) begin : g_bad_vfs
    $fatal(1, "keel_pf_regs: NUM_VFS must be 1..64");
  end

  // VFCFG STATUS.ERR_CODE values.
  localparam logic [3:0] ERR_PAST_END = 4'd1;
  localparam logic [3:0] ERR_OVERLAP = 4'd2;
  localparam logic [3:0] ERR_QUEUES = 4'd3;
  localparam logic [3:0] ERR_EMPTY = 4'd4;
  localparam logic [3:0] ERR_NOT_PRESENT = 4'd5;
  localparam logic [3:0] ERR_WHILE_ENABLED = 4'd6;

  localparam logic [13:0] VFCFG_BASE = 14'h1000;

  // Resources, stored as the flat vectors the rest of the card reads.
  logic [NUM_VFS-1:0]    en_q;
  logic [3:0]            err_q  [NUM_VFS];
  logic [NUM_VFS*8-1:0]  ioq_q;
  logic [NUM_VFS*8-1:0]  wgt_q;
  logic [NUM_VFS*32-1:0] rate_q;
  logic [NUM_VFS*64-1:0] base_q;
  logic [NUM_VFS*64-1:0] lbas_q;

  assign res_enabled = en_q;
  assign res_ioq = ioq_q;
  assign res_weight = wgt_q;
  assign res_rate = rate_q;
  assign res_base = base_q;
  assign res_lbas = lbas_q;

  // ---------------------------------------------------------------- write path
  typedef enum logic [1:0] {W_IDLE, W_VALIDATE, W_CTRL} wstate_t;
  wstate_t st_q;
  logic [VFW-1:0] wvf_q;       // VF being validated
  logic [6:0]     scan_q;      // overlap scan index

  // Decode of the incoming write.
  logic           w_is_vfcfg;
  logic [13:0]    w_rel;
  logic [6:0]     w_vfi;
  logic [VFW-1:0] w_vf;
  logic [6:0]     w_reg;
  logic           w_pair, w_lo, w_hi, w_vf_ok;

  always_comb begin
    w_is_vfcfg = wr_addr >= VFCFG_BASE;
    w_rel = wr_addr - VFCFG_BASE;
    w_vfi = w_rel[13:7];
    w_vf = VFW'(w_vfi);
    w_reg = w_rel[6:0];
    w_pair = w_is_vfcfg ? (w_reg == 7'h00 || w_reg == 7'h08 || w_reg == 7'h10)
                        : (wr_addr == 14'h000 || wr_addr == 14'h008 || wr_addr == 14'h018);
    w_lo = wr_lo;
    w_hi = wr_hi && !(w_pair && wr_lo);
    w_vf_ok = {1'b0, w_vfi} < cfg_max_vfs && 32'(w_vfi) < NUM_VFS;
  end

  // Validation of VF wvf_q's resources (the checks before the overlap scan).
  logic [3:0]  v_err0;
  logic [63:0] v_base, v_lbas;
  always_comb begin
    v_base = base_q[32'(wvf_q)*64 +: 64];
    v_lbas = lbas_q[32'(wvf_q)*64 +: 64];
    v_err0 = 4'd0;
    if (ioq_q[32'(wvf_q)*8 +: 8] == 8'd0 || ioq_q[32'(wvf_q)*8 +: 8] > cfg_max_ioq) v_err0 = ERR_QUEUES;
    else if (v_lbas == 64'd0) v_err0 = ERR_EMPTY;
    else if (v_base >= cfg_storage_lbas || v_lbas > cfg_storage_lbas - v_base) v_err0 = ERR_PAST_END;
  end

  // One step of the overlap scan: does VF scan_q (enabled, present) overlap VF wvf_q?
  logic           scan_hit;
  logic [VFW-1:0] scan_vf;
  always_comb begin
    scan_vf = VFW'(scan_q);
    scan_hit = st_q == W_VALIDATE && 32'(scan_q) < NUM_VFS && {1'b0, scan_q} < num_vfs &&
               scan_vf != wvf_q && en_q[scan_vf] &&
               v_base < base_q[32'(scan_vf)*64 +: 64] + lbas_q[32'(scan_vf)*64 +: 64] && base_q[32'(scan_vf)*64 +: 64] < v_base + v_lbas;
  end

  always_ff @(posedge clk) begin
    wr_done <= 1'b0;
    ctrl_req_valid <= 1'b0;
    if (rst) begin
      st_q <= W_IDLE;
      for (int i = 0; i < NUM_VFS; i++) begin
        en_q[i] <= 1'b0;
        err_q[i] <= 4'd0;
        ioq_q[32'(i)*8 +: 8] <= 8'd1;
        wgt_q[32'(i)*8 +: 8] <= 8'd1;
        rate_q[32'(i)*32 +: 32] <= 32'd0;
        base_q[32'(i)*64 +: 64] <= 64'd0;
        lbas_q[32'(i)*64 +: 64] <= 64'd0;
      end
    end else begin
      case (st_q)
        W_IDLE: if (wr_valid) begin
          if (!w_is_vfcfg) begin
            if (wr_addr == 14'h008 && w_hi) begin
              ctrl_req_valid <= 1'b1;
              ctrl_req_numvfs <= 1'b1;
              ctrl_req_value <= wr_data[39:32];
              st_q <= W_CTRL;
            end else begin
              wr_done <= 1'b1;
            end
          end else if (!w_vf_ok) begin
            wr_done <= 1'b1;
          end else if ({1'b0, w_vfi} >= num_vfs) begin
            err_q[w_vf] <= ERR_NOT_PRESENT;
            wr_done <= 1'b1;
          end else if (w_reg == 7'h00 && w_lo) begin
            // CTRL.ENABLE
            if (wr_data[0] && !en_q[w_vf]) begin
              wvf_q <= w_vf;
              scan_q <= 7'd0;
              st_q <= W_VALIDATE;
            end else if (!wr_data[0] && en_q[w_vf]) begin
              en_q[w_vf] <= 1'b0;
              err_q[w_vf] <= 4'd0;
              ctrl_req_valid <= 1'b1;
              ctrl_req_numvfs <= 1'b0;
              ctrl_req_vf <= w_vf;
              st_q <= W_CTRL;
            end else begin
              wr_done <= 1'b1;
            end
          end else if (w_reg == 7'h10 && w_hi) begin
            // FLR.GO
            if (wr_data[32]) begin
              ctrl_req_valid <= 1'b1;
              ctrl_req_numvfs <= 1'b0;
              ctrl_req_vf <= w_vf;
              st_q <= W_CTRL;
            end else begin
              wr_done <= 1'b1;
            end
          end else begin
            wr_done <= 1'b1;
            if (en_q[w_vf]) begin
              err_q[w_vf] <= ERR_WHILE_ENABLED;
            end else begin
              case (w_reg)
                7'h08: begin
                  if (w_lo) ioq_q[32'(w_vf)*8 +: 8] <= wr_data[7:0];
                  if (w_hi) wgt_q[32'(w_vf)*8 +: 8] <= wr_data[39:32];
                end
                7'h10: if (w_lo) rate_q[32'(w_vf)*32 +: 32] <= wr_data[31:0];
                7'h18: begin
                  if (w_lo) base_q[32'(w_vf)*64 +: 32] <= wr_data[31:0];
                  if (w_hi) base_q[32'(w_vf)*64 + 32 +: 32] <= wr_data[63:32];
                end
                7'h20: begin
                  if (w_lo) lbas_q[32'(w_vf)*64 +: 32] <= wr_data[31:0];
                  if (w_hi) lbas_q[32'(w_vf)*64 + 32 +: 32] <= wr_data[63:32];
                end
                default: ;
              endcase
            end
          end
        end
        W_VALIDATE: begin
          if (v_err0 != 4'd0) begin
            err_q[wvf_q] <= v_err0;
            wr_done <= 1'b1;
            st_q <= W_IDLE;
          end else if (scan_hit) begin
            err_q[wvf_q] <= ERR_OVERLAP;
            wr_done <= 1'b1;
            st_q <= W_IDLE;
          end else if (32'(scan_q) >= NUM_VFS - 1) begin
            err_q[wvf_q] <= 4'd0;
            en_q[wvf_q] <= 1'b1;
            wr_done <= 1'b1;
            st_q <= W_IDLE;
          end else begin
            scan_q <= scan_q + 7'd1;
          end
        end
        W_CTRL: if (ctrl_ack) begin
          wr_done <= 1'b1;
          st_q <= W_IDLE;
        end
        default: st_q <= W_IDLE;
      endcase
      if (res_reset_valid) begin
        en_q[res_reset_vf] <= 1'b0;
        err_q[res_reset_vf] <= 4'd0;
        ioq_q[32'(res_reset_vf)*8 +: 8] <= 8'd1;
        wgt_q[32'(res_reset_vf)*8 +: 8] <= 8'd1;
        rate_q[32'(res_reset_vf)*32 +: 32] <= 32'd0;
        base_q[32'(res_reset_vf)*64 +: 64] <= 64'd0;
        lbas_q[32'(res_reset_vf)*64 +: 64] <= 64'd0;
      end
    end
  end

  assign idle = st_q == W_IDLE;

  // ---------------------------------------------------------------- read path
  logic [13:0]    r_rel;
  logic [6:0]     r_vfi;
  logic [VFW-1:0] r_vf;
  logic [6:0]     r_reg;
  logic           r_present;
  logic [31:0]    r_status, r_caps, r_vfstat;

  always_comb begin
    r_rel = rd_addr - VFCFG_BASE;
    r_vfi = r_rel[13:7];
    r_vf = VFW'(r_vfi);
    r_reg = r_rel[6:0];
  end
  assign cnt_rd_vf = r_vf;

  always_comb begin
    r_present = {1'b0, r_vfi} < num_vfs && !vf_removed[r_vf];
    r_caps = {6'd0, 1'b1, 1'b1, 4'd0, 4'(keel_regs_pkg::KEEL_LBA_SHIFT), cfg_max_ioq, cfg_max_vfs};
    r_status = {30'd0, num_vfs_err, 1'b1};
    r_vfstat = {20'd0, err_q[r_vf], 4'd0, err_q[r_vf] != 4'd0, 1'b0, r_present, en_q[r_vf]};
    rd_data = 64'd0;
    if (!rd_en) begin
      rd_data = 64'd0;
    end else if (rd_addr < VFCFG_BASE) begin
      case (rd_addr)
        14'h000: rd_data = {32'(keel_regs_pkg::KEEL_VERSION_MAJOR << 16) |
                            32'(keel_regs_pkg::KEEL_VERSION_MINOR),
                            32'(keel_regs_pkg::KEEL_MAGIC)};
        14'h008: rd_data = {24'd0, num_vfs, r_caps};
        14'h010: rd_data = cfg_storage_lbas;
        14'h018: rd_data = {32'(CLOCK_MHZ), r_status};
        14'h020: rd_data = tot_dma_faults;
        14'h028: rd_data = tot_cmds;
        14'h030: rd_data = tot_bytes;
        14'h038: rd_data = cycles;
        default: rd_data = 64'd0;
      endcase
    end else if ({1'b0, r_vfi} < cfg_max_vfs && 32'(r_vfi) < NUM_VFS) begin
      case (r_reg)
        7'h00: rd_data = {r_vfstat, 31'd0, en_q[r_vf]};
        7'h08: rd_data = {24'd0, wgt_q[32'(r_vf)*8 +: 8], 24'd0, ioq_q[32'(r_vf)*8 +: 8]};
        7'h10: rd_data = {32'd0, rate_q[32'(r_vf)*32 +: 32]};
        7'h18: rd_data = base_q[32'(r_vf)*64 +: 64];
        7'h20: rd_data = lbas_q[32'(r_vf)*64 +: 64];
        7'h28: rd_data = cnt_rd_data[0 +: 64];
        7'h30: rd_data = cnt_rd_data[64 +: 64];
        7'h38: rd_data = cnt_rd_data[128 +: 64];
        7'h40: rd_data = cnt_rd_data[192 +: 64];
        7'h48: rd_data = cnt_rd_data[256 +: 64];
        default: rd_data = 64'd0;
      endcase
    end
  end

endmodule
