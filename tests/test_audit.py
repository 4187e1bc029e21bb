"""Legality probes: each planted violation (tests/planted/) is caught, fails the run with exit
code 3 and names its plugin; clean paths pass. Probes on a toy scoring path first (fast), then
`golf run` / `golf audit` as a user meets them (slow)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import golfcore as golf
from golfcore import audit
from golfcore.eval import ByteLUTs, evaluate

PLANTED = Path(__file__).resolve().parent / "planted"
V = 32
LUTS = ByteLUTs(torch.ones(V, dtype=torch.int16), torch.zeros(V, dtype=torch.bool), torch.zeros(V, dtype=torch.bool))


def planted(module: str):
    spec = importlib.util.spec_from_file_location(f"planted_{module}", PLANTED / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class ToyPath:
    """A scoring path over a position-wise toy model (causal unless `peek`), with the given adapters."""

    model_plugins, before_eval_plugins, document_aware = [], [], []
    seq_len, stride, batch_seqs, chunk_tokens, vocab_size = 16, 8, 4, 40, V
    device, source = torch.device("cpu"), "toy"

    def __init__(self, adapter_classes=(), peek=False, previous=None):
        self.adapter_classes = adapter_classes
        self.adapter_names = [cls().name for cls in adapter_classes]
        g = torch.Generator().manual_seed(0)
        self.table, self.ahead = torch.randn(V, V, generator=g), torch.randn(V, V, generator=g) * peek
        self.behind = torch.randn(V, V, generator=g) * (previous is not None)  # a bigram term on x_{t-1}
        self.mask_bos = previous == "masked at BOS"
        self.bos_id = golf.SpecialTokens().bos_id
        self.document_aware = ["toy"] if previous else []

    def model(self, tokens, width):  # [B,T] -> [B,width,V]
        nxt = torch.nn.functional.pad(tokens[:, 1:], (0, 1))
        prev = self.behind[torch.nn.functional.pad(tokens[:, :-1], (1, 0))]
        if self.mask_bos:
            prev = torch.where((tokens == self.bos_id)[..., None], 0.0, prev)
        return torch.log_softmax(self.table[tokens] + self.ahead[nxt] + prev, -1)[:, -width:]

    def score(self, tokens, variant, record):
        adapters = [cls() for cls in self.adapter_classes][: variant.adapters]
        chunk = variant.chunk_tokens or self.chunk_tokens
        for a in adapters:
            a.start(None, golf.EvalContext.local(V, tokens.numel() - 1, chunk, self.seq_len))
        evaluate(self.model, tokens, LUTS, seq_len=self.seq_len, stride=self.stride, adapters=adapters,
                 batch_seqs=variant.batch_seqs or self.batch_seqs, chunk_tokens=chunk, record=record)

    def reduce_max(self, value):
        return value


STREAM = torch.randint(2, V, (301,), generator=torch.Generator().manual_seed(1))


def test_a_clean_path_passes_with_every_figure_measured():
    class Passthrough:
        name, history_len = "pass", 0
        start = observe = lambda self, *a: None
        adjust = lambda self, lp, h, p: lp  # noqa: E731

    probes = audit.run_probes(ToyPath([Passthrough]), STREAM, seed=0)
    c1, c3 = probes["c1_causal"], probes["c3_score_before_update"]
    assert c1["status"] == "pass" and c1["worst_deviation"] == 0.0 and c1["reach"] > 0.1
    assert 39 in c1["cut_points"] and c1["prefix_targets"] == 40 + 16  # crosses the first chunk boundary
    assert c3["status"] == "pass" and c3["batch_seqs"] == [4, 1] and c3["worst_deviation"] <= 1e-4


@pytest.mark.parametrize("module, cls, check", [
    ("peek_rows", "Adapter", "c1_causal"),
    ("stateful_adjust", "Adapter", "c3_score_before_update"),
])
def test_planted_adapters_fail_and_are_named(module, cls, check):
    adapter = getattr(planted(module), cls)
    probes = audit.run_probes(ToyPath([adapter]), STREAM, seed=0)
    assert probes[check]["status"] == "fail"
    assert probes[check]["culprit"] == f"eval adapter 'planted_{module}'"
    assert probes[check]["worst_deviation"] > 1e-2


def test_a_model_reading_the_next_token_is_blamed_on_the_model():
    probes = audit.run_probes(ToyPath(peek=True), STREAM, seed=0)
    assert probes["c1_causal"]["status"] == "fail" and probes["c1_causal"]["culprit"] == "the model (plugins: none)"


@pytest.mark.parametrize("previous, status", [("masked at BOS", "pass"), ("crossing documents", "fail")])
def test_document_boundary_probe_holds_a_plugin_to_its_claim(previous, status):
    stream = STREAM.clone()
    stream[[0, 90, 200]] = golf.SpecialTokens().bos_id  # three documents
    row = audit.audit_documents(ToyPath(previous=previous), stream, seed=0)
    assert row["status"] == status and "tokens 1..89 rewritten" in row["figures"]


def test_evaluate_records_every_scored_distribution_once_after_the_adapters():
    seen = []
    evaluate(ToyPath().model, STREAM, LUTS, seq_len=16, stride=8, record=lambda pos, lp: seen.append((pos, lp)))
    pos = torch.cat([p for p, _ in seen])
    assert torch.equal(pos.sort().values, torch.arange(300))
    assert torch.allclose(torch.cat([lp for _, lp in seen]).logsumexp(-1), torch.zeros(300), atol=1e-5)


def test_time_caps_apply_only_where_they_mean_something():
    laptop = audit.hardware(torch.device("cpu"), 1)
    assert audit.time_entry(900.0, 0.0, "[eval] time_cap_seconds", laptop)["status"] == "not checked"
    assert audit.time_entry(900.0, 600.0, "[eval] time_cap_seconds", laptop)["status"] == "fail"
    assert audit.time_entry(500.0, 600.0, "[eval] time_cap_seconds", laptop)["status"] == "pass"
    h100s = {"device": "NVIDIA H100 80GB HBM3", "world_size": 8, "challenge_hardware": True}
    assert audit.time_entry(601.0, 0.0, "[eval] time_cap_seconds", h100s)["status"] == "fail"


# --- golf run / golf audit, as a user meets them ---------------------------------------------

PLANTS = [
    (["--with", "planted_unnormalized"], "c2_normalized", "culprit: eval adapter 'planted_unnormalized'"),
    (["--with", "planted_peek_rows"], "c1_causal", "culprit: eval adapter 'planted_peek_rows'"),
    (["--with", "planted_stateful_adjust"], "c3_score_before_update", "culprit: eval adapter 'planted_stateful_adjust'"),
    (["--with", "planted_next_token"], "c1_causal", "culprit: plugin 'planted_next_token'"),
    (["--set", "export.budget_bytes=1000"], "artifact_budget", "over the 1,000-byte budget"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, check, named", PLANTS, ids=[p[1] + "-" + p[0][1] for p in PLANTS])
def test_golf_run_and_audit_refuse_a_planted_violation(args, check, named, tmp_path, pystdlib_root):
    from tests.test_cli import golf, tiny_recipe

    recipe = tiny_recipe(tmp_path, pystdlib_root)
    small = ["--set", "train.iterations=2", "--set", "train.val_every=0", "--set", "data.max_val_tokens=1024"]
    proc = golf("run", recipe, "--plugins-dir", PLANTED, *small, *args, check=False)
    assert proc.returncode == 3, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: not a legal score: {check}:") or f"; {check}:" in error
    assert named in error
    assert "INVALID" in proc.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith(".invalid")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["val_bpb"] is None and result["legal"] is False
    assert result["compliance"][check]["status"] == "fail"
    assert all(stage["legal"] is False for stage in result["stages"].values())

    proc = golf("audit", run_dir, "--plugins-dir", PLANTED, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout and proc.stderr.startswith("error: not a legal score:")
