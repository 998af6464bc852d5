"""Channel-stream equalization: exact in float, and the closed forms of its two extremes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import smooth_frames
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq import checkpoint
from vsrq.config import QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import equalize_model, quantize_model
from vsrq.models.animesr import AnimeSR, AnimeSRHost
from vsrq.models.basicvsr import BasicVSR, BasicVSRHost
from vsrq.models.catalog import loaded_module
from vsrq.quant.equalize import equalize_streams, stream_ranges
from vsrq.quant.split import split_concat_inputs

QUIET = dict(log=lambda s: None, show_progress=False)


def _model(bidirectional: bool = True) -> BasicVSR:
    torch.manual_seed(3)
    model = BasicVSR(num_feat=8, num_block=2, bidirectional=bidirectional).eval()
    with torch.no_grad():  # channels of very different sizes, as in a trained stream
        for name, p in model.named_parameters():
            if "trunk" in name and name.endswith("conv2.weight"):
                p.mul_(torch.logspace(-1, 1, p.shape[0]).view(-1, 1, 1, 1))
    return model


def _clip() -> torch.Tensor:
    return torch.from_numpy(smooth_frames(4, 64, 64, seed=7)).float().div(255).permute(0, 3, 1, 2)[None]


def _ranges(model: BasicVSR) -> list[torch.Tensor]:
    host = BasicVSRHost()
    return stream_ranges(model, host.channel_streams(model), lambda: model(_clip()))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_equalized_streams_leave_the_float_network_unchanged(bidirectional: bool):
    model = _model(bidirectional)
    with torch.no_grad():
        before = model(_clip())
    weight = model.forward_trunk.main[2][0].conv1.weight.clone()
    facts = equalize_model(BasicVSRHost(), model, _synthetic_calib(2, 3), 0.5)
    assert facts["streams"] == (2 if bidirectional else 1) and facts["scales"][0] < 1 < facts["scales"][1]
    assert not torch.equal(weight, model.forward_trunk.main[2][0].conv1.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(_clip()), before, atol=2e-5, rtol=1e-4)


def test_animesrs_three_scales_share_one_stream_and_stay_exact():
    torch.manual_seed(5)
    model = AnimeSR(num_feat=8, num_block=(3, 2, 2)).eval()  # every coarser scale feeds the finer ones
    host = AnimeSRHost()
    with torch.no_grad():
        before = model(_clip())
    ranges = stream_ranges(model, host.channel_streams(model), lambda: model(_clip()))
    scales = equalize_streams(model, host.channel_streams(model), ranges, 1.0)
    assert float(scales[0].max() / scales[0].min()) > 1.5  # a real rescaling, not the identity
    with torch.no_grad():
        torch.testing.assert_close(model(_clip()), before, atol=2e-5, rtol=1e-4)


def test_alpha_one_gives_every_stream_channel_the_same_range():
    """s = a / geomean(a): every channel's range becomes the geometric mean of the ranges before."""
    model = _model()
    host = BasicVSRHost()
    before = _ranges(model)
    assert all(float(r.max() / r.min()) > 5 for r in before)
    equalize_streams(model, host.channel_streams(model), before, 1.0)
    for old, new in zip(before, _ranges(model)):
        torch.testing.assert_close(new, torch.full_like(new, float(old.log().mean().exp())), rtol=1e-4, atol=0)


def test_alpha_zero_gives_every_stream_channel_the_same_largest_reader_weight():
    model = _model()
    streams = BasicVSRHost().channel_streams(model)
    equalize_streams(model, streams, _ranges(model), 0.0)
    modules = dict(model.named_modules())
    for stream in streams:
        cols = torch.stack([modules[n].weight.detach()[:, f:f + stream.channels].abs().amax(dim=(0, 2, 3))
                            for n, f in stream.readers]).amax(0)
        torch.testing.assert_close(cols, torch.full_like(cols, float(cols.log().mean().exp())), rtol=1e-5, atol=0)


def test_bad_strengths_and_split_models_are_refused():
    for alpha in (1.5, -0.1, True, "0.5"):
        with pytest.raises(VsrqError, match="equalize"):
            QuantConfig(equalize=alpha)
    assert QuantConfig.from_json(QuantConfig(equalize=0.75).to_json()).equalize == 0.75
    model = _model()
    host = BasicVSRHost()
    split_concat_inputs(model, host.concat_inputs(model))
    with pytest.raises(VsrqError, match="not an ungrouped Conv2d"):
        _ranges(model)
    with pytest.raises(VsrqError, match="alpha"):
        equalize_streams(_model(), host.channel_streams(_model()), _ranges(_model()), 2.0)


def test_a_family_without_streams_refuses_equalization_before_any_work(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(AnimeSRHost, "channel_streams", lambda self, model: ())
    loaded = loaded_module(AnimeSR(num_feat=8, num_block=(1, 1, 1)).eval(), name="tiny-animesr")
    with pytest.raises(VsrqError, match="declares none"):
        quantize_model(loaded, QuantConfig(method="minmax", wbits=8, abits=8, equalize=0.5), None, **QUIET)


def test_an_equalized_checkpoint_records_it_and_reloads_to_the_same_outputs(tmp_path: Path):
    config = QuantConfig(method="tarq", wbits=4, abits=4, equalize=0.75,
                         options={"epochs": 1, "batch": 2, "round_epochs": 1, "fg_vba": False})
    qm = quantize_model(_loaded(), config, _synthetic_calib(2, 3), **QUIET)
    assert qm.manifest["config"]["equalize"] == 0.75 and qm.manifest["notes"]["equalize"]["alpha"] == 0.75
    path = checkpoint.save(qm, tmp_path / "eq.vsrq")
    with torch.no_grad():
        assert torch.equal(checkpoint.load(path)(_clip()), qm(_clip()))


def test_the_cli_refuses_a_bad_strength_in_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture):
    from vsrq.cli import main

    out = tmp_path / "q.vsrq"
    assert main(["quantize", "--model", "basicvsr-vimeo-bi", "--equalize", "1.5", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "equalize must be null (off) or a strength alpha in [0, 1], got 1.5" in err[0]
    assert not out.exists()
