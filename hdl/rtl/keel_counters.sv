`resetall
`timescale 1ns / 1ps
`default_nettype none

// Performance counters of the keel card: per VF and card-wide commands, bytes, busy cycles,
// DMA faults and command errors (PF BAR), plus the per-VF totals behind the SMART log page.
// Counters only ever grow; they survive VF resets and NUM_VFS changes, like the reference model.
module keel_counters #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // Sources of DMA-fault pulses.
  parameter int FAULT_SRCS = 3,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1
) (
  input  wire                      clk,
  input  wire                      rst,

  // A completion was posted (err: non-zero status).
  input  wire                      cmd_valid,
  input  wire  [VFW-1:0]           cmd_vf,
  input  wire                      cmd_err,
  // Busy cycles and data bytes of an executed command.
  input  wire                      work_valid,
  input  wire  [VFW-1:0]           work_vf,
  input  wire  [31:0]              work_busy,
  input  wire  [31:0]              work_bytes,
  // A successful Read (smart_write 0) or Write (1) of smart_nlb blocks.
  input  wire                      smart_valid,
  input  wire  [VFW-1:0]           smart_vf,
  input  wire                      smart_write,
  input  wire  [16:0]              smart_nlb,
  // Refused host DMA requests, one pulse per refusal per source.
  input  wire  [FAULT_SRCS-1:0]    fault_valid,
  input  wire  [FAULT_SRCS*VFW-1:0] fault_vf,

  // Readback: {cmd_errors, dma_faults, busy, bytes, cmds} of rd_vf.
  input  wire  [VFW-1:0]           rd_vf,
  output logic [64*5-1:0]          rd_data,
  output logic [63:0]              tot_cmds,
  output logic [63:0]              tot_bytes,
  output logic [63:0]              tot_faults,
  // SMART of smart_rd_vf: host read/write commands and data units (1000 blocks, rounded up).
  input  wire  [VFW-1:0]           smart_rd_vf,
  output logic [63:0]              smart_host_reads,
  output logic [63:0]              smart_host_writes,
  output logic [63:0]              smart_units_read,
  output logic [63:0]              smart_units_written
);

  if (NUM_VFS < 1 || NUM_VFS > 64) begin : g_bad_vfs
    $fatal(1, "keel_counters: NUM_VFS must be 1..64");
  end

  logic [63:0] cmds_q   [NUM_VFS];
  logic [63:0] bytes_q  [NUM_VFS];
  logic [63:0] busy_q   [NUM_VFS];
  logic [63:0] faults_q [NUM_VFS];
  logic [63:0] errs_q   [NUM_VFS];
  logic [63:0] hr_q     [NUM_VFS];
  logic [63:0] hw_q     [NUM_VFS];
  logic [63:0] urk_q    [NUM_VFS];  // blocks read, thousands
  logic [9:0]  urr_q    [NUM_VFS];  // blocks read, remainder
  logic [63:0] uwk_q    [NUM_VFS];
  logic [9:0]  uwr_q    [NUM_VFS];
  logic [63:0] tcmds_q, tbytes_q, tfaults_q;

  // Faults of this cycle, per VF and in total.
  logic [1:0]  nfault [NUM_VFS];
  logic [1:0]  nfault_tot;
  always_comb begin
    nfault_tot = '0;
    for (int i = 0; i < NUM_VFS; i++) nfault[i] = '0;
    if (fault_valid != '0) for (int s = 0; s < FAULT_SRCS; s++) begin
      if (fault_valid[s]) begin
        nfault[fault_vf[s*VFW +: VFW]] = nfault[fault_vf[s*VFW +: VFW]] + 2'd1;
        nfault_tot = nfault_tot + 2'd1;
      end
    end
  end

  // Data units: remainder + blocks, split into thousands.
  logic [9:0]  u_old;
  logic [17:0] u_sum, u_q, u_r;
  logic [63:0] u_k_add;
  logic [9:0]  u_rem;
  always_comb begin
    u_old = smart_write ? uwr_q[smart_vf] : urr_q[smart_vf];
    u_sum = {8'd0, u_old} + {1'b0, smart_nlb};
    u_q = u_sum / 18'd1000;
    u_r = u_sum % 18'd1000;
    u_k_add = {46'd0, u_q};
    u_rem = u_r[9:0];
  end
  logic unused_ok;
  always_comb unused_ok = ^u_r[17:10];

  always_ff @(posedge clk) begin
    if (rst) begin
      tcmds_q <= '0;
      tbytes_q <= '0;
      tfaults_q <= '0;
      for (int i = 0; i < NUM_VFS; i++) begin
        cmds_q[i] <= '0;
        bytes_q[i] <= '0;
        busy_q[i] <= '0;
        faults_q[i] <= '0;
        errs_q[i] <= '0;
        hr_q[i] <= '0;
        hw_q[i] <= '0;
        urk_q[i] <= '0;
        urr_q[i] <= '0;
        uwk_q[i] <= '0;
        uwr_q[i] <= '0;
      end
    end else begin
      if (cmd_valid) begin
        cmds_q[cmd_vf] <= cmds_q[cmd_vf] + 64'd1;
        tcmds_q <= tcmds_q + 64'd1;
        if (cmd_err) errs_q[cmd_vf] <= errs_q[cmd_vf] + 64'd1;
      end
      if (work_valid) begin
        busy_q[work_vf] <= busy_q[work_vf] + 64'(work_busy);
        bytes_q[work_vf] <= bytes_q[work_vf] + 64'(work_bytes);
        tbytes_q <= tbytes_q + 64'(work_bytes);
      end
      if (smart_valid) begin
        if (smart_write) begin
          hw_q[smart_vf] <= hw_q[smart_vf] + 64'd1;
          uwk_q[smart_vf] <= uwk_q[smart_vf] + u_k_add;
          uwr_q[smart_vf] <= u_rem;
        end else begin
          hr_q[smart_vf] <= hr_q[smart_vf] + 64'd1;
          urk_q[smart_vf] <= urk_q[smart_vf] + u_k_add;
          urr_q[smart_vf] <= u_rem;
        end
      end
      if (fault_valid != '0) begin
        for (int i = 0; i < NUM_VFS; i++) faults_q[i] <= faults_q[i] + 64'(nfault[i]);
        tfaults_q <= tfaults_q + 64'(nfault_tot);
      end
    end
  end

  always_comb begin
    rd_data = {errs_q[rd_vf], faults_q[rd_vf], busy_q[rd_vf], bytes_q[rd_vf], cmds_q[rd_vf]};
    tot_cmds = tcmds_q;
    tot_bytes = tbytes_q;
    tot_faults = tfaults_q;
    smart_host_reads = hr_q[smart_rd_vf];
    smart_host_writes = hw_q[smart_rd_vf];
    smart_units_read = urk_q[smart_rd_vf] + 64'(urr_q[smart_rd_vf] != 10'd0);
    smart_units_written = uwk_q[smart_rd_vf] + 64'(uwr_q[smart_rd_vf] != 10'd0);
  end

endmodule
