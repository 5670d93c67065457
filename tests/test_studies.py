"""Every built study end to end on tiny backbones in seconds; resume, skip, refusals, the report and its verdicts."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

from conftest import saved
from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.errors import SoftpromptError
from softprompt.evaluate import evaluate
from softprompt.model import PromptedModel
from softprompt.studies import STUDIES, StudyConfig
from softprompt.studies.ensemble import vote
from softprompt.studies.folder import StudyFolder
from softprompt.studies.scale import TREND
from softprompt.studies.verdicts import CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, SUPPORTED
from softprompt.tasks import get_task

STATES = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)

torch.set_num_threads(1)
TINY = ["--max-steps", "2", "--eval-examples", "8", "--select-examples", "16", "--seeds", "2", "--quiet"]


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
        assert row["config"]["output"] == str(tmp_path / row["run"]) and row["run"].startswith("points/cb-")  # the shared run cache
        accuracy = row["metrics"]["accuracy"]  # on the dev set, at the step chosen on held-out training examples
        assert len(row["dev_correct"]) == 8 and accuracy == pytest.approx(row["dev_correct"].count("1") / 8)
        assert (Path(row["config"]["output"]) / "prompt.safetensors").is_file()
        assert row["metric"] == "f1_macro" and 0 <= row["score"] <= 1 and row["chance"] is not None
    lengths = [r["config"]["prompt"]["length"] for r in rows]
    assert lengths == ([1, 5, 20, 100, 150] * 2 if name == "length" else [100] * 6)
    table = (tmp_path / name / "table.md").read_text()
    assert "at batch 32, step chosen on 16 held-out training examples, first 8 dev examples scored at it, 2 seed(s)" in table
    assert t5_dir.name in table
    assert all(f"| {s} |" in table for s in settings) and "±" in table
    assert (tmp_path / name / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_points_and_resumes_a_torn_study(capsys, tmp_path, t5_dir):
    args = ("--model", t5_dir, "--task", "cb")
    assert study(capsys, "init", tmp_path, *args)[0] == 0
    lines = (tmp_path / "init" / "results.jsonl").read_text().splitlines()
    # An interrupted study: the last two points never wrote their record (nor the study its results.jsonl).
    (tmp_path / "init" / "results.jsonl").write_text("\n".join(lines[:4]) + "\n")
    for line in lines[4:]:
        StudyFolder(tmp_path, "init").record_path(json.loads(line)["key"]).unlink()
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


def test_unknown_studies_list_the_available_ones(capsys, tmp_path):
    code, _, err = study(capsys, "nosuch", tmp_path)
    one_error_line(code, err, "unknown study 'nosuch'", *STUDIES, "methods")
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


def records(model: str, settings: dict[str, tuple[float, ...]], chance: float = 0.5, n: int = 400, **extra) -> list[dict]:
    """Hand-made point records: per setting, one accuracy per seed, with per-example correctness of that accuracy."""
    out = []
    for name, scores in settings.items():
        for seed, score in enumerate(scores):
            right = round(score * n)
            correct = "".join("1" if (k * 7919 + seed) % n < right else "0" for k in range(n))  # a fixed spread of the right ones
            out.append({"model": model, "setting": name, "seed": seed, "score": right / n, "metric": "accuracy", "chance": chance,
                        "dev_correct": correct, "metrics": {"accuracy": right / n}, **extra})
    return out


def inits(random_uniform, sampled_vocab, class_label) -> list[dict]:
    return records("m", {"random-uniform": random_uniform, "sampled-vocab": sampled_vocab, "class-label": class_label})


def labels(study: str, recs: list[dict]) -> dict[str, str]:
    return {verdict.claim: verdict.label for _, verdict in STUDIES[study].verdicts(recs)}


def test_init_verdicts_are_tests_with_four_states():
    good = labels("init", inits((0.60, 0.62, 0.61, 0.60), (0.70, 0.71, 0.72, 0.70), (0.80, 0.82, 0.81, 0.80)))
    assert [good[c] for c in ("class label > sampled vocab", "sampled vocab > random uniform")] == [SUPPORTED, SUPPORTED]
    assert good["the gap is largest for small models and gone at XXL"] == NOT_TESTABLE  # one size
    swapped = labels("init", inits((0.80, 0.82, 0.81, 0.80), (0.70, 0.71, 0.72, 0.70), (0.60, 0.62, 0.61, 0.60)))
    assert swapped["class label > random uniform"] == CONTRADICTED
    noisy = labels("init", inits((0.55, 0.75, 0.65), (0.60, 0.80, 0.62), (0.75, 0.65, 0.70)))
    assert noisy["class label > random uniform"] == INCONCLUSIVE  # right order of means, not beyond the noise
    chance = labels("init", inits((0.50, 0.51), (0.50, 0.50), (0.51, 0.51)))
    assert set(chance.values()) == {NOT_TESTABLE}  # nothing learned: budget
    single = labels("init", inits((0.6,), (0.7,), (0.8,)))
    assert single["class label > sampled vocab"] == NOT_TESTABLE


def test_length_verdicts_more_than_one_token_and_marginal_gains():
    def of(*means):
        return records("m", {f"p={p}": (m - 0.01, m + 0.01, m, m + 0.005) for p, m in zip((1, 5, 20, 100, 150), means)})

    flat = labels("length", of(0.6, 0.7, 0.8, 0.8, 0.805))
    assert flat["more than one token matters a lot (for all but the largest model): p=20 > p=1"] == SUPPORTED
    assert flat["past 20 tokens the gains are marginal: p=100 ≈ p=20 (±2 points)"] == SUPPORTED
    collapse = labels("length", of(0.6, 0.7, 0.8, 0.6, 0.55))  # p = 100 and 150 collapse: not "marginal"
    assert collapse["past 20 tokens the gains are marginal: p=150 ≈ p=20 (±2 points)"] == CONTRADICTED
    one = labels("length", of(0.8, 0.8, 0.8, 0.8, 0.8))
    assert one["more than one token matters a lot (for all but the largest model): p=20 > p=1"] == INCONCLUSIVE


def test_report_holds_each_study_with_a_computed_verdict(capsys, tmp_path, t5_dir, gpt2_dir):
    for name in ("length", "init"):
        assert study(capsys, name, tmp_path, "--model", t5_dir, "--task", "cb")[0] == 0
    assert study(capsys, "init", tmp_path / "gpt2", "--model", gpt2_dir, "--task", "cb")[0] == 0  # a group: ROOT/GROUP/NAME
    code = main(["report", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = (tmp_path / "REPORT.md").read_text()
    assert out.strip() == str(tmp_path / "REPORT.md")
    for name in ("length", "init"):
        assert f"## Study `{name}`" in report and f"({name}/plot.png)" in report
    assert "Verdict rule:" in report and "class label > sampled vocab" in report
    made_by = next(line for line in report.splitlines() if line.startswith("Made by: `softprompt study init") and "gpt2" in line)
    assert "6 points, " in made_by and "min of wall time summed over them" in made_by  # 3 inits x 2 seeds
    before = (tmp_path / "gpt2" / "init" / "results.jsonl").read_text()
    assert main(shlex.split(made_by.split("`")[1])[1:]) == 0, capsys.readouterr()[1]  # the same study: resumed, nothing rerun
    assert (tmp_path / "gpt2" / "init" / "results.jsonl").read_text() == before
    assert "## Study `init` in `gpt2/`" in report and "(gpt2/init/plot.png)" in report and "(#study-init-in-gpt2)" in report
    verdicts = [line for line in report.splitlines() if line.startswith("| [")]
    assert len(verdicts) == 6 + 4 + 4 and all(any(f"**{v}**" in line for v in STATES) for line in verdicts)  # one row per sub-claim
    assert "Caveats:" in report and "paired by seed" in report


def test_report_on_an_empty_root_is_one_line(capsys, tmp_path):
    code = main(["report", str(tmp_path)])
    one_error_line(code, capsys.readouterr()[1], "no finished study")


def test_study_config_refuses_bad_numbers():
    with pytest.raises(SoftpromptError, match="seeds"):
        StudyConfig(name="length", seeds=0)


def test_ensemble_scores_every_prompt_in_one_mixed_batch(capsys, tmp_path, t5_dir, data_dir):
    code, out, err = study(capsys, "ensemble", tmp_path, "--model", t5_dir, "--task", "cb")
    assert code == 0, err
    rows = results(tmp_path, "ensemble")
    assert [r["setting"] for r in rows] == ["single", "single", "ensemble"]
    together = rows[-1]
    assert together["prompts_per_batch"] == 2 and len(together["singles"]) == 2
    # Each prompt scored alone, as `softprompt eval` does, gives the score it got inside the mixed batches.
    task = get_task("cb")
    examples = task.load("validation", data_dir)[:8]
    for k, member in enumerate(rows[:2]):
        model = PromptedModel(load_backbone(str(t5_dir))).eval()
        model.load_prompt(member["config"]["output"], "alone")
        alone = evaluate(model, task, examples, "alone", "rank")
        assert alone[together["metric"]] == pytest.approx(together["singles"][k])
    table = (tmp_path / "ensemble" / "table.md").read_text()
    assert "| single prompt |" in table and "| best single (seed " in table and "| majority vote |" in table
    single = next(line for line in table.splitlines() if "| single prompt |" in line).split("|")
    last = sum(r["score_last"] for r in rows[:2]) / 2  # the members' dev at their last step, beside their chosen-step score
    assert "held-out, chosen step (%)" in table and single[-3].strip().startswith(f"{100 * last:.1f}")


def test_vote_takes_the_majority_and_breaks_ties_by_likelihood():
    labels = ("a", "b", "c")
    assert vote(["a", "b", "b"], [[0, -1, -2]] * 3, labels) == "b"
    tie = [[-1.0, -3.0, -9.0], [-2.0, -0.5, -9.0]]  # summed: a -3.0, b -3.5
    assert vote(["a", "b"], tie, labels) == "a" and vote(["b", "a"], tie, labels) == "a"
    assert vote(["a", "b"], [[-1.0, -3.0, -9.0], [-4.0, -0.5, -9.0]], labels) == "b"  # summed: a -5.0, b -3.5


def test_transfer_rte_to_cb_and_axb_prompt_and_model_tuning(capsys, tmp_path, t5_dir):
    code, _, err = study(capsys, "transfer", tmp_path, "--model", t5_dir)
    assert code == 0, err
    rows = results(tmp_path, "transfer")
    assert [r["setting"] for r in rows] == ["prompt tuning", "model tuning"] * 2
    for r in rows:
        assert r["source_task"] == "rte" and set(r["targets"]) == {"cb", "axb"} and r["source_metric"] == "accuracy"
        assert set(r["targets"]["cb"]["metrics"]) == {"accuracy", "f1_macro"} and r["targets"]["axb"]["metric"] == "mcc"
    assert rows[1]["config"]["tune"] == "model" and rows[1]["config"]["prompt"]["length"] == 0
    assert (Path(rows[1]["config"]["output"]) / "backbone" / "config.json").is_file()
    saved_study = json.loads((tmp_path / "transfer" / "study.json").read_text())
    assert saved_study["target_task"] == "cb,axb" and saved_study["label_map"]["cb"]["neutral"] == "not_entailment"
    table = (tmp_path / "transfer" / "table.md").read_text()
    assert "| prompt tuning -> cb |" in table and "| model tuning -> axb | mcc |" in table


def test_transfer_squad_dev_split_to_the_mrqa_sets_by_f1(capsys, tmp_path, t5_dir):
    code, _, err = study(capsys, "transfer", tmp_path, "--model", t5_dir, "--task", "squad-dev-split", "--seeds", "1")
    assert code == 0, err
    rows = results(tmp_path, "transfer")
    assert [r["setting"] for r in rows] == ["prompt tuning", "model tuning"] and rows[0]["source_metric"] == "f1"
    assert sorted(rows[0]["targets"]) == ["mrqa-drop", "mrqa-duorc", "mrqa-relationextraction"]  # the three sets present
    assert all(t["metric"] == "f1" and set(t["metrics"]) == {"f1", "em"} and t["chance"] == 0.0
               for t in rows[0]["targets"].values())
    table = (tmp_path / "transfer" / "table.md").read_text()
    assert "first 40 articles (8,981 questions)" in table and "| prompt tuning -> mrqa-drop | f1 |" in table
    assert "**not testable** (budget: no run learned the source task" in table  # a 2-step tiny model learned nothing


@pytest.mark.parametrize("args, needle", [(["--task", "squad-dev-split", "--target-task", "cb"], "is a classification task"),
                                          (["--task", "squad-dev-split", "--label-map", "a=b"], "source task squad-dev-split has none"),
                                          (["--task", "cb"], "no default target for task cb"),
                                          (["--target-task", "sst2"], "no built-in label map from rte to sst2")])
def test_transfer_refuses_a_target_the_source_cannot_be_read_as(capsys, tmp_path, t5_dir, args, needle):
    code, _, err = study(capsys, "transfer", tmp_path, "--model", t5_dir, *args)
    one_error_line(code, err, needle)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("label_map, needle", [("entailment=entailment,contradiction=not_entailment,maybe=not_entailment", "'maybe'"),
                                               ("entailment=entailment,contradiction=nope,neutral=nope", "'nope'"),
                                               ("entailment=entailment", "leaves out")])
def test_transfer_refuses_a_label_map_the_tasks_lack(capsys, tmp_path, t5_dir, label_map, needle):
    code, _, err = study(capsys, "transfer", tmp_path, "--model", t5_dir, "--label-map", label_map)
    one_error_line(code, err, needle)
    assert not any(tmp_path.iterdir())


def test_objective_compares_the_two_checkpoints_and_sentinel_targets(capsys, tmp_path, t5_dir, tmp_path_factory):
    lm = saved("t5", tmp_path_factory, seed=1)
    code, _, err = study(capsys, "objective", tmp_path, "--model", t5_dir, "--model", lm, "--task", "cb")
    assert code == 0, err
    rows = results(tmp_path, "objective")
    assert [r["setting"] for r in rows] == ["span corruption", "span corruption + sentinel", "LM adaptation"] * 2
    assert [r["model"] for r in rows[:3]] == [str(t5_dir), str(t5_dir), str(lm)]
    assert [r["config"]["target_format"] for r in rows[:3]] == ["plain", "sentinel", "plain"]
    assert all(r["invalid"] is not None and r["metric"] == "rank_f1_macro" for r in rows)
    table = (tmp_path / "objective" / "table.md").read_text()
    assert "illegal outputs" in table and table.count("| span corruption") == 2


def test_objective_refuses_decoder_only_backbones(capsys, tmp_path, gpt2_dir, t5_dir):
    code, _, err = study(capsys, "objective", tmp_path, "--model", t5_dir, "--model", gpt2_dir, "--task", "cb")
    one_error_line(code, err, "decoder-only", str(gpt2_dir))
    code, _, err = study(capsys, "objective", tmp_path, "--model", t5_dir, "--task", "cb")
    one_error_line(code, err, "two --model")
    assert not any(tmp_path.iterdir())


def test_ensemble_refuses_a_task_without_labels(capsys, tmp_path, t5_dir):
    code, _, err = study(capsys, "ensemble", tmp_path, "--model", t5_dir, "--task", "squad")
    one_error_line(code, err, "squad")
    assert not any(tmp_path.iterdir())


def wider_t5(small: Path, factory) -> Path:
    """The tiny T5 at 1.5x the width: a second size of the same family."""
    config = T5Config.from_pretrained(small)
    config.d_model, config.d_ff = 48, 96
    torch.manual_seed(1)
    path = factory.mktemp("tiny-t5-wide")
    T5ForConditionalGeneration(config).save_pretrained(path)
    T5TokenizerFast.from_pretrained(small).save_pretrained(path)
    return path


def test_scale_prompt_tuning_model_tuning_and_prompt_design_across_sizes(capsys, tmp_path, t5_dir, tmp_path_factory):
    wide = wider_t5(t5_dir, tmp_path_factory)
    code, _, err = study(capsys, "scale", tmp_path, "--model", t5_dir, "--model", wide, "--task", "cb", "--seeds", "1")
    assert code == 0, err
    rows = results(tmp_path, "scale")
    settings = ["prompt tuning", "model tuning", "prompt design (zero-shot)", "prompt design (4-shot)"]
    assert [r["setting"] for r in rows] == settings * 2 and [r["model"] for r in rows] == [str(t5_dir)] * 4 + [str(wide)] * 4
    assert rows[0]["parameters"] < rows[4]["parameters"]
    tuned = rows[1]["config"]  # T5's fine-tuning recipe: every weight, no prompt, Adafactor lr 1e-3 with parameter scaling
    assert (tuned["tune"], tuned["prompt"]["length"], tuned["lr"], tuned["parameter_scaling"]) == ("model", 0, 1e-3, True)
    assert rows[0]["config"]["parameter_scaling"] is False
    zero, few = rows[2], rows[3]
    assert zero["steps"] == few["steps"] == 0 and zero["config"]["prompt"]["init"] == "text"
    assert zero["config"]["prompt"]["init_text"] == "Answer with one of: entailment, contradiction, neutral."
    assert few["config"]["prompt"]["init_text"].count(" answer: ") == 4
    backbone = load_backbone(str(t5_dir))
    assert few["config"]["prompt"]["length"] == len(backbone.word_ids(few["config"]["prompt"]["init_text"]))
    table = (tmp_path / "scale" / "table.md").read_text()
    assert table.count("**not testable**") == 3 * 2 + 1  # three contrasts at each size (one seed: nothing to pair), the trend


def test_scale_verdicts_at_one_size_and_the_trend_across_sizes():
    def size(model, params, prompt, tuned, design):
        return records(model, {"prompt tuning": (prompt, prompt + 0.01, prompt - 0.01), "model tuning": (tuned, tuned + 0.02, tuned - 0.01),
                               "prompt design (zero-shot)": (design,) * 3, "prompt design (4-shot)": (design,) * 3}, parameters=params)

    both = labels("scale", size("big", 10**9, 0.88, 0.88, 0.6) + size("small", 10**6, 0.6, 0.8, 0.55))
    assert both[TREND] == SUPPORTED
    assert labels("scale", size("big", 10**9, 0.60, 0.90, 0.6) + size("small", 10**6, 0.6, 0.8, 0.55))[TREND] == CONTRADICTED
    one = labels("scale", size("small", 10**6, 0.6, 0.8, 0.55))
    assert one[TREND] == NOT_TESTABLE and one["prompt tuning > prompt design (zero-shot)"] == SUPPORTED


def test_scale_refuses_backbones_of_different_families(capsys, tmp_path, t5_dir, gpt2_dir):
    code, _, err = study(capsys, "scale", tmp_path, "--model", t5_dir, "--model", gpt2_dir, "--task", "cb")
    one_error_line(code, err, "different families", "t5", "gpt2")
    assert not any(tmp_path.iterdir())


def test_budgets_paper_quick_and_overrides():
    paper = STUDIES["length"].context(StudyConfig(name="length")).budget
    assert (paper.steps, paper.batch_size, paper.eval_examples, paper.seeds) == (30_000, 32, None, 3)
    quick = STUDIES["ensemble"].context(StudyConfig(name="ensemble", quick=True)).budget
    assert quick.quick and quick.seeds == 5 and quick.eval_examples == 200 and quick.batch_size == 16
    tiny = STUDIES["ensemble"].context(StudyConfig(name="ensemble", quick=True, max_steps=2, seeds=2, eval_examples=8)).budget
    assert (tiny.steps, tiny.eval_every, tiny.seeds, tiny.eval_examples) == (2, 2, 2, 8)
    assert "--quick (CPU) budget" in quick.describe() and "full dev set" in paper.describe()
    assert "the paper's budget" in paper.describe() and "%" not in paper.describe()
    reduced = replace(paper, steps=300)  # not the paper's budget, however it was set (the "20-step paper budget")
    assert "a reduced budget" in reduced.describe() and "1.0% of the paper's 30,000" in reduced.describe()


def test_transfer_is_not_testable_when_the_source_task_was_not_learned():
    def record(setting, seed, source, target):
        right = round(source * 300)
        return {"model": "m", "setting": setting, "seed": seed, "source_task": "rte", "source_score": source, "source_chance": 0.54,
                "chance": 0.54, "metric": "accuracy", "dev_correct": "1" * right + "0" * (300 - right),
                "targets": {"cb": {"metric": "accuracy", "score": target, "chance": 0.2, "metrics": {"accuracy": target}}}}

    claim = "extension, zero-shot rte -> cb: prompt tuning > model tuning"
    learned = ([record("prompt tuning", s, 0.8, 0.7 + s / 100 + s * s / 1000) for s in range(3)]
               + [record("model tuning", s, 0.8, 0.4 + s / 100) for s in range(3)])
    verdicts = labels("transfer", learned)
    assert verdicts[claim] == SUPPORTED and verdicts["QQP -> MRPC and MRPC -> QQP: prompt tuning ahead (Table 2)"] == NOT_TESTABLE
    at_chance = [{**r, "dev_correct": "1" * 165 + "0" * 135} for r in learned]  # the same zero-shot scores; the source not learned
    reasons = {v.claim: v for _, v in STUDIES["transfer"].verdicts(at_chance)}
    assert reasons[claim].label == NOT_TESTABLE and reasons[claim].reason.startswith("budget:")


def test_majority_rate_and_score_count_the_most_common_dev_target():
    from softprompt.studies.base import majority_rate, majority_score
    from softprompt.tasks import load_task
    from softprompt.tasks.base import Example

    task = load_task("sst2")
    examples = [Example("a", "positive"), Example("b", "negative"), Example("c", "positive"), Example("d", "")]
    assert majority_rate(examples) == pytest.approx(2 / 3)  # the unlabeled example is not counted
    assert majority_score(task, examples[:3]) == pytest.approx(next(iter(task.metric(["positive"] * 3, examples[:3]).values())))
    assert majority_rate([]) is None and majority_score(task, [Example("x", "")]) is None


def test_a_study_saved_before_select_examples_is_the_one_select_examples_0_makes(tmp_path):
    """A study.json from before --select-examples (chosen on dev) compares equal to `--select-examples 0`'s form, and
    the command the report prints for it says `--select-examples 0`: the default now holds examples out of training."""
    from dataclasses import replace

    from softprompt.run import config_differences
    from softprompt.studies.config import resolve_budget, saved_form
    from softprompt.studies.folder import comparable
    from softprompt.studies.runner import command_line

    config = StudyConfig(name="init", quick=True, model=("packaged:t5-nano-lm-adapted",), task="sst2", select_examples=0,
                         data_dir="../shared/data")
    now = saved_form(config, resolve_budget(config), {})
    old = {k: v for k, v in now.items() if k not in ("select_examples", "given")}
    old["budget"] = {k: v for k, v in now["budget"].items() if k != "select_examples"}
    assert now["budget"]["select_examples"] is None
    assert config_differences(comparable(old), comparable(now), ()) == []
    assert "--select-examples 0" in command_line(old, tmp_path) and "--select-examples 0" in command_line(now, tmp_path)
    default_config = replace(config, select_examples=None)
    default = saved_form(default_config, resolve_budget(default_config), {})
    assert config_differences(comparable(old), comparable(default), ()) == ["budget.select_examples"]
    assert "--select-examples" not in command_line(default, tmp_path)
