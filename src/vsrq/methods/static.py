"""Static PTQ baselines: one range initializer for weights, one for activations, no training.

Weights are symmetric per output channel; activations asymmetric per tensor with static ranges
gathered by running the float network over the calibration clips (QBasicVSR, Table 2):

============  ==================  =========================================
method        weights             activations
============  ==================  =========================================
minmax        min/max             min/max
percentile    min/max             0.01 / 99.99 percentiles
omse          MSE-optimal clip    MSE-optimal clip
dbdc          min/max             density-based dual clipping, EMA over frames
ema           MSE-optimal clip    EMA of min/max (QBasicVSR's initialization)
============  ==================  =========================================
"""

from __future__ import annotations

from vsrq.config import QuantizerSpec
from vsrq.methods.base import CalibContext, Method, init_weight_ranges, observe_activations, register_method
from vsrq.quant.qmodel import InputController
from vsrq.quant.swap import LayerChoice


class StaticMethod(Method):
    weight_observer = "minmax"
    act_observer = "minmax"

    def layer_specs(self, choice: LayerChoice) -> tuple[QuantizerSpec, QuantizerSpec]:
        w = QuantizerSpec(bits=choice.wbits, symmetric=True, granularity="channel", observer=self.weight_observer)
        a = QuantizerSpec(bits=choice.abits, symmetric=False, granularity="tensor", observer=self.act_observer)
        return w, a

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        init_weight_ranges(ctx.layers)
        observe_activations(ctx)
        return None


def _static(name: str, weights: str, acts: str, text: str) -> type[StaticMethod]:
    cls = type(f"Static_{name}", (StaticMethod,), {"name": name, "weight_observer": weights, "act_observer": acts,
                                                  "description": text})
    return register_method(cls)


_static("minmax", "minmax", "minmax", "min/max ranges (Jacob et al. 2018)")
_static("percentile", "minmax", "percentile", "activation percentiles 0.01/99.99 (Li et al. 2019)")
_static("omse", "omse", "omse", "MSE-optimal clipping (Choukroun et al. 2019)")
_static("dbdc", "minmax", "dbdc", "density-based dual clipping with EMA over frames (Tu et al. 2023)")
_static("ema", "omse", "ema", "OMSE weights, EMA min/max activations (QBasicVSR's calibration)")
