`resetall
`timescale 1ns / 1ps
`default_nettype none

// keel_nic_fbuf: the NIC's frame buffer, one frame of up to 9018 bytes (a jumbo frame) held in
// eight byte-wide lanes (keel_ram), so that 8 bytes at any byte offset are written or read in
// one cycle: byte i of a beat at offset o lives in lane (o + i) % 8, row (o + i) / 8. The read
// port is asynchronous (as keel_ram's), the write port synchronous.
module keel_nic_fbuf #(
  // Rows of 8 bytes (9018 bytes and the partial row a read past the end touches).
  parameter int ROWS = 1136,
  parameter int OW = 14
) (
  input  wire             clk,
  input  wire             we,
  input  wire  [OW-1:0]   woff,
  input  wire  [63:0]     wdata,
  input  wire  [3:0]      wbytes,  // 1..8: bytes 0..wbytes-1 of wdata are written
  input  wire  [OW-1:0]   roff,
  output logic [63:0]     rdata
);

  localparam int RW = $clog2(ROWS);

  logic [7:0]      lane_we;
  logic [8*RW-1:0] lane_waddr, lane_raddr;
  logic [63:0]     lane_wdata, lane_rdata;

  always_comb begin
    for (int l = 0; l < 8; l++) begin
      // Byte of the beat that lands in lane l, and the offset it lands at.
      logic [2:0]    i;
      logic [OW-1:0] at;
      i = 3'(l) - woff[2:0];
      at = woff + OW'(i);
      lane_we[l] = we && {1'b0, i} < wbytes;
      lane_waddr[l*RW +: RW] = RW'(at >> 3);
      lane_wdata[l*8 +: 8] = wdata[i*8 +: 8];
      // Byte of the read beat lane l supplies.
      i = 3'(l) - roff[2:0];
      at = roff + OW'(i);
      lane_raddr[l*RW +: RW] = RW'(at >> 3);
    end
    for (int b = 0; b < 8; b++) begin
      logic [2:0] l;
      l = roff[2:0] + 3'(b);
      rdata[b*8 +: 8] = lane_rdata[l*8 +: 8];
    end
  end

  for (genvar l = 0; l < 8; l++) begin : g_lane
    keel_ram #(.WIDTH(8), .DEPTH(ROWS), .RD_PORTS(1)) u_lane (
      .clk, .we(lane_we[l]), .waddr(lane_waddr[l*RW +: RW]), .wdata(lane_wdata[l*8 +: 8]),
      .ren(1'b1), .raddr(lane_raddr[l*RW +: RW]), .rdata(lane_rdata[l*8 +: 8])
    );
  end

endmodule
