"""Behavioural Verilog models of the vendor primitives our generators instantiate directly.

Generators that know the target family (``platform.family``) sometimes instantiate a hard block
instead of leaving inference to the synthesizer, e.g. ``gen/kv_compress.py`` puts its operand and
product registers inside the ECP5's MULT18X18D.  Yosys ships only a black box for that
primitive, so these models let the cocotb benches run the very netlist that goes to the FPGA
and compare it with the golden model.  Each model covers the configurations we use and stops the
simulation (``$fatal``) on any other, rather than simulating something the silicon would not do.

The MULT18X18D model follows Lattice's ECP5 sysDSP documentation (FPGA-TN-02205): an 18 x 18
multiplier whose A and B input registers, pipeline register and output register are each either
bypassed (``"NONE"``) or clocked; here only ``CLK0`` with ``CE0`` and ``RST0`` and
``RESETMODE="SYNC"`` are modelled.  ``SIGNEDA``/``SIGNEDB`` select two's complement operands
(registered with the operand when its input register is used).  The C input, the shift-out chain
and ``MULT_BYPASS="ENABLED"`` are not modelled.
"""

from __future__ import annotations


def _bits(name: str, n: int) -> list[str]:
    return [f"{name}{i}" for i in range(n)]


def mult18x18d() -> str:
    """Verilog text of the MULT18X18D model (module ``MULT18X18D``)."""
    ins = (_bits("A", 18) + _bits("B", 18) + _bits("C", 18) + ["SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB"]
           + _bits("CLK", 4) + _bits("CE", 4) + _bits("RST", 4))
    outs = _bits("P", 36)
    params = {"REG_INPUTA_CLK": "NONE", "REG_INPUTA_CE": "CE0", "REG_INPUTA_RST": "RST0",
              "REG_INPUTB_CLK": "NONE", "REG_INPUTB_CE": "CE0", "REG_INPUTB_RST": "RST0",
              "REG_INPUTC_CLK": "NONE", "REG_INPUTC_CE": "CE0", "REG_INPUTC_RST": "RST0",
              "REG_PIPELINE_CLK": "NONE", "REG_PIPELINE_CE": "CE0", "REG_PIPELINE_RST": "RST0",
              "REG_OUTPUT_CLK": "NONE", "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0",
              "CLK0_DIV": "ENABLED", "CLK1_DIV": "ENABLED", "CLK2_DIV": "ENABLED", "CLK3_DIV": "ENABLED",
              "HIGHSPEED_CLK": "NONE", "GSR": "ENABLED", "CAS_MATCH_REG": "FALSE", "SOURCEB_MODE": "B_SHIFT",
              "MULT_BYPASS": "DISABLED", "RESETMODE": "SYNC"}
    plist = ",\n  ".join(f'parameter {k} = "{v}"' for k, v in params.items())
    cat = lambda names: "{" + ", ".join(reversed(names)) + "}"   # noqa: E731  (bit 0 last)
    checks = "\n".join(
        f'    if ({k}_CLK != "NONE" && ({k}_CLK != "CLK0" || {k}_CE != "CE0" || {k}_RST != "RST0")) '
        f'$fatal(1, "MULT18X18D model: {k}_CLK=%s/%s/%s not modelled (CLK0, CE0, RST0 only)", '
        f'{k}_CLK, {k}_CE, {k}_RST);'
        for k in ("REG_INPUTA", "REG_INPUTB", "REG_PIPELINE", "REG_OUTPUT"))
    return f"""
// sparsefab behavioural model of the ECP5 MULT18X18D (sim/vendor_models.py)
module MULT18X18D #(
  {plist}
) (
  input {", ".join(ins)},
  output {", ".join(outs)}
);
  initial begin
{checks}
    if (MULT_BYPASS != "DISABLED") $fatal(1, "MULT18X18D model: MULT_BYPASS=%s not modelled", MULT_BYPASS);
    if (RESETMODE != "SYNC") $fatal(1, "MULT18X18D model: RESETMODE=%s not modelled", RESETMODE);
  end
  wire [17:0] a_in = {cat(_bits("A", 18))};
  wire [17:0] b_in = {cat(_bits("B", 18))};
  wire rst_sync = (RESETMODE == "SYNC") ? RST0 : 1'b0;
  reg [17:0] a_q = 18'd0, b_q = 18'd0;
  reg sa_q = 1'b0, sb_q = 1'b0;
  reg [35:0] pipe_q = 36'd0, out_q = 36'd0;
  always @(posedge CLK0) begin
    if (rst_sync) begin
      a_q <= 18'd0; b_q <= 18'd0; sa_q <= 1'b0; sb_q <= 1'b0;
    end else if (CE0) begin
      a_q <= a_in; b_q <= b_in; sa_q <= SIGNEDA; sb_q <= SIGNEDB;
    end
  end
  wire [17:0] a_v = (REG_INPUTA_CLK == "NONE") ? a_in : a_q;
  wire [17:0] b_v = (REG_INPUTB_CLK == "NONE") ? b_in : b_q;
  wire sa_v = (REG_INPUTA_CLK == "NONE") ? SIGNEDA : sa_q;
  wire sb_v = (REG_INPUTB_CLK == "NONE") ? SIGNEDB : sb_q;
  wire signed [36:0] a_x = sa_v ? {{{{19{{a_v[17]}}}}, a_v}} : {{19'd0, a_v}};
  wire signed [36:0] b_x = sb_v ? {{{{19{{b_v[17]}}}}, b_v}} : {{19'd0, b_v}};
  wire signed [73:0] prod_full = a_x * b_x;
  wire [35:0] prod = prod_full[35:0];
  always @(posedge CLK0) begin
    if (rst_sync) begin
      pipe_q <= 36'd0; out_q <= 36'd0;
    end else if (CE0) begin
      pipe_q <= prod;
      out_q <= (REG_PIPELINE_CLK == "NONE") ? prod : pipe_q;
    end
  end
  wire [35:0] p_pipe = (REG_PIPELINE_CLK == "NONE") ? prod : pipe_q;
  wire [35:0] p_v = (REG_OUTPUT_CLK == "NONE") ? p_pipe : out_q;
  assign {cat(outs)} = p_v;
endmodule
"""


MODELS = {"ecp5": mult18x18d}


def for_family(family: str | None) -> str:
    """Verilog models of the primitives generators instantiate for ``family`` ("" if none)."""
    return MODELS[family]() if family in MODELS else ""


def family_verilog(component, *, name: str, family: str) -> str:
    """Verilog of ``component`` as elaborated for FPGA ``family`` (the generators read only
    ``platform.family``), followed by the models of the primitives it may instantiate."""
    from types import SimpleNamespace

    from amaranth.back import verilog

    text = verilog.convert(component, name=name, platform=SimpleNamespace(family=family), emit_src=False)
    return text + for_family(family)
