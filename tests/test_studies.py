"""Every built study end to end on tiny backbones in seconds; resume, skip, refusals, the report and its verdicts."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

from conftest import tiny_backbone
from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.errors import SoftpromptError
from softprompt.evaluate import evaluate
from softprompt.model import PromptedModel
from softprompt.studies import STUDIES, StudyConfig
from softprompt.studies.ensemble import vote
from softprompt.studies.folder import StudyFolder
from softprompt.studies.neighbors import neighbours
from softprompt.studies.summary import Row
from softprompt.studies.verdicts import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED
from softprompt.tasks import get_task

torch.set_num_threads(1)
TINY = ["--max-steps", "2", "--eval-examples", "8", "--select-examples", "16", "--seeds", "2", "--quiet"]


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
    assert "Verdict rule:" in report and "class label > sampled vocab > random uniform" in report
    made_by = next(line for line in report.splitlines() if line.startswith("Made by: `softprompt study init") and "gpt2" in line)
    assert "6 points, " in made_by and "min of wall time summed over them" in made_by  # 3 inits x 2 seeds
    before = (tmp_path / "gpt2" / "init" / "results.jsonl").read_text()
    assert main(shlex.split(made_by.split("`")[1])[1:]) == 0, capsys.readouterr()[1]  # the same study: resumed, nothing rerun
    assert (tmp_path / "gpt2" / "init" / "results.jsonl").read_text() == before
    assert "## Study `init` in `gpt2/`" in report and "(gpt2/init/plot.png)" in report and "(#study-init-in-gpt2)" in report
    verdicts = [line for line in report.splitlines() if line.startswith("| [")]
    assert len(verdicts) == 3 and all(any(v in line for v in (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE)) for line in verdicts)


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
    assert "| single prompt |" in table and "| best single |" in table and "| majority vote |" in table


def test_vote_takes_the_majority_and_breaks_ties_by_likelihood():
    labels = ("a", "b", "c")
    assert vote(["a", "b", "b"], [[0, -1, -2]] * 3, labels) == "b"
    tie = [[-1.0, -3.0, -9.0], [-2.0, -0.5, -9.0]]  # summed: a -3.0, b -3.5
    assert vote(["a", "b"], tie, labels) == "a" and vote(["b", "a"], tie, labels) == "a"
    assert vote(["a", "b"], [[-1.0, -3.0, -9.0], [-4.0, -0.5, -9.0]], labels) == "b"  # summed: a -5.0, b -3.5


def test_neighbours_of_token_embeddings_are_those_tokens(t5_dir):
    backbone = load_backbone(str(t5_dir))
    ids = backbone.word_ids("positive negative film")
    weight = backbone.embeddings.detach()[ids].clone()  # (p, e): exactly vocabulary rows
    found = neighbours(weight, backbone, ["negative"])
    tokens = backbone.tokenizer.convert_ids_to_tokens(ids)
    assert [row[0] for row in found["tokens"]] == tokens
    assert found["neighbour_cosine"] < 1 and found["label_rate"] >= 1 / len(ids)
    assert neighbours(weight[[0, 0]], backbone, [])["shared_rate"] == 1.0  # two equal rows share all neighbours


def test_neighbors_study_against_norm_matched_random_vectors(capsys, tmp_path, t5_dir):
    code, _, err = study(capsys, "neighbors", tmp_path, "--model", t5_dir, "--task", "cb")
    assert code == 0, err
    rows = results(tmp_path, "neighbors")
    assert [r["setting"] for r in rows] == ["prompt", "random (norm-matched)"] * 2
    prompt, random = rows[0], rows[1]
    assert prompt["neighbour_cosine"] > random["neighbour_cosine"]  # two steps from vocabulary rows; random directions farther
    saved = json.loads((tmp_path / "neighbors" / "runs" / prompt["key"] / "neighbors.json").read_text())
    assert len(saved["tokens"]) == 100 and all(len(t) == 5 for t in saved["tokens"]) and saved["labels"][0] == "entailment"
    table = (tmp_path / "neighbors" / "table.md").read_text()
    assert "Top-5 neighbours" in table and "positions with a label (%)" in table


def test_neighbors_of_a_saved_prompt_on_a_decoder_only_backbone(capsys, tmp_path, gpt2_dir):
    run = tmp_path / "run"
    code = main(["train", "--model", str(gpt2_dir), "--task", "cb", "--prompt-length", "6", "--max-steps", "1",
                 "--eval-examples", "4", "--output", str(run), "--quiet"])
    assert code == 0, capsys.readouterr()[1]
    code, _, err = study(capsys, "neighbors", tmp_path / "root", "--prompt", run)
    assert code == 0, err
    rows = results(tmp_path / "root", "neighbors")
    assert [r["model"] for r in rows] == [str(gpt2_dir)] * 2 and rows[0]["setting"] == "saved run"
    assert len(rows[0]["tokens"]) == 6 and "steps" not in rows[0]  # analysed, not trained
    assert "not testable at this scale" in (tmp_path / "root" / "neighbors" / "table.md").read_text()  # one prompt: no spread


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
    assert "not testable at this scale" in table  # one seed: no spread


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
    zero, few = rows[2], rows[3]
    assert zero["steps"] == few["steps"] == 0 and zero["config"]["prompt"]["init"] == "text"
    assert zero["config"]["prompt"]["init_text"] == "Answer with one of: entailment, contradiction, neutral."
    assert few["config"]["prompt"]["init_text"].count(" answer: ") == 4
    backbone = load_backbone(str(t5_dir))
    assert few["config"]["prompt"]["length"] == len(backbone.word_ids(few["config"]["prompt"]["init_text"]))
    table = (tmp_path / "scale" / "table.md").read_text()
    assert table.count("**not testable at this scale**") == 1  # one verdict for the family (one seed: no spread)


def test_scale_verdict_wants_the_gap_to_shrink():
    scale = STUDIES["scale"]

    def size(model, params, prompt, tuned, design):
        return [Row(model, s, "accuracy", (m - 0.005, m + 0.005), chance=0.5, parameters=params)
                for s, m in (("prompt tuning", prompt), ("model tuning", tuned), ("prompt design (zero-shot)", design),
                             ("prompt design (4-shot)", design))]

    def label(rows):
        return scale.family_verdict(rows).label

    assert label(size("big", 10**9, 0.88, 0.90, 0.6) + size("small", 10**6, 0.6, 0.8, 0.55)) == REPRODUCED
    assert label(size("big", 10**9, 0.70, 0.90, 0.6) + size("small", 10**6, 0.6, 0.8, 0.55)) == NOT_REPRODUCED
    assert label(size("small", 10**6, 0.6, 0.8, 0.55)) == NOT_TESTABLE


def test_budgets_paper_quick_and_overrides():
    paper = STUDIES["length"].context(StudyConfig(name="length")).budget
    assert (paper.steps, paper.batch_size, paper.eval_examples, paper.seeds) == (30_000, 32, None, 3)
    quick = STUDIES["ensemble"].context(StudyConfig(name="ensemble", quick=True)).budget
    assert quick.quick and quick.seeds == 5 and quick.eval_examples == 200 and quick.batch_size == 16
    tiny = STUDIES["ensemble"].context(StudyConfig(name="ensemble", quick=True, max_steps=2, seeds=2, eval_examples=8)).budget
    assert (tiny.steps, tiny.eval_every, tiny.seeds, tiny.eval_examples) == (2, 2, 2, 8)
    assert "--quick (CPU) budget" in quick.describe() and "full dev set" in paper.describe()


def test_transfer_is_not_testable_when_the_source_task_was_not_learned():
    def record(setting, seed, source, target):
        return {"model": "m", "setting": setting, "seed": seed, "source_score": source, "source_chance": 0.54, "metric": "accuracy",
                "targets": {"cb": {"metric": "accuracy", "score": target, "chance": 0.2, "metrics": {"accuracy": target}}}}

    study = STUDIES["transfer"]
    learned = [record("prompt tuning", s, 0.8, 0.7 + s / 100) for s in range(2)] + [record("model tuning", s, 0.8, 0.4 + s / 100) for s in range(2)]
    assert study.verdicts(learned)[0][1].label == REPRODUCED
    at_chance = [{**r, "source_score": 0.55} for r in learned]  # the same zero-shot scores, but the source was never learned
    label, reason = study.verdicts(at_chance)[0][1].label, study.verdicts(at_chance)[0][1].reason
    assert label == NOT_TESTABLE and reason.startswith("source task:")
