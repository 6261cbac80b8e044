`resetall
`timescale 1ns / 1ps
`default_nettype none

// MMIO of the keel card: the AXI4-Lite slave the shell drives with BAR accesses, the NVMe
// register file and doorbells of every VF, and the dispatch of PF accesses to keel_pf_regs.
//
// The shell puts the PCIe function number in the AXI user bits (0: PF, n + 1: VF n) and the
// offset inside that function's BAR0 in the address. Data is 64 bits wide: a 32-bit access uses
// the strobes of its half of the aligned 8-byte word. A VF that is not present (at or above
// NUM_VFS, or surprise-removed) reads as all ones and ignores writes, as a missing PCIe
// function does.
//
// Doorbells: 2 * (cfg_max_ioq + 1) per VF from offset 0x1000 (CAP.DSTRD = 0). A doorbell holds
// the last value written, saturated to 17 bits (anything >= 65536 is invalid for every queue
// size). Creating a queue "clears" its doorbell: it reads as 0 until the host writes it again.
module keel_mmio #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // IO queue pairs per VF the hardware implements.
  parameter int NUM_IOQ = 8,
  // CAP.MQES (0-based largest queue).
  parameter int MQES = 1023,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1,
  // Queues per VF including the admin queue (derived).
  parameter int QN = NUM_IOQ + 1,
  // Width of a global queue index vf * QN + q (derived).
  parameter int GQW = $clog2(NUM_VFS * QN)
) (
  input  wire                   clk,
  input  wire                   rst,

  input  wire  [7:0]            cfg_max_ioq,

  // AXI4-Lite slave (user bits: PCIe function number).
  input  wire                   s_axil_awvalid,
  output logic                  s_axil_awready,
  input  wire  [15:0]           s_axil_awaddr,
  input  wire  [7:0]            s_axil_awuser,
  input  wire                   s_axil_wvalid,
  output logic                  s_axil_wready,
  input  wire  [63:0]           s_axil_wdata,
  input  wire  [7:0]            s_axil_wstrb,
  output logic                  s_axil_bvalid,
  input  wire                   s_axil_bready,
  output logic [1:0]            s_axil_bresp,
  input  wire                   s_axil_arvalid,
  output logic                  s_axil_arready,
  input  wire  [15:0]           s_axil_araddr,
  input  wire  [7:0]            s_axil_aruser,
  output logic                  s_axil_rvalid,
  input  wire                   s_axil_rready,
  output logic [63:0]           s_axil_rdata,
  output logic [1:0]            s_axil_rresp,

  // PF register block.
  output logic                  pf_wr_valid,
  output logic [13:0]           pf_wr_addr,
  output logic                  pf_wr_lo,
  output logic                  pf_wr_hi,
  output logic [63:0]           pf_wr_data,
  input  wire                   pf_wr_done,
  output logic                  pf_rd_en,
  output logic [13:0]           pf_rd_addr,
  input  wire  [63:0]           pf_rd_data,

  // VF state from keel_ctrl.
  input  wire  [7:0]            num_vfs,
  input  wire  [NUM_VFS-1:0]    vf_removed,
  input  wire  [NUM_VFS-1:0]    vf_ready,
  input  wire  [NUM_VFS-1:0]    vf_fatal,
  input  wire  [NUM_VFS*2-1:0]  vf_shst,
  input  wire                   regs_clear_valid,   // FLR: CC, AQA, ASQ, ACQ, INTMS to 0
  input  wire  [VFW-1:0]        regs_clear_vf,

  // NVMe registers of every VF.
  output logic [NUM_VFS*32-1:0] vf_cc,
  output logic [NUM_VFS*32-1:0] vf_aqa,
  output logic [NUM_VFS*64-1:0] vf_asq,
  output logic [NUM_VFS*64-1:0] vf_acq,

  // Doorbells: all queues of one VF (scheduler, when db_rd_en), one CQ head (completion
  // writer), clears.
  input  wire                   db_rd_en,
  input  wire  [VFW-1:0]        db_rd_vf,
  output logic [QN*17-1:0]      db_rd_sq_tail,
  output logic [QN*17-1:0]      db_rd_cq_head,
  input  wire  [GQW-1:0]        db_head_g,
  output logic [16:0]           db_head,
  input  wire                   db_clr_valid,
  input  wire  [GQW-1:0]        db_clr_g,
  input  wire  [1:0]            db_clr_mask,     // bit 0: SQ tail, bit 1: CQ head

  output logic                  idle,            // no access in progress
  output logic                  kick             // a VF register or doorbell was written
);

  if (NUM_VFS < 1 || NUM_VFS > 64) begin : g_bad_vfs
    $fatal(1, "keel_mmio: NUM_VFS must be 1..64");
  end
  if (NUM_IOQ < 1 || NUM_IOQ > 255) begin : g_bad_ioq
    $fatal(1, "keel_mmio: NUM_IOQ must be 1..255");
  end
  if (MQES < 1 || MQES > 65535) begin : g_bad_mqes
    $fatal(1, "keel_mmio: MQES must be 1..65535");
  end

  localparam int NG = NUM_VFS * QN;

  // VF BAR offsets come from the generated register map (keel_regs_pkg): an access names the
  // 8-byte word it addresses (A_*) and the 32-bit half a register sits in (H_*: 0 low, 1 high).
  function automatic logic [15:0] vf_word(input logic [63:0] off);
    vf_word = 16'(keel_regs_pkg::NVME_BASE + off) & ~16'd7;
  endfunction
  function automatic int half_of(input logic [63:0] off);
    half_of = 32'((off >> 2) & 64'd1);
  endfunction

  localparam logic [15:0] A_CAP = vf_word(keel_regs_pkg::NVME_CAP_OFFSET);
  localparam logic [15:0] A_VS = vf_word(keel_regs_pkg::NVME_VS_OFFSET);
  localparam logic [15:0] A_INTMS = vf_word(keel_regs_pkg::NVME_INTMS_OFFSET);
  localparam logic [15:0] A_INTMC = vf_word(keel_regs_pkg::NVME_INTMC_OFFSET);
  localparam logic [15:0] A_CC = vf_word(keel_regs_pkg::NVME_CC_OFFSET);
  localparam logic [15:0] A_CSTS = vf_word(keel_regs_pkg::NVME_CSTS_OFFSET);
  localparam logic [15:0] A_AQA = vf_word(keel_regs_pkg::NVME_AQA_OFFSET);
  localparam logic [15:0] A_ASQ = vf_word(keel_regs_pkg::NVME_ASQ_OFFSET);
  localparam logic [15:0] A_ACQ = vf_word(keel_regs_pkg::NVME_ACQ_OFFSET);
  localparam logic [15:0] A_DB = 16'(keel_regs_pkg::KEEL_NVME_DOORBELL_BASE);
  localparam int H_VS = half_of(keel_regs_pkg::NVME_VS_OFFSET);
  localparam int H_INTMS = half_of(keel_regs_pkg::NVME_INTMS_OFFSET);
  localparam int H_INTMC = half_of(keel_regs_pkg::NVME_INTMC_OFFSET);
  localparam int H_CC = half_of(keel_regs_pkg::NVME_CC_OFFSET);
  localparam int H_CSTS = half_of(keel_regs_pkg::NVME_CSTS_OFFSET);
  localparam int H_AQA = half_of(keel_regs_pkg::NVME_AQA_OFFSET);

  // The doorbell decoder takes doorbells as 4-byte registers, SQ tail and CQ head of a queue in
  // one 8-byte word (CAP.DSTRD = 0); 64-bit registers are whole words.
  if (keel_regs_pkg::KEEL_NVME_DOORBELL_STRIDE != 64'd8 ||
      (keel_regs_pkg::KEEL_NVME_DOORBELL_BASE & 64'hFFF) != 64'd0 ||
      (keel_regs_pkg::NVME_BASE & 64'h7) != 64'd0) begin : g_bad_map
    $fatal(1, "keel_mmio: the decoders expect 8-byte doorbell pairs on a 4 KiB boundary");
  end

  // CAP: MQES, contiguous queues, TO 1 s, DSTRD 0, NVM command set, pages 4 KiB to 64 KiB.
  localparam logic [63:0] CAP = (64'(MQES) << keel_regs_pkg::NVME_CAP_MQES_LSB) |
                                (64'd1 << keel_regs_pkg::NVME_CAP_CQR_LSB) |
                                (64'd2 << keel_regs_pkg::NVME_CAP_TO_LSB) |
                                (64'd1 << keel_regs_pkg::NVME_CAP_CSS_LSB) |
                                (64'd4 << keel_regs_pkg::NVME_CAP_MPSMAX_LSB);

  // NVMe registers, stored as the flat vectors the rest of the card reads.
  logic [NUM_VFS*32-1:0] cc_q;
  logic [NUM_VFS*32-1:0] aqa_q;
  logic [NUM_VFS*64-1:0] asq_q;
  logic [NUM_VFS*64-1:0] acq_q;
  logic [31:0] intms_q [NUM_VFS];
  logic [16:0] sqt_q   [NG];   // SQ tail doorbells
  logic [16:0] cqh_q   [NG];   // CQ head doorbells
  logic [NG-1:0] sqt_v_q;      // written since the queue was created
  logic [NG-1:0] cqh_v_q;

  assign vf_cc = cc_q;
  assign vf_aqa = aqa_q;
  assign vf_asq = asq_q;
  assign vf_acq = acq_q;

  function automatic logic [16:0] sat17(input logic [31:0] v);
    sat17 = (v[31:17] != 15'd0) ? 17'h1FFFF : v[16:0];
  endfunction

  always_comb begin
    db_rd_sq_tail = '0;
    db_rd_cq_head = '0;
    if (db_rd_en) for (int q = 0; q < QN; q++) begin
      db_rd_sq_tail[q*17 +: 17] = sqt_v_q[32'(db_rd_vf) * QN + q] ?
                                  sqt_q[GQW'(32'(db_rd_vf) * QN + q)] : 17'd0;
      db_rd_cq_head[q*17 +: 17] = cqh_v_q[32'(db_rd_vf) * QN + q] ?
                                  cqh_q[GQW'(32'(db_rd_vf) * QN + q)] : 17'd0;
    end
    db_head = cqh_v_q[db_head_g] ? cqh_q[db_head_g] : 17'd0;
  end

  logic           rbusy_q;

  // ---------------------------------------------------------------- writes
  typedef enum logic [1:0] {W_IDLE, W_EXEC, W_PF, W_RESP} wstate_t;
  wstate_t       wst_q;
  logic [7:0]    wfn_q;
  logic [15:0]   waddr_q;
  logic [63:0]   wdata_q;
  logic          wlo_q, whi_q;

  logic [VFW-1:0] wvf;
  logic           wvf_present;
  logic [15:0]    wdb_rel;
  logic           unused_addr_bits;
  logic [9:0]     wdb_idx;
  logic [8:0]     db_limit;
  logic [GQW-1:0] wdb_g;
  logic [1:0]     whalf;           // {whi_q, wlo_q}: the halves written

  always_comb begin
    wvf = VFW'(wfn_q - 8'd1);
    wvf_present = wfn_q != 8'd0 && 32'(wfn_q) <= NUM_VFS && wfn_q <= num_vfs && !vf_removed[wvf];
    wdb_rel = waddr_q - A_DB;
    wdb_idx = wdb_rel[11:2];           // even: the SQ tail of queue wdb_idx / 2
    // Accesses are 8-byte words with strobes; the BAR is 16 KiB (PF) or 8 KiB (VF).
    unused_addr_bits = ^{wdb_rel[15:12], wdb_rel[1:0], s_axil_awaddr[2:0], s_axil_araddr[2:0]};
    db_limit = {cfg_max_ioq, 1'b0} + 9'd2;
    wdb_g = GQW'(32'(wvf) * QN + 32'(wdb_idx[9:1]));
    whalf = {whi_q, wlo_q};
    s_axil_awready = wst_q == W_IDLE && s_axil_awvalid && s_axil_wvalid;
    s_axil_wready = s_axil_awready;
    s_axil_bvalid = wst_q == W_RESP;
    idle = wst_q == W_IDLE && !rbusy_q;
    kick = wst_q == W_EXEC;
    s_axil_bresp = keel_pkg::AXI_RESP_OKAY;
    pf_wr_addr = waddr_q[13:0];
    pf_wr_lo = wlo_q;
    pf_wr_hi = whi_q;
    pf_wr_data = wdata_q;
  end

  always_ff @(posedge clk) begin
    pf_wr_valid <= 1'b0;
    if (rst) begin
      wst_q <= W_IDLE;
      for (int i = 0; i < NUM_VFS; i++) begin
        cc_q[32'(i)*32 +: 32] <= 32'd0;
        aqa_q[32'(i)*32 +: 32] <= 32'd0;
        asq_q[32'(i)*64 +: 64] <= 64'd0;
        acq_q[32'(i)*64 +: 64] <= 64'd0;
        intms_q[i] <= 32'd0;
      end
      sqt_v_q <= '0;
      cqh_v_q <= '0;
    end else begin
      if (db_clr_valid) begin
        if (db_clr_mask[0]) sqt_v_q[db_clr_g] <= 1'b0;
        if (db_clr_mask[1]) cqh_v_q[db_clr_g] <= 1'b0;
      end
      case (wst_q)
        W_IDLE: if (s_axil_awready) begin
          wfn_q <= s_axil_awuser;
          waddr_q <= {s_axil_awaddr[15:3], 3'b000};
          wdata_q <= s_axil_wdata;
          wlo_q <= s_axil_wstrb[3:0] != 4'd0;
          whi_q <= s_axil_wstrb[7:4] != 4'd0;
          wst_q <= W_EXEC;
        end
        W_EXEC: begin
          wst_q <= W_RESP;
          if (wfn_q == 8'd0) begin
            pf_wr_valid <= 1'b1;
            wst_q <= W_PF;
          end else if (wvf_present) begin
            if (waddr_q >= A_DB) begin
              if (wlo_q && {1'b0, wdb_idx} < {2'b0, db_limit} && 32'(wdb_idx[9:1]) < QN) begin
                sqt_q[wdb_g] <= sat17(wdata_q[31:0]);
                sqt_v_q[wdb_g] <= 1'b1;
              end
              if (whi_q && {1'b0, wdb_idx} + 11'd1 < {2'b0, db_limit} && 32'(wdb_idx[9:1]) < QN) begin
                cqh_q[wdb_g] <= sat17(wdata_q[63:32]);
                cqh_v_q[wdb_g] <= 1'b1;
              end
            end else begin
              if (waddr_q == A_INTMS && whalf[H_INTMS]) begin
                intms_q[wvf] <= intms_q[wvf] | wdata_q[H_INTMS*32 +: 32];
              end
              if (waddr_q == A_INTMC && whalf[H_INTMC]) begin
                intms_q[wvf] <= intms_q[wvf] & ~wdata_q[H_INTMC*32 +: 32];
              end
              if (waddr_q == A_CC && whalf[H_CC]) cc_q[32'(wvf)*32 +: 32] <= wdata_q[H_CC*32 +: 32];
              if (waddr_q == A_AQA && whalf[H_AQA]) begin
                aqa_q[32'(wvf)*32 +: 32] <= wdata_q[H_AQA*32 +: 32];
              end
              if (waddr_q == A_ASQ) begin
                if (wlo_q) asq_q[32'(wvf)*64 +: 32] <= wdata_q[31:0];
                if (whi_q) asq_q[32'(wvf)*64 + 32 +: 32] <= wdata_q[63:32];
              end
              if (waddr_q == A_ACQ) begin
                if (wlo_q) acq_q[32'(wvf)*64 +: 32] <= wdata_q[31:0];
                if (whi_q) acq_q[32'(wvf)*64 + 32 +: 32] <= wdata_q[63:32];
              end
            end
          end
        end
        W_PF: if (pf_wr_done) wst_q <= W_RESP;
        W_RESP: if (s_axil_bready) wst_q <= W_IDLE;
        default: wst_q <= W_IDLE;
      endcase
      if (regs_clear_valid) begin
        cc_q[32'(regs_clear_vf)*32 +: 32] <= 32'd0;
        aqa_q[32'(regs_clear_vf)*32 +: 32] <= 32'd0;
        asq_q[32'(regs_clear_vf)*64 +: 64] <= 64'd0;
        acq_q[32'(regs_clear_vf)*64 +: 64] <= 64'd0;
        intms_q[regs_clear_vf] <= 32'd0;
      end
    end
  end

  // ---------------------------------------------------------------- reads
  logic [7:0]     rfn_q;
  logic [15:0]    raddr_q;
  logic [VFW-1:0] rvf;
  logic           rvf_present;
  logic [31:0]    r_csts;

  always_comb begin
    rvf = VFW'(rfn_q - 8'd1);
    rvf_present = rfn_q != 8'd0 && 32'(rfn_q) <= NUM_VFS && rfn_q <= num_vfs && !vf_removed[rvf];
    r_csts = '0;
    r_csts[keel_regs_pkg::NVME_CSTS_RDY_LSB] = vf_ready[rvf];
    r_csts[keel_regs_pkg::NVME_CSTS_CFS_LSB] = vf_fatal[rvf];
    r_csts[keel_regs_pkg::NVME_CSTS_SHST_LSB +: 2] = vf_shst[32'(rvf)*2 +: 2];
    s_axil_arready = !rbusy_q;
    s_axil_rvalid = rbusy_q;
    s_axil_rresp = keel_pkg::AXI_RESP_OKAY;
    pf_rd_addr = raddr_q[13:0];
    pf_rd_en = rbusy_q && rfn_q == 8'd0;
    if (!rbusy_q) begin
      s_axil_rdata = 64'd0;
    end else if (rfn_q == 8'd0) begin
      s_axil_rdata = pf_rd_data;
    end else if (!rvf_present) begin
      s_axil_rdata = '1;
    end else begin
      // 32-bit registers in their half of the word (INTMC reads as INTMS), 64-bit ones whole.
      s_axil_rdata = 64'd0;
      if (raddr_q == A_CAP) s_axil_rdata = CAP;
      if (raddr_q == A_VS) s_axil_rdata[H_VS*32 +: 32] = 32'(keel_regs_pkg::KEEL_NVME_VS_1_4);
      if (raddr_q == A_INTMS) s_axil_rdata[H_INTMS*32 +: 32] = intms_q[rvf];
      if (raddr_q == A_INTMC) s_axil_rdata[H_INTMC*32 +: 32] = intms_q[rvf];
      if (raddr_q == A_CC) s_axil_rdata[H_CC*32 +: 32] = cc_q[32'(rvf)*32 +: 32];
      if (raddr_q == A_CSTS) s_axil_rdata[H_CSTS*32 +: 32] = r_csts;
      if (raddr_q == A_AQA) s_axil_rdata[H_AQA*32 +: 32] = aqa_q[32'(rvf)*32 +: 32];
      if (raddr_q == A_ASQ) s_axil_rdata = asq_q[32'(rvf)*64 +: 64];
      if (raddr_q == A_ACQ) s_axil_rdata = acq_q[32'(rvf)*64 +: 64];
    end
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      rbusy_q <= 1'b0;
    end else if (!rbusy_q) begin
      if (s_axil_arvalid) begin
        rbusy_q <= 1'b1;
        rfn_q <= s_axil_aruser;
        raddr_q <= {s_axil_araddr[15:3], 3'b000};
      end
    end else if (s_axil_rready) begin
      rbusy_q <= 1'b0;
    end
  end

endmodule
