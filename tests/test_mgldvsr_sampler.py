"""MGLD-VSR's sampler (schedule, respacing, tiling, colour fix, occlusion masks, guidance), both upscaling
pipelines, and the shipped ``mgldvsr-small`` member: its quality on Vid4 crops and `vsrq upscale`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.conftest import smooth_frames, write_clip
from vsrq.cli import main
from vsrq.data.frames import list_frames, read_frame
from vsrq.errors import VsrqError
from vsrq.models.catalog import build_model, load_model
from vsrq.models.mgldvsr import build_mgldvsr
from vsrq.models.mgldvsr.pipeline import LatentUpscaler, ping_pong, run_chunk
from vsrq.models.mgldvsr.sampler import (
    SamplerConfig,
    TemporalGuide,
    adain_color_fix,
    gaussian_weights,
    occlusion_masks,
    respaced_betas,
    respaced_timesteps,
    sample_chunk,
    sd_alphas_cumprod,
    tile_starts,
    tiled,
)
from vsrq.models.mgldvsr.small import SmallConfig, SmallMGLDVSR, score_crops, vid4_crops


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (the zero-initialized output layers and blend alphas too), so outputs depend on them."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.3)
    return model.eval()


# ---- schedule and respacing -------------------------------------------------------------------


def test_sd_schedule_matches_its_closed_form():
    a = sd_alphas_cumprod()
    prod = 1.0
    for t in range(1000):
        beta = (math.sqrt(0.00085) + t / 999 * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2
        prod *= 1 - beta
        if t in (0, 1, 250, 500, 999):
            assert a[t].item() == pytest.approx(prod, rel=1e-12)
    assert a[999].item() == pytest.approx(0.0047, abs=5e-5)  # SD's well-known final alpha-bar


def test_respacing_keeps_50_timesteps_and_their_alphas():
    ts = respaced_timesteps(50)
    assert len(ts) == 50 and ts[0] == 0 and ts[-1] == 999 and bool((ts.diff() > 0).all())
    assert ts[:4].tolist() == [0, 20, 41, 61]  # round(i * 999 / 49), as guided diffusion's space_timesteps
    a = sd_alphas_cumprod()
    betas = respaced_betas(ts, a)
    assert torch.allclose(torch.cumprod(1 - betas, 0), a[ts], rtol=1e-12, atol=0)
    assert respaced_timesteps(4, 250).tolist() == [0, 83, 167, 250]
    with pytest.raises(VsrqError):
        respaced_timesteps(0)
    with pytest.raises(VsrqError):
        SamplerConfig(steps=300, start_t=250)


def test_ddpm_step_noise_matches_the_respaced_posterior_variance():
    """eta=1 draws x_s with the variance of q(x_s | x_t, x0) under the respaced betas."""
    a = sd_alphas_cumprod()
    ts = respaced_timesteps(50)
    betas = respaced_betas(ts, a)
    kept = a[ts]
    cfg = SamplerConfig(steps=2, start_t=ts[1].item(), eta=1.0, guidance_scale=0.0)
    x0 = torch.zeros(1, 1, 64, 64)
    # a denoiser that always predicts eps = 0 makes x0_hat = x_t / sqrt(a_t); the step's spread is its noise
    sigma2 = ((1 - kept[0]) / (1 - kept[1]) * betas[1]).item()
    draws = torch.stack([sample_chunk(lambda x, t, c: torch.zeros_like(x), x0, x0, cfg, s) for s in range(40)])
    start_std = math.sqrt(1 - kept[1].item())
    x_t_part = math.sqrt(kept[0].item()) / math.sqrt(kept[1].item()) * start_std
    expected = math.sqrt(x_t_part**2 + sigma2) / math.sqrt(kept[0].item())
    assert draws.std().item() == pytest.approx(expected, rel=0.02)


# ---- tiles, chunks, colour ----------------------------------------------------------------------


def test_gaussian_tile_weights_blend_to_exact_averages():
    w = gaussian_weights(8, 12)
    assert w.shape == (8, 12) and torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    assert tile_starts(40, 16, 4) == [0, 12, 24] and tile_starts(16, 16, 4) == [0]
    # the normalizer is the weights' sum over tiles: a pointwise denoiser comes out exactly, seams and all
    pointwise = tiled(lambda x, t, c: 2 * x + c, tile=16, overlap=4)
    x, c = torch.randn(2, 3, 40, 44), torch.randn(2, 3, 40, 44)
    assert torch.allclose(pointwise(x, torch.tensor(0), c), 2 * x + c, atol=1e-6)


def test_a_tile_covering_the_canvas_equals_untiled_inference():
    model = _randomized(SmallMGLDVSR())
    x, c = torch.randn(5, 48, 16, 16), torch.randn(5, 48, 16, 16)
    t = torch.tensor(100)
    with torch.no_grad():
        assert torch.equal(tiled(model.predict, 16, 4)(x, t, c), model.predict(x, t, c))
        blended = tiled(model.predict, 8, 4)(x, t, c)  # real tiles: close to whole-canvas inference, not equal
    assert blended.shape == x.shape and not torch.equal(blended, model.predict(x, t, c))


def test_chunks_pad_by_ping_pong_and_keep_their_own_frames():
    assert ping_pong(5, 5) == [0, 1, 2, 3, 4]
    assert ping_pong(2, 5) == [0, 1, 0, 1, 0]
    assert ping_pong(3, 5) == [0, 1, 2, 1, 0]
    assert ping_pong(1, 5) == [0, 0, 0, 0, 0]

    class Echo:
        num_frames = 5

        def upscale(self, lr: torch.Tensor, seed: int) -> torch.Tensor:
            return lr.repeat_interleave(4, -1).repeat_interleave(4, -2)

    lr = torch.rand(2, 3, 4, 4)
    assert torch.equal(run_chunk(Echo(), lr, 0), lr.repeat_interleave(4, -1).repeat_interleave(4, -2))
    with pytest.raises(VsrqError):
        run_chunk(Echo(), torch.rand(6, 3, 4, 4), 0)


def test_adain_colour_fix_closed_form():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 16, 16, generator=g)
    x = torch.rand(2, 3, 16, 16, generator=g) * 3 + 1
    out = adain_color_fix(x, ref)
    mx, vx = x.mean((-2, -1), keepdim=True), x.var((-2, -1), unbiased=False, keepdim=True)
    mr, vr = ref.mean((-2, -1), keepdim=True), ref.var((-2, -1), unbiased=False, keepdim=True)
    assert torch.allclose(out, (x - mx) / (vx + 1e-5).sqrt() * (vr + 1e-5).sqrt() + mr, atol=1e-6)
    assert torch.allclose(out.mean((-2, -1)), ref.mean((-2, -1)), atol=1e-6)
    # an affine copy of the reference is mapped back onto it
    assert torch.allclose(adain_color_fix(2.5 * ref + 0.3, ref), ref, atol=2e-3)


# ---- flow guidance --------------------------------------------------------------------------------


def test_occlusion_mask_marks_the_inconsistent_square():
    h, w = 24, 24
    fwd = torch.zeros(1, 2, h, w)
    fwd[:, 0] = 2.0  # every pixel moves 2 px right ...
    bwd = -fwd.clone()  # ... and back, except in a square where the backward flow is lost
    bwd[:, :, 10:14, 10:14] = 0.0
    valid_f, valid_b = occlusion_masks(fwd, bwd, alpha=0.01, beta=0.5)
    inner = (slice(None), 0, slice(4, 20), slice(4, 20))  # away from the borders, where warps leave the frame
    expect_b = torch.ones(h, w)
    expect_b[10:14, 10:14] = 0  # its own backward vector does not undo the forward one
    expect_f = torch.ones(h, w)
    expect_f[10:14, 8:12] = 0  # forward vectors landing on the square meet the lost backward flow
    assert torch.equal(valid_b[inner][0], expect_b[4:20, 4:20])
    assert torch.equal(valid_f[inner][0], expect_f[4:20, 4:20])


def test_guidance_step_pulls_frames_together_along_the_flow():
    frames = torch.from_numpy(smooth_frames(3, 32, 32)).float().div(255).permute(0, 3, 1, 2)
    zero_flow = lambda ref, supp: torch.zeros(ref.shape[0], 2, *ref.shape[-2:])  # noqa: E731
    guide = TemporalGuide.from_frames(frames, zero_flow, (16, 16), SamplerConfig())
    assert bool(guide.valid_prev.all()) and bool(guide.valid_next.all())
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert guide.loss(guide.step(x, 50.0)).item() < guide.loss(x).item()


# ---- determinism of both pipelines ----------------------------------------------------------------


def test_small_member_sampling_is_seeded_and_deterministic():
    model = _randomized(SmallMGLDVSR(SmallConfig()))
    lr = torch.rand(5, 3, 10, 18, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b, c = (model.upscale(lr, seed) for seed in (3, 3, 4))
    assert a.shape == (5, 3, 40, 72)  # 10x18 is padded to the UNet's multiple (12x20) and cropped back
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_latent_pipeline_runs_the_full_architecture_with_guidance():
    """The `--model mgldvsr` path on the tiny preset: VAE, DDPM with flow guidance, CFW decoder, AdaIN."""
    model = _randomized(build_mgldvsr("tiny"))
    flows = []

    def flow(ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        flows.append(ref.shape)
        return torch.full((ref.shape[0], 2, *ref.shape[-2:]), 0.5)

    cfg = SamplerConfig(steps=3, tile=8, tile_overlap=4)
    upscaler = LatentUpscaler(model, torch.zeros(1, 77, 32), flow, cfg)
    lr = torch.rand(2, 3, 24, 16, generator=torch.Generator().manual_seed(0))
    out, again = upscaler.upscale(lr, 0), upscaler.upscale(lr, 0)
    assert out.shape == (2, 3, 96, 64) and torch.equal(out, again)
    assert flows and 0 <= out.min() and out.max() <= 1


# ---- the shipped member ---------------------------------------------------------------------------


def test_small_member_beats_bicubic_on_vid4_crops(vid4_root: Path):
    model = load_model("mgldvsr-small").model
    scores = score_crops(model, vid4_crops(vid4_root))
    gain = np.mean([s["model"] - s["bicubic"] for s in scores.values()])
    assert gain >= 0.3, scores


def test_st_member_beats_bicubic_by_half_a_db_with_a_sampler_chosen_off_vid4(vid4_root: Path):
    loaded = load_model("mgldvsr-st")
    model = loaded.model
    unet = model.denoiser.config.unet
    assert unet.attention_levels == (0, 1) and isinstance(model.context, torch.nn.Parameter)
    with safe_open(loaded.weights_path, framework="pt") as f:
        facts = json.loads(f.metadata()["training"])
    assert "carphone_pristine.mp4" not in facts["data"] and facts["held_out_frames"] > 0
    assert facts["sampler_choice"]["chosen_steps"] == model.config.sampler.steps  # chosen before Vid4 was scored
    assert build_model(loaded.spec).config == model.config  # a checkpoint's spec rebuilds this member, sampler too
    scores = score_crops(model, vid4_crops(vid4_root))
    gain = np.mean([s["model"] - s["bicubic"] for s in scores.values()])
    assert gain >= 0.5, scores


def test_small_config_round_trips_through_json():
    config = SmallConfig(attention_levels=(0, 1), context_tokens=8, channel_mult=(1, 2, 2))
    assert SmallConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(VsrqError, match="attention_levels"):
        SmallConfig(attention_levels=(3,))


def test_cli_upscale_with_the_small_member_is_seeded(tmp_path: Path):
    src = write_clip(tmp_path / "lr", smooth_frames(7, 20, 24))
    outs = []
    for name, seed in (("a", "1"), ("b", "1")):
        assert main(["upscale", str(src), str(tmp_path / name), "--model", "mgldvsr-small", "--seed", seed]) == 0
        outs.append([read_frame(p) for p in list_frames(tmp_path / name)])
    assert len(outs[0]) == 7 and outs[0][0].shape == (80, 96, 3)
    assert all(np.array_equal(x, y) for x, y in zip(*outs))


def test_info_counts_the_small_member(capsys: pytest.CaptureFixture):
    assert main(["info", "mgldvsr-small", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == sum(p.numel() for p in SmallMGLDVSR().parameters())
    assert set(report["parts"]) == {"unet", "structcond"}
