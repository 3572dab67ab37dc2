// Testbench: one exported binary conv as XNOR + popcount (+ zero-padding correction) + threshold
// (+ 2x2 max-pool), checked against golden bits before and after pooling.
//
// Reads (all with $readmemb, MSB = index 0, bit 1 = +1):
//   `WEIGHTS  COUT lines of K bits       weights/L<i>.memb
//   `THRESH   COUT lines, 32-bit two's complement threshold T   thresholds/L<i>_thr.memb
//   `FLIPS    COUT lines of 1 bit        thresholds/L<i>_flip.memb
//   `PATCHES  NPOS lines of K bits       golden/img<n>/L<i>_patches.memb (im2col, (c, kh, kw) order,
//                                        border bits as the datapath pads them)
//   `EXPECTED NPOS lines of COUT bits    golden/img<n>/L<i>_prepool.memb (MSB = channel 0)
// Optional (zero padding, manifest "border_correction"; define both, and NCLASS):
//   `BORDER   NCLASS*COUT lines, 32-bit two's complement C   thresholds/L<i>_border.memb (class-major)
//   `POSCLASS NPOS lines of 16 bits: the border class of each position   thresholds/L<i>_posclass.memb
// Optional (the pooled output; define it, and HO, WO = the pre-pool map, POOL, CEIL):
//   `POOLED   NPOOL lines of COUT bits   golden/img<n>/L<i>_out.memb
// For every position p and channel o: D = K - 2*popcount(patch XOR weight) - C[class(p)][o];
// bit = flip ? (D <= T) : (D >= T). POOL = 1 ("sums"): max of D over each 2x2 window, then the
// threshold; POOL = 2 ("bits"): OR of the window's bits; CEIL = 1 keeps a partial window at an odd
// edge (the max/OR of the positions it has). Prints "PASS <n>" or "FAIL <mismatches>" and finishes.
//
//   iverilog -g2012 -P xnor_layer_tb.K=288 -P xnor_layer_tb.COUT=64 -P xnor_layer_tb.NPOS=196 \
//     -DWEIGHTS='"w.memb"' -DTHRESH='"t.memb"' -DFLIPS='"f.memb"' -DPATCHES='"p.memb"' -DEXPECTED='"e.memb"' \
//     -o tb hw/xnor_layer_tb.v && vvp tb
`timescale 1ns/1ps
module xnor_layer_tb;
  parameter integer K = 9;
  parameter integer COUT = 1;
  parameter integer NPOS = 1;
  parameter integer NCLASS = 1;
  parameter integer HO = 1;
  parameter integer WO = 1;
  parameter integer POOL = 0;
  parameter integer CEIL = 0;
  localparam integer HP = (POOL == 0) ? HO : (CEIL ? (HO + 1) / 2 : HO / 2);
  localparam integer WP = (POOL == 0) ? WO : (CEIL ? (WO + 1) / 2 : WO / 2);

  reg [K-1:0] weights [0:COUT-1];
  reg [31:0] thresh [0:COUT-1];
  reg flips [0:COUT-1];
  reg [K-1:0] patches [0:NPOS-1];
  reg [COUT-1:0] expected [0:NPOS-1];
  reg [31:0] border [0:NCLASS*COUT-1];
  reg [15:0] posclass [0:NPOS-1];
  reg [COUT-1:0] pooled [0:HP*WP-1];
  integer dsum [0:NPOS*COUT-1];

  function automatic integer popcount(input [K-1:0] v);
    integer i;
    begin
      popcount = 0;
      for (i = 0; i < K; i = i + 1) popcount = popcount + v[i];
    end
  endfunction

  function automatic threshold(input integer d, input integer o);
    threshold = flips[o] ? (d <= $signed(thresh[o])) : (d >= $signed(thresh[o]));
  endfunction

  integer p, o, d, mismatches, checked, i, j, di, dj, r, c, best, any, found;
  reg bit_out;
  initial begin
    $readmemb(`WEIGHTS, weights);
    $readmemb(`THRESH, thresh);
    $readmemb(`FLIPS, flips);
    $readmemb(`PATCHES, patches);
    $readmemb(`EXPECTED, expected);
`ifdef BORDER
    $readmemb(`BORDER, border);
    $readmemb(`POSCLASS, posclass);
`endif
    mismatches = 0;
    checked = 0;
    for (p = 0; p < NPOS; p = p + 1) begin
      for (o = 0; o < COUT; o = o + 1) begin
        d = K - 2 * popcount(patches[p] ^ weights[o]);
`ifdef BORDER
        d = d - $signed(border[posclass[p] * COUT + o]);
`endif
        dsum[p * COUT + o] = d;
        bit_out = threshold(d, o);
        if (bit_out !== expected[p][COUT-1-o]) begin
          if (mismatches < 5) $display("mismatch at position %0d channel %0d: D=%0d T=%0d flip=%0d", p, o, d,
                                       $signed(thresh[o]), flips[o]);
          mismatches = mismatches + 1;
        end
        checked = checked + 1;
      end
    end
`ifdef POOLED
    $readmemb(`POOLED, pooled);
    for (i = 0; i < HP; i = i + 1) begin
      for (j = 0; j < WP; j = j + 1) begin
        for (o = 0; o < COUT; o = o + 1) begin
          found = 0;
          any = 0;
          best = 0;
          for (di = 0; di < ((POOL == 0) ? 1 : 2); di = di + 1) begin
            for (dj = 0; dj < ((POOL == 0) ? 1 : 2); dj = dj + 1) begin
              r = (POOL == 0) ? i : 2 * i + di;
              c = (POOL == 0) ? j : 2 * j + dj;
              if (r < HO && c < WO) begin
                d = dsum[(r * WO + c) * COUT + o];
                if (!found || d > best) best = d;
                if (threshold(d, o)) any = 1;
                found = 1;
              end
            end
          end
          bit_out = (POOL == 2) ? any : threshold(best, o);
          if (bit_out !== pooled[i * WP + j][COUT-1-o]) begin
            if (mismatches < 5) $display("pooled mismatch at (%0d, %0d) channel %0d", i, j, o);
            mismatches = mismatches + 1;
          end
          checked = checked + 1;
        end
      end
    end
`endif
    if (mismatches == 0) $display("PASS %0d", checked);
    else $display("FAIL %0d", mismatches);
    $finish;
  end
endmodule
