"""RunResult: the typed record behind result.json."""

import dataclasses
import json

from golfcore.result import RunResult


def test_round_trips_through_result_json(tmp_path):
    result = RunResult("r", "finished", 1337, 1, "cpu", {"torch": "x"}, None, {"run": {"seed": 1337}},
                       val_bpb=1.5, legal=True, stages={"roundtrip": {"val_bpb": 1.5, "legal": True}}, steps=3)
    result.write(tmp_path / "result.json")
    data = json.loads((tmp_path / "result.json").read_text())
    assert set(data) == {f.name for f in dataclasses.fields(RunResult)}  # every field, by its own name
    assert RunResult.read(tmp_path / "result.json") == result


def test_a_diverged_record_has_no_score(tmp_path):
    record = RunResult("r", "diverged", 1, 1, "cpu", {}, None, {}, error="training diverged at step 3", diverged_at_step=3)
    record.write(tmp_path / "result.json")
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["val_bpb"] is None and not data["legal"] and data["diverged_at_step"] == 3


def test_reading_ignores_keys_it_does_not_know(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({
        "name": "r", "status": "finished", "seed": 1, "world_size": 1, "device": "cpu", "versions": {},
        "git_revision": None, "config": {}, "added_by_a_newer_golf": 1}))
    assert RunResult.read(tmp_path / "result.json").name == "r"
