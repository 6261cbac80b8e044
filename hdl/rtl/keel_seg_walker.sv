`resetall
`timescale 1ns / 1ps
`default_nettype none

// Walks the host side of one command as AXI-sized chunks: PRP1 (up to the end of its page),
// then the page addresses the front end stored in the segment RAM. A chunk never crosses a
// CHUNK-byte boundary (so never a 4 KiB one) nor a segment boundary. Segments after the first
// start on a page boundary, so the chunks' beats form one continuous stream whose first byte
// sits at lane PRP1 % 64.
module keel_seg_walker #(
  // log2 of the largest chunk in bytes (10: 16 beats of 64 bytes).
  parameter int CHUNK_LOG2 = 10,
  // Width of a segment index (MDTS).
  parameter int SW = 5
) (
  input  wire          clk,
  input  wire          rst,
  input  wire          start,        // begin a command (ignored while busy)
  input  wire  [63:0]  prp1,
  input  wire  [31:0]  bytes,
  input  wire  [2:0]   mps,          // host page 4 KiB << mps
  output logic [SW-1:0] seg_idx,     // segment RAM entry to read
  output logic         seg_ren,     // ... while a segment is being loaded
  input  wire  [63:0]  seg_data,
  output logic         busy,
  output logic         chunk_valid,
  output logic [63:0]  chunk_addr,   // first byte
  output logic [63:0]  chunk_end,    // one past the last byte
  input  wire          chunk_take
);

  if (CHUNK_LOG2 < 6 || CHUNK_LOG2 > 12) begin : g_bad_chunk
    $fatal(1, "keel_seg_walker: CHUNK_LOG2 must be 6..12");
  end

  logic          active_q, load_q;
  logic [SW:0]   idx_q;      // next segment RAM entry
  logic [63:0]   addr_q;
  logic [31:0]   left_q;     // bytes left in the current segment
  logic [31:0]   rem_q;      // bytes in later segments
  logic [31:0]   psize_q;

  logic [31:0] s_psize, s_off, s_first;
  logic [63:0] bound, seg_end;
  always_comb begin
    s_psize = 32'd4096 << mps;
    s_off = prp1[31:0] & (s_psize - 32'd1);
    s_first = bytes < s_psize - s_off ? bytes : s_psize - s_off;
    bound = (addr_q | 64'((1 << CHUNK_LOG2) - 1)) + 64'd1;
    seg_end = addr_q + 64'(left_q);
    busy = active_q;
    chunk_valid = active_q && !load_q;
    chunk_addr = addr_q;
    chunk_end = seg_end < bound ? seg_end : bound;
    seg_idx = idx_q[SW-1:0];
    seg_ren = active_q && load_q;
  end

  always_ff @(posedge clk) begin
    if (rst) begin
      active_q <= 1'b0;
      load_q <= 1'b0;
    end else if (!active_q) begin
      if (start) begin
        active_q <= 1'b1;
        load_q <= 1'b0;
        idx_q <= '0;
        addr_q <= prp1;
        left_q <= s_first;
        rem_q <= bytes - s_first;
        psize_q <= s_psize;
      end
    end else if (load_q) begin
      addr_q <= seg_data;
      left_q <= rem_q < psize_q ? rem_q : psize_q;
      rem_q <= rem_q < psize_q ? 32'd0 : rem_q - psize_q;
      idx_q <= idx_q + 1'b1;
      load_q <= 1'b0;
    end else if (chunk_take) begin
      logic [31:0] n;
      n = 32'(chunk_end - addr_q);
      addr_q <= chunk_end;
      left_q <= left_q - n;
      if (left_q == n) begin
        if (rem_q == 32'd0) active_q <= 1'b0;
        else load_q <= 1'b1;
      end
    end
  end

endmodule
