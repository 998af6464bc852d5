"""BRECQ (Li et al., ICLR 2021) and QDrop (Wei et al., ICLR 2022): reconstruction-based PTQ baselines.

Both start from MSE-optimal ranges (weights symmetric per output channel, activations asymmetric
per tensor, static) and reconstruct the host's blocks in turn (:mod:`vsrq.methods.reconstruct`):
AdaRound's learned rounding of every weight, with the weight grid fixed, plus learned activation
ranges. QDrop additionally lets each activation inside the block skip quantization with
probability 0.5 while training, and draws each element of the block's input from the quantized or
the float network evenly (its ``input_prob``).

Simplified for CPU budgets: a few hundred Adam steps per block instead of the papers' 20,000, and
plain squared error instead of BRECQ's Fisher weighting of the block output (which needs the
task loss's gradient; PTQ here has no labels).
"""

from __future__ import annotations

from dataclasses import asdict

from vsrq.errors import VsrqError
from vsrq.methods.base import CalibContext, init_weight_ranges, observe_activations, register_method
from vsrq.methods.reconstruct import INPUTS, ReconstructionConfig, reconstruct
from vsrq.methods.static import StaticMethod
from vsrq.quant.controller import InputController


@register_method
class BRECQ(StaticMethod):
    name = "brecq"
    description = "BRECQ: block reconstruction with AdaRound rounding and learned activation ranges"
    weight_observer = "omse"
    act_observer = "omse"
    default_options = {"iters": 200, "samples": 4, "lr": 1e-3, "rounding": True, "lr_round": 1e-3,
                       "round_weight": 0.01, "warmup": 0.2, "drop": 0.0, "inputs": "quant", "memory_mb": 256.0,
                       "group": 1, "windows": 0}

    def reconstruction(self) -> ReconstructionConfig:
        o = self.options
        if o["inputs"] not in INPUTS:
            raise VsrqError(f"option inputs must be one of {', '.join(INPUTS)}, got {o['inputs']!r}")
        return ReconstructionConfig(
            iters=int(o["iters"]), samples=int(o["samples"]), lr=float(o["lr"]), rounding=bool(o["rounding"]),
            lr_round=float(o["lr_round"]), round_weight=float(o["round_weight"]), warmup=float(o["warmup"]),
            drop=float(o["drop"]), inputs=str(o["inputs"]), memory_mb=float(o["memory_mb"]),
            group=int(o["group"]), windows=int(o["windows"]))

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        cfg = self.reconstruction()
        init_weight_ranges(ctx.layers)
        observe_activations(ctx)
        facts = reconstruct(ctx, cfg)
        ctx.notes["reconstruction"] = {**asdict(cfg), "units": facts}
        return None


@register_method
class QDrop(BRECQ):
    name = "qdrop"
    description = "QDrop: BRECQ with activation quantization randomly dropped (p=0.5) and mixed block inputs"
    default_options = {**BRECQ.default_options, "drop": 0.5, "inputs": "mix"}
