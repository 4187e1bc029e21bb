"""The repository stands alone: no tracked file points outside it, and every citation resolves.

A user who clones golf alone must find every document, section and defect a comment cites, and
no code may read from a folder that only exists on the machine it was written on.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TECHNIQUES = ROOT / "docs" / "techniques.md"
SKIPPED_DIRS = {".venv", "runs", "data", "build", ".git", "__pycache__"}
DATA_SUFFIXES = {".model", ".vocab"}  # shipped tokenizer files: data, not prose or code

OUTSIDE_REFERENCES = [
    (re.compile(r"\.\./shared\b"), "points at a shared folder outside the repository"),
    (re.compile(r"\bshared/data\b"), "points at a shared data folder outside the repository"),
    (re.compile(r"""["']shared["']\s*/|/\s*["']shared["']"""), "joins a path onto a shared folder outside the repository"),
    (re.compile(r"\b(?:DESIGN|TECHNIQUES)\.md\b"), "cites private notes that are not in the repository"),
]
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\)\]}>-])/[A-Za-z_][\w.-]*/[\w.-]+")
"""An absolute path of at least two components. Not matched: relative paths (a/b, ./a, ../a),
ratios (tokens/s, 1/31), and the path part of URLs (preceded by a host name or "//")."""
SYSTEM_PATHS = {"/dev/null", "/dev/stdin", "/dev/stdout", "/dev/stderr"}
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
MARKDOWN_FILE = re.compile(r"(?<![\w/.\\-])((?:[\w.-]+/)*[\w.-]*\w\.md)\b")
DEFECT = re.compile(r"\bD(\d+)\b")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)(?:\s*[-–]\s*§?\s*(\d+(?:\.\d+)*))?")


def tracked_files() -> list[Path]:
    """Tracked and not-ignored new files in a git checkout of golf; otherwise every file outside
    build/run/venv folders."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True, check=True)
        if Path(top.stdout.strip()).resolve() == ROOT:
            listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
            return [ROOT / name for name in listed.decode("utf-8").split("\0") if name and (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        files += [Path(dirpath) / f for f in filenames]
    return files


@lru_cache(maxsize=1)
def techniques_index() -> tuple[frozenset[str], frozenset[int]]:
    """(section numbers, defect numbers) that docs/techniques.md defines in its headings."""
    text = TECHNIQUES.read_text(encoding="utf-8")
    sections = frozenset(re.findall(r"^#+ §(\d+(?:\.\d+)*)\s", text, flags=re.M))
    defects = frozenset(int(n) for n in re.findall(r"^#+ D(\d+)\s", text, flags=re.M))
    return sections, defects


@lru_cache(maxsize=1)
def tracked_names() -> frozenset[str]:
    return frozenset(path.name for path in tracked_files())


def is_citation(ref: str, line: str, start: int) -> bool:
    """A reader is sent to `ref`: a markdown link target, a path into one of the repository's own
    top-level folders (docs/..., golfcore/...), or a capitalised document name (README.md)."""
    first = ref.split("/", 1)[0]
    return (line[max(0, start - 2) : start] == "](" or ("/" in ref and (ROOT / first).is_dir())
            or ("/" not in ref and ref[:1].isupper()))


def line_problems(path: Path, line: str) -> list[str]:
    """What is wrong with one line of the file at `path` (a path inside ROOT)."""
    problems = [f"{why}: {m.group(0)!r}" for pattern, why in OUTSIDE_REFERENCES for m in pattern.finditer(line)]
    without_urls = URL.sub(" ", line)
    if not line.startswith("#!"):  # an interpreter line names a system program
        for m in ABSOLUTE_PATH.finditer(without_urls):
            if m.group(0) not in SYSTEM_PATHS:
                problems.append(f"absolute path {m.group(0)!r}: use a path relative to the repository or a setting")
    for m in MARKDOWN_FILE.finditer(without_urls):
        ref = m.group(1)
        if not is_citation(ref, without_urls, m.start()):
            continue  # a file name used as data (a test's fixture, a glob's example)
        candidates = [(path.parent / ref).resolve(), (ROOT / ref).resolve()]
        named_alone = "/" not in ref and ref in tracked_names()  # e.g. "techniques.md"
        if not named_alone and not any(c.is_file() and c.is_relative_to(ROOT) for c in candidates):
            problems.append(f"cites {ref}, which is not a file in the repository")
    sections, defects = techniques_index()
    problems += [f"D{n} is not a defect defined in docs/techniques.md" for n in map(int, DEFECT.findall(line)) if n not in defects]
    for m in SECTION.finditer(line):
        if path != TECHNIQUES and "techniques.md" not in line[: m.start()]:
            problems.append(f"bare section citation {m.group(0)!r}: say which document (docs/techniques.md §N)")
            continue
        problems += [f"docs/techniques.md has no section §{n}" for n in m.groups() if n and n not in sections]
    return problems


def file_problems(path: Path) -> list[str]:
    data = path.read_bytes()
    if path.suffix in DATA_SUFFIXES or b"\0" in data:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [f"{path.relative_to(ROOT)}:{i}: {p}" for i, line in enumerate(lines, 1) for p in line_problems(path, line)]


def test_every_tracked_file_stands_alone():
    files = tracked_files()
    assert TECHNIQUES in files and Path(__file__).resolve() in files
    problems = [p for path in files for p in file_problems(path)]
    assert not problems, "\n".join(problems)


def test_techniques_defines_the_cited_sections_and_defects():
    sections, defects = techniques_index()
    assert defects == frozenset(range(1, 24))
    assert {"0", "1", "2", "3.3", "3.11", "10", "11"} <= sections


def test_the_checks_catch_what_they_are_for():
    """Each kind of problem is found (strings are assembled so this file does not contain them)."""
    code = ROOT / "golfcore" / "example.py"
    slash = "/"
    found = {
        "shared": line_problems(code, f"x = Path('..{slash}shared{slash}data')"),
        "shared join": line_problems(code, "x = Path(__file__).parents[2] " + slash + ' "shared"'),
        "notes": line_problems(code, "# see " + "DESIGN" + ".md"),
        "absolute": line_problems(code, f'tok = "{slash}home{slash}me{slash}tok.model"'),
        "missing doc": line_problems(code, "# docs/nowhere" + ".md"),
        "outside doc": line_problems(code, "# ../../" + "README.md"),
        "defect": line_problems(code, "# docs/techniques.md, D" + "99"),
        "section": line_problems(code, "# docs/techniques.md §" + "42.7"),
        "bare section": line_problems(code, "# as in §" + "3.3"),
        "range end": line_problems(code, "# docs/techniques.md §4-" + "77"),
    }
    assert all(found.values()), {kind: problems for kind, problems in found.items() if not problems}
    fine = [
        "# docs/techniques.md §3.3 and §0; docs/techniques.md, D15",
        "# see README.md, docs/architecture.md and https://github.com/openai/parameter-golf/blob/main/README.md",
        "subprocess.run(cmd, stdout=open('/dev/null', 'w'))  # tokens/s, 1/31, ./a/b, ../x",
    ]
    assert [p for line in fine for p in line_problems(code, line)] == []
