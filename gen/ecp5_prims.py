"""ECP5 hard blocks instantiated directly by generators that know their target family.

Yosys maps a product to a MULT18X18D but leaves the registers around it in the fabric, so the
route from a fabric register into the multiplier and out of it again is in the path (about
4 ns of the DSP's combinational delay plus two routes).  :func:`mult18x18d` uses the DSP's own
operand and product registers instead.  The cocotb benches simulate these instances with the
behavioural model in :mod:`sparsefab.sim.vendor_models`.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Signal

__all__ = ["mult18x18d"]


def mult18x18d(m, a, b, *, width: int, name: str, signed: bool = False, ce=None):
    """``a * b`` through one MULT18X18D with registered operands and a registered product.

    Parameters
    ----------
    m : Module
        Module the instance is added to (as submodule ``{name}_mult``).
    a, b : Value
        Operands, at most 18 bits each; ``signed``: two's complement, sign-extended to 18 bits.
    width : int
        Product bits returned (at most 36).
    name : str
        Base name of the instance and its output signal.
    ce : Value, optional
        Clock enable of both register stages (default: always enabled).

    Returns
    -------
    Value
        The low ``width`` bits of the product, valid two cycles after ``a`` and ``b`` (operands
        registered at the first edge, product at the second; edges where ``ce`` is low do not
        count); no reset.
    """
    if len(a) > 18 or len(b) > 18 or width > 36:
        raise ValueError(f"mult18x18d: {len(a)} x {len(b)} bits -> {width}: at most 18 x 18 -> 36")
    pv = Signal(36, name=f"{name}_dsp")

    def bit(v, i):
        if i < len(v):
            return v[i]
        return v[-1] if signed else Const(0, 1)

    ports = {f"i_A{i}": bit(a, i) for i in range(18)}
    ports.update({f"i_B{i}": bit(b, i) for i in range(18)})
    ports.update({f"i_C{i}": Const(0, 1) for i in range(18)})
    ports.update({f"o_P{i}": pv[i] for i in range(36)})
    zero, sgn = Const(0, 1), Const(int(signed), 1)
    m.submodules[f"{name}_mult"] = Instance(
        "MULT18X18D", p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_OUTPUT_CLK="CLK0",
        p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE", p_GSR="DISABLED", p_RESETMODE="SYNC",
        p_CLK0_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
        i_CLK0=ClockSignal("sync"), i_CLK1=zero, i_CLK2=zero, i_CLK3=zero,
        i_CE0=Const(1, 1) if ce is None else ce, i_CE1=zero, i_CE2=zero, i_CE3=zero,
        i_RST0=zero, i_RST1=zero, i_RST2=zero, i_RST3=zero,
        i_SIGNEDA=sgn, i_SIGNEDB=sgn, i_SOURCEA=zero, i_SOURCEB=zero,
        **ports)
    return pv[:width]
