"""tools/gpu-check.sh --dry: the prepared GPU check's every step, on the CPU at tiny sizes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_completes_every_step(tmp_path):
    out = tmp_path / "check.md"
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu-check.sh"), "--dry", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    report = out.read_text()
    for title in ("1. tests marked cuda", "2. golf bench pr549", "2. golf bench v4", "3. a short real run"):
        assert f"### {title}" in report, report
    steps = [line for line in report.splitlines() if line.startswith("exit ")]
    assert steps and all(line.startswith("exit 0 ") for line in steps), report
    assert " passed" in report and "aten::" in report  # the cuda tests ran (on the CPU) and the profile printed
    assert "c1_causal" in report and "worst_deviation" in report  # the run's probes with their deviations


def test_unknown_argument_is_refused():
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu-check.sh"), "--gpu"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown argument --gpu" in done.stderr
