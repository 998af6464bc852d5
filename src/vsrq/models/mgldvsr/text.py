"""OpenCLIP's text tower, enough to compute MGLD-VSR's one text context from OpenCLIP weights.

MGLD-VSR conditions its UNet on SD 2.1's text features of the empty prompt: OpenCLIP ViT-H-14's
text transformer run up to its penultimate residual block, then its final LayerNorm. That is a
constant, so vsrq computes it once (``vsrq mgld-context``) and stores it where
:func:`vsrq.models.mgldvsr.pipeline.load_text_context` reads it; open-clip-torch is not needed.
The architecture is written from OpenCLIP's configuration and parameter names, so an OpenCLIP
state dict loads strictly: pre-norm residual blocks, fused q/k/v input projection, exact GELU,
a causal attention mask.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vsrq.checkpoint import write_safetensors
from vsrq.errors import VsrqError
from vsrq.models.mgldvsr.checkpoint import load_owned, read_lightning_state_dict

SOT_TOKEN = 49406  # <start_of_text>: right after the 49,406 byte-level BPE tokens
EOT_TOKEN = 49407  # <end_of_text>; OpenCLIP's tokenizer pads with 0 after it
# Where the text tower sits in the files users have: OpenCLIP's released weights (top level), SD 2.x
# Lightning checkpoints (the embedder without its visual tower) and OpenCLIP's DDP training checkpoints.
KNOWN_PREFIXES = ("", "cond_stage_model.model.", "module.")
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


@dataclass(frozen=True)
class TextConfig:
    """OpenCLIP's ``text_cfg``; the defaults are ViT-H-14's (``model_configs/ViT-H-14.json``)."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    heads: int = 16
    layers: int = 24
    mlp_width: int = 4096  # mlp_ratio 4
    output_dim: int = 1024  # the CLIP embedding width text_projection maps to

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise VsrqError(f"text width {self.width} does not split into {self.heads} heads")
        if self.vocab_size <= EOT_TOKEN:
            raise VsrqError(f"text vocab_size {self.vocab_size} lacks the CLIP tokenizer's start/end ids")
        if self.layers < 2:
            raise VsrqError("the penultimate features need at least 2 text layers")


VIT_H_14 = TextConfig()


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, as OpenCLIP stores them."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ResidualBlock(nn.Module):
    """Pre-norm transformer block (OpenCLIP ``ResidualAttentionBlock`` without layer scale, as ViT-H-14)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width)
        self.attn = SelfAttention(config.width, config.heads)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(config.width, config.mlp_width)),
            ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(config.mlp_width, config.width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """The block stack; a module of its own so keys read ``transformer.resblocks.{i}``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(config) for _ in range(config.layers))


class OpenCLIPText(nn.Module):
    """The text tower under OpenCLIP ``CLIP``'s top-level names; calling it gives SD 2's penultimate features.

    ``text_projection`` only maps pooled features into CLIP's joint space, which SD never uses;
    it is kept so that a checkpoint's text keys load strictly.
    """

    def __init__(self, config: TextConfig = VIT_H_14) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config)
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, config.output_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, context_length)`` -> ``(B, context_length, width)``, skipping the last block
        (SD 2's ``FrozenOpenCLIPEmbedder(layer="penultimate")``)."""
        x = self.token_embedding(tokens) + self.positional_embedding
        for block in self.transformer.resblocks[:-1]:
            x = block(x)
        return self.ln_final(x)


def empty_prompt_tokens(context_length: int = VIT_H_14.context_length) -> torch.Tensor:
    """OpenCLIP's tokens for "": start, end, then zero padding; no BPE is needed for an empty string."""
    tokens = torch.zeros(1, context_length, dtype=torch.long)
    tokens[0, :2] = torch.tensor([SOT_TOKEN, EOT_TOKEN])
    return tokens


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an OpenCLIP checkpoint (``.bin``, ``.pt``, ``.safetensors``) or an SD 2.x Lightning one."""
    path = Path(path)
    if not path.is_file():
        raise VsrqError(f"{path}: no such OpenCLIP checkpoint file")
    if path.suffix != ".safetensors":
        return read_lightning_state_dict(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise VsrqError(f"{path}: cannot read as safetensors ({type(exc).__name__})") from None


def text_keys(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The text-tower keys under OpenCLIP's top-level names: the file kind's prefix removed, every other key
    (``visual.*``, ``logit_scale``, SD's UNet) dropped."""
    for prefix in KNOWN_PREFIXES:
        if prefix + "token_embedding.weight" in state:
            return {k[len(prefix):]: v for k, v in state.items()
                    if k.startswith(prefix) and k[len(prefix):].startswith(TEXT_KEYS)}
    raise VsrqError(f"{source}: no token_embedding.weight; not an OpenCLIP text checkpoint (expected ViT-H-14's "
                    "open_clip_pytorch_model.bin or an SD 2.x checkpoint with cond_stage_model.model.*)")


def load_text_tower(state: dict[str, torch.Tensor], source: str, config: TextConfig = VIT_H_14) -> OpenCLIPText:
    """The text tower with ``state`` (OpenCLIP names, other keys ignored) loaded strictly, in eval mode."""
    return load_owned(lambda: OpenCLIPText(config), text_keys(state, source), TEXT_KEYS, source)


def empty_prompt_context(weights: dict[str, torch.Tensor] | str | Path,
                         config: TextConfig = VIT_H_14) -> torch.Tensor:
    """The penultimate-layer features of "" ``(1, context_length, width)``, float32 on the CPU: MGLD-VSR's context."""
    if isinstance(weights, dict):
        state, source = weights, "state dict"
    else:
        state, source = read_state_dict(weights), str(weights)
    tower = load_text_tower(state, source, config)
    with torch.inference_mode():
        context = tower(empty_prompt_tokens(config.context_length))
    return context.clone()  # a normal tensor again, usable outside inference mode


def save_empty_prompt_context(weights: str | Path, output: str | Path, config: TextConfig = VIT_H_14) -> Path:
    """Compute the context from an OpenCLIP checkpoint and store it as ``load_text_context`` reads it."""
    context = empty_prompt_context(weights, config)
    metadata = {"source": f"{Path(weights).name}: OpenCLIP text penultimate layer + ln_final, prompt ''"}
    return write_safetensors({"context": context.contiguous()}, Path(output), metadata)
