"""MGLD-VSR's text context: the OpenCLIP text tower (size, attention, penultimate features, strict loading
of OpenCLIP key names) and `vsrq mgld-context`, which stores what the pipeline reads."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from vsrq.cli import main
from vsrq.errors import VsrqError
from vsrq.models.mgldvsr import text
from vsrq.models.mgldvsr.pipeline import CONTEXT_FILE, load_text_context
from vsrq.models.mgldvsr.text import (
    VIT_H_14,
    OpenCLIPText,
    TextConfig,
    empty_prompt_context,
    empty_prompt_tokens,
    load_text_tower,
)
from vsrq.models.weights import WEIGHTS_ENV

TINY = TextConfig(width=32, heads=2, layers=3, mlp_width=64, output_dim=16, context_length=8)  # CLIP's 49,408 ids


def openclip_state(config: TextConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes OpenCLIP's ``CLIP.state_dict()`` gives its text tower,
    written out here from open_clip's TextTransformer / ResidualAttentionBlock rather than taken from vsrq."""
    g = torch.Generator().manual_seed(seed)
    w, m = config.width, config.mlp_width

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * (0.5 if len(shape) == 1 else shape[-1] ** -0.5)

    state = {"token_embedding.weight": rand(config.vocab_size, w),
             "positional_embedding": rand(config.context_length, w),
             "ln_final.weight": 1 + rand(w), "ln_final.bias": rand(w), "text_projection": rand(w, config.output_dim)}
    for i in range(config.layers):
        p = f"transformer.resblocks.{i}."
        state |= {p + "ln_1.weight": 1 + rand(w), p + "ln_1.bias": rand(w),
                  p + "attn.in_proj_weight": rand(3 * w, w), p + "attn.in_proj_bias": rand(3 * w),
                  p + "attn.out_proj.weight": rand(w, w), p + "attn.out_proj.bias": rand(w),
                  p + "ln_2.weight": 1 + rand(w), p + "ln_2.bias": rand(w),
                  p + "mlp.c_fc.weight": rand(m, w), p + "mlp.c_fc.bias": rand(m),
                  p + "mlp.c_proj.weight": rand(w, m), p + "mlp.c_proj.bias": rand(w)}
    return state


OTHER_TOWERS = {"visual.conv1.weight": torch.zeros(4, 3, 2, 2), "visual.transformer.resblocks.0.attn.in_proj_weight":
                torch.zeros(3, 1), "visual.positional_embedding": torch.zeros(5, 4), "logit_scale": torch.zeros(())}


def test_vit_h_14_text_tower_size_matches_openclip():
    with torch.device("meta"):
        tower = OpenCLIPText()
    c = VIT_H_14
    assert (c.vocab_size, c.context_length, c.width, c.heads, c.layers, c.mlp_width) == (49408, 77, 1024, 16, 24, 4096)
    w = c.width
    block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * c.mlp_width + c.mlp_width) + (c.mlp_width * w + w)
    closed_form = c.vocab_size * w + c.context_length * w + c.layers * block + 2 * w + w * c.output_dim
    assert sum(p.numel() for p in tower.parameters()) == closed_form == 354_032_640
    assert round(closed_form / 1e6, 2) == 354.03  # open_clip docs/model_profile.csv: ViT-H-14 text_mparams


def test_tower_keys_are_openclips():
    assert set(OpenCLIPText(TINY).state_dict()) == set(openclip_state(TINY))


def test_attention_block_matches_a_hand_written_causal_reference():
    tower = load_text_tower(openclip_state(TINY), "tiny", TINY)
    block = tower.transformer.resblocks[1]
    x = torch.randn(2, TINY.context_length, TINY.width, generator=torch.Generator().manual_seed(1))

    def attention(h: torch.Tensor) -> torch.Tensor:
        a = block.attn
        q, k, v = (h @ wt.T + b for wt, b in zip(a.in_proj_weight.chunk(3), a.in_proj_bias.chunk(3)))
        heads, d = TINY.heads, TINY.width // TINY.heads
        outs = []
        for i in range(heads):
            qi, ki, vi = (t[..., i * d:(i + 1) * d] for t in (q, k, v))
            scores = qi @ ki.transpose(-1, -2) / math.sqrt(d)
            n = scores.shape[-1]
            future = torch.arange(n)[None, :] > torch.arange(n)[:, None]  # key j after query i
            outs.append(scores.masked_fill(future, float("-inf")).softmax(-1) @ vi)
        return torch.cat(outs, -1) @ a.out_proj.weight.T + a.out_proj.bias

    def layer_norm(h: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
        mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias

    with torch.no_grad():
        torch.testing.assert_close(block.attn(x), attention(x), rtol=1e-5, atol=1e-5)
        h = x + attention(layer_norm(x, block.ln_1))
        mlp = block.mlp
        hidden = layer_norm(h, block.ln_2) @ mlp.c_fc.weight.T + mlp.c_fc.bias
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU
        torch.testing.assert_close(block(x), h + hidden @ mlp.c_proj.weight.T + mlp.c_proj.bias, rtol=1e-5, atol=1e-5)
        later = x.clone()
        later[:, -1] += 1.0
        torch.testing.assert_close(block.attn(later)[:, :-1], block.attn(x)[:, :-1])  # causal: no token sees ahead


def test_penultimate_features_skip_the_last_block_then_ln_final():
    state = openclip_state(TINY)
    tower = load_text_tower(state, "tiny", TINY)
    tokens = empty_prompt_tokens(TINY.context_length)
    assert tokens.tolist() == [[49406, 49407] + [0] * (TINY.context_length - 2)]
    with torch.no_grad():
        x = tower.token_embedding(tokens) + tower.positional_embedding
        for block in tower.transformer.resblocks[:-1]:
            x = block(x)
        expected = tower.ln_final(x)
        torch.testing.assert_close(tower(tokens), expected)
    context = empty_prompt_context(state, TINY)
    assert context.shape == (1, TINY.context_length, TINY.width) and context.dtype == torch.float32
    assert not context.is_inference()
    torch.testing.assert_close(context, expected)
    last = dict(state, **{"transformer.resblocks.2.mlp.c_fc.weight": torch.zeros(TINY.mlp_width, TINY.width)})
    torch.testing.assert_close(empty_prompt_context(last, TINY), context)  # the last block is never run
    first = dict(state, **{"transformer.resblocks.0.mlp.c_fc.weight": torch.zeros(TINY.mlp_width, TINY.width)})
    assert not torch.allclose(empty_prompt_context(first, TINY), context)


@pytest.mark.parametrize("prefix, extra", [("", OTHER_TOWERS), ("cond_stage_model.model.",
                                           {"model.diffusion_model.out.2.weight": torch.zeros(4, 8, 3, 3)})])
def test_strict_load_takes_the_text_keys_and_ignores_the_rest(tmp_path: Path, prefix: str, extra: dict):
    state = openclip_state(TINY)
    torch.save({prefix + k: v for k, v in (state | extra).items()}, tmp_path / "open_clip_pytorch_model.bin")
    loaded = text.read_state_dict(tmp_path / "open_clip_pytorch_model.bin")
    tower = load_text_tower(loaded, "file", TINY)
    for key, value in tower.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize(
    "state, message",
    [
        ({"conv.weight": torch.zeros(1)}, "no token_embedding.weight; not an OpenCLIP text checkpoint"),
        ({k: v for k, v in openclip_state(TINY).items() if k != "ln_final.bias"}, "missing: ln_final.bias"),
        (openclip_state(TextConfig(width=64, heads=2, layers=3, mlp_width=64, output_dim=16, context_length=8)),
         "shape mismatch: positional_embedding"),
    ],
)
@pytest.mark.fault
def test_wrong_checkpoints_are_one_line_errors(state: dict, message: str):
    with pytest.raises(VsrqError, match=message) as err:
        load_text_tower(state, "x.bin", TINY)
    assert "\n" not in str(err.value)


def test_cli_writes_the_context_the_pipeline_reads(tmp_path: Path, monkeypatch, capsys):
    state = openclip_state(TINY)
    torch.save(state | OTHER_TOWERS, tmp_path / "open_clip_pytorch_model.bin")
    monkeypatch.setattr(text, "save_empty_prompt_context",
                        functools.partial(text.save_empty_prompt_context, config=TINY))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(VsrqError, match="vsrq mgld-context --openclip"):
        load_text_context()
    assert main(["mgld-context", "--openclip", str(tmp_path / "open_clip_pytorch_model.bin")]) == 0
    assert str(tmp_path / CONTEXT_FILE) in capsys.readouterr().out
    torch.testing.assert_close(load_text_context(), empty_prompt_context(state, TINY))
    assert main(["mgld-context", "--openclip", str(tmp_path / "open_clip_pytorch_model.bin")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "file, message",
    [
        (None, "no such OpenCLIP checkpoint file"),
        ({"conv.weight": torch.zeros(1)}, "not an OpenCLIP text checkpoint"),
        (openclip_state(TINY), "does not fit OpenCLIPText: missing: transformer.resblocks.3"),  # not ViT-H-14
    ],
)
@pytest.mark.fault
def test_cli_errors_are_one_line(tmp_path: Path, capsys, file: dict | None, message: str):
    path = tmp_path / "weights.bin"
    if file is not None:
        torch.save(file, path)
    assert main(["mgld-context", "--openclip", str(path), "-o", str(tmp_path / "ctx.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vsrq: error:") and message in err and "\n" not in err
    assert not (tmp_path / "ctx.safetensors").exists()


def test_cli_needs_an_output_without_weights_folder(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert main(["mgld-context", "--openclip", str(tmp_path / "x.bin")]) == 2
    assert f"{WEIGHTS_ENV} is not set: pass -o/--output" in capsys.readouterr().err
