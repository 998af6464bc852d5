"""Range initializers: statistics gathered over calibration data, turned into clip ranges.

Every observer receives tensors viewed as (rows, values) and returns one (lower, upper) pair per
row. In a recurrent model a layer runs once per frame, so ``update`` is called once per frame:
the EMA and DBDC observers aggregate per-frame boundaries over time, as QBasicVSR adapts DBDC to
recurrent networks.

- ``minmax``: the extreme values seen.
- ``ema``: exponential moving average of per-update min/max.
- ``percentile``: mean over updates of the p-th / (100-p)-th percentiles.
- ``omse``: the range minimizing the quantization MSE (Choukroun et al., 2019), searched on the
  values (weights) or on a uniform sample of them (activations).
- ``ema_omse``: the OMSE search started from EMA min/max instead of the extremes.
- ``dbdc``: density-based dual clipping (Tu et al., CVPR 2023): a 2048-bin histogram is trimmed
  from whichever end has the lower density until only ``1 - tail`` of the mass remains; per-update
  boundaries are averaged with an EMA.
"""

from __future__ import annotations

import torch

from vsrq.config import QuantizerSpec
from vsrq.quant.grid import fake_quantize, int_range, scale_zero_point

_SAMPLE_PER_ROW = 1 << 17  # activation values kept per row for OMSE
_HIST_BINS = 2048


def mse_search(
    values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bits: int, symmetric: bool, steps: int = 80
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink [lower, upper] per row to the range of least quantization MSE on ``values`` (rows, n).

    Symmetric: one scale factor on max|x|. Asymmetric: two rounds of coordinate search, upper
    bound then lower bound, each over ``steps`` factors in [0.05, 1].
    """
    qmin, qmax = int_range(bits, symmetric)
    factors = torch.linspace(0.05, 1.0, steps, dtype=values.dtype, device=values.device)

    def errors(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:  # lo, hi: (k, rows) -> (k, rows)
        scale, zp = scale_zero_point(lo[..., None], hi[..., None], bits, symmetric)
        return (fake_quantize(values[None], scale, zp, qmin, qmax) - values[None]).pow(2).mean(dim=-1)

    def best(cands_lo: torch.Tensor, cands_hi: torch.Tensor) -> torch.Tensor:
        # evaluate in slices so (k, rows, n) never gets large
        chunk = max(1, (1 << 24) // max(1, values.numel()))
        errs = torch.cat([errors(cands_lo[i : i + chunk], cands_hi[i : i + chunk]) for i in range(0, len(factors), chunk)])
        return errs.argmin(dim=0)

    rows = torch.arange(values.shape[0], device=values.device)
    if symmetric:
        bound = torch.maximum(lower.abs(), upper.abs())
        cands = factors[:, None] * bound[None]
        pick = cands[best(-cands, cands), rows]
        return -pick, pick
    lo, hi = lower.clone(), upper.clone()
    for _ in range(2):
        cands = factors[:, None] * upper[None]
        hi = cands[best(lo.expand_as(cands), cands), rows]
        cands = factors[:, None] * lower[None]
        lo = cands[best(cands, hi.expand_as(cands)), rows]
    return lo, hi


def dbdc_bounds(values: torch.Tensor, tail: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-based dual clipping of each row: trim the sparser histogram end until 1 - tail remains."""
    lows, highs = [], []
    for row in values:
        vmin, vmax = row.min(), row.max()
        if vmax <= vmin:
            lows.append(vmin)
            highs.append(vmax)
            continue
        hist = torch.histc(row.float(), bins=_HIST_BINS, min=float(vmin), max=float(vmax))
        keep = (1.0 - tail) * row.numel()
        lo_idx, hi_idx = 0, _HIST_BINS - 1
        mass = float(hist.sum())
        counts = hist.tolist()
        while lo_idx < hi_idx:
            if counts[lo_idx] < counts[hi_idx]:
                if mass - counts[lo_idx] < keep:
                    break
                mass -= counts[lo_idx]
                lo_idx += 1
            else:
                if mass - counts[hi_idx] < keep:
                    break
                mass -= counts[hi_idx]
                hi_idx -= 1
        width = (vmax - vmin) / _HIST_BINS
        lows.append(vmin + width * lo_idx)
        highs.append(vmin + width * (hi_idx + 1))
    return torch.stack(lows), torch.stack(highs)


class Observer:
    """Collects statistics of (rows, values) tensors; ``compute`` gives (lower, upper) per row."""

    def __init__(self, spec: QuantizerSpec) -> None:
        self.spec = spec
        self.seen = 0

    def update(self, rows: torch.Tensor) -> None:
        self._update(rows.float())
        self.seen += 1

    def _update(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        self.__init__(self.spec)  # type: ignore[misc]


class MinMaxObserver(Observer):
    def __init__(self, spec: QuantizerSpec) -> None:
        super().__init__(spec)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def compute(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if symmetric:
            bound = torch.maximum(self.lo.abs(), self.hi.abs())
            return -bound, bound
        return self.lo.clone(), self.hi.clone()

    def _ema(self, lo: torch.Tensor, hi: torch.Tensor, prev: tuple[torch.Tensor | None, torch.Tensor | None]) -> None:
        """Set the range to the EMA of ``prev`` and this update's (lo, hi); the first update sets it."""
        if prev[0] is None:
            self.lo, self.hi = lo, hi
        else:
            d = self.spec.ema_decay
            self.lo, self.hi = d * prev[0] + (1 - d) * lo, d * prev[1] + (1 - d) * hi


class EMAMinMaxObserver(MinMaxObserver):
    def _update(self, rows: torch.Tensor) -> None:
        self._ema(rows.amin(dim=1), rows.amax(dim=1), (self.lo, self.hi))


class PercentileObserver(MinMaxObserver):
    """Mean over updates of per-row percentiles (order statistics on at most 2^20 values per row)."""

    def __init__(self, spec: QuantizerSpec) -> None:
        super().__init__(spec)
        self.count = 0

    def _update(self, rows: torch.Tensor) -> None:
        if rows.shape[1] > (1 << 20):
            idx = torch.randint(rows.shape[1], (1 << 20,), generator=_gen(self.seen))
            rows = rows[:, idx]
        n = rows.shape[1]
        tail = 1 - self.spec.percentile / 100
        k_lo = min(n, max(1, int(round(tail * (n - 1))) + 1))
        k_hi = min(n, max(1, int(round((1 - tail) * (n - 1))) + 1))
        lo = rows.kthvalue(k_lo, dim=1).values
        hi = rows.kthvalue(k_hi, dim=1).values
        self.count += 1
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + (lo - self.lo) / self.count
            self.hi = self.hi + (hi - self.hi) / self.count


class OMSEObserver(MinMaxObserver):
    """Keeps min/max and a uniform sample of each row's values; the MSE search runs in ``compute``."""

    def __init__(self, spec: QuantizerSpec) -> None:
        super().__init__(spec)
        self.samples: list[torch.Tensor] = []
        self.sampled = 0

    def _update(self, rows: torch.Tensor) -> None:
        super()._update(rows)
        n = rows.shape[1]
        take = _SAMPLE_PER_ROW // 16
        if n <= take:  # weights and small activations: keep every value
            self.samples.append(rows.clone())
            self.sampled += n
        else:
            idx = torch.randint(n, (take,), generator=_gen(self.seen))
            self.samples.append(rows[:, idx].clone())
            self.sampled += take
        if self.sampled > 2 * _SAMPLE_PER_ROW:  # thin out uniformly, keeping every update represented
            merged = torch.cat(self.samples, dim=1)
            keep = torch.randperm(merged.shape[1], generator=_gen(self.seen))[:_SAMPLE_PER_ROW]
            self.samples, self.sampled = [merged[:, keep]], _SAMPLE_PER_ROW

    def compute(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.cat(self.samples, dim=1)
        lower, upper = self.start_range(bits, symmetric)
        return mse_search(values, lower, upper, bits, symmetric)

    def start_range(self, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The range the MSE search starts from (min/max, or EMA min/max for ``ema_omse``)."""
        return super().compute(bits, symmetric)


class EMAOMSEObserver(OMSEObserver):
    """OMSE whose search starts from EMA min/max (QBasicVSR: EMA init, OMSE refresh at the final bits)."""

    def _update(self, rows: torch.Tensor) -> None:
        prev = (self.lo, self.hi)
        super()._update(rows)  # keeps the value sample (and overwrites lo/hi with min/max)
        self._ema(rows.amin(dim=1), rows.amax(dim=1), prev)


class DBDCObserver(MinMaxObserver):
    """Per-update density-based dual clipping, aggregated with an EMA over updates (frames)."""

    def _update(self, rows: torch.Tensor) -> None:
        self._ema(*dbdc_bounds(rows, self.spec.dbdc_tail), (self.lo, self.hi))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1234 + seed)


_OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "ema": EMAMinMaxObserver,
    "percentile": PercentileObserver,
    "omse": OMSEObserver,
    "ema_omse": EMAOMSEObserver,
    "dbdc": DBDCObserver,
}


def make_observer(spec: QuantizerSpec) -> Observer:
    return _OBSERVERS[spec.observer](spec)
