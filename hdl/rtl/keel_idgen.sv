`resetall
`timescale 1ns / 1ps
`default_nettype none

// Internal data of the admin command set, one 64-byte beat at a time: Identify Controller,
// Identify Namespace, the active namespace list, and the Error Information, SMART / Health and
// Firmware Slot log pages. Beat b holds bytes [64 b, 64 b + 64) of the page; everything past a
// page's defined content is zero (a log page read may run into it up to 64 KiB).
//
// The contents match the reference model's (fpga/model/src/admin.cpp) byte for byte, except the
// model number, which names this implementation.
module keel_idgen #(
  // CAP.MQES (Identify MAXCMD is MQES + 1).
  parameter int MQES = 1023,
  // Identify MDTS.
  parameter int MDTS = 5
) (
  input  wire          en,           // 0: data is zero (and nothing is computed)
  input  wire  [2:0]   src,          // keel_pkg::SRC_*
  input  wire          srcarg,       // ID_NS: namespace 1 (report the slice); NSLIST: list NS 1
  input  wire  [9:0]   beat,
  input  wire  [6:0]   vf,           // VF index (controller ID - 1)
  input  wire  [63:0]  slice_lbas,
  input  wire  [63:0]  host_reads,
  input  wire  [63:0]  host_writes,
  input  wire  [63:0]  units_read,
  input  wire  [63:0]  units_written,
  output logic [511:0] data
);

  localparam int MN_LEN = 25;
  localparam logic [MN_LEN*8-1:0] MN = "keel SR-IOV NVMe VF (RTL)";
  localparam int NQN_LEN = 28;
  localparam logic [NQN_LEN*8-1:0] NQN = "nqn.2026-11.dev.keel:card:vf";

  logic [7:0] b [64];   // bytes of the beat
  logic [7:0] tens, ones;
  logic [6:0] vtens;

  always_comb begin
    vtens = vf / 7'd10;
    tens = 8'h30 + {1'b0, vtens};
    ones = 8'h30 + {1'b0, vf - vtens * 7'd10};
    for (int i = 0; i < 64; i++) b[i] = 8'h00;
    if (en) begin
      case (src)
        keel_pkg::SRC_ID_CTRL: begin
          case (beat)
            10'd0: begin
              b[0] = 8'hEE; b[1] = 8'h10;  // VID 0x10EE
              b[2] = 8'hEE; b[3] = 8'h10;  // SSVID
              // SN "KEELVF%04u", space padded to 20 bytes
              b[4] = "K"; b[5] = "E"; b[6] = "E"; b[7] = "L"; b[8] = "V"; b[9] = "F";
              b[10] = "0"; b[11] = "0"; b[12] = tens; b[13] = ones;
              for (int i = 14; i < 24; i++) b[i] = " ";
              // MN, space padded to 40 bytes
              for (int i = 0; i < 40; i++) b[24 + i] = i < MN_LEN ? MN[(MN_LEN - 1 - i)*8 +: 8] : " ";
            end
            10'd1: begin
              b[0] = "0"; b[1] = "."; b[2] = "1";      // FR "0.1"
              for (int i = 3; i < 8; i++) b[i] = " ";
              b[8] = 8'd6;                             // RAB
              b[13] = 8'(MDTS);                        // MDTS
              b[14] = 8'(vf) + 8'd1;                   // CNTLID
              b[16] = 8'h00; b[17] = 8'h04; b[18] = 8'h01; b[19] = 8'h00;  // VER 1.4
            end
            10'd4: begin
              b[2] = 8'd3;  // ACL: 4 aborts
              b[3] = 8'd3;  // AERL: 4 events
              b[4] = 8'd3;  // FRMW: slot 1 read-only, one slot
            end
            10'd8: begin
              b[0] = 8'h66;                            // SQES
              b[1] = 8'h44;                            // CQES
              b[2] = 8'((MQES + 1) & 255);             // MAXCMD
              b[3] = 8'((MQES + 1) >> 8);
              b[4] = 8'd1;                             // NN
              b[8] = 8'h08;                            // ONCS: Write Zeroes
            end
            10'd12: begin
              for (int i = 0; i < NQN_LEN; i++) b[i] = NQN[(NQN_LEN - 1 - i)*8 +: 8];
              if (vf < 7'd10) begin
                b[NQN_LEN] = ones;
              end else begin
                b[NQN_LEN] = tens;
                b[NQN_LEN + 1] = ones;
              end
            end
            default: ;
          endcase
        end
        keel_pkg::SRC_ID_NS: begin
          if (beat == 10'd0) begin
            for (int i = 0; i < 8; i++) begin
              b[i] = srcarg ? slice_lbas[i*8 +: 8] : 8'h00;       // NSZE
              b[8 + i] = srcarg ? slice_lbas[i*8 +: 8] : 8'h00;   // NCAP
              b[16 + i] = srcarg ? slice_lbas[i*8 +: 8] : 8'h00;  // NUSE
            end
          end else if (beat == 10'd2) begin
            b[2] = 8'(keel_regs_pkg::KEEL_LBA_SHIFT);           // LBAF0.DS
          end
        end
        keel_pkg::SRC_ID_NSLIST: begin
          if (beat == 10'd0 && srcarg) b[0] = 8'd1;
        end
        keel_pkg::SRC_LOG_SMART: begin
          if (beat == 10'd0) begin
            b[1] = 8'h3B; b[2] = 8'h01;  // 315 K
            b[3] = 8'd100;               // available spare
            b[4] = 8'd10;                // spare threshold
            for (int i = 0; i < 8; i++) begin
              b[32 + i] = units_read[i*8 +: 8];
              b[48 + i] = units_written[i*8 +: 8];
            end
          end else if (beat == 10'd1) begin
            for (int i = 0; i < 8; i++) begin
              b[i] = host_reads[i*8 +: 8];
              b[16 + i] = host_writes[i*8 +: 8];
            end
          end
        end
        keel_pkg::SRC_LOG_FW: begin
          if (beat == 10'd0) begin
            b[0] = 8'd1;  // AFI: slot 1 active
            b[8] = "0"; b[9] = "."; b[10] = "1";
            for (int i = 11; i < 16; i++) b[i] = " ";
          end
        end
        default: ;  // SRC_LOG_ERROR: four empty entries
      endcase
    end
    for (int i = 0; i < 64; i++) data[i*8 +: 8] = b[i];
  end

endmodule
