"""MGLD-VSR's architecture: full-size counts on the meta device, the official key layout, tiny forwards,
checkpoint loading, and `vsrq info`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from vsrq.cli import main
from vsrq.errors import VsrqError
from vsrq.models.catalog import load_model
from vsrq.models.inventory import LayerCost
from vsrq.models.mgldvsr import (
    PRESETS,
    MGLDVSRConfig,
    build_mgldvsr,
    load_mgldvsr_unet,
    load_video_vae,
)
from vsrq.models.weights import WEIGHTS_ENV
from vsrq.quant.accounting import compressed_cost


def _millions(*modules: nn.Module) -> float:
    return round(sum(p.numel() for m in modules for p in m.parameters()) / 1e6, 1)


@pytest.fixture(scope="module")
def full() -> nn.Module:
    with torch.device("meta"):
        return build_mgldvsr("full")


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    """The tiny preset with every weight random (no zero-initialized output layers, blend alphas away from 0)."""
    torch.manual_seed(0)
    model = build_mgldvsr("tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.3)
    return model


def test_full_size_parameter_counts_match_the_issue(full):
    # issue 7: UNet 935.3M (QuantVSR Table 2: 935M), struct-cond 52.5M, VAE encoder 34.2M, decoder 80.8M
    assert _millions(full.denoiser.unet) == 935.3
    assert _millions(full.denoiser.structcond_stage_model) == 52.5
    assert _millions(full.vae.encoder, full.vae.quant_conv) == 34.2
    assert _millions(full.vae.decoder, full.vae.post_quant_conv) == 80.8


# Read off the official classes (InflatedUNetModelDualcondV2, InflatedEncoderUNetModelWT, Encoder,
# VideoDecoder_Mix) built with the released yaml values.
OFFICIAL_KEYS = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.0.spade.mlp_gamma.weight": (320, 128, 3, 3),
    "model.diffusion_model.input_blocks.1.0.spade.param_free_norm.weight": (320,),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
    "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "model.diffusion_model.middle_block.1.temporal_conv.weight": (1280, 1280, 3, 1, 1),
    "model.diffusion_model.middle_block.3.temporal_attn.to_out.0.weight": (1280, 1280),
    "model.diffusion_model.middle_block.3.temporal_alpha": (1,),
    "model.diffusion_model.output_blocks.0.0.skip_connection.weight": (1280, 2560, 1, 1),
    "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "structcond_stage_model.input_blocks.1.1.qkv.weight": (768, 256, 1),
    "structcond_stage_model.fea_tran.3.in_layers.2.weight": (256, 512, 3, 3),
    "encoder.down.2.block.0.nin_shortcut.weight": (512, 256, 1, 1),
    "decoder.temporal_mixing.temporal_alpha": (1,),
    "decoder.up.3.temporal_mixing.0.temporal_conv.weight": (512, 512, 3, 1, 1),
    "decoder.fusion_layer_2.encode_enc_1.conv1.weight": (512, 1024, 3, 3),
    "decoder.fusion_layer_1.encode_enc_2.1.conv5.weight": (256, 384, 3, 3),
    "quant_conv.weight": (8, 8, 1, 1),
    "post_quant_conv.weight": (4, 4, 1, 1),
}


def test_official_checkpoint_key_layout(full):
    unet_keys = {k: tuple(v.shape) for k, v in full.denoiser.state_dict().items()}
    vae_keys = {k: tuple(v.shape) for k, v in full.vae.state_dict().items()}
    assert (len(unet_keys), len(vae_keys)) == (1076, 363)  # the official networks' key counts
    assert all(k.startswith(("model.diffusion_model.", "structcond_stage_model.")) for k in unet_keys)
    for key, shape in OFFICIAL_KEYS.items():
        assert {**unet_keys, **vae_keys}[key] == shape, key


@pytest.mark.fault
def test_presets_round_trip_and_bad_widths_are_refused():
    for config in PRESETS.values():
        assert MGLDVSRConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(VsrqError, match="multiple of 32"):
        MGLDVSRConfig.from_dict({"unet": {"model_channels": 48}})


def test_tiny_forward_shapes(tiny):
    lq = torch.randn(4, 4, 8, 8)  # two 2-frame clips of 8x8 latents
    with torch.inference_mode():
        struct = tiny.denoiser.structcond_stage_model(lq, torch.full((4,), 999))
        eps = tiny.denoiser(torch.randn_like(lq), torch.full((4,), 500), torch.randn(1, 77, 32), lq)
        encoding = tiny.vae.encode(torch.rand(4, 3, 64, 64) * 2 - 1)
        frames = tiny.vae.decode(encoding.mean, encoding.features)
    assert {w: tuple(f.shape) for w, f in struct.items()} == {w: (4, 32, w, w) for w in (8, 4, 2, 1)}
    assert eps.shape == lq.shape and torch.isfinite(eps).all()
    assert encoding.mean.shape == (4, 4, 8, 8)
    assert [tuple(f.shape) for f in encoding.features] == [(4, 32, 32, 32), (4, 64, 16, 16)]
    assert frames.shape == (4, 3, 64, 64)
    with pytest.raises(VsrqError, match="2-frame clips"):
        tiny.denoiser(lq[:3], torch.zeros(3), torch.zeros(1, 77, 32), lq[:3])


def test_temporal_layers_mix_frames_within_a_clip_only(tiny):
    lq = torch.randn(4, 4, 8, 8)
    x = torch.randn_like(lq)
    t, ctx = torch.full((4,), 300), torch.randn(1, 77, 32)
    nudged = x.clone()
    nudged[1] += 1.0  # the second frame of the first clip
    with torch.inference_mode():
        base, moved = tiny.denoiser(x, t, ctx, lq), tiny.denoiser(nudged, t, ctx, lq)
    assert (base[0] - moved[0]).abs().max() > 1e-4  # its clip neighbour sees it (temporal conv + attention)
    torch.testing.assert_close(base[2:], moved[2:])  # the other clip does not


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def test_loaders_take_their_prefixes_strictly(tmp_path: Path, tiny):
    extras = {"first_stage_model.conv.weight": torch.zeros(1), "betas": torch.zeros(3), "loss.logvar": torch.zeros(1)}
    state = {**tiny.denoiser.state_dict(), **tiny.vae.state_dict(), **extras}  # one Lightning file holding all
    path = _save(tmp_path / "all.ckpt", state)
    denoiser, vae = load_mgldvsr_unet(path, "tiny"), load_video_vae(path, "tiny")
    lq = torch.randn(2, 4, 8, 8)
    with torch.inference_mode():
        args = (torch.randn_like(lq), torch.full((2,), 10), torch.randn(1, 77, 32), lq)
        torch.testing.assert_close(denoiser(*args), tiny.denoiser(*args))
    assert torch.equal(vae.decoder.conv_out.weight, tiny.vae.decoder.conv_out.weight)

    broken = dict(state)
    del broken["model.diffusion_model.out.2.bias"]
    broken["structcond_stage_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(VsrqError, match=r"missing: model\.diffusion_model\.out\.2\.bias; unexpected: "
                                        r"structcond_stage_model\.extra\.weight"):
        load_mgldvsr_unet(_save(tmp_path / "broken.ckpt", broken), "tiny")
    with pytest.raises(VsrqError, match=r"missing: encoder\.conv_in\.weight"):  # full size: fails before any weight
        load_video_vae(_save(tmp_path / "unet_only.ckpt", tiny.denoiser.state_dict()))
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, tmp_path / "basicsr.pth")
    with pytest.raises(VsrqError, match="not a Lightning checkpoint"):
        load_mgldvsr_unet(tmp_path / "basicsr.pth")


def test_named_mgldvsr_without_weights_says_where_to_put_them(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(VsrqError, match=rf"no MGLD-VSR weights.*mgldvsr_unet\.ckpt.*{WEIGHTS_ENV}"):
        load_model("mgldvsr")
    monkeypatch.delenv(WEIGHTS_ENV)
    with pytest.raises(VsrqError, match=f"{WEIGHTS_ENV} is not set"):
        load_model("mgldvsr")


def test_info_full_size_json_matches_quantvsr_table2(capsys):
    assert main(["info", "mgldvsr", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    unet = report["parts"]["unet"]
    assert report["ops_shape"] == [5, 4, 64, 64]
    assert round(unet["params"] / 1e6, 1) == 935.3
    assert round(unet["ops"] / 1e9) == 1881  # QuantVSR Table 2: 1,881 G (Conv/Linear MACs + bias additions)
    assert unet["attention_macs"]["qk"] == unet["attention_macs"]["av"] > 0  # counted apart, not in ops
    assert set(unet["macs_by_type"]) == {"Conv2d", "Conv3d", "Linear"}
    assert [round(report["parts"][p]["params"] / 1e6, 1) for p in ("structcond", "vae_encoder", "vae_decoder")] == [
        52.5, 34.2, 80.8]


def test_table2_accounting_at_full_size_matches_the_paper_within_3_percent(capsys):
    """QuantVSR Table 2 from the meta-device UNet: the per-rank sums measured on the original code, and the
    published params/ops at W8A8 / W6A6 / W4A4 within 3% with a uniform rank-22 branch."""
    assert main(["info", "mgldvsr", "--table2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quantized_layers"] == 351 and len(report["float_layers"]) == 3
    assert report["sum_m_plus_n"] == 1_226_560 and report["sum_positions_m_plus_n_g"] == pytest.approx(4.4617, abs=1e-4)
    for row in report["rows"]:
        assert abs(row["params_dev"]) < 0.03 and abs(row["ops_dev"]) < 0.03, row
        # the checkpoint sized on the meta device: 4 bytes per FP32-equivalent parameter of Table 2, plus the
        # per-channel scales and rotation signs (under 1%); the rest of the model (struct-cond encoder 52.5 M,
        # VAE 34.2 M + 80.8 M parameters) stays float32
        assert 1.0 < row["unet_file_mb"] / (4 * row["params_m"]) < 1.01, row
        assert row["model_file_mb"] - row["unet_file_mb"] == pytest.approx(4 * (52.5 + 34.2 + 80.8), abs=1.0)
    # the same sums by hand: uniform rank r adds r * 1,226,560 params and r * 4.4617 G MACs to every bit-width
    assert main(["info", "mgldvsr", "--table2", "30", "--json"]) == 0
    wider = json.loads(capsys.readouterr().out)
    for a, b in zip(report["rows"], wider["rows"]):
        assert b["params_m"] - a["params_m"] == pytest.approx(8 * 1.22656, abs=0.02)
        assert b["ops_g"] - a["ops_g"] == pytest.approx(8 * 4.4617, abs=0.02)


def test_member_ranks_carry_to_the_full_unet_by_layer_role():
    from vsrq.models.info import layer_role, scaled_ranks, table2

    unet = "denoiser.model.diffusion_model."
    member = {unet + "input_blocks.1.1.transformer_blocks.0.attn1.to_q": 40,
              unet + "input_blocks.4.1.transformer_blocks.0.attn1.to_q": 56,
              unet + "output_blocks.2.0.skip_connection.parts.1": 16}
    assert layer_role(next(iter(member))) == "input_blocks.transformer_blocks.attn1.to_q"
    assert layer_role(unet + "output_blocks.2.0.skip_connection.parts.1") == "output_blocks.skip_connection"
    full = ["model.diffusion_model.input_blocks.7.1.transformer_blocks.0.attn1.to_q",
            "model.diffusion_model.output_blocks.9.0.skip_connection", "model.diffusion_model.middle_block.0.in_layers.2"]
    # role means 48 and 16; the unmatched layer takes the overall mean 37.3, snapped to 40
    assert scaled_ranks(member, full) == dict(zip(full, (48, 16, 40)))
    # a member with one rank everywhere gives exactly the uniform accounting
    uniform = table2("mgldvsr", rank=24)
    carried = table2("mgldvsr", member_ranks={unet + "input_blocks.1.0.in_layers.2": 24})
    assert carried["rows"] == uniform["rows"] and carried["mean_rank"] == 24


def test_info_of_a_checkpoint_carries_its_ranks_into_table2(tmp_path: Path, capsys):
    import vsrq
    from tests.test_hosts import QUIET, captured, tiny_denoiser
    from vsrq.config import QuantConfig

    qm = vsrq.quantize(tiny_denoiser(), QuantConfig(method="quantvsr", wbits=4, abits=4,
                                                    options={"refine": False, "lba": False}), captured(2), **QUIET)
    path = vsrq.save(qm, tmp_path / "q.vsrq")
    assert main(["info", str(path), "--table2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "mgldvsr" and "carried over by layer role" in report["profile"]
    assert 16 <= report["mean_rank"] <= 64 and len(report["rows"]) == 3
    minmax = vsrq.save(vsrq.quantize(tiny_denoiser(), QuantConfig(method="minmax"), captured(2), **QUIET),
                       tmp_path / "m.vsrq")
    assert main(["info", str(minmax), "--table2"]) == 2
    assert "carries the branch ranks" in capsys.readouterr().err


def test_compressed_cost_by_hand():
    """One 3x4 layer at 10 positions with a bias, quantized at 4 bits with a rank-2 branch, and a float 2x2 one."""
    costs = {"q": LayerCost(3, 4, 10, 3), "f": LayerCost(2, 2, 5, 0)}
    params, ops = compressed_cost(costs, other_params=7, bits=4, ranks={"q": 2, "f": 9}, keep_float={"f"})
    assert params * 1e6 == pytest.approx(7 + 12 / 8 + 3 + 2 * 7 + 4)
    assert ops * 1e9 == pytest.approx((120 + 30) / 8 + 2 * 10 * 7 + 20)


def test_info_keys_and_other_models(capsys):
    assert main(["info", "mgldvsr-tiny", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "model.diffusion_model.input_blocks.0.0.weight 32x4x3x3" in lines
    assert "decoder.temporal_mixing.temporal_alpha 1" in lines
    assert all(len(line.split(" ")) == 2 for line in lines)
    assert main(["info", "basicvsr-vimeo-bi"]) == 0
    out = capsys.readouterr().out
    assert "parameters 6.3 M" in out and "operations at 2x3x64x64" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "mgldvsr-tiny", "--ops-shape", "2x3x16x16"], "latents are (frames x 4"),
        (["info", "mgldvsr-tiny", "--ops-shape", "5x4"], "--ops-shape expects"),
        (["info", "stable-diffusion"], "unknown model 'stable-diffusion'"),
    ],
)
@pytest.mark.fault
def test_info_errors_are_one_line(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vsrq: error:") and message in err and "\n" not in err


def test_leave_one_clip_out_picks_on_the_other_clips_only():
    from vsrq.models.mgldvsr.small import leave_one_clip_out

    gains = {"a": {"x": 1.0, "y": 0.0, "z": 0.0},   # best overall only thanks to clip x
             "b": {"x": 0.0, "y": 0.2, "z": 0.2},
             "c": {"x": 0.0, "y": 0.2, "z": 0.2}}   # ties with b: the first listed wins
    folds = leave_one_clip_out(gains)
    assert {k: f["pick"] for k, f in folds.items()} == {"x": "b", "y": "a", "z": "a"}
    assert folds["x"]["selection_gain"] == pytest.approx(0.2) and folds["x"]["held_out_gain"] == 0.0
    assert folds["y"]["selection_gain"] == pytest.approx(0.5) and folds["y"]["held_out_gain"] == 0.0
    with pytest.raises(VsrqError, match="same two or more clips"):
        leave_one_clip_out({"a": {"x": 1.0, "y": 0.0}, "b": {"x": 1.0}})
    with pytest.raises(VsrqError):
        leave_one_clip_out({"a": {"x": 1.0}})
