"""What ``vsrq info MODEL`` reports for a registered model: parameters, operations, checkpoint keys.

Every model is built on the meta device: shapes without storage, so the full-size MGLD-VSR (1.1 G
parameters) is counted and traced in seconds, with no weights and no memory. Per architecture, a
:class:`Profile` says how the model splits into parts, which input shape an operation count
means and how to run it, and which official checkpoint file holds which module's keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable

import torch
from torch import nn

from vsrq.errors import VsrqError
from vsrq.models.catalog import NAMED_MODELS, UNTRAINED_MODELS, build_model, host_for
from vsrq.models.host import ModelSpec
from vsrq.models.inventory import WEIGHTED, Part, layer_costs, take_inventory
from vsrq.models.mgldvsr.model import CHECKPOINT_PARTS
from vsrq.quant.accounting import compressed_cost


@dataclass(frozen=True)
class Profile:
    """How `info` handles one architecture."""

    parts: Callable[[nn.Module], list[Part]]
    default_shape: Callable[[nn.Module], tuple[int, ...]]
    shape_meaning: str
    run: Callable[[nn.Module, tuple[int, ...]], None]  # one forward at that shape; VsrqError for a shape it refuses
    checkpoints: Callable[[nn.Module, str], dict[str, nn.Module]]  # (model, name) -> {file: module whose keys it holds}


def _recurrent_run(model: nn.Module, shape: tuple[int, ...]) -> None:
    t, c, h, w = shape
    model(torch.zeros(1, t, c, h, w))


def _mgldvsr_parts(model: nn.Module) -> list[Part]:
    den, vae = model.denoiser, model.vae
    return [
        Part("unet", {"model.diffusion_model": den.unet}),
        Part("structcond", {"structcond_stage_model": den.structcond_stage_model}),
        Part("vae_encoder", {"encoder": vae.encoder, "quant_conv": vae.quant_conv}),
        Part("vae_decoder", {"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder}),
    ]


def _mgldvsr_run(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One denoising step on a latent clip (struct-cond encoder and UNet), then the VAE on the matching frames."""
    t, c, h, w = shape
    cfg = model.config
    stride = 2 ** (len(cfg.unet.channel_mult) - 1)  # the UNet's skips need h, w divisible by its total downsampling
    factor = 2 ** (len(cfg.vae.channel_mult) - 1)  # the VAE's pixels per latent pixel
    if c != cfg.unet.in_channels or t % cfg.unet.num_frames or h % stride or w % stride:
        raise VsrqError(f"MGLD-VSR latents are (frames x {cfg.unet.in_channels} x h x w) with frames a multiple of "
                        f"{cfg.unet.num_frames} and h, w multiples of {stride}; got {'x'.join(map(str, shape))}")
    latent = torch.zeros(t, c, h, w)
    context = torch.zeros(1, 77, cfg.unet.context_dim)  # 77 tokens: the OpenCLIP prompt length
    model.denoiser(latent, torch.full((t,), 999), context, latent)
    encoding = model.vae.encode(torch.zeros(t, cfg.vae.in_channels, h * factor, w * factor))
    model.vae.decode(latent, encoding.features)


def _mgldvsr_checkpoints(model: nn.Module, name: str) -> dict[str, nn.Module]:
    return {file: getattr(model, attr) for file, attr in CHECKPOINT_PARTS.items()}


def _small_run(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One denoising step of ``mgldvsr-small`` on a folded residual clip."""
    t, c, h, w = shape
    cfg = model.config.denoiser.unet
    stride = 2 ** (len(cfg.channel_mult) - 1)
    if c != cfg.in_channels or t % cfg.num_frames or h % stride or w % stride:
        raise VsrqError(f"mgldvsr-small inputs are (frames x {cfg.in_channels} x h x w) with frames a multiple of "
                        f"{cfg.num_frames} and h, w multiples of {stride}; got {'x'.join(map(str, shape))}")
    x = torch.zeros(t, c, h, w)
    model.predict(x, torch.full((t,), 250), x)


PROFILES: dict[str, Profile] = {
    "basicvsr": Profile(
        parts=lambda model: [Part("basicvsr", {"": model})],
        default_shape=lambda model: (2, 3, 64, 64),  # the smallest clip BasicVSR takes
        shape_meaning="LR clip: frames x channels x h x w",
        run=_recurrent_run,
        checkpoints=lambda model, name: {NAMED_MODELS[name][0].filename: model},
    ),
    "animesr": Profile(
        parts=lambda model: [Part("animesr", {"": model})],
        default_shape=lambda model: (2, 3, 64, 64),
        shape_meaning="LR clip: frames x channels x h x w",
        run=_recurrent_run,
        checkpoints=lambda model, name: {NAMED_MODELS[name][0].filename: model},
    ),
    "mgldvsr": Profile(
        parts=_mgldvsr_parts,
        default_shape=lambda model: (model.config.unet.num_frames, model.config.unet.in_channels, 64, 64),
        shape_meaning="latent clip: frames x channels x h x w (x8 pixels); QuantVSR Table 2 uses 5x4x64x64",
        run=_mgldvsr_run,
        checkpoints=_mgldvsr_checkpoints,
    ),
    "mgldvsr-small": Profile(
        parts=lambda model: [
            Part("unet", {"denoiser.model.diffusion_model": model.denoiser.unet}),
            Part("structcond", {"denoiser.structcond_stage_model": model.denoiser.structcond_stage_model}),
        ],
        default_shape=lambda model: (model.config.num_frames, model.config.denoiser.unet.in_channels, 16, 16),
        shape_meaning="folded residual clip: frames x channels x h x w on the LR grid (x4 pixels)",
        run=_small_run,
        checkpoints=lambda model, name: {NAMED_MODELS[name][0].filename: model},
    ),
}


def parse_shape(text: str) -> tuple[int, ...]:
    sizes = tuple(int(v) for v in text.split("x")) if re.fullmatch(r"\d+(x\d+){3}", text) else ()
    if not sizes or min(sizes) < 1:
        raise VsrqError(f"--ops-shape expects FRAMESxCHANNELSxHxW with positive sizes, e.g. 5x4x64x64; got {text!r}")
    return sizes


def info_spec(name: str) -> ModelSpec:
    if name in NAMED_MODELS:
        return NAMED_MODELS[name][0].spec
    if name in UNTRAINED_MODELS:
        return UNTRAINED_MODELS[name]
    known = ", ".join(sorted([*NAMED_MODELS, *UNTRAINED_MODELS]))
    raise VsrqError(f"unknown model {name!r}: not a file and not one of {known}")


def _shape_text(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def describe(name: str, shape: tuple[int, ...] | None = None, keys: bool = False) -> dict[str, Any]:
    """Parameter and operation counts of a registered model (and its checkpoint keys), as JSON-ready data."""
    spec = info_spec(name)
    profile = PROFILES[spec.arch]
    with torch.device("meta"):
        model = build_model(spec).eval()
        shape = shape or profile.default_shape(model)
        parts = profile.parts(model)
        inventories = take_inventory(parts, lambda: profile.run(model, shape))
    report: dict[str, Any] = {
        "model": name,
        "spec": spec.to_dict(),
        "ops_shape": list(shape),
        "ops_shape_meaning": profile.shape_meaning,
        "params": sum(inv.params for inv in inventories),
        "parts": {inv.name: inv.to_dict() for inv in inventories},
    }
    if keys:
        report["checkpoint_keys"] = {
            file: {k: _shape_text(v) for k, v in module.state_dict().items()}
            for file, module in profile.checkpoints(model, name).items()
        }
    return report


def _m(n: float) -> str:
    """Millions to 0.1 M; smaller counts (norms, blend weights) in full, so they do not read as zero."""
    return f"{n / 1e6:.1f} M" if n >= 50_000 else f"{int(n):,}"


def _g(n: float) -> str:
    return f"{n / 1e9:,.1f} G"


def render(report: dict[str, Any]) -> str:
    """The report as aligned text: a section per part, then the operation table."""
    spec = report["spec"]
    kwargs = " ".join(f"{k}={v}" for k, v in spec["kwargs"].items())
    lines = [f"{report['model']}  ({spec['arch']} {kwargs}".rstrip() + "; built on the meta device, no weights)",
             f"parameters {_m(report['params'])} ({report['params']:,})"]
    for part, inv in report["parts"].items():
        lines.append(f"  {part:12s} {_m(inv['params']):>10s}")
        lines += [f"    {sub:48s} {_m(n):>10s}" for sub, n in inv["params_by_submodule"].items()]
        lines.append("    by type: " + ", ".join(f"{t} {_m(n)}" for t, n in inv["params_by_type"].items()))
    shape = "x".join(map(str, report["ops_shape"]))
    lines.append(f"operations at {shape} ({report['ops_shape_meaning']})")
    header = f"{'MACs+bias':>12s} {'of which bias':>14s} {'attn QK^T':>11s} {'attn AV':>11s}"
    lines.append(f"  {'part':12s} {header}  by type")
    for part, inv in report["parts"].items():
        qk, av = inv["attention_macs"]["qk"], inv["attention_macs"]["av"]
        by_type = ", ".join(f"{t} {_g(n)}" for t, n in sorted(inv["macs_by_type"].items(), key=lambda kv: -kv[1]))
        lines.append(f"  {part:12s} {_g(inv['ops']):>12s} {_g(inv['bias_adds']):>14s} {_g(qk):>11s} {_g(av):>11s}  "
                     f"{by_type}")
    lines.append("  MACs+bias: Conv/Linear multiply-accumulates plus bias additions, the QuantVSR Table 2 "
                 "convention; attention matmuls apart")
    return "\n".join(lines)


def render_keys(report: dict[str, Any]) -> str:
    """``name shape`` a line, every official checkpoint file in turn (their prefixes do not collide)."""
    return "\n".join(f"{k} {s}" for keys in report["checkpoint_keys"].values() for k, s in keys.items())



# QuantVSR Table 2 (MGLD-VSR's UNet at a 5x4x64x64 latent): bits -> (M params, G ops)
TABLE2_PAPER = {8: (263.0, 563.0), 6: (204.0, 446.0), 4: (146.0, 328.0)}
TABLE2_ROOT = "model.diffusion_model"  # the UNet, under the denoiser


def layer_role(name: str) -> str:
    """A UNet layer's role with its position stripped: ``output_blocks.transformer_blocks.attn1.to_q``."""
    name = re.sub(r"\.parts\.\d+$", "", name.split(TABLE2_ROOT + ".", 1)[-1])
    return ".".join(p for p in name.split(".") if not p.isdigit())


def scaled_ranks(member: dict[str, int], layers: list[str], r_min: int = 16, r_max: int = 64) -> dict[str, int]:
    """A member's per-layer branch ranks carried to another UNet's ``layers``: each gets the mean rank of the
    member's layers of its role (``layer_role``), else the member's overall mean; multiples of 8 in [r_min, r_max]."""
    by_role: dict[str, list[int]] = {}
    for name, r in member.items():
        by_role.setdefault(layer_role(name), []).append(r)
    overall = sum(member.values()) / max(len(member), 1)

    def snap(r: float) -> int:
        return min(r_max, max(r_min, int(round(r / 8.0)) * 8))

    return {n: snap(sum(v) / len(v) if (v := by_role.get(layer_role(n))) else overall) for n in layers}


def table2(name: str, rank: int = 22, shape: tuple[int, ...] | None = None,
           member_ranks: dict[str, int] | None = None) -> dict[str, Any]:
    """QuantVSR Table 2's accounting of a registered MGLD-VSR model's UNet on the meta device (no weights):
    params and ops at W8A8 / W6A6 / W4A4 with a float branch in every quantized layer and the layers the host
    keeps in float counted in full, beside the paper's figures. The branch has a uniform ``rank``, or the ranks
    of a calibrated member (``member_ranks``, e.g. a checkpoint's) carried over by :func:`scaled_ranks`."""
    spec = info_spec(name)
    profile = PROFILES[spec.arch]
    with torch.device("meta"):
        model = build_model(spec).eval()
        shape = shape or profile.default_shape(model)
        costs = layer_costs(model, lambda: profile.run(model, shape))
    host = host_for(model)
    unet_name = next((n for n, _ in model.named_modules() if n.endswith(TABLE2_ROOT)), None)
    if unet_name is None:
        raise VsrqError(f"{name} has no {TABLE2_ROOT}: Table 2 counts an MGLD-VSR UNet")
    unet = model.get_submodule(unet_name)
    costs = {n: c for n, c in costs.items() if n.startswith(unet_name + ".")}
    keep = {n for n in costs if any(fnmatchcase(n, g) for g in host.auxiliary(model))}
    layer_params = sum(p.numel() for m in unet.modules() if isinstance(m, WEIGHTED) for p in m.parameters())
    other = sum(p.numel() for p in unet.parameters()) - layer_params
    quantized_names = [n for n in costs if n not in keep]
    if member_ranks:
        ranks = scaled_ranks(member_ranks, quantized_names)
        roles = {layer_role(m) for m in member_ranks}
        matched = sum(layer_role(n) in roles for n in quantized_names)
        profile_text = (f"STCA ranks of a calibrated member carried over by layer role ({matched} of "
                        f"{len(quantized_names)} layers matched a role; the rest at the member's mean)")
    else:
        ranks = {n: rank for n in quantized_names}
        profile_text = f"a uniform rank-{rank} float branch each"
    rows = []
    for bits, (paper_params, paper_ops) in TABLE2_PAPER.items():
        params, ops = compressed_cost(costs, other, bits, ranks, keep)
        rows.append({"bits": bits, "params_m": round(params, 2), "ops_g": round(ops, 2), "paper_params_m": paper_params,
                     "paper_ops_g": paper_ops, "params_dev": round(params / paper_params - 1, 4),
                     "ops_dev": round(ops / paper_ops - 1, 4)})
    quantized = [c for n, c in costs.items() if n not in keep]
    return {"model": name, "unet": unet_name, "ops_shape": list(shape), "rank": rank, "profile": profile_text,
            "mean_rank": round(sum(ranks.values()) / max(len(ranks), 1), 2), "quantized_layers": len(quantized),
            "float_layers": sorted(keep), "sum_m_plus_n": sum(c.m + c.n for c in quantized),
            "sum_positions_m_plus_n_g": round(sum(c.positions * (c.m + c.n) for c in quantized) / 1e9, 4),
            "other_params": other, "rows": rows, "ranks": ranks}


def render_table2(report: dict[str, Any]) -> str:
    lines = [f"QuantVSR Table 2 accounting of {report['model']}'s UNet at {'x'.join(map(str, report['ops_shape']))}: "
             f"{report['quantized_layers']} quantized layers, {report['profile']}, mean rank {report['mean_rank']}; "
             f"in float: {', '.join(n.rsplit(TABLE2_ROOT + '.', 1)[-1] for n in report['float_layers'])}",
             f"per unit of rank: sum(m+n) {report['sum_m_plus_n']:,} params, sum(positions*(m+n)) "
             f"{report['sum_positions_m_plus_n_g']} G MACs",
             "| W/A | params (M) | paper | dev | ops (G) | paper | dev | UNet file (MB) | model file (MB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        sizes = (f"{r['unet_file_mb']:.1f} | {r['model_file_mb']:.1f}" if "unet_file_mb" in r else "- | -")
        lines.append(f"| W{r['bits']}A{r['bits']} | {r['params_m']:.1f} | {r['paper_params_m']:.0f} | "
                     f"{100 * r['params_dev']:+.1f}% | {r['ops_g']:.1f} | {r['paper_ops_g']:.0f} | "
                     f"{100 * r['ops_dev']:+.1f}% | {sizes} |")
    if "unet_file_mb" in report["rows"][0]:
        lines.append("File sizes: the tensors of a `.vsrq` checkpoint, sized on the meta device (packed codes, "
                     "per-channel scales, float32 branch factors, rotation signs); the model file adds the float VAE, "
                     "struct-cond encoder and the rest.")
    return "\n".join(lines)
