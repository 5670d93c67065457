"""Every built study end to end on tiny backbones in seconds; resume, skip, refusals, the report and its verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_backbone
from softprompt.cli import main
from softprompt.errors import SoftpromptError
from softprompt.studies import STUDIES, StudyConfig
from softprompt.studies.folder import StudyFolder
from softprompt.studies.summary import Row
from softprompt.studies.verdicts import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED

torch.set_num_threads(1)
TINY = ["--max-steps", "2", "--eval-examples", "8", "--seeds", "2", "--quiet"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return saved("t5", tmp_path_factory)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return saved("gpt2", tmp_path_factory)


def saved(kind: str, factory, seed: int = 0) -> Path:
    path = factory.mktemp(f"tiny-{kind}-{seed}")
    model, tokenizer = tiny_backbone(kind, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def data(monkeypatch, data_dir):
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))


def study(capsys, name: str, root: Path, *args) -> tuple[int, str, str]:
    code = main(["study", name, "--output", str(root), *TINY, *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def results(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / name / "results.jsonl").read_text().splitlines()]


def one_error_line(code: int, err: str, *needles: str) -> None:
    lines = [l for l in err.splitlines() if l.startswith("softprompt: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("name, settings", [("length", ["p=1", "p=5", "p=20", "p=100", "p=150"]),
                                            ("init", ["random-uniform", "sampled-vocab", "class-label"])])
def test_training_study_writes_its_three_files(capsys, tmp_path, t5_dir, name, settings):
    code, out, err = study(capsys, name, tmp_path, "--model", t5_dir, "--task", "cb")
    assert code == 0, err
    assert json.loads(out)["ran"] == 2 * len(settings)
    rows = results(tmp_path, name)
    assert [r["setting"] for r in rows] == settings * 2 and [r["seed"] for r in rows] == [0] * len(settings) + [1] * len(settings)
    for row in rows:
        assert row["steps"] == 2 and row["config"]["max_steps"] == 2 and row["config"]["eval_examples"] == 8
        assert row["config"]["output"] == str(tmp_path / name / "runs" / row["key"])
        assert (Path(row["config"]["output"]) / "prompt.safetensors").is_file()
        assert row["metric"] == "f1_macro" and 0 <= row["score"] <= 1 and row["chance"] is not None
    lengths = [r["config"]["prompt"]["length"] for r in rows]
    assert lengths == ([1, 5, 20, 100, 150] * 2 if name == "length" else [100] * 6)
    table = (tmp_path / name / "table.md").read_text()
    assert "2 steps at batch 32, first 8 dev examples, 2 seed(s)" in table and t5_dir.name in table
    assert all(f"| {s} |" in table for s in settings) and "±" in table
    assert (tmp_path / name / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_points_and_resumes_a_torn_study(capsys, tmp_path, t5_dir):
    args = ("--model", t5_dir, "--task", "cb")
    assert study(capsys, "init", tmp_path, *args)[0] == 0
    lines = (tmp_path / "init" / "results.jsonl").read_text().splitlines()
    # An interrupted study: the last two points never wrote their line; one left a half-trained run directory.
    (tmp_path / "init" / "results.jsonl").write_text("\n".join(lines[:4]) + "\n")
    last = json.loads(lines[-1])
    checkpoint = Path(last["config"]["output"]) / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    code, out, err = study(capsys, "init", tmp_path, *args)
    assert code == 0, err
    assert json.loads(out) | {"table": "", "plot": ""} == json.loads(out) | {"ran": 2, "skipped": 4, "table": "", "plot": ""}
    again = results(tmp_path, "init")
    assert [r["key"] for r in again] == [json.loads(line)["key"] for line in lines]
    assert again[-1]["score"] == last["score"] and checkpoint.stat().st_mtime_ns == before  # finished run: resumed, not redone
    code, out, _ = study(capsys, "init", tmp_path, *args)
    assert json.loads(out)["ran"] == 0 and len(results(tmp_path, "init")) == 6


def test_a_different_study_config_is_refused_and_nothing_written(capsys, tmp_path, t5_dir):
    assert study(capsys, "init", tmp_path, "--model", t5_dir, "--task", "cb")[0] == 0
    before = (tmp_path / "init" / "results.jsonl").read_bytes()
    code = main(["study", "init", "--output", str(tmp_path), "--model", str(t5_dir), "--task", "cb", "--max-steps", "3",
                 "--eval-examples", "8", "--seeds", "2", "--quiet"])
    _, err = capsys.readouterr()
    one_error_line(code, err, "different init study", "budget.steps")
    assert (tmp_path / "init" / "results.jsonl").read_bytes() == before


def test_unknown_and_unbuilt_studies_list_the_available_ones(capsys, tmp_path):
    code, _, err = study(capsys, "nosuch", tmp_path)
    one_error_line(code, err, "unknown study 'nosuch'", *STUDIES)
    code, _, err = study(capsys, "methods", tmp_path)
    one_error_line(code, err, "not built yet")
    assert not any(tmp_path.iterdir())


def test_unknown_task_is_refused_before_writing(capsys, tmp_path, t5_dir):
    code, _, err = study(capsys, "length", tmp_path, "--model", t5_dir, "--task", "nosuchtask")
    one_error_line(code, err, "unknown task")
    assert not any(tmp_path.iterdir())


def test_append_writes_whole_lines(tmp_path):
    folder = StudyFolder(tmp_path, "x")
    folder.start({"a": 1})
    for k in range(3):
        folder.append({"key": str(k), "text": "é\n" * k})
    assert [r["key"] for r in folder.results()] == ["0", "1", "2"]
    assert (tmp_path / "x" / "results.jsonl").read_text().count("\n") == 3


def rows(model: str, **settings: tuple[float, ...]) -> list[Row]:
    return [Row(model, name.replace("_", "-"), "accuracy", scores, chance=0.5) for name, scores in settings.items()]


def test_init_verdict_follows_the_numbers():
    init = STUDIES["init"]
    good = rows("m", random_uniform=(0.60, 0.62), sampled_vocab=(0.70, 0.71), class_label=(0.80, 0.82))
    assert init.verdict(good, "m").label == REPRODUCED
    swapped = rows("m", random_uniform=(0.80, 0.82), sampled_vocab=(0.70, 0.71), class_label=(0.60, 0.62))
    assert init.verdict(swapped, "m").label == NOT_REPRODUCED
    noisy = rows("m", random_uniform=(0.55, 0.75), sampled_vocab=(0.60, 0.80), class_label=(0.65, 0.85))
    assert init.verdict(noisy, "m").label == NOT_REPRODUCED  # right order, gaps within the spread
    chance = rows("m", random_uniform=(0.50, 0.51), sampled_vocab=(0.50, 0.50), class_label=(0.51, 0.51))
    assert init.verdict(chance, "m").label == NOT_TESTABLE
    single = rows("m", random_uniform=(0.6,), sampled_vocab=(0.7,), class_label=(0.8,))
    assert init.verdict(single, "m").label == NOT_TESTABLE


def test_length_verdict_needs_both_claims():
    length = STUDIES["length"]

    def of(*means):
        return [Row("m", f"p={p}", "accuracy", (m - 0.005, m + 0.005), x=p, chance=0.5) for p, m in zip((1, 5, 20, 100, 150), means)]

    assert length.verdict(of(0.6, 0.7, 0.8, 0.8, 0.795), "m").label == REPRODUCED
    assert length.verdict(of(0.6, 0.7, 0.8, 0.9, 0.9), "m").label == NOT_REPRODUCED  # past 20 still gains
    assert length.verdict(of(0.8, 0.8, 0.8, 0.8, 0.8), "m").label == NOT_REPRODUCED  # one token is as good


def test_report_holds_each_study_with_a_computed_verdict(capsys, tmp_path, t5_dir):
    for name in ("length", "init"):
        assert study(capsys, name, tmp_path, "--model", t5_dir, "--task", "cb")[0] == 0
    code = main(["report", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = (tmp_path / "REPORT.md").read_text()
    assert out.strip() == str(tmp_path / "REPORT.md")
    for name in ("length", "init"):
        assert f"## Study `{name}`" in report and f"({name}/plot.png)" in report
    assert "Verdict rule:" in report and "class label > sampled vocab > random uniform" in report
    verdicts = [line for line in report.splitlines() if line.startswith("| [")]
    assert len(verdicts) == 2 and all(any(v in line for v in (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE)) for line in verdicts)


def test_report_on_an_empty_root_is_one_line(capsys, tmp_path):
    code = main(["report", str(tmp_path)])
    one_error_line(code, capsys.readouterr()[1], "no finished study")


def test_study_config_refuses_bad_numbers():
    with pytest.raises(SoftpromptError, match="seeds"):
        StudyConfig(name="length", seeds=0)
