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
    seq_len, stride, batch_seqs, chunk_tokens, vocab_size, logit_bound, documents = 16, 8, 4, 40, V, 30.0, None
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


# --- in-pass probes: units drawn over the whole stream ------------------------------------------


class AlwaysAdmit(audit.PassProbe):
    """The budget aside (tested below): every drawn unit is probed."""

    def admit(self, *args):
        self.seen += 1
        return not self.failures


def in_pass(adapter_classes, share=0.99, probe_cls=AlwaysAdmit, units=8):
    path = ToyPath(adapter_classes)
    probe = probe_cls(path, share=share, max_units=units)
    adapters = [cls() for cls in adapter_classes]
    for a in adapters:
        a.start(None, golf.EvalContext.local(V, STREAM.numel() - 1, path.chunk_tokens, path.seq_len))
    result = evaluate(path.model, STREAM, LUTS, seq_len=16, stride=8, batch_seqs=4, adapters=adapters,
                      chunk_tokens=path.chunk_tokens, probe=probe)
    return probe.record(result.seconds, result.checks["probe_seconds"]), result


def test_a_leak_in_the_second_half_escapes_the_prefix_probe_but_not_the_pass():
    late = planted("late_peek").Adapter  # leaks from target 150 on, of 300
    assert audit.run_probes(ToyPath([late]), STREAM, seed=0)["c1_causal"]["status"] == "pass"
    record, _ = in_pass([late])
    (name, failure), = record["failures"].items()
    assert failure["culprit"] == "eval adapter 'planted_late_peek'" and failure["worst_deviation"] > 1
    assert failure["unit"] * ToyPath.chunk_tokens >= 120 and "in the pass, chunk" in failure["message"]


@pytest.mark.parametrize("adapters", [[], ["pass"]])
def test_clean_passes_are_probed_over_the_whole_stream_and_pass(adapters):
    class Passthrough:
        name, history_len = "pass", 1
        start = observe = lambda self, *a: None
        adjust = lambda self, lp, h, p: lp  # noqa: E731

    record, result = in_pass([Passthrough] * len(adapters))
    assert record["failures"] == {} and record["worst_c1"] == 0.0 and record["worst_c3"] <= 1e-4
    assert record["probed_units"] == 8 and record["unit"] == ("chunk" if adapters else "batch")
    assert max(record["cut_points"]) >= 150 and min(record["cut_points"]) < 150  # both halves
    assert result.checks["probed_units"] == 8 and result.targets == 300


def test_a_state_changing_adjust_fails_c3_in_the_pass():
    record, _ = in_pass([planted("stateful_adjust").Adapter])
    assert record["failures"]["c3"]["culprit"] == "eval adapter 'planted_stateful_adjust'"


def test_the_probes_stay_within_their_share_and_none_run_at_zero():
    record, _ = in_pass([], share=0.0, probe_cls=audit.PassProbe)
    assert record["probed_units"] == 0 and record["seconds"] == 0.0
    draws = {tuple(audit.PassProbe(ToyPath(), 0.5, 4).draw(40)) for _ in range(5)}
    assert len(draws) > 1 and all(len(d) == 4 and all(10 * i <= u < 10 * (i + 1) for i, u in enumerate(d)) for d in draws)


# --- the guard: plugin code reading validation data or using the network ------------------------


def test_guard_names_the_plugin_reading_a_protected_file_and_lets_golf_and_other_files_through(tmp_path):
    from golfcore import guard
    from golfcore.data import write_shard

    shards = tmp_path / "datasets" / "c"
    shards.mkdir(parents=True)
    val, tokenizer = shards / "c_val_000000.bin", shards / "tokenizer.model"
    write_shard(val, torch.arange(10).numpy())
    tokenizer.write_bytes(b"spm")
    (shards / "c_val_bytes_000000.bin").write_bytes(b"\0")  # a byte sidecar
    (tmp_path / "docs_selected.jsonl").write_text("{}")  # the documents file, two folders up
    module = planted("reads_val")
    watch = guard.Watch(guard.protected_files([val]), {module.__file__: "planted_reads_val"})
    assert sorted(watch.protected.values()) == ["documents file", "validation data", "validation shard"]
    adapter = module.Adapter(None)
    with guard.watching(watch):
        open(val, "rb").close()  # golf's own code: no plugin on the stack
        with pytest.raises(golf.ComplianceError, match=r"plugin 'planted_reads_val' opened validation shard .*c_val_000000"):
            module.resolve_corpus = lambda data: type("C", (), {"val_files": [val]})
            adapter.start(None, None)
        module.resolve_corpus = lambda data: type("C", (), {"val_files": [tokenizer]})
        adapter.start(None, None)  # a file that holds no validation data
    open(val, "rb").close()
    assert watch.violations == [("planted_reads_val", f"opened validation shard {val}")]
    entry = audit.files_entry(watch)
    assert entry["status"] == "fail" and entry["culprit"] == "plugin 'planted_reads_val'"


def test_guard_catches_a_connection_even_when_the_plugin_swallows_the_error():
    from golfcore import guard

    module = planted("phones_home")
    watch = guard.Watch({}, {module.__file__: "planted_phones_home"})
    with guard.watching(watch):
        module.PhonesHome().golf_model_built(None, None)  # catches the error itself
    assert watch.violations == [("planted_phones_home", "opened a network connection to ('127.0.0.1', 9)")]
    assert audit.files_entry(watch)["status"] == "fail"


# --- the challenge's rulings -------------------------------------------------------------------


def test_rulings_calibration_ngram_channels_and_closed_techniques():
    q = golf.Int8Quantizer(4096)
    assert audit.calibration_entry(q)["status"] == "pass"
    q.calibration = golf.Calibration("train", 1000, 2.0, in_train_clock=True)
    assert audit.calibration_entry(q)["status"] == "pass"
    q.calibration = golf.Calibration("validation", 1000, 2.0, in_train_clock=True)
    assert "PR #728" in audit.calibration_entry(q)["message"]
    q.calibration = golf.Calibration("train", 1000, 2.0, in_train_clock=False)
    assert "PR #1868" in audit.calibration_entry(q)["message"]

    class Ngram:
        name, ngram_channel = "ngram", "within-word"

    assert audit.ngram_entry([Ngram()])["culprit"] == "eval adapter 'ngram'"
    Ngram.ngram_channel = "token"
    assert audit.ngram_entry([Ngram()])["status"] == "pass"

    from golf_plugins.hedge_mixer import HedgeMixerPlugin

    entry = audit.closed_entry({"hedge_mixer": HedgeMixerPlugin()})
    assert entry["status"] == "closed" and "PR #720" in entry["message"]
    record = {"closed_techniques": entry, "c1_causal": {"status": "pass"}}
    assert not audit.violations(record) and not audit.record_eligible(record)


NEW_PLANTS = [
    (["--with", "planted_late_peek", "--set", "data.max_val_tokens=4096", "--set", "eval.chunk_tokens=512",
      "--set", "eval.probe_share=0.9", "--set", "eval.probe_units=4"],
     "in the pass, chunk", "culprit: eval adapter 'planted_late_peek'"),
    (["--with", "planted_reads_val"], "files_and_network: plugin 'planted_reads_val' opened validation shard", ""),
    (["--with", "planted_phones_home"], "files_and_network: plugin 'planted_phones_home' opened a network connection "
                                        "to ('127.0.0.1', 9)", ""),
    (["--with", "planted_val_calibrated"], "not a legal run: plugin 'planted_val_calibrated' opened validation shard", ""),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, said, named", NEW_PLANTS, ids=[p[0][1] for p in NEW_PLANTS])
def test_golf_run_refuses_leaks_the_prefix_probe_cannot_see(args, said, named, tmp_path, pystdlib_root):
    from tests.test_cli import golf, tiny_recipe

    recipe = tiny_recipe(tmp_path, pystdlib_root)
    small = ["--set", "train.iterations=2", "--set", "train.val_every=0", "--set", "data.max_val_tokens=1024"]
    proc = golf("run", recipe, "--plugins-dir", PLANTED, *small, *args, check=False)
    assert proc.returncode == 3, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert said in error and named in error
