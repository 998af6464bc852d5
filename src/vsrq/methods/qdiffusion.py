"""Q-Diffusion (Li et al., ICCV 2023) as QuantVSR compares with it, over vsrq's shared primitives.

Its three ideas, each mapped onto what the model's host declares:

- time-step-aware calibration: calibration items come from K sampling steps spread evenly over the
  chain (the host's default calibration for a diffusion model captures exactly that);
- split shortcut quantization: every conv over a concatenation (a UNet decoder block reads
  ``cat(h, skip)``) runs as one conv per source with its own activation range (``split_concat``,
  fixed on for this recipe);
- BRECQ block reconstruction over the host's blocks (``vsrq.methods.reconstruct``), starting from
  MSE-optimal ranges (weights per channel, activations per tensor).

Simplified: reconstruction learns the quantizer ranges (BRECQ's learned step sizes) but not AdaRound's
per-weight rounding, and the calibration items are not re-drawn per block.
"""

from __future__ import annotations

from vsrq.methods.base import CalibContext, init_weight_ranges, observe_activations, register_method
from vsrq.methods.reconstruct import ReconstructionConfig, reconstruct
from vsrq.methods.static import StaticMethod
from vsrq.quant.controller import InputController


@register_method
class QDiffusion(StaticMethod):
    name = "qdiffusion"
    description = "Q-Diffusion: step-spread calibration, split shortcut, block reconstruction of the ranges"
    weight_observer = "omse"
    act_observer = "omse"
    default_options = {"iters": 300, "lr": 1e-3}
    fixed = {"split_concat": True}

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        init_weight_ranges(ctx.layers)
        observe_activations(ctx)
        cfg = ReconstructionConfig(iters=int(self.options["iters"]), lr=float(self.options["lr"]))
        facts = reconstruct(ctx, cfg)
        ctx.notes["reconstruction"] = {"iters": cfg.iters, "lr": cfg.lr, "units": facts}
        return None
