`resetall
`timescale 1ns / 1ps
`default_nettype none

// Weighted round robin that shares the data mover among VFs (VFCFG QOS.WEIGHT).
//
// The VF holding the turn may start up to WEIGHT * CMDS_PER_WEIGHT commands in a row; the turn
// then passes to the next VF (in index order) with a command waiting. A VF without a waiting
// command loses the rest of its turn, so the mover never idles while any VF has work. With
// every VF busy, VF v gets WEIGHT(v) / sum(WEIGHT) of the commands.
module keel_qos_arbiter #(
  // VFs the hardware implements (1..64).
  parameter int NUM_VFS = 4,
  // Commands per unit of weight in one turn.
  parameter int CMDS_PER_WEIGHT = 1,
  // Width of a VF index (derived).
  parameter int VFW = (NUM_VFS > 1) ? $clog2(NUM_VFS) : 1
) (
  input  wire                  clk,
  input  wire                  rst,
  input  wire  [NUM_VFS-1:0]   req,          // VF has a job waiting
  input  wire  [NUM_VFS*8-1:0] weight,       // 0 is taken as 1
  output logic                 grant_valid,
  output logic [VFW-1:0]       grant_vf,
  input  wire                  take          // the granted job was taken
);

  if (CMDS_PER_WEIGHT < 1 || CMDS_PER_WEIGHT > 64) begin : g_bad_cpw
    $fatal(1, "keel_qos_arbiter: CMDS_PER_WEIGHT must be 1..64");
  end

  logic [VFW-1:0] cur_q;
  logic [15:0]    credit_q;

  // Next requesting VF after cur_q, in round-robin order.
  logic           next_found;
  logic [VFW-1:0] next_vf;
  always_comb begin
    next_found = 1'b0;
    next_vf = cur_q;
    for (int k = NUM_VFS; k >= 1; k--) begin
      logic [VFW-1:0] v;
      v = VFW'((32'(cur_q) + k) % NUM_VFS);
      if (req[v]) begin
        next_found = 1'b1;
        next_vf = v;
      end
    end
    if (req[cur_q] && credit_q != 16'd0) begin
      grant_valid = 1'b1;
      grant_vf = cur_q;
    end else begin
      grant_valid = next_found;
      grant_vf = next_vf;
    end
  end

  logic [7:0]  w;
  logic [15:0] quantum;
  always_comb begin
    w = weight[32'(grant_vf)*8 +: 8];
    quantum = (w == 8'd0 ? 16'd1 : {8'd0, w}) * 16'(CMDS_PER_WEIGHT);
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      cur_q <= '0;
      credit_q <= 16'd0;
    end else if (take && grant_valid) begin
      if (grant_vf == cur_q && credit_q != 16'd0) begin
        credit_q <= credit_q - 16'd1;
      end else begin
        cur_q <= grant_vf;
        credit_q <= quantum - 16'd1;
      end
    end
  end

endmodule
