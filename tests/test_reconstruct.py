"""Block reconstruction (the shared primitive) and Q-Diffusion, its recipe, on the tiny MGLD-VSR denoiser."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import vsrq
from tests.test_hosts import QUIET, captured, denoiser_probe, tiny_animesr, tiny_denoiser
from tests.test_quant_layers import _synthetic_calib
from vsrq import checkpoint
from vsrq.config import QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.base import CalibContext
from vsrq.methods.reconstruct import ReconstructionConfig, reconstruction_units
from vsrq.models.host import HOSTS
from vsrq.quant.qmodel import QuantizedModel


@pytest.fixture(scope="module")
def qdiffusion() -> QuantizedModel:
    return vsrq.quantize(tiny_denoiser(), QuantConfig(method="qdiffusion", wbits=4, abits=6, options={"iters": 25}),
                         captured(2), **QUIET)


def test_units_are_the_hosts_blocks_and_every_layer_is_in_exactly_one(qdiffusion):
    layers = qdiffusion.layers()
    host = HOSTS["mgldvsr"]
    ctx = CalibContext(None, qdiffusion.base, layers, None, QuantConfig(), host)
    units = reconstruction_units(ctx)
    assert units and set(units) <= set(host.blocks(qdiffusion.base))
    assert "model.diffusion_model.input_blocks.0" not in units  # its conv is kept float: nothing to reconstruct
    for name in layers:
        assert sum(name.startswith(u + ".") for u in units) == 1, name


def test_a_recurrent_host_reconstructs_its_residual_blocks_and_every_other_layer_alone():
    model = tiny_animesr()
    qm = vsrq.quantize(model, QuantConfig(method="qdiffusion", wbits=6, abits=6, options={"iters": 2}),
                       _synthetic_calib(2, 3, size=32), **QUIET)
    units = qm.manifest["notes"]["reconstruction"]["units"]
    blocks = set(HOSTS["animesr"].blocks(model))
    assert blocks and blocks <= set(units)  # the residual blocks the feature loss compares
    for name in qm.layers():
        owners = [u for u in units if name == u or name.startswith(u + ".")]
        assert len(owners) == 1, (name, owners)
        assert owners[0] in blocks or owners[0] == name


def test_reconstruction_lowers_the_blocks_output_error(qdiffusion):
    units = qdiffusion.manifest["notes"]["reconstruction"]["units"]
    assert len(units) >= 5
    for name, f in units.items():
        assert f["mse_after"] <= f["mse_before"], (name, f)  # a unit that got worse keeps its start
    before = sum(f["mse_before"] for f in units.values())
    after = sum(f["mse_after"] for f in units.values())
    assert after < 0.98 * before, (before, after)  # ranges only (no AdaRound): a few per cent on OMSE starts


def test_qdiffusion_splits_the_shortcut_and_reloads_bit_identically(qdiffusion, tmp_path: Path):
    assert qdiffusion.manifest["config"]["split_concat"] is True
    assert any(".skip_connection.parts." in n for n in qdiffusion.layers())
    args = denoiser_probe()
    path = checkpoint.save(qdiffusion, tmp_path / "q.vsrq")
    frozen = copy.deepcopy(qdiffusion).freeze()
    assert all(layer.weight is None for layer in frozen.layers().values())
    with torch.no_grad():
        out = qdiffusion(*args)
        assert torch.equal(checkpoint.load(path)(*args), out) and torch.equal(frozen(*args), out)


def test_same_seed_same_reconstruction():
    runs = [vsrq.quantize(tiny_animesr(), QuantConfig(method="qdiffusion", wbits=4, abits=6, options={"iters": 3}),
                          _synthetic_calib(1, 3), **QUIET) for _ in range(2)]
    a, b = (dict(r.base.state_dict()) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.fault
def test_bad_reconstruction_settings_are_one_error():
    with pytest.raises(VsrqError, match="block reconstruction"):
        ReconstructionConfig(iters=-1)
