"""golf_tools holds what no training-and-evaluation run imports."""

import subprocess
import sys


def test_runs_do_not_import_golf_tools():
    code = (
        "import sys, golfcore.run, golfcore.train; "
        "print(sorted(m for m in sys.modules if m == 'golf_tools' or m.startswith('golf_tools.')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"
