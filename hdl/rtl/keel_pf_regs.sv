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

  // Register offsets come from the generated register map (keel_regs_pkg): an access names the
  // 8-byte word it addresses (A_*) and the 32-bit half a register sits in (H_*: 0 low, 1 high).

  function automatic logic [13:0] pf_word(input logic [63:0] off);
    pf_word = 14'(keel_regs_pkg::PF_BASE + off) & ~14'd7;
  endfunction
  function automatic logic [6:0] vf_word(input logic [63:0] off);
    vf_word = 7'(off & 64'h78);  // a register of the 128-byte block
  endfunction
  function automatic int half_of(input logic [63:0] off);
    half_of = 32'((off >> 2) & 64'd1);
  endfunction

  localparam logic [13:0] VFCFG_BASE_A = 14'(keel_regs_pkg::VFCFG_BASE);
  localparam logic [13:0] A_ID = pf_word(keel_regs_pkg::PF_ID_OFFSET);
  localparam logic [13:0] A_VERSION = pf_word(keel_regs_pkg::PF_VERSION_OFFSET);
  localparam logic [13:0] A_CAPS = pf_word(keel_regs_pkg::PF_CAPS_OFFSET);
  localparam logic [13:0] A_NUM_VFS = pf_word(keel_regs_pkg::PF_NUM_VFS_OFFSET);
  localparam logic [13:0] A_STORAGE_LBAS = pf_word(keel_regs_pkg::PF_STORAGE_LBAS_OFFSET);
  localparam logic [13:0] A_STATUS = pf_word(keel_regs_pkg::PF_STATUS_OFFSET);
  localparam logic [13:0] A_CLOCK_MHZ = pf_word(keel_regs_pkg::PF_CLOCK_MHZ_OFFSET);
  localparam logic [13:0] A_DMA_FAULTS = pf_word(keel_regs_pkg::PF_DMA_FAULTS_OFFSET);
  localparam logic [13:0] A_CMDS = pf_word(keel_regs_pkg::PF_CMDS_OFFSET);
  localparam logic [13:0] A_BYTES = pf_word(keel_regs_pkg::PF_BYTES_OFFSET);
  localparam logic [13:0] A_CYCLES = pf_word(keel_regs_pkg::PF_CYCLES_OFFSET);
  localparam int H_ID = half_of(keel_regs_pkg::PF_ID_OFFSET);
  localparam int H_VERSION = half_of(keel_regs_pkg::PF_VERSION_OFFSET);
  localparam int H_CAPS = half_of(keel_regs_pkg::PF_CAPS_OFFSET);
  localparam int H_NUM_VFS = half_of(keel_regs_pkg::PF_NUM_VFS_OFFSET);
  localparam int H_STATUS = half_of(keel_regs_pkg::PF_STATUS_OFFSET);
  localparam int H_CLOCK_MHZ = half_of(keel_regs_pkg::PF_CLOCK_MHZ_OFFSET);

  localparam logic [6:0] A_CTRL = vf_word(keel_regs_pkg::VFCFG_CTRL_OFFSET);
  localparam logic [6:0] A_VSTATUS = vf_word(keel_regs_pkg::VFCFG_STATUS_OFFSET);
  localparam logic [6:0] A_IOQ = vf_word(keel_regs_pkg::VFCFG_IOQ_OFFSET);
  localparam logic [6:0] A_QOS = vf_word(keel_regs_pkg::VFCFG_QOS_OFFSET);
  localparam logic [6:0] A_RATE = vf_word(keel_regs_pkg::VFCFG_RATE_OFFSET);
  localparam logic [6:0] A_FLR = vf_word(keel_regs_pkg::VFCFG_FLR_OFFSET);
  localparam logic [6:0] A_SLICE_BASE = vf_word(keel_regs_pkg::VFCFG_SLICE_BASE_OFFSET);
  localparam logic [6:0] A_SLICE_LBAS = vf_word(keel_regs_pkg::VFCFG_SLICE_LBAS_OFFSET);
  localparam logic [6:0] A_VCMDS = vf_word(keel_regs_pkg::VFCFG_CMDS_OFFSET);
  localparam logic [6:0] A_VBYTES = vf_word(keel_regs_pkg::VFCFG_BYTES_OFFSET);
  localparam logic [6:0] A_VBUSY = vf_word(keel_regs_pkg::VFCFG_BUSY_CYCLES_OFFSET);
  localparam logic [6:0] A_VDMA_FAULTS = vf_word(keel_regs_pkg::VFCFG_DMA_FAULTS_OFFSET);
  localparam logic [6:0] A_VCMD_ERRORS = vf_word(keel_regs_pkg::VFCFG_CMD_ERRORS_OFFSET);
  localparam int H_CTRL = half_of(keel_regs_pkg::VFCFG_CTRL_OFFSET);
  localparam int H_VSTATUS = half_of(keel_regs_pkg::VFCFG_STATUS_OFFSET);
  localparam int H_IOQ = half_of(keel_regs_pkg::VFCFG_IOQ_OFFSET);
  localparam int H_QOS = half_of(keel_regs_pkg::VFCFG_QOS_OFFSET);
  localparam int H_RATE = half_of(keel_regs_pkg::VFCFG_RATE_OFFSET);
  localparam int H_FLR = half_of(keel_regs_pkg::VFCFG_FLR_OFFSET);
  // Fields, as bit positions in the 64-bit word.
  localparam int P_NUM_VFS = H_NUM_VFS*32 + keel_regs_pkg::PF_NUM_VFS_COUNT_LSB;
  localparam int P_CLOCK_MHZ = H_CLOCK_MHZ*32 + keel_regs_pkg::PF_CLOCK_MHZ_MHZ_LSB;
  localparam int P_ENABLE = H_CTRL*32 + keel_regs_pkg::VFCFG_CTRL_ENABLE_LSB;
  localparam int P_FLR_GO = H_FLR*32 + keel_regs_pkg::VFCFG_FLR_GO_LSB;
  localparam int P_IOQ = H_IOQ*32 + keel_regs_pkg::VFCFG_IOQ_COUNT_LSB;
  localparam int P_WEIGHT = H_QOS*32 + keel_regs_pkg::VFCFG_QOS_WEIGHT_LSB;
  localparam int P_RATE = H_RATE*32 + keel_regs_pkg::VFCFG_RATE_MBPS_LSB;

  // The decoders take a VF's block as 128 bytes (w_rel[13:7] is the VF) and 64-bit registers
  // as whole words.
  if (keel_regs_pkg::VFCFG_STRIDE != 64'd128 || (keel_regs_pkg::VFCFG_BASE & 64'h7F) != 64'd0 ||
      (keel_regs_pkg::PF_BASE & 64'h7) != 64'd0) begin : g_bad_map
    $fatal(1, "keel_pf_regs: the decoders expect 128-byte VFCFG blocks and aligned bases");
  end

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
  logic           w_pair, w_lo, w_hi, w_vf_ok, w_enable;
  logic [1:0]     w_half;      // {w_hi, w_lo}: the halves written

  always_comb begin
    w_is_vfcfg = wr_addr >= VFCFG_BASE_A;
    w_rel = wr_addr - VFCFG_BASE_A;
    w_vfi = w_rel[13:7];
    w_vf = VFW'(w_vfi);
    w_reg = w_rel[6:0];
    w_pair = w_is_vfcfg ? (w_reg == A_CTRL || w_reg == A_IOQ || w_reg == A_RATE)
                        : (wr_addr == A_ID || wr_addr == A_CAPS || wr_addr == A_STATUS);
    w_lo = wr_lo;
    w_hi = wr_hi && !(w_pair && wr_lo);
    w_half = {w_hi, w_lo};
    w_enable = wr_data[P_ENABLE];
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
            if (wr_addr == A_NUM_VFS && w_half[H_NUM_VFS]) begin
              ctrl_req_valid <= 1'b1;
              ctrl_req_numvfs <= 1'b1;
              ctrl_req_value <= wr_data[P_NUM_VFS +: 8];
              st_q <= W_CTRL;
            end else begin
              wr_done <= 1'b1;
            end
          end else if (!w_vf_ok) begin
            wr_done <= 1'b1;
          end else if ({1'b0, w_vfi} >= num_vfs) begin
            err_q[w_vf] <= ERR_NOT_PRESENT;
            wr_done <= 1'b1;
          end else if (w_reg == A_CTRL && w_half[H_CTRL]) begin
            // CTRL.ENABLE
            if (w_enable && !en_q[w_vf]) begin
              wvf_q <= w_vf;
              scan_q <= 7'd0;
              st_q <= W_VALIDATE;
            end else if (!w_enable && en_q[w_vf]) begin
              en_q[w_vf] <= 1'b0;
              err_q[w_vf] <= 4'd0;
              ctrl_req_valid <= 1'b1;
              ctrl_req_numvfs <= 1'b0;
              ctrl_req_vf <= w_vf;
              st_q <= W_CTRL;
            end else begin
              wr_done <= 1'b1;
            end
          end else if (w_reg == A_FLR && w_half[H_FLR]) begin
            // FLR.GO
            if (wr_data[P_FLR_GO]) begin
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
              if (w_reg == A_IOQ && w_half[H_IOQ]) begin
                ioq_q[32'(w_vf)*8 +: 8] <= wr_data[P_IOQ +: 8];
              end
              if (w_reg == A_QOS && w_half[H_QOS]) begin
                wgt_q[32'(w_vf)*8 +: 8] <= wr_data[P_WEIGHT +: 8];
              end
              if (w_reg == A_RATE && w_half[H_RATE]) begin
                rate_q[32'(w_vf)*32 +: 32] <= wr_data[P_RATE +: 32];
              end
              if (w_reg == A_SLICE_BASE) begin
                if (w_lo) base_q[32'(w_vf)*64 +: 32] <= wr_data[31:0];
                if (w_hi) base_q[32'(w_vf)*64 + 32 +: 32] <= wr_data[63:32];
              end
              if (w_reg == A_SLICE_LBAS) begin
                if (w_lo) lbas_q[32'(w_vf)*64 +: 32] <= wr_data[31:0];
                if (w_hi) lbas_q[32'(w_vf)*64 + 32 +: 32] <= wr_data[63:32];
              end
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
    r_rel = rd_addr - VFCFG_BASE_A;
    r_vfi = r_rel[13:7];
    r_vf = VFW'(r_vfi);
    r_reg = r_rel[6:0];
  end
  assign cnt_rd_vf = r_vf;

  always_comb begin
    r_present = {1'b0, r_vfi} < num_vfs && !vf_removed[r_vf];
    r_caps = '0;
    r_caps[keel_regs_pkg::PF_CAPS_MAX_VFS_LSB +: 8] = cfg_max_vfs;
    r_caps[keel_regs_pkg::PF_CAPS_MAX_IOQ_LSB +: 8] = cfg_max_ioq;
    r_caps[keel_regs_pkg::PF_CAPS_LBA_SHIFT_LSB +: 4] = 4'(keel_regs_pkg::KEEL_LBA_SHIFT);
    r_caps[keel_regs_pkg::PF_CAPS_QOS_LSB] = 1'b1;
    r_caps[keel_regs_pkg::PF_CAPS_RATE_LIMIT_LSB] = 1'b1;
    r_status = '0;
    r_status[keel_regs_pkg::PF_STATUS_READY_LSB] = 1'b1;
    r_status[keel_regs_pkg::PF_STATUS_NUM_VFS_ERR_LSB] = num_vfs_err;
    r_vfstat = '0;
    r_vfstat[keel_regs_pkg::VFCFG_STATUS_ENABLED_LSB] = en_q[r_vf];
    r_vfstat[keel_regs_pkg::VFCFG_STATUS_PRESENT_LSB] = r_present;
    r_vfstat[keel_regs_pkg::VFCFG_STATUS_CFG_ERR_LSB] = err_q[r_vf] != 4'd0;
    r_vfstat[keel_regs_pkg::VFCFG_STATUS_ERR_CODE_LSB +: 4] = err_q[r_vf];
    rd_data = 64'd0;
    if (!rd_en) begin
      rd_data = 64'd0;
    end else if (rd_addr < VFCFG_BASE_A) begin
      // 32-bit registers in their half of the word, 64-bit ones as the whole word.
      if (rd_addr == A_ID) rd_data[H_ID*32 +: 32] = 32'(keel_regs_pkg::KEEL_MAGIC);
      if (rd_addr == A_VERSION) begin
        rd_data[H_VERSION*32 +: 32] =
            32'(keel_regs_pkg::KEEL_VERSION_MAJOR << keel_regs_pkg::PF_VERSION_MAJOR_LSB) |
            32'(keel_regs_pkg::KEEL_VERSION_MINOR << keel_regs_pkg::PF_VERSION_MINOR_LSB);
      end
      if (rd_addr == A_CAPS) rd_data[H_CAPS*32 +: 32] = r_caps;
      if (rd_addr == A_NUM_VFS) rd_data[P_NUM_VFS +: 8] = num_vfs;
      if (rd_addr == A_STORAGE_LBAS) rd_data = cfg_storage_lbas;
      if (rd_addr == A_STATUS) rd_data[H_STATUS*32 +: 32] = r_status;
      if (rd_addr == A_CLOCK_MHZ) rd_data[P_CLOCK_MHZ +: 16] = 16'(CLOCK_MHZ);
      if (rd_addr == A_DMA_FAULTS) rd_data = tot_dma_faults;
      if (rd_addr == A_CMDS) rd_data = tot_cmds;
      if (rd_addr == A_BYTES) rd_data = tot_bytes;
      if (rd_addr == A_CYCLES) rd_data = cycles;
    end else if ({1'b0, r_vfi} < cfg_max_vfs && 32'(r_vfi) < NUM_VFS) begin
      if (r_reg == A_CTRL) rd_data[P_ENABLE] = en_q[r_vf];
      if (r_reg == A_VSTATUS) rd_data[H_VSTATUS*32 +: 32] = r_vfstat;
      if (r_reg == A_IOQ) rd_data[P_IOQ +: 8] = ioq_q[32'(r_vf)*8 +: 8];
      if (r_reg == A_QOS) rd_data[P_WEIGHT +: 8] = wgt_q[32'(r_vf)*8 +: 8];
      if (r_reg == A_RATE) rd_data[H_RATE*32 +: 32] = rate_q[32'(r_vf)*32 +: 32];
      if (r_reg == A_SLICE_BASE) rd_data = base_q[32'(r_vf)*64 +: 64];
      if (r_reg == A_SLICE_LBAS) rd_data = lbas_q[32'(r_vf)*64 +: 64];
      if (r_reg == A_VCMDS) rd_data = cnt_rd_data[0 +: 64];
      if (r_reg == A_VBYTES) rd_data = cnt_rd_data[64 +: 64];
      if (r_reg == A_VBUSY) rd_data = cnt_rd_data[128 +: 64];
      if (r_reg == A_VDMA_FAULTS) rd_data = cnt_rd_data[192 +: 64];
      if (r_reg == A_VCMD_ERRORS) rd_data = cnt_rd_data[256 +: 64];
    end
  end

endmodule
