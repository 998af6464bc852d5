"""PNG/JPEG frames on disk: listing, reading, writing, and all-or-nothing output folders."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from vsrq.atomic import clean_leftovers, make_parent, naming, partial_prefix
from vsrq.errors import VsrqError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_frames(folder: Path) -> list[Path]:
    """Image files in a folder, sorted by name (BasicSR names frames 00000000.png, ...)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def frame_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError) as exc:
        raise VsrqError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def read_frame(path: Path) -> np.ndarray:
    """An RGB uint8 array (H, W, 3). Grey frames are repeated into three channels and alpha is dropped;
    16-bit grey frames are rounded to 8 bits (``round(v / 257)``, 65535 -> 255); Pillow itself reads 16-bit
    RGB PNGs as their 8 high bits."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                wide = np.asarray(im, dtype=np.int64)
                if wide.min() < 0 or wide.max() > 65535:
                    raise VsrqError(f"{path}: a {im.mode} image with values outside 0..65535")
                grey = np.round(wide / 257.0).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise VsrqError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def write_frame(path: Path, frame: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) frame; PNG is lossless, the default for results."""
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), mode="RGB").save(path)


@contextlib.contextmanager
def atomic_output(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` and move it into place only if the block succeeds.

    Refuses an existing ``target`` unless ``overwrite``; on any error nothing is left behind, so a
    failed run never leaves a half-written folder or video. A replaced target is swapped out whole
    (:mod:`vsrq.atomic`), so a kill leaves the previous output or the new one, never a mix.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise VsrqError(f"{target} exists; pass --overwrite to replace it")
    parent = make_parent(target)
    clean_leftovers(parent, target.name)
    tmp_dir = Path(tempfile.mkdtemp(prefix=partial_prefix(target.name), suffix=".partial", dir=parent))
    tmp = tmp_dir / target.name
    aside = tmp_dir.with_suffix(".old")
    try:
        with naming(target):
            yield tmp
        if not tmp.exists():
            raise VsrqError(f"nothing was written for {target}")
        if target.exists():  # a swap, never a deletion in place: a kill leaves the old or the new whole
            os.replace(target, aside)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        elif aside.exists() or aside.is_symlink():
            aside.unlink()
