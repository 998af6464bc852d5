"""TARQ (temporal adaptive-rounding quantization): vsrq's recipe for deployable low-bit recurrent VSR.

What each part takes from where (issue 24; the ablation is in ``bench/reconstruct_vid4.py``):

1. QBasicVSR's calibration as it stands (:class:`~vsrq.methods.qbasicvsr.QBasicVSR`): OMSE weight
   ranges, EMA activation ranges (the refresh off by default: with split concatenations it lost
   here), TS-LBA layer bits and FG-VBA video bits under an optional FAB budget, the three
   fine-tuning stages with the Charbonnier + normalized feature loss over whole recurrent windows.
2. Every concatenation split (``split_concat`` fixed on): the trunk input conv reads
   cat(frame, features), and one per-tensor range over both rounds the frame away at 4 bits; one
   conv per source, each with its own static range, is exact in float and two integer convs when
   exported.
3. AdaRound's learned rounding of every weight (:mod:`vsrq.quant.rounding`), trained on the same
   whole-window loss rather than block by block: on BasicVSR a block's error on recorded inputs is
   not the error it causes through the recurrence, and BRECQ's per-block rounding made the network
   worse on its own training windows (docs/findings.md). The regularizer is the mean over weights of
   ``1 - |2h - 1|^beta`` times ``round_weight``, annealed as AdaRound does; the weight grids stay
   fixed, so the checkpoint, its packing and the integer export carry the learned codes unchanged.
   The static activation ranges train in the same steps (learned step sizes, ``lr_act_round``): at
   W4A4 on BasicVSR 4-bit activations cost more than 4-bit weights (W8A4 24.98 dB, W4A8 25.93, FP
   27.20 on Vid4 quick frames, OMSE with split concatenations).

4. The network's ends at W8A8 (``edge_wbits``, ``edge_abits``; the host's ``edge_layers``: on BasicVSR each
   trunk's LR-frame part and the fusion + upsampling tail), as image-CNN quantization keeps its first and
   last layers: at W8A4 those two groups cost 1.2 and 1.15 dB alone, the residual stream 0.45
   (bench/act_sensitivity.py). Under a FAB budget the other layers pay for them (TS-LBA's least sensitive
   first, none more than one bit under the config's: ``min_abits``, by default the config's activation bits
   minus one): at W4A4, FAB 4.0, Vid4 quick, 25.59 dB with the ends at A4,
   26.05 at A8 with 4-bit weights, 26.23 at W8A8 (every frame 25.96 and 26.20). Their 8-bit weights cost
   2% of the checkpoint (the edges hold 8% of BasicVSR's weights); null keeps the config's bits. At W6A6 a
   floor of 3 let the budget take 14 layers to 4 bits: 27.11 dB on every Vid4 frame; with the floor at 5
   (none below 5: 48 layers at 5) 27.13.
   From 6 activation bits up (``edge_state``; null: on when the config's activation bits are 6 or more) the layers
   where the recurrent state re-enters each step join the ends (the host's ``state_layers``: on BasicVSR each trunk
   input conv's part that reads the propagated features). At W6A6 those two parts' 6-bit weights held 0.06 of the
   0.07 dB that every weight cost (bench/loss_split.py); at W8A8, paid for by 4 more layers at 5 bits: 27.19 dB on
   every Vid4 frame (27.13 without). At W4A4 the same 8 bits of budget take 8 more layers to 3 bits: 26.18 against
   26.20 (foliage -0.78 dB, the other clips +0.15 to +0.26), so it stays off there. ``edge_state`` "weights" gives
   them 8-bit weights only (free under the budget: with every activation in float their 4-bit weights alone cost
   0.72 dB at W4A4, bench/loss_split.py); on every Vid4 frame 25.98: calendar, city and walk +0.2 dB each, foliage
   -1.53; on the first 10 frames of each clip 26.43 against 26.23 (foliage +0.20). Both lose on foliage's long run,
   which the 8-frame training windows never reach: its gap to FP grows about 0.1 dB a frame along the forward pass
   (bench/drift.py). Calibrated on 16-frame windows (6 of them, the same 96 frames) "weights" scores 26.39 on every
   Vid4 frame, the best W4A4 here (the default on those windows: 26.25), so the option pays with longer windows;
   with 5-bit weights (W5A4, 8.98 MB: inside 1.1 x MinMax W4's size) 26.61, 26.67 with ``round_epochs`` 10, and 26.70
   with the ends' activations at 6 bits too (``edge_abits`` 6; 2,006 s alone on 2 cores). With each trunk's residual
   stream equalized first (``QuantConfig.equalize`` 1, ``--equalize 1``: every stream channel given the same range,
   exact in float, :mod:`vsrq.quant.equalize`) and 48 rounding steps (``round_epochs`` 8): 26.76 dB in 1,647 s.
5. Optionally (``lr_bias`` > 0; off by default) a per-channel bias learned with the rounding, as QuantVSR's LBA
   learns its A_bias, folded into the conv's bias (a split conv's parts add up, so the part that holds the bias
   takes it): no cost at run time. Measured, it loses: W6A6 (floor 3) on every Vid4 frame 27.11 dB without, 27.09 at
   ``lr_bias`` 1e-4, 26.89 at 1e-3, and the rounding stage's own loss ends higher; an offset that one step adds
   is carried on by the recurrence, as QuantVSR's LBA stage was found to lose on BasicVSR (docs/findings.md).

Every conv stays quantized with static per-tensor activation ranges and per-channel weights: what the
integer runtime runs (``vsrq info`` says "deployable").
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from vsrq.config import MAX_BITS, MIN_BITS, LayerRule, QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.base import CalibContext, register_method
from vsrq.methods.finetune import Stage, run_stages
from vsrq.methods.qbasicvsr import QBasicVSR, _feature_pattern, _finetune_cfg
from vsrq.models.host import ModelHost
from vsrq.quant.controller import InputController
from vsrq.quant.qmodel import QuantizedModel
from vsrq.quant.rounding import beta_schedule, rounding_regularizer


@register_method
class TARQ(QBasicVSR):
    name = "tarq"
    description = ("TARQ: QBasicVSR calibration with split concatenations, then AdaRound rounding learned "
                   "on whole recurrent windows")
    fixed = {"split_concat": True}
    default_options = {**QBasicVSR.default_options, "omse_refresh": False, "rounding": True, "round_epochs": 5,
                       "round_batch": 1, "lr_round": 1e-2, "lr_act_round": 1e-3, "round_weight": 1.0,
                       "warmup": 0.2, "edge_abits": 8, "edge_wbits": 8, "edge_state": None, "min_abits": None,
                       "lr_bias": 0.0}

    def __init__(self, config: QuantConfig) -> None:
        resolved = {}  # defaults that depend on the bits, written into the config (and so the manifest)
        if config.options.get("min_abits") is None:  # one bit under the config's (W4A4: 3, W6A6: 5)
            resolved["min_abits"] = max(MIN_BITS, config.abits - 1)
        if config.options.get("edge_state") is None:  # from 6 activation bits up, where it was measured to pay
            resolved["edge_state"] = config.abits >= 6
        if resolved:
            config = replace(config, options={**config.options, **resolved})
        super().__init__(config)
        for key in ("edge_abits", "edge_wbits"):
            bits = self.options[key]
            if bits is not None and bits not in range(MIN_BITS, MAX_BITS + 1):
                raise VsrqError(f"option {key} must be null (the config's bits) or an integer {MIN_BITS}..{MAX_BITS}, "
                                f"got {bits!r}")
        if not (isinstance(self.options["edge_state"], bool) or self.options["edge_state"] == "weights"):
            raise VsrqError(f"option edge_state must be true, false, \"weights\" or null (true from 6 activation bits), "
                            f"got {self.options['edge_state']!r}")
        lr_bias = self.options["lr_bias"]
        if isinstance(lr_bias, bool) or not isinstance(lr_bias, (int, float)) or lr_bias < 0:
            raise VsrqError(f"option lr_bias must be a learning rate >= 0 (0: no learned bias), "
                            f"got {lr_bias!r}")

    def host_rules(self, host: ModelHost, model: nn.Module) -> tuple[LayerRule, ...]:
        """The host's edge layers (and its state layers, ``edge_state`` true) with ``edge_abits`` activation bits
        (pinned) and ``edge_wbits`` weight bits; ``edge_state`` "weights" gives the state layers the weight bits
        only, their activations left to the budget."""
        wbits, abits = self.options["edge_wbits"], self.options["edge_abits"]
        if wbits is None and abits is None:
            return ()
        wbits, abits = None if wbits is None else int(wbits), None if abits is None else int(abits)
        state, edge_state = host.state_layers(model), self.options["edge_state"]
        pinned = host.edge_layers(model) + (state if edge_state is True else ())
        rules = [LayerRule(g, wbits=wbits, abits=abits) for g in pinned]
        if edge_state == "weights" and wbits is not None:
            rules += [LayerRule(g, wbits=wbits) for g in state]
        return tuple(rules)

    def calibrate(self, ctx: CalibContext) -> InputController | None:
        controller = super().calibrate(ctx)
        if self.options["rounding"] and int(self.options["round_epochs"]) > 0:
            self._learn_rounding(ctx, QuantizedModel(ctx.base, {}, ctx.host, controller))
        return controller

    def _learn_rounding(self, ctx: CalibContext, student: QuantizedModel) -> None:
        """One stage over every static weight's rounding variables; the choice is then baked into the weights."""
        o = self.options
        layers = [l for l in ctx.layers.values() if l.weight is not None and l.weight_quantizer is not None
                  and not l.weight_quantizer.spec.dynamic]
        variables = [l.start_learned_rounding() for l in layers]
        count = sum(v.numel() for v in variables)
        warmup, weight = float(o["warmup"]), float(o["round_weight"])

        def penalty(done: float) -> torch.Tensor | None:
            beta = beta_schedule(round(done * 1000), 1000, warmup)
            if beta is None or weight == 0:
                return None
            return weight * sum(rounding_regularizer(v, beta) for v in variables) / count

        nearest = [l.weight_codes()[0] for l in layers]
        ranges = [p for l in ctx.layers.values() if l.input_quantizer is not None and not l.input_quantizer.spec.dynamic
                  for p in (l.input_quantizer.lower, l.input_quantizer.upper)]
        also = [(ranges, float(o["lr_act_round"]))] if float(o["lr_act_round"]) > 0 else []
        if float(o["lr_bias"]) > 0:  # the layers that have a bias (of a split conv's parts, the one that holds it)
            biased = [l for l in layers if l.bias is not None]
            for l in biased:
                l.add_bias_alignment()
            also.append(([l.bias_align for l in biased], float(o["lr_bias"])))
        stage = Stage("rounding", variables, float(o["lr_round"]), epochs=int(o["round_epochs"]), penalty=penalty,
                      also=also)
        (log,) = run_stages(ctx, student, [stage],
                            _finetune_cfg({**o, "batch": o["round_batch"]}), _feature_pattern(o, ctx))
        for l in layers:
            l.bake_rounding()
            l.fold_bias_alignment()
        moved = sum(int((l.weight_codes()[0] != n).sum()) for l, n in zip(layers, nearest))
        ctx.notes["rounding"] = {**log.to_dict(), "weights": count, "codes_off_nearest": round(moved / count, 4)}
