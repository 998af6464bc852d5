"""Quantizer arithmetic against closed forms and PyTorch's reference fake-quantization; STE gradients."""

from __future__ import annotations

import pytest
import torch

from vsrq.config import QuantizerSpec
from vsrq.errors import VsrqError
from vsrq.quant.grid import fake_quantize, int_range, round_ste, scale_zero_point
from vsrq.quant.quantizer import FakeQuantizer


def test_round_ste_forward_rounds_backward_is_identity():
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


def test_grids_closed_form():
    assert int_range(4, True) == (-7, 7)
    assert int_range(4, False) == (0, 15)
    assert int_range(8, False) == (0, 255)
    s, z = scale_zero_point(torch.tensor(-1.0), torch.tensor(2.0), 2, False)
    assert s.item() == pytest.approx(1.0) and z.item() == 1.0  # 4 levels on [-1, 2]: -1, 0, 1, 2


def test_asymmetric_per_tensor_matches_torch_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5) * 3
    for bits in (2, 4, 6, 8):
        q = FakeQuantizer(QuantizerSpec(bits=bits), "act", axis=1)
        q.set_range(torch.tensor([-2.5]), torch.tensor([4.0]))
        scale, zp = q.scale_and_zero_point()
        ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), 0, 2**bits - 1)
        out = q(x)
        mismatch = (out - ref).abs() > 1e-5
        assert mismatch.float().mean() < 1e-3  # only exact .5 ties may round differently
        assert len(torch.unique(out)) <= 2**bits


def test_symmetric_per_channel_matches_torch_reference():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3)
    for bits in (3, 4, 8):
        q = FakeQuantizer(QuantizerSpec(bits=bits, symmetric=True, granularity="channel"), "weight", axis=0)
        q.init_from_tensor(w)
        scale, zp = q.scale_and_zero_point()
        qmax = 2 ** (bits - 1) - 1
        ref = torch.fake_quantize_per_channel_affine(w, scale, zp.int(), 0, -qmax, qmax)
        torch.testing.assert_close(q(w), ref, atol=1e-6, rtol=0)
        # min/max observer: the largest |w| of each channel is exactly representable
        torch.testing.assert_close(q(w).abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))


def test_zero_is_exact_on_asymmetric_grids():
    q = FakeQuantizer(QuantizerSpec(bits=4), "act")
    q.set_range(torch.tensor([-0.37]), torch.tensor([1.91]))
    assert q(torch.zeros(3)).abs().max().item() == 0.0


def test_dynamic_granularities():
    torch.manual_seed(2)
    x = torch.randn(2, 8, 4, 4)
    per_tensor = FakeQuantizer(QuantizerSpec(bits=8, dynamic=True), "act")
    per_token = FakeQuantizer(QuantizerSpec(bits=8, dynamic=True, granularity="token"), "act")
    per_group = FakeQuantizer(QuantizerSpec(bits=8, dynamic=True, granularity="group", group_size=4), "act")
    for q in (per_tensor, per_token, per_group):
        out = q(x)
        assert out.shape == x.shape
        assert (out - x).abs().max() < (x.max() - x.min()) / 255  # 8-bit error below one step
    # tokens of very different magnitude: per-token ranges beat one range for the whole tensor
    scaled = x * torch.logspace(-2, 1, 16).view(1, 1, 4, 4)
    err_token = (per_token(scaled) - scaled).pow(2).mean()
    err_tensor = (per_tensor(scaled) - scaled).pow(2).mean()
    assert err_token < err_tensor / 10


def test_dynamic_clip_ratio_scales_the_run_time_range():
    """A clip ratio c quantizes on [c min, c max]: torch's reference grid on that range; 1.0 changes nothing."""
    torch.manual_seed(3)
    x = torch.randn(2, 8, 6, 6) * 2 + 0.5
    q = FakeQuantizer(QuantizerSpec(bits=4, dynamic=True), "act")
    plain = q(x)
    q.set_clip_ratio(1.0)
    assert torch.equal(q(x), plain)
    q.set_clip_ratio(0.6)
    lo, hi = 0.6 * float(x.min()), 0.6 * float(x.max())
    scale = (hi - lo) / 15
    ref = torch.fake_quantize_per_tensor_affine(x, scale, round(-lo / scale), 0, 15)
    assert ((q(x) - ref).abs() > 1e-5).float().mean() < 1e-3
    assert q(x).max() <= hi + scale / 2 + 1e-5 < float(x.max())  # the top is clipped (the grid shifts by < 1/2 step)
    for bad in (0.0, 1.5):
        with pytest.raises(VsrqError, match="clip ratio"):
            q.set_clip_ratio(bad)
    with pytest.raises(VsrqError, match="must be dynamic"):
        FakeQuantizer(QuantizerSpec(bits=4), "act").set_clip_ratio(0.5)


def test_weight_groups_along_inputs():
    w = torch.randn(4, 8)
    q = FakeQuantizer(QuantizerSpec(bits=4, symmetric=True, granularity="group", group_size=4), "weight", axis=0)
    q.init_from_tensor(w)
    assert q.lower.numel() == 8  # 4 rows x 2 groups
    out = q(w).reshape(4, 2, 4)
    torch.testing.assert_close(out.abs().amax(dim=2), w.reshape(4, 2, 4).abs().amax(dim=2))


def test_gradients_of_clip_bounds_closed_form():
    """Symmetric: x_hat = round(x/S) S with S = u/qmax; d x_hat/du = (round(x/S) - x/S)/qmax inside, 1 above u."""
    q = FakeQuantizer(QuantizerSpec(bits=4, symmetric=True), "act")
    q.set_range(torch.tensor([-1.4]), torch.tensor([1.4]))
    x = torch.tensor([0.33, 5.0])
    q(x).sum().backward()
    s = 1.4 / 7
    inside = (round(0.33 / s) - 0.33 / s) / 7
    assert q.upper.grad.item() == pytest.approx(inside + 1.0, abs=1e-5)


def test_ste_input_gradient_is_masked_outside_range():
    q = FakeQuantizer(QuantizerSpec(bits=4), "act")
    q.set_range(torch.tensor([0.0]), torch.tensor([1.0]))
    x = torch.tensor([-0.5, 0.3, 0.7, 1.5], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_variable_bits_per_input_and_learnable_offset():
    q = FakeQuantizer(QuantizerSpec(bits=4), "act")
    q.set_range(torch.tensor([0.0]), torch.tensor([1.0]))
    x = torch.linspace(0, 1, 1000)
    assert len(torch.unique(q(x))) == 16
    q.shared_offset = torch.tensor(1.0)  # a per-video +1
    assert len(torch.unique(q(x))) == 32 and q.current_bits() == 5
    q.shared_offset = None
    q.bit_offset = torch.nn.Parameter(torch.tensor(-0.8))  # rounds to -1
    assert q.current_bits() == 3
    loss = (q(x) - x).pow(2).sum()
    loss.backward()
    assert q.bit_offset.grad is not None and q.bit_offset.grad.item() < 0  # more bits lower the error


@pytest.mark.fault
def test_bad_specs_are_clear_errors():
    with pytest.raises(VsrqError, match="bit-width 9"):
        QuantizerSpec(bits=9)
    with pytest.raises(VsrqError, match="per-token ranges exist only at run time"):
        FakeQuantizer(QuantizerSpec(granularity="token"), "act")
    q = FakeQuantizer(QuantizerSpec(), "act")
    with pytest.raises(VsrqError, match="before calibration"):
        q(torch.zeros(2))


def test_fake_quantize_function_is_idempotent():
    x = torch.randn(100)
    s, z = torch.tensor(0.1), torch.tensor(8.0)
    once = fake_quantize(x, s, z, 0, 15)
    torch.testing.assert_close(fake_quantize(once, s, z, 0, 15), once)


def test_custom_backward_equals_autograd_of_the_formula():
    """The memory-lean backward gives the gradients autograd computes for the same STE formula."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    s = torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1).requires_grad_()
    z = torch.tensor([3.0, 4.0, 5.0]).view(1, 3, 1, 1).requires_grad_()
    g = torch.randn(2, 3, 4, 4)

    def autograd_reference(x, s, z):
        return (torch.clamp(round_ste(x * (1.0 / s) + z), 0.0, 15.0) - z) * s

    grads = []
    for f in (lambda x, s, z: fake_quantize(x, s, z, 0, 15), autograd_reference):
        for t in (x, s, z):
            t.grad = None
        (f(x, s, z) * g).sum().backward()
        grads.append([t.grad.clone() for t in (x, s, z)])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
