"""golf report as a person sees it: the page for real runs, opened in headless Chromium where it exists."""

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from golf_tools.run_report import CHARTS, PAGE, render
from golf_tools.runs import read_run
from tests.tools.test_runs import golf

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def single(run_folder, tmp_path_factory):
    return render([run_folder["finished"]], tmp_path_factory.mktemp("report_one"))


@pytest.fixture(scope="module")
def several(run_folder, tmp_path_factory):
    runs = [run_folder[k] for k in ("finished", "other", "invalid", "interrupted", "diverged")]
    return render(runs, tmp_path_factory.mktemp("report_several"))


def images(page: Path) -> dict[str, bytes]:
    """data-file -> the PNG bytes embedded in the page."""
    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*" data-file="([^"]+)"', page.read_text())
    return {name: base64.b64decode(data) for data, name in found}


def test_one_run_page_embeds_every_chart_and_writes_the_pngs_beside_it(single, run_folder):
    embedded = images(single)
    assert list(embedded) == [file for file, _, _ in CHARTS]
    for name, data in embedded.items():
        assert data[:4] == b"\x89PNG" and (single.parent / name).read_bytes() == data
    text = single.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched: the page stands alone
    result = json.loads((run_folder["finished"] / "result.json").read_text())
    assert f"{result['val_bpb']:.4f}" in text and ">finished<" in text
    for check in result["compliance"]:
        if isinstance(result["compliance"][check], dict) and "status" in result["compliance"][check]:
            assert f"<td>{check}</td>" in text


def test_schedule_events_are_the_ones_the_run_logged(single, run_folder):
    # 12 steps, warmdown_iters 6: the lr scale (12 - s) / 6 first drops below 1 on the step after 7 done;
    # late QAT (threshold 0.5) latches after the first step below 0.5, s = 10, so 11 steps are done
    run = read_run(run_folder["finished"])
    assert [e["step"] for e in run.events("warmdown")] == [7]
    assert [(e["name"], e["value"], e["step"]) for e in run.events("switch")] == [("FakeQuantize", True, 11)]
    assert [m["muon_momentum"] for m in run.events("train")][:2] == pytest.approx([0.85, 0.85 + 0.1 / 6])
    text = single.read_text()
    assert "warmdown starts (lr scale &lt; 1)" in text and "FakeQuantize -&gt; True" in text


def test_several_runs_in_every_state_on_one_page(several, run_folder):
    text = several.read_text()
    for status in ("finished", "invalid", "interrupted", "diverged"):
        assert f'class="status {status}"' in text
    assert "not a legal score: c2_normalized" in text  # the invalid re-score says why
    assert "training diverged at step 3" in text
    assert "No compliance record: the run has no score (interrupted)" in text
    assert "<td>plugins.late_qat</td>" in text  # the resolved recipes' differences
    assert len(images(several)) == len(CHARTS)


def test_golf_report_writes_beside_the_run_by_default(run_folder, tmp_path):
    copy = tmp_path / run_folder["diverged"].name
    shutil.copytree(run_folder["diverged"], copy)
    proc = golf("report", copy)
    assert proc.stdout.strip() == f"report: {copy / 'report' / PAGE}"
    text = (copy / "report" / PAGE).read_text()
    assert "Not drawn (no data in these runs): val_bpb per eval stage, Artifact bytes." in text
    missing = golf("report", tmp_path / "nothing", check=False)
    assert missing.exit_code == 1 and missing.stderr.strip() == f"error: {tmp_path / 'nothing'}: not a run directory (needs recipe.toml)"


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian package chromium)")
def test_page_opened_in_headless_chromium_shows_every_image(several, tmp_path):
    dom = chromium("--dump-dom", several.as_uri())
    widths = json.loads(re.search(r'<pre id="image-check"[^>]*>(.*?)</pre>', dom.stdout, re.S).group(1))
    assert len(widths) == len(CHARTS) and all(w > 0 for w in widths)  # each image decoded

    shot = tmp_path / "page.png"
    chromium("--window-size=1200,2400", f"--screenshot={shot}", several.as_uri())
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    histogram = pixels.histogram()
    non_white = 1 - histogram[255] / sum(histogram)
    assert pixels.size == (1200, 2400) and non_white > 0.05  # text and charts, not a blank page
