"""ONNX export and onnxruntime execution on a small model: agreement, QDQ structure, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import smooth_frames, write_clip
from tests.test_quant_layers import _loaded, _synthetic_calib
from vsrq.cli import main
from vsrq.config import LayerRule, QuantConfig
from vsrq.errors import VsrqError
from vsrq.methods.pipeline import quantize_model
from vsrq.metrics.psnr_ssim import psnr, tensor_to_uint8

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from vsrq import checkpoint  # noqa: E402
from vsrq.models.basicvsr import tail_stripes
from vsrq.runtime.onnx_export import IR_VERSION, calibrate_outputs, export_basicvsr  # noqa: E402
from vsrq.runtime.ort import OrtBasicVSR  # noqa: E402

QUIET = dict(log=lambda s: None, show_progress=False)


@pytest.fixture(scope="module")
def w8a8():
    torch.manual_seed(0)
    calib = _synthetic_calib(2, 3)
    qm = quantize_model(_loaded(num_feat=16), QuantConfig(method="minmax", wbits=8, abits=8), calib, **QUIET)
    return qm, calib


def _clip(seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(smooth_frames(4, 64, 64, seed=seed)).float().div(255).permute(0, 3, 1, 2)[None]


def test_ort_agrees_with_the_simulation(w8a8, tmp_path: Path):
    qm, calib = w8a8
    export_basicvsr(qm, tmp_path / "m.onnx", (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    x = _clip()
    ort_out = tensor_to_uint8(OrtBasicVSR(tmp_path / "m.onnx", threads=1)(x, range(4))[0])
    with torch.no_grad():
        sim = tensor_to_uint8(qm(x)[0])
    assert min(psnr(a, b) for a, b in zip(ort_out, sim)) > 45  # only 8-bit output rounding differs
    part = tensor_to_uint8(OrtBasicVSR(tmp_path / "m.onnx", threads=1)(x, range(1, 3))[0])
    assert np.array_equal(part, ort_out[1:3])


def test_split_concat_exports_as_one_integer_conv_per_source(tmp_path: Path):
    calib = _synthetic_calib(2, 3)
    cfg = QuantConfig(method="minmax", wbits=8, abits=8, split_concat=True)
    qm = quantize_model(_loaded(num_feat=16), cfg, calib, **QUIET)
    files = export_basicvsr(qm, tmp_path / "m.onnx", (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    weights = {i.name for f in files for i in onnx.load(str(f)).graph.initializer}
    assert {"forward_trunk.main.0.parts.0.weight_q", "forward_trunk.main.0.parts.1.weight_q"} <= weights
    x = _clip()
    ort_out = tensor_to_uint8(OrtBasicVSR(tmp_path / "m.onnx", threads=1)(x, range(4))[0])
    with torch.no_grad():
        sim = tensor_to_uint8(qm(x)[0])
    assert min(psnr(a, b) for a, b in zip(ort_out, sim)) > 45


def test_a_quantized_spynet_runs_on_integer_convs_in_the_flow_graph(tmp_path: Path):
    """The demo's W4A8 setting: SPyNet quantized too (8 bits); its graph carries integer convs, not float ones."""
    calib = _synthetic_calib(2, 3)
    cfg = QuantConfig(method="ema", wbits=4, abits=8, quantize_auxiliary=True,
                      rules=(LayerRule("spynet.*", wbits=8, abits=8),))
    qm = quantize_model(_loaded(num_feat=16), cfg, calib, **QUIET)
    files = export_basicvsr(qm, tmp_path / "m.onnx", (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    flow = next(onnx.load(str(f)) for f in files if "flow" in f.name)
    convs = [n for n in flow.graph.node if n.op_type == "Conv"]  # QDQ form: onnxruntime fuses each into QLinearConv
    assert len(convs) == 30 and all(n.input[1].endswith(".weight_dq") for n in convs)  # 6 levels x 5 convs
    x = _clip()
    ort_out = tensor_to_uint8(OrtBasicVSR(tmp_path / "m.onnx", threads=1)(x, range(4))[0])
    with torch.no_grad():
        sim = tensor_to_uint8(qm(x)[0])
    assert min(psnr(a, b) for a, b in zip(ort_out, sim)) > 40


def test_per_video_bits_with_a_quantized_flow_network_are_refused_in_one_line(tmp_path: Path):
    """FG-VBA picks the bits from the flows, so a flow graph whose bits it would change has no integer path: one
    clear error before anything is written (the same controller with SPyNet float still exports)."""
    from vsrq.quant.controller import VideoBitController

    calib = _synthetic_calib(2, 3)
    for aux in (True, False):
        cfg = QuantConfig(method="ema", wbits=8, abits=8, quantize_auxiliary=aux)
        qm = quantize_model(_loaded(), cfg, calib, **QUIET)
        qm.controller = VideoBitController(0.0, 1.0).attach(qm.base, qm.host)
        target = tmp_path / f"aux{aux}" / "m.onnx"
        target.parent.mkdir()
        if aux:
            with pytest.raises(VsrqError, match="quantized flow network"):
                export_basicvsr(qm, target, (64, 64), calibrate_outputs(qm, calib.clips))
            assert not any(target.parent.iterdir())
        else:
            assert export_basicvsr(qm, target, (64, 64), calibrate_outputs(qm, calib.clips))[0] == target


def test_qdq_structure(w8a8, tmp_path: Path):
    qm, calib = w8a8
    files = export_basicvsr(qm, tmp_path / "m.onnx", (64, 64), calibrate_outputs(qm, calib.clips))
    quantized = set(qm.layers())
    seen = set()
    for f in files:
        model = onnx.load(str(f))
        assert model.ir_version == IR_VERSION
        onnx.checker.check_model(model)
        producers = {o: n for n in model.graph.node for o in n.output}
        inits = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type != "Conv":
                continue
            w = node.input[1]
            if w in inits:  # a float conv: must be SPyNet, never a quantized layer
                assert w.startswith("base.spynet."), w
                continue
            wdq, xdq = producers[w], producers[node.input[0]]
            assert wdq.op_type == "DequantizeLinear" and xdq.op_type == "DequantizeLinear"
            stored = inits[wdq.input[0]].data_type  # int8, or uint8 (zero point 128) where int8 kernels saturate
            assert stored in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and inits[wdq.input[2]].data_type == stored
            assert inits[xdq.input[2]].data_type == onnx.TensorProto.UINT8
            seen.add(wdq.input[0].rsplit(".weight_q", 1)[0])
            if wdq.input[0] == "conv_last.weight_q":  # 3 output channels run padded to 16, then sliced
                assert onnx.numpy_helper.to_array(inits[wdq.input[0]]).shape[0] == 16
                consumers = {i: n for n in model.graph.node for i in n.input}
                q = consumers[node.output[0]]
                dq = consumers[q.output[0]]
                assert consumers[dq.output[0]].op_type == "Slice"
        # each pixel shuffle after an integer conv is channels-last Transpose/Reshape ops between Q/DQ of that
        # conv's output scale (a row Slice between in stripes), so it moves uint8 codes; no DepthToSpace is left
        assert not any(node.op_type == "DepthToSpace" for node in model.graph.node)
        users = {i: n for n in model.graph.node for i in n.input}
        shuffles = [n for n in model.graph.node if n.op_type == "Transpose" and n.name.endswith(".nhwc2")]
        assert len(shuffles) == (2 * tail_stripes((64, 64)) if f == files[0] else 0)
        for node in shuffles:
            before, after = node, node
            for _ in range(2):
                before, after = producers[before.input[0]], users[after.output[0]]
            assert [before.op_type, after.op_type] == ["Transpose", "Transpose"]
            before, after = producers[before.input[0]], users[after.output[0]]
            if before.op_type == "Slice":  # a stripe of the tail: upconv's rows cut before the shuffle
                before = producers[before.input[0]]
            assert before.op_type == "DequantizeLinear" and after.op_type == "QuantizeLinear"
            assert before.input[1:] == after.input[1:]
    assert seen == quantized


@pytest.mark.parametrize("blocks", [2, 4])
def test_channels_last_shuffle_is_pixel_shuffle(blocks: int):
    """The exported shuffle of DCR-ordered channels equals PyTorch's pixel shuffle of the conv's own order."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from vsrq.runtime.onnx_export import _channels_last_shuffle, dcr_order

    x = torch.randn(1, 3 * blocks**2, 5, 7)
    consts: dict[str, np.ndarray] = {}

    def const(name: str, value: np.ndarray) -> str:
        consts[name] = value
        return name

    node = helper.make_node("DepthToSpace", ["x"], ["y"], name="shuffle", blocksize=blocks, mode="CRD")
    chain = _channels_last_shuffle(node, list(x.shape), const)
    graph = helper.make_graph(chain, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info(chain[-1].output[0], TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    graph_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    graph_model.ir_version = IR_VERSION
    session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    dcr = x[:, torch.from_numpy(dcr_order(x.shape[1], blocks))]
    out = session.run(None, {"x": dcr.numpy()})[0]
    assert np.array_equal(out, F.pixel_shuffle(x, blocks).numpy())


@pytest.mark.parametrize("bidirectional", [True, False])
def test_float_export_matches_torch(tmp_path: Path, bidirectional: bool):
    from tests.conftest import tiny_basicvsr

    model = tiny_basicvsr(num_feat=16, bidirectional=bidirectional)
    files = export_basicvsr(model, tmp_path / "fp.onnx", (64, 64))
    assert len(files) == (3 if bidirectional else 2)
    x = _clip(4)
    ort_out = tensor_to_uint8(OrtBasicVSR(tmp_path / "fp.onnx", threads=1)(x, range(4))[0])
    with torch.no_grad():
        ref = tensor_to_uint8(model(x)[0])
    assert min(psnr(a, b) for a, b in zip(ort_out, ref)) > 50


@pytest.mark.fault
def test_a_forward_graph_refuses_another_exports_backward_graph(tmp_path: Path):
    """The graphs of an export are placed forward-last; the forward graph names its companions' SHA-256,
    so a set mixed from two exports (by hand, or a kill between an old and a new run) is refused."""
    import shutil

    model = _loaded(num_feat=16).model
    first = export_basicvsr(model, tmp_path / "a" / "fp.onnx", (64, 64))
    second = export_basicvsr(model, tmp_path / "b" / "fp.onnx", (64, 80))
    assert [p.name for p in first] == ["fp.onnx", "fp.flow.onnx", "fp.backward.onnx"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["fp.backward.onnx", "fp.flow.onnx", "fp.onnx"]
    OrtBasicVSR(first[0])
    for i in (1, 2):
        saved = first[i].read_bytes()
        shutil.copy(second[i], first[i])
        with pytest.raises(VsrqError, match=rf"{first[i].name} is not the graph exported with fp.onnx; export again$"):
            OrtBasicVSR(first[0])
        first[i].write_bytes(saved)
    first[2].unlink()
    with pytest.raises(VsrqError, match=r"fp.backward.onnx: a graph of this export is missing beside fp.onnx$"):
        OrtBasicVSR(first[0])
    with pytest.raises(VsrqError, match=r"fp.flow.onnx: not the forward graph of a vsrq BasicVSR export"):
        OrtBasicVSR(first[1])


@pytest.mark.fault
def test_unexportable_methods_and_wrong_sizes(tmp_path: Path, w8a8):
    qm = quantize_model(_loaded(num_feat=16), QuantConfig(method="viditq", wbits=8, abits=8), _synthetic_calib(2, 3), **QUIET)
    with pytest.raises(VsrqError, match=r"^viditq checkpoints have no integer path yet: layer .* cannot run on integer "
                                        r"kernels \(activations token-wise\)"):
        export_basicvsr(qm, tmp_path / "r.onnx", (64, 64), {})
    w, calib = w8a8
    export_basicvsr(w, tmp_path / "m.onnx", (64, 64), calibrate_outputs(w, calib.clips))
    with pytest.raises(VsrqError, match="exported for 64x64 LR frames, the input is 72x64"):
        OrtBasicVSR(tmp_path / "m.onnx")(torch.zeros(1, 2, 3, 64, 72), range(2))
    with pytest.raises(VsrqError, match="must end in .onnx"):
        export_basicvsr(w, tmp_path / "m.bin", (64, 64), {})


def test_cli_export_and_upscale_with_onnxruntime(tmp_path: Path, w8a8, capsys):
    qm, _ = w8a8
    write_clip(tmp_path / "calib" / "a", smooth_frames(4, 64, 64, seed=1))
    ckpt = checkpoint.save(qm, tmp_path / "m.vsrq")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--size", "64x64",
                 "--calib", str(tmp_path / "calib"), "--calib-clips", "1", "--calib-frames", "3"]) == 0
    assert (tmp_path / "m.backward.onnx").exists()
    write_clip(tmp_path / "lr", smooth_frames(3, 64, 64, seed=2))
    assert main(["upscale", str(tmp_path / "lr"), str(tmp_path / "sr"), "--model", str(tmp_path / "m.onnx"),
                 "--runtime", "onnxruntime"]) == 0
    assert len(list((tmp_path / "sr").glob("*.png"))) == 3


def test_graphs_of_a_checkpoint_are_exported_once_and_reused(w8a8, tmp_path: Path, monkeypatch):
    """A second run of the same checkpoint file measures no ranges and exports nothing; another file (or
    another size) gets its own graphs; the outputs are the same bytes."""
    from vsrq.runtime import ort
    from vsrq.runtime.ort import OrtFromModel, graph_cache

    qm, calib = w8a8
    monkeypatch.setenv("VSRQ_CACHE", str(tmp_path / "cache"))
    ckpt = checkpoint.save(qm, tmp_path / "m.vsrq")
    folder = graph_cache(ckpt)
    assert folder == graph_cache(ckpt) and folder.parent == tmp_path / "cache" / "onnx"
    exports, measured = [], []
    real_export = ort.export_graphs
    monkeypatch.setattr(ort, "export_graphs", lambda *a, **k: exports.append(a[2]) or real_export(*a, **k))

    def ranges():
        measured.append(1)
        return calibrate_outputs(qm, calib.clips)

    x = _clip()
    first = OrtFromModel(qm, ranges, folder, qm.manifest, threads=1)(x, range(4))
    assert exports == [(64, 64)] and measured == [1]
    assert sorted(p.name for p in folder.iterdir()) == ["model_64x64.backward.onnx", "model_64x64.flow.onnx",
                                                        "model_64x64.onnx"]
    again = OrtFromModel(qm, ranges, folder, qm.manifest, threads=1)(x, range(4))
    assert exports == [(64, 64)] and measured == [1] and torch.equal(first, again)
    (tmp_path / "other.vsrq").write_bytes(ckpt.read_bytes() + b"\0")
    assert graph_cache(tmp_path / "other.vsrq") != folder


def test_weight_storage_avoids_int8_saturation_where_the_cpu_would_saturate(tmp_path: Path):
    """One 64-channel conv with 8-bit codes, exact integer reference: u8 x s8 pairs can overflow int16 on CPUs
    without VNNI, so `auto` stores such codes as uint8 (zero point 128) there; codes within +-64 stay int8."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from vsrq.runtime.onnx_export import weight_storage

    rng = np.random.default_rng(0)
    c = 32
    codes = rng.integers(-127, 128, (c, c, 3, 3)).astype(np.int8)
    small = np.clip(codes, -64, 63)
    assert weight_storage(small, vnni=False) == "int8" and weight_storage(codes, vnni=True) == "int8"
    assert weight_storage(codes, vnni=False) == "uint8" and weight_storage(codes, "int8", vnni=False) == "int8"
    with pytest.raises(VsrqError, match="weights must be one of"):
        weight_storage(codes, "int4")

    def run(stored: str, x: np.ndarray) -> np.ndarray:
        w = codes if stored == "int8" else (codes.astype(np.int16) + 128).astype(np.uint8)
        zp = np.zeros(c, np.int8) if stored == "int8" else np.full(c, 128, np.uint8)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(zp, "wz"),
                 numpy_helper.from_array(np.full(c, 0.01, np.float32), "ws"),
                 numpy_helper.from_array(np.array(1 / 255, np.float32), "xs"), numpy_helper.from_array(np.array(0, np.uint8), "xz"),
                 numpy_helper.from_array(np.array(0.5, np.float32), "ys"), numpy_helper.from_array(np.array(128, np.uint8), "yz")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
                 helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
                 helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]), helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(x.shape))], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    x = rng.integers(0, 256, (1, c, 24, 24)).astype(np.float32) / 255
    exact = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(codes.astype(np.float64) * 0.01), padding=1).numpy()
    exact = (np.clip(np.round(exact / 0.5) + 128, 0, 255) - 128) * 0.5
    stored = weight_storage(codes)
    off = np.mean(np.abs(run(stored, x) - exact) > 1e-6)
    assert off < 1e-3, (stored, off)  # what `auto` chose for this CPU is exact (ties at half a step aside)
    assert np.mean(np.abs(run("uint8", x) - exact) > 1e-6) < 1e-3  # uint8 storage is exact on any CPU


@pytest.fixture(scope="module")
def qbasicvsr_w4a4():
    """QBasicVSR W4A4 on a tiny model: per-layer bits (TS-LBA) and per-video bits (FG-VBA, -1/0/+1)."""
    calib = _synthetic_calib(3, 3)
    cfg = QuantConfig(method="qbasicvsr", wbits=4, abits=4, options={"batch": 2, "omse_refresh": False})
    qm = quantize_model(_loaded(num_feat=16), cfg, calib, **QUIET)
    return qm, calib


def test_qbasicvsr_runs_on_integer_graphs_at_the_video_bits_the_simulation_picks(qbasicvsr_w4a4, tmp_path: Path):
    """One pair of step graphs per video bit offset; the runner picks a window's offset from the flows it
    computes, as the simulation's controller does, and then agrees with the simulation."""
    qm, calib = qbasicvsr_w4a4
    assert len({layer.input_quantizer.bits for layer in qm.layers().values()}) > 1  # TS-LBA spread the bits
    files = export_basicvsr(qm, tmp_path / "q.onnx", (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    assert sorted(p.name for p in files) == sorted(
        ["q.onnx", "q.flow.onnx", "q.backward.onnx", "q.bits-1.onnx", "q.bits-1.backward.onnx", "q.bits+1.onnx",
         "q.bits+1.backward.onnx"])
    for f in files:  # each integer conv's input codes are clamped to its bits at that offset, 8-bit ones not at all
        model = onnx.load(str(f))
        offset = int(next(p.value for p in model.metadata_props if p.key == "vsrq_video_bits"))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        clamps = {n.name: n for n in model.graph.node if n.op_type == "Clip"}
        for name, layer in qm.layers().items():
            if f"{name}.input.scale" not in inits:
                continue  # the other direction's graph
            bits = min(max(layer.input_quantizer.layer_bits() + offset, 2), 8)
            clamp = clamps.get(f"{name}.input/ClampCodes")
            assert (clamp is None) == (bits == 8), (f.name, name)
            if clamp is not None:
                assert inits[clamp.input[1]] == 0 and inits[clamp.input[2]] == 2**bits - 1
    runner = OrtBasicVSR(files[0], threads=1)
    flat = torch.full((1, 4, 3, 64, 64), 0.5)  # no texture, no motion: the least complex video there is
    offsets = set()
    for x in (flat, _clip(), torch.rand(1, 4, 3, 64, 64)):
        with torch.no_grad():
            sim = tensor_to_uint8(qm(x)[0])
        out = tensor_to_uint8(runner(x, range(4))[0])
        assert runner.last_offset == int(qm.controller.last_bits.item())
        offsets.add(runner.last_offset)
        assert min(psnr(a, b) for a, b in zip(out, sim)) > 45  # only 8-bit output rounding differs
    assert offsets == {-1, 1}


@pytest.mark.slow
def test_tarq_runs_on_integer_graphs_like_its_simulation(tmp_path: Path):
    """TARQ's deployable model (split concatenations, edges at W8A8, learned codes baked into the weights) exports to
    integer graphs only: no float conv where a conv was quantized, and ORT agrees with the simulation."""
    from vsrq.runtime.deployable import deployability

    calib = _synthetic_calib(2, 3)
    options = {"epochs": 1, "batch": 2, "round_epochs": 1, "fg_vba": False}
    qm = quantize_model(_loaded(num_feat=16), QuantConfig(method="tarq", wbits=4, abits=4, options=options), calib,
                        **QUIET)
    assert deployability(qm.manifest)["deployable"]
    files = export_basicvsr(qm, tmp_path / "t.onnx", (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    seen, floats = set(), set()
    for f in files:
        graph = onnx.load(str(f)).graph
        producers = {o: n for n in graph.node for o in n.output}
        inits = {i.name for i in graph.initializer}
        for node in (n for n in graph.node if n.op_type == "Conv"):
            w = node.input[1]
            if w in inits:
                floats.add(w)
            else:  # an integer conv: its weight comes dequantized from 8-bit storage
                seen.add(producers[w].input[0].rsplit(".weight_q", 1)[0])
    assert seen == set(qm.layers()) and all(w.startswith("base.spynet.") for w in floats), floats
    runner = OrtBasicVSR(files[0], threads=1)
    x = _clip()
    with torch.no_grad():
        sim = tensor_to_uint8(qm(x)[0])
    out = tensor_to_uint8(runner(x, range(x.shape[1]))[0])
    assert min(psnr(a, b) for a, b in zip(out, sim)) > 45  # only 8-bit output rounding differs


def _codes_of(graph_file: Path, tensor: str, feeds: dict[str, np.ndarray], elem: int = onnx.TensorProto.UINT8) -> np.ndarray:
    """An intermediate tensor of a graph, computed op by op (no fusion)."""
    import onnxruntime as ort

    model = onnx.load(str(graph_file))
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, elem, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([tensor], feeds)[0]


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_low_bit_activation_codes_in_the_graph_equal_the_simulations(qbasicvsr_w4a4, offset: int, tmp_path: Path):
    """QuantizeLinear saturates at 0..255; the graph clamps a b-bit activation's codes to 0..2^b-1 as the
    simulation does. Checked on the backward trunk's input conv, whose input the test sets exactly (frame,
    zero state), with frames far brighter than calibration so that the clamp bites."""
    from vsrq.runtime.onnx_export import fixed_video_bits, graph_name

    qm, calib = qbasicvsr_w4a4
    path = tmp_path / "q.onnx"
    export_basicvsr(qm, path, (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    graph_file = graph_name(path, "backward", offset)
    name = "backward_trunk.main.0"
    layer = qm.layers()[name]
    bits = min(max(layer.input_quantizer.bits + offset, 2), 8)
    clamps = {n.output[0]: n for n in onnx.load(str(graph_file)).graph.node if n.op_type == "Clip"}
    tensor = f"{name}.input.q{bits}"
    assert tensor in clamps
    torch.manual_seed(offset + 5)
    x_t = 3 * torch.rand(1, 3, 64, 64)
    h = torch.zeros(1, 16, 64, 64)
    feeds = {"x_t": x_t.numpy(), "flow": np.zeros((1, 2, 64, 64), np.float32), "h_next": h.numpy()}
    codes = _codes_of(graph_file, tensor, feeds)
    assert _codes_of(graph_file, f"{name}.input.q", feeds).max() > 2**bits - 1  # saturating at 255 would differ
    with fixed_video_bits(qm, offset), torch.no_grad():
        q = layer.input_quantizer
        scale, zero_point = q.scale_and_zero_point()
        expected = torch.round(q(torch.cat((x_t, h), dim=1)) / scale) + zero_point
    assert np.array_equal(codes, expected.numpy().astype(np.uint8))


def test_the_hr_tail_in_stripes_is_the_same_function(monkeypatch):
    """Each LR row's HR output reads the fused features UPSAMPLE_HALO rows either side: an HR row R needs
    conv_hr rows R-2..R+2 (two 3x3 convs at 4x), which come from upconv2 rows at 2x within one row of R/2,
    which come from upconv1 outputs within one LR row of R/4; so stripes with that halo reproduce the whole
    tail, and a halo one row smaller does not."""
    from tests.conftest import tiny_basicvsr
    from vsrq.models import basicvsr

    model = tiny_basicvsr(num_feat=16)
    torch.manual_seed(1)
    for h in (64, 67):
        x, feat, back = torch.rand(1, 3, h, 64), torch.randn(1, 16, h, 64), torch.randn(1, 16, h, 64)
        with torch.no_grad():
            whole = model.reconstruct(x, feat, back)
            for stripes in (2, 3, 5):
                assert torch.allclose(model.reconstruct(x, feat, back, stripes), whole, atol=1e-5), (h, stripes)
            monkeypatch.setattr(basicvsr, "UPSAMPLE_HALO", basicvsr.UPSAMPLE_HALO - 1)
            assert not torch.allclose(model.reconstruct(x, feat, back, 3), whole, atol=1e-3)
            monkeypatch.undo()


def test_an_integer_graph_with_a_striped_tail_gives_the_same_bytes(w8a8, tmp_path: Path, monkeypatch):
    from vsrq.models import basicvsr

    qm, calib = w8a8
    ranges = calibrate_outputs(qm, calib.clips)
    export_basicvsr(qm, tmp_path / "whole.onnx", (64, 64), ranges)
    monkeypatch.setattr(basicvsr, "STRIPE_LR_PIXELS", 64 * 64 // 3 + 1)
    assert basicvsr.tail_stripes((64, 64)) == 3
    export_basicvsr(qm, tmp_path / "striped.onnx", (64, 64), ranges)
    nodes = onnx.load(str(tmp_path / "striped.onnx")).graph.node
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert sum(n.input[1].startswith("conv_hr") for n in convs) == 3  # the tail's convs, once per stripe
    # each stripe's upconvs are cut to the rows the next stage reads, then shuffled channels-last
    assert not any(n.op_type == "DepthToSpace" for n in nodes)
    assert sum(n.op_type == "Transpose" and n.name.endswith(".nhwc2") for n in nodes) == 6
    x = _clip()
    whole = OrtBasicVSR(tmp_path / "whole.onnx", threads=1)(x, range(4))
    striped = OrtBasicVSR(tmp_path / "striped.onnx", threads=1)(x, range(4))
    assert np.array_equal(tensor_to_uint8(whole[0]), tensor_to_uint8(striped[0]))


BRANCHED = {  # the QuantVSR layer's ingredients, one method each: branch + clip ratio + LBA, rotation alone, smoothing
    "quantvsr": {"branch": "svd", "lba": True, "act_clip": True, "epochs": 1},
    "quarot": {},
    "svdquant": {},
}


@pytest.fixture(scope="module", params=sorted(BRANCHED))
def branched_w4a4(request):
    torch.manual_seed(0)
    calib = _synthetic_calib(2, 3)
    cfg = QuantConfig(method=request.param, wbits=4, abits=4, options=BRANCHED[request.param])
    return quantize_model(_loaded(num_feat=16), cfg, calib, **QUIET), calib


def test_quantvsr_layers_run_on_integer_graphs(branched_w4a4, tmp_path: Path):
    """Rotation (a 1x1 conv built from the checkpoint's signs), smoothing and the low-rank branch stay float;
    every quantized conv is a QLinearConv on a dynamic per-tensor input range; the graphs agree with the
    simulation up to the 8-bit output rounding."""
    from safetensors import safe_open

    qm, calib = branched_w4a4
    stored = checkpoint.save(qm, tmp_path / "q.vsrq")
    with safe_open(str(stored), "pt") as f:  # a rotation is its signs; the matrix is built at export
        rotations = {k: f.get_slice(k).get_shape() for k in f.keys() if ".rotation." in k}
    assert all(k.endswith(".rotation.signs") and len(shape) == 1 for k, shape in rotations.items()), rotations
    qm = checkpoint.load(stored)
    files = export_basicvsr(qm, tmp_path / "q.onnx", (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    x = _clip()
    with torch.no_grad():
        sim = tensor_to_uint8(qm(x)[0])
    out = tensor_to_uint8(OrtBasicVSR(files[0], threads=1)(x, range(4))[0])
    assert min(psnr(a, b) for a, b in zip(out, sim)) > 45
    seen = {"rotation": 0, "branch": 0, "smooth": 0, "clip": 0}
    for f in files[1:] + files[:1]:
        model = onnx.load(str(f))
        if any(p.value == "flow" for p in model.metadata_props if p.key == "vsrq_role"):
            continue
        graph = model.graph
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        convs = {n.input[1]: n for n in graph.node if n.op_type == "Conv"}
        qconvs = {n.name.split("/")[0] for n in graph.node if n.op_type == "QLinearConv"}
        for name, layer in qm.layers().items():
            if f"{name}.weight_q" not in inits:
                continue  # the other direction's graph
            assert name in qconvs and f"base.{name}.weight" not in convs, name  # no float conv where quantized
            if layer.rotation is not None:
                seen["rotation"] += 1
                rotation = inits[convs[f"base.{name}.rotation"].input[1]].reshape(layer.in_channels, -1)
                assert np.allclose(rotation @ rotation.T, np.eye(layer.in_channels), atol=1e-5)
            if layer.rank:
                seen["branch"] += 1
                assert {f"base.{name}.lowrank_down", f"base.{name}.lowrank_up"} <= set(convs)
            seen["smooth"] += layer.smooth is not None and f"base.{name}.smooth" in inits
            if layer.input_quantizer.clip_ratio is not None:
                seen["clip"] += 1
                assert np.isclose(inits[f"{name}.input.clip_ratio"], float(layer.input_quantizer.clip_ratio))
    method = qm.manifest["method"]
    assert bool(seen["rotation"]) == (method in ("quantvsr", "quarot"))
    assert bool(seen["branch"]) == (method in ("quantvsr", "svdquant"))
    assert bool(seen["smooth"]) == (method == "svdquant")
    assert bool(seen["clip"]) == (method == "quantvsr")


def test_dynamic_input_codes_in_the_graph_equal_the_simulations(branched_w4a4, tmp_path: Path):
    """The graph's run-time scale, zero point and 4-bit codes of a rotated input are the simulation's."""
    qm, calib = branched_w4a4
    path = tmp_path / "q.onnx"
    export_basicvsr(qm, path, (64, 64), calibrate_outputs(qm, calib.clips), qm.manifest)
    from vsrq.runtime.onnx_export import graph_name

    name = "backward_trunk.main.0"
    layer = qm.layers()[name]
    torch.manual_seed(7)
    x_t, h = 3 * torch.rand(1, 3, 64, 64), torch.zeros(1, 16, 64, 64)
    feeds = {"x_t": x_t.numpy(), "flow": np.zeros((1, 2, 64, 64), np.float32), "h_next": h.numpy()}
    graph_file = graph_name(path, "backward")
    codes = _codes_of(graph_file, f"{name}.input.q4", feeds)
    scale = _codes_of(graph_file, f"{name}.input.scale", feeds, onnx.TensorProto.FLOAT)
    zero_point = _codes_of(graph_file, f"{name}.input.zero_point", feeds)
    with torch.no_grad():
        xin = layer.unsmooth(torch.cat((x_t, h), dim=1))
        xin = xin if layer.rotation is None else layer.rotation.apply(xin, dim=1)
        q = layer.input_quantizer
        lower, upper = q._dynamic_range(xin, None)
        from vsrq.quant.grid import scale_zero_point

        s, z = scale_zero_point(lower, upper, 4, False)
        expected = torch.round(q(xin) / s) + z
    assert np.isclose(scale, float(s), rtol=1e-6) and int(zero_point) == int(z)
    assert expected.max() == 15 or expected.min() == 0
    assert np.mean(codes == expected.numpy().astype(np.uint8)) > 0.999  # x/S against x*(1/S): ties may differ


def test_info_says_whether_a_checkpoint_is_deployable(branched_w4a4, w8a8, tmp_path: Path, capsys):
    """Deployable: every conv but SpyNet integer with static ranges, nothing float beside it. A QuantVSR-layer
    checkpoint exports to integer graphs but is not deployable in that sense; a PQ checkpoint keeps convs
    float; a per-token one has no integer graphs at all."""
    from vsrq.runtime.deployable import deployability

    static, _ = w8a8
    branched, _ = branched_w4a4
    assert deployability(static.manifest) == {"integer_graphs": True, "deployable": True, "why": []}
    verdict = deployability(branched.manifest)
    assert verdict["integer_graphs"] and not verdict["deployable"]
    assert any("dynamic activation ranges" in why for why in verdict["why"])
    pq = quantize_model(_loaded(num_feat=16), QuantConfig(method="minmax", wbits=4, abits=4, scope="pq"),
                        _synthetic_calib(2, 3), **QUIET)
    assert deployability(pq.manifest)["why"][0].endswith("convs kept float (e.g. backward_trunk.main.0)")
    manifest = {**static.manifest, "layers": {**static.manifest["layers"]}}
    name = next(iter(manifest["layers"]))
    manifest["layers"][name] = {**manifest["layers"][name], "input": {
        **manifest["layers"][name]["input"], "spec": {**manifest["layers"][name]["input"]["spec"], "granularity": "token"}}}
    verdict = deployability(manifest)
    assert not verdict["integer_graphs"] and f"{name}: activations token-wise" in verdict["why"][0]
    checkpoint.save(branched, tmp_path / "b.vsrq")
    assert main(["info", str(tmp_path / "b.vsrq")]) == 0
    assert "deployable: no: " in capsys.readouterr().out

    from vsrq.benchmark import Bench
    from vsrq.data.datasets import PairedClip

    bench = Bench.__new__(Bench)  # benchmark rows carry the verdict
    gt = smooth_frames(2, 256, 256, seed=4)
    bench.name, bench.model_name, bench.dataset, bench.degradation, bench.quick = "t", "tiny", "synthetic", "bi", True
    bench.show_progress, bench.device, bench.commit, bench.date, bench.rows = False, "cpu", "abc", "d", []
    bench.clips = [PairedClip("a", gt, np.ascontiguousarray(gt[:, ::4, ::4]))]
    assert bench.row(static, "minmax", 8, 8, "fq", None).extra["deployable"] is True
    assert bench.row(branched, "x", 4, 4, "fq", None).extra["deployable"] is False


def test_animesr_exports_one_step_graph_that_runs_like_the_model(tmp_path: Path):
    """AnimeSR's recurrence (no flow, one direction) is one step graph; the runner pads an odd size as the model
    does, and a window that starts late still runs the recurrence from the clip's first frame."""
    from tests.test_hosts import tiny_animesr
    from vsrq.runtime.onnx_export import export_graphs
    from vsrq.runtime.ort import open_graphs

    model = tiny_animesr()
    x = torch.from_numpy(np.random.default_rng(0).random((1, 4, 3, 62, 66), dtype=np.float32))
    files = export_graphs(model, tmp_path / "fp.onnx", (62, 66))
    assert [p.name for p in files] == ["fp.onnx"]
    with torch.no_grad():
        ref = model(x)
    runner = open_graphs(files[0], threads=1)
    assert torch.allclose(runner(x, range(4)), ref, atol=1e-5)
    assert torch.allclose(runner(x, range(1, 3)), ref[:, 1:3], atol=1e-5)
    with pytest.raises(VsrqError, match="exported for 66x62 LR frames, the input is 64x64"):
        runner(torch.zeros(1, 2, 3, 64, 64), range(2))


@pytest.mark.parametrize("method", ["minmax", "quantvsr"])
def test_quantized_animesr_runs_on_integer_graphs(method: str, tmp_path: Path):
    """Static W8A8 and QuantVSR's layer at W4A4 on the second family, as a user runs a checkpoint: `vsrq upscale
    --runtime onnxruntime` exports it once and agrees with the simulation."""
    from tests.test_hosts import tiny_animesr
    from vsrq import api
    from vsrq.config import CalibConfig
    from vsrq.data.frames import list_frames, read_frame

    bits = 8 if method == "minmax" else 4
    write_clip(tmp_path / "calib" / "a", smooth_frames(3, 64, 64, seed=1))
    cfg = QuantConfig(method=method, wbits=bits, abits=bits, options={"branch": "svd", "lba": False} if bits == 4 else {},
                      calib=CalibConfig(source=str(tmp_path / "calib"), clips=1, frames=3))
    ckpt = checkpoint.save(api.quantize(tiny_animesr(), cfg, **QUIET), tmp_path / "q.vsrq")
    if method == "minmax":  # per-video bits would need SpyNet flows the AnimeSR graph does not compute
        from vsrq.quant.controller import VideoBitController
        from vsrq.runtime.onnx_export import export_graphs

        with_controller = checkpoint.load(ckpt)
        with_controller.controller = VideoBitController(100.0, 300.0)
        with pytest.raises(VsrqError, match=r"^per-video bits \(FG-VBA\) on AnimeSR have no integer path yet"):
            export_graphs(with_controller, tmp_path / "v.onnx", (62, 66), {})
        assert not (tmp_path / "v.onnx").exists()
    frames = smooth_frames(4, 62, 66, seed=2)
    write_clip(tmp_path / "lr", frames)
    api.upscale(ckpt, tmp_path / "lr", tmp_path / "sr", runtime="onnxruntime", show_progress=False)
    out = [read_frame(p) for p in list_frames(tmp_path / "sr")]
    with torch.no_grad():
        sim = tensor_to_uint8(checkpoint.load(ckpt)(torch.from_numpy(frames).float().div(255).permute(0, 3, 1, 2)[None])[0])
    assert len(out) == 4 and min(psnr(a, b) for a, b in zip(out, sim)) > 40  # 8-bit output rounding, fed back
