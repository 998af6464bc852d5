"""Import hygiene: every module imports on its own, no import cycle, and inference never loads calibration code."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import vsrq
from tests.conftest import tiny_basicvsr
from tests.test_quant_layers import _synthetic_calib
from vsrq.config import QuantConfig

ROOT = Path(__file__).resolve().parents[1]
CYCLES_TOOL = ROOT.parent / "shared" / "tools" / "import_cycles.py"


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(vsrq.__path__, "vsrq."))


def test_every_module_imports_first_in_a_fresh_interpreter():
    """One interpreter (third-party packages imported once); before each module every vsrq module is dropped,
    so each is the first vsrq module imported, as a user's first import would be."""
    script = (
        "import importlib, sys, torch, numpy, safetensors, av\n"
        f"names = {_modules()!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'vsrq' or m.startswith('vsrq.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert len(_modules()) > 50


def test_no_import_cycle():
    if not CYCLES_TOOL.is_file():
        pytest.skip(f"{CYCLES_TOOL} is not beside the checkout")
    done = subprocess.run([sys.executable, str(CYCLES_TOOL), "src", "vsrq"], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "no import cycles", done.stdout


def test_running_a_checkpoint_imports_no_calibration_code(tmp_path: Path):
    qm = vsrq.quantize(tiny_basicvsr(), QuantConfig(method="minmax"), _synthetic_calib(1, 2), log=lambda s: None,
                       show_progress=False)
    path = vsrq.save(qm, tmp_path / "m.vsrq")
    script = (
        "import sys, torch, vsrq\n"
        f"model = vsrq.load({str(path)!r})\n"
        "with torch.no_grad():\n"
        "    model(torch.rand(1, 2, 3, 64, 64))\n"
        "calibration = sorted(m for m in sys.modules if m.startswith(('vsrq.methods', 'vsrq.benchmark')))\n"
        "print(calibration)\n"
        "sys.exit(1 if calibration else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert importlib.import_module("vsrq.methods.pipeline")  # the calibration code itself still imports


def test_single_machine_jobs_never_import_ray(tmp_path: Path):
    """Ray is the batch job's alone: the CLI's other paths run without loading it (nor need it installed)."""
    from tests.conftest import smooth_frames, write_clip

    write_clip(tmp_path / "lr", smooth_frames(2, 64, 64))
    import torch

    torch.save({"params": tiny_basicvsr().state_dict()}, tmp_path / "tiny.pth")
    script = (
        "import sys\n"
        "from vsrq.cli import main\n"
        f"assert main(['--quiet', 'upscale', {str(tmp_path / 'lr')!r}, {str(tmp_path / 'sr')!r}, "
        f"'--model', {str(tmp_path / 'tiny.pth')!r}]) == 0\n"
        f"assert main(['--quiet', 'eval', {str(tmp_path / 'sr')!r}, {str(tmp_path / 'sr')!r}]) == 0\n"
        "sys.exit(1 if 'ray' in sys.modules else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
