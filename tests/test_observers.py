"""Range initializers on distributions whose right answer is known independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsrq.config import QuantizerSpec
from vsrq.quant.grid import fake_quantize, int_range, scale_zero_point
from vsrq.quant.observers import dbdc_bounds, make_observer


def _spec(observer: str, **kw) -> QuantizerSpec:
    return QuantizerSpec(bits=4, observer=observer, **kw)


def test_minmax_and_ema():
    obs = make_observer(_spec("minmax"))
    obs.update(torch.tensor([[-1.0, 2.0]]))
    obs.update(torch.tensor([[-3.0, 1.0]]))
    assert obs.compute(4, False) == (torch.tensor([-3.0]), torch.tensor([2.0]))
    lo, hi = obs.compute(4, True)
    assert lo.item() == -3.0 and hi.item() == 3.0
    ema = make_observer(_spec("ema", ema_decay=0.5))
    ema.update(torch.tensor([[0.0, 4.0]]))
    ema.update(torch.tensor([[-2.0, 2.0]]))
    lo, hi = ema.compute(4, False)
    assert lo.item() == -1.0 and hi.item() == 3.0  # 0.5 * first + 0.5 * second


def test_percentile_on_a_known_ramp():
    obs = make_observer(_spec("percentile", percentile=99.0))
    values = torch.arange(10001, dtype=torch.float32)[None]  # 0..10000: the 1st/99th percentiles are 100/9900
    obs.update(values)
    lo, hi = obs.compute(4, False)
    assert lo.item() == 100.0 and hi.item() == 9900.0


def _brute_force_mse(x: np.ndarray, bits: int, symmetric: bool) -> float:
    """Independent reference: best MSE over a fine grid of clip values, numpy only."""
    best = np.inf
    top = np.abs(x).max() if symmetric else x.max()
    for u in np.linspace(0.05, 1.0, 400) * top:
        if symmetric:
            s = u / (2 ** (bits - 1) - 1)
            q = np.clip(np.round(x / s), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) * s
        else:
            s = u / (2**bits - 1)
            q = np.clip(np.round(x / s), 0, 2**bits - 1) * s
        best = min(best, float(np.mean((q - x) ** 2)))
    return best


@pytest.mark.parametrize("symmetric", [True, False])
def test_omse_reaches_the_brute_force_optimum(symmetric: bool):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20000) if symmetric else np.abs(rng.standard_normal(20000))  # ReLU-like when asymmetric
    obs = make_observer(_spec("omse", symmetric=symmetric))
    obs.update(torch.from_numpy(x).float()[None])
    lo, hi = obs.compute(4, symmetric)
    s, z = scale_zero_point(lo, hi, 4, symmetric)
    qmin, qmax = int_range(4, symmetric)
    xt = torch.from_numpy(x).float()
    mse = float((fake_quantize(xt, s, z, qmin, qmax) - xt).pow(2).mean())
    assert mse <= _brute_force_mse(x, 4, symmetric) * 1.02
    assert hi.abs().item() < np.abs(x).max() * 0.8  # a Gaussian tail is worth clipping at 4 bits


def test_dbdc_trims_the_sparse_end_first():
    # 1000 values in [0, 1], 2 far outliers above, 8 outliers far below; tail = 0.5% may drop 5 values
    dense = torch.linspace(0, 1, 1000)
    x = torch.cat([dense, torch.tensor([50.0, 60.0]), torch.full((8,), -40.0)])[None]
    lo, hi = dbdc_bounds(x, tail=0.005)
    assert hi.item() < 2.0  # the sparse upper outliers (2 values) are cut
    assert lo.item() <= -39.9  # the 8 lower ones are more than the 5-value budget: kept


def test_dbdc_observer_aggregates_frames_with_ema():
    obs = make_observer(_spec("dbdc", ema_decay=0.5, dbdc_tail=0.0))
    obs.update(torch.tensor([[0.0, 1.0, 2.0]]))
    obs.update(torch.tensor([[0.0, 1.0, 4.0]]))
    lo, hi = obs.compute(4, False)
    assert lo.item() == 0.0 and hi.item() == pytest.approx(3.0)
