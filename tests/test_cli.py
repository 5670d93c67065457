"""The command line end to end on a tiny backbone, and one clear line for every bad input."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from softprompt.cli import main
from softprompt.files import json_text


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def train_args(backbone, output, *extra):
    return ["train", "--model", backbone, "--task", "cb", "--prompt-length", "4", "--max-steps", "4", "--batch-size", "4",
            "--eval-every", "2", "--eval-examples", "6", "--output", output, "--quiet", *extra]


@pytest.fixture
def trained(saved_backbone, tmp_path, capsys, data_dir, monkeypatch):
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))
    code, out, err = run(capsys, *train_args(saved_backbone, tmp_path / "cb"))
    assert code == 0, err
    assert json.loads(out)["steps"] == 4
    return tmp_path / "cb"


def one_error_line(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [l for l in err.splitlines() if l.startswith("softprompt: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_train_eval_predict_inspect(trained, saved_backbone, capsys, tmp_path):
    code, out, err = run(capsys, "eval", "--prompt", trained, "--examples", "6", "--quiet")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["task"] == "cb" and metrics["examples"] == 6 and metrics["prompt"] == "cb"
    assert {"rank_f1_macro", "rank_accuracy", "generate_accuracy", "generate_invalid"} <= set(metrics)

    code, out, err = run(capsys, "inspect", "--prompt", trained)
    assert code == 0 and json.loads(out)["length"] == 4

    # Two prompts on one model; each input names its prompt, so the batch mixes tasks.
    requests = tmp_path / "inputs.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a", "input": "hypothesis: it rains premise: the street is wet"},
        {"prompt": "b", "input": "hypothesis: cats bark premise: cats meow"},
    ]) + "\n")
    code, out, err = run(capsys, "predict", "--prompt", f"a={trained}", "--prompt", f"b={trained}", "--input-file", requests, "--method", "rank")
    assert code == 0, err
    rows = [json.loads(l) for l in out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a", "b"]
    assert all(r["output"] in ("entailment", "contradiction", "neutral") for r in rows)


def test_eval_reports_each_prompt_by_name(trained, capsys):
    """Defect 8: several --prompt are each evaluated."""
    code, out, err = run(capsys, "eval", "--prompt", f"one={trained}", "--prompt", f"two={trained}", "--examples", "4",
                         "--method", "rank", "--quiet")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == ["one", "two"] and rows[0]["accuracy"] == rows[1]["accuracy"]


def test_eval_refuses_unlabeled_test_split(trained, capsys):
    """Defect 7: SuperGLUE test rows have no labels; scoring them would count empty outputs as right."""
    code, _, err = run(capsys, "eval", "--prompt", trained, "--split", "test", "--examples", "4")
    one_error_line(code, err, "no targets", "predict")


def test_zero_shot_transfer_maps_labels(saved_backbone, tmp_path, capsys, data_dir, monkeypatch):
    """Defect 10: an RTE prompt scored on CB through the built-in map answers in RTE's labels."""
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))
    code, _, err = run(capsys, *train_args(saved_backbone, tmp_path / "rte", "--task", "rte", "--max-steps", "1"))
    assert code == 0, err
    code, out, err = run(capsys, "eval", "--prompt", tmp_path / "rte", "--task", "cb", "--examples", "8", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == "cb" and result["generate_invalid"] <= 8 and 0 <= result["rank_accuracy"] <= 1
    code, _, err = run(capsys, "eval", "--prompt", tmp_path / "rte", "--task", "cb", "--label-map", "entailment=entailment,neutral=maybe")
    one_error_line(code, err, "maybe")
    code, _, err = run(capsys, "eval", "--prompt", tmp_path / "rte", "--task", "boolq", "--examples", "2")
    one_error_line(code, err, "--label-map")


def test_export_import_round_trip(trained, saved_backbone, capsys, tmp_path):
    original = load_file(str(trained / "prompt.safetensors"))["prompt"]
    for fmt, target in (("peft", tmp_path / "adapter"), ("npy", tmp_path / "prompt.npy")):
        code, _, err = run(capsys, "export", "--prompt", trained, "--format", fmt, "--output", target)
        assert code == 0, err
        back = tmp_path / f"back-{fmt}"
        code, _, err = run(capsys, "import", "--input", target, "--format", fmt, "--output", back, "--model", saved_backbone, "--task", "cb")
        assert code == 0, err
        assert torch.equal(load_file(str(back / "prompt.safetensors"))["prompt"], original)


def test_unknown_task(saved_backbone, tmp_path, capsys):
    code, _, err = run(capsys, *train_args(saved_backbone, tmp_path / "x"), "--task", "nosuchtask")
    one_error_line(code, err, "nosuchtask")


def test_weight_average_decay_outside_0_1(saved_backbone, tmp_path, capsys):
    code, _, err = run(capsys, *train_args(saved_backbone, tmp_path / "x"), "--ema-decay", "1.5")
    one_error_line(code, err, "--ema-decay", "1.5")
    assert not (tmp_path / "x").exists()


def test_output_directory_holding_another_run(trained, saved_backbone, capsys):
    code, _, err = run(capsys, *train_args(saved_backbone, trained))
    one_error_line(code, err, str(trained), "--resume")
    code, _, err = run(capsys, *train_args(saved_backbone, trained, "--resume", "--lr", "0.1"))
    one_error_line(code, err, "different run", "lr")


def test_prompt_of_wrong_width(trained, saved_backbone, capsys, tmp_path):
    bad = tmp_path / "wide"
    bad.mkdir()
    meta = json.loads((trained / "prompt.json").read_text())
    meta["width"] = 48
    (bad / "prompt.json").write_text(json.dumps(meta))
    save_file({"prompt": torch.zeros(4, 48)}, str(bad / "prompt.safetensors"))
    code, _, err = run(capsys, "eval", "--prompt", bad, "--model", saved_backbone, "--examples", "2")
    one_error_line(code, err, str(bad), "width")


def test_truncated_prompt_file(trained, capsys, tmp_path):
    weights = trained / "prompt.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    code, _, err = run(capsys, "inspect", "--prompt", trained)
    one_error_line(code, err, str(weights))


def test_prompt_for_another_backbone_is_refused(trained, kind, capsys, tmp_path):
    from conftest import tiny_backbone

    other = tmp_path / "other"
    model, tokenizer = tiny_backbone(kind, seed=1)
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    code, _, err = run(capsys, "eval", "--prompt", trained, "--model", other, "--examples", "2")
    one_error_line(code, err, "--allow-other-backbone")


def custom_args(backbone, output, train_file, *extra):
    return ["train", "--model", backbone, "--task", "custom", "--train-file", train_file, "--dev-file", train_file,
            "--input-template", "review: {text}", "--target-field", "label", "--labels", "bad,good",
            "--prompt-length", "3", "--max-steps", "2", "--batch-size", "2", "--output", output, "--quiet", *extra]


@pytest.mark.parametrize("rows, needles", [
    ('{"text": "fine", "label": "good"}\n{"label": "bad"}\n', ["line 2", "text"]),
    ('{"text": "fine", "label": "good"}\n{"text": "meh", "label": "okay"}\n', ["line 2", "okay"]),
    ('{"text": "fine", "label": "good"}\n{"text": "  ", "label": "bad"}\n', ["line 2"]),
    (b'{"text": "caf\xe9", "label": "good"}\n', ["line 1"]),
    ('{"text": {"body": "fine"}, "label": "good"}\n', ["line 1", "field 'text' holds a JSON object", "{text.body}"]),
])
def test_bad_custom_rows(rows, needles, saved_backbone, tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    code, _, err = run(capsys, *custom_args(saved_backbone, tmp_path / "out", path))
    one_error_line(code, err, str(path), *needles)
    assert not (tmp_path / "out" / "prompt.safetensors").exists()


def test_custom_task_trains(saved_backbone, tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine film", "label": "good"}\n{"text": "awful", "label": "bad"}\n')
    code, out, err = run(capsys, *custom_args(saved_backbone, tmp_path / "out", path))
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "prompt.json").read_text())["labels"] == ["bad", "good"]


def test_custom_task_reads_a_dotted_field(saved_backbone, tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"review": {"text": "fine film"}, "label": "good"}\n{"review": {"text": "awful"}, "label": "bad"}\n')
    args = custom_args(saved_backbone, tmp_path / "out", path)
    args[args.index("--input-template") + 1] = "review: {review.text}"
    code, _, err = run(capsys, *args)
    assert code == 0, err


def test_predict_and_inspect_print_non_ascii_text_as_itself(saved_backbone, tmp_path, capsys):
    path = tmp_path / "avis-clientèle.jsonl"
    path.write_text('{"text": "très bien", "label": "good"}\n{"text": "mauvais 日本", "label": "bad"}\n', encoding="utf-8")
    args = custom_args(saved_backbone, tmp_path / "out", path)
    args[args.index("--input-template") + 1] = "critique très brève : {text}"
    code, _, err = run(capsys, *args)
    assert code == 0, err
    code, out, err = run(capsys, "predict", "--prompt", tmp_path / "out", "--input", "critique : très 日本", "--method", "rank")
    assert code == 0, err
    assert "critique : très 日本" in out and json.loads(out)["input"] == "critique : très 日本"
    code, out, err = run(capsys, "inspect", "--prompt", tmp_path / "out")
    assert code == 0, err
    assert "critique très brève" in out and "avis-clientèle.jsonl" in out and "\\u00e8" not in out
    assert json_text({"input": "è"}, "ascii") == '{"input": "\\u00e8"}'  # a stdout that cannot write it gets escapes
    assert (tmp_path / "out" / "prompt.json").read_text(encoding="utf-8").count("très brève") == 1  # files too


def test_help_everywhere(capsys):
    for command in ([], ["train"], ["eval"], ["predict"], ["export"], ["import"], ["inspect"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: softprompt" in capsys.readouterr().out


def test_custom_prompt_evaluates_without_repeating_the_task(saved_backbone, tmp_path, capsys):
    """Defect 11: the custom task's spec is saved with the prompt."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine film", "label": "good"}\n{"text": "awful", "label": "bad"}\n')
    code, _, err = run(capsys, *custom_args(saved_backbone, tmp_path / "out", path))
    assert code == 0, err
    code, out, err = run(capsys, "eval", "--prompt", tmp_path / "out", "--quiet")
    assert code == 0, err
    assert json.loads(out)["examples"] == 2


def test_resume_custom_task_with_labels_and_other_spellings(saved_backbone, tmp_path, capsys, monkeypatch, data_dir):
    """Defects 2 and 3: labels saved as a JSON list and --output spelled another way still resume."""
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine film", "label": "good"}\n{"text": "awful", "label": "bad"}\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *custom_args(saved_backbone, "runs/x", "rows.jsonl"))
    assert code == 0, err
    for spelling in ("./runs/x", tmp_path / "runs" / "x"):
        code, out, err = run(capsys, *custom_args(saved_backbone, spelling, path, "--max-steps", "3"), "--resume")
        assert code == 0, err
    assert json.loads(out)["steps"] == 3


def test_config_file_reruns_a_run_exactly(trained, saved_backbone, tmp_path, capsys):
    code, out, err = run(capsys, "train", "--config", trained / "run.json", "--output", tmp_path / "again", "--quiet")
    assert code == 0, err
    assert torch.equal(load_file(str(trained / "prompt.safetensors"))["prompt"],
                       load_file(str(tmp_path / "again" / "prompt.safetensors"))["prompt"])
    code, out, err = run(capsys, "train", "--config", trained / "run.json", "--output", tmp_path / "longer", "--max-steps", "5", "--quiet")
    assert code == 0 and json.loads(out)["steps"] == 5, err
    saved = json.loads((tmp_path / "longer" / "run.json").read_text())
    assert saved["max_steps"] == 5 and saved["prompt"]["length"] == 4 and saved["task"] == "cb"


def test_model_tuned_run_evaluates_by_its_folder(saved_backbone, tmp_path, capsys, data_dir, monkeypatch):
    """Defect 14: the prompt file names the tuned backbone, so eval --prompt RUN needs nothing else."""
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))
    code, _, err = run(capsys, *train_args(saved_backbone, tmp_path / "tuned", "--tune", "model", "--lr", "0.001", "--max-steps", "2"))
    assert code == 0, err
    code, out, err = run(capsys, "eval", "--prompt", tmp_path / "tuned", "--examples", "2", "--quiet")
    assert code == 0, err


def test_allow_other_backbone_still_refuses_the_other_kind(trained, kind, tmp_path, capsys):
    """Defect 13: a decoder-only prompt never runs on an encoder-decoder model (and back)."""
    from conftest import tiny_backbone

    other_kind = "gpt2" if kind == "t5" else "t5"
    other = tmp_path / "other"
    model, tokenizer = tiny_backbone(other_kind)
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    code, _, err = run(capsys, "eval", "--prompt", trained, "--model", other, "--allow-other-backbone", "--examples", "2")
    one_error_line(code, err, "backbone", "decoder-only" if kind == "gpt2" else "encoder-decoder")


def test_prompt_metadata_of_the_wrong_type(trained, capsys):
    """Defect 15: a string where a number belongs is named, not reported as a shape mismatch."""
    meta = json.loads((trained / "prompt.json").read_text())
    meta["length"] = "4"
    (trained / "prompt.json").write_text(json.dumps(meta))
    code, _, err = run(capsys, "inspect", "--prompt", trained)
    one_error_line(code, err, "prompt.json", "length", "'4'")


def test_header_only_csv_names_the_file(saved_backbone, tmp_path, capsys):
    """Defect 16."""
    rows = tmp_path / "rows.csv"
    rows.write_text("text,label\n")
    code, _, err = run(capsys, *custom_args(saved_backbone, tmp_path / "out", rows))
    one_error_line(code, err, str(rows), "no examples")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, needles", [
    (["--batch-size", "0"], ["batch_size"]), (["--batch-size", "-2"], ["batch_size"]),
    (["--eval-every", "0"], ["eval_every"]), (["--checkpoint-every", "0"], ["checkpoint_every"]),
    (["--vocab-sample-size", "0"], ["vocab_sample_size"]), (["--device", "cuda"], ["CUDA"]),
    (["--max-steps", "-1"], ["max_steps"]), (["--train-examples", "-3"], ["train_examples"]), (["--lr", "-1"], ["lr"]),
    (["--prompt-length", "0"], ["prompt length", "--prompt-length"]), (["--max-input-length", "1"], ["max_input_length"]),
    (["--prompt-length", "100000"], ["prompt length 100000", "--prompt-length"]),
    (["--init", "text"], ["--init-text"]),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_impossible_settings_get_one_line(flags, needles, saved_backbone, tmp_path, capsys, data_dir, monkeypatch):
    """Defects 5 and 6: each is refused with a message naming the setting, and nothing is written."""
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))
    code, _, err = run(capsys, *train_args(saved_backbone, tmp_path / "x"), *flags)
    one_error_line(code, err, *needles)
    assert not (tmp_path / "x" / "run.json").exists()


def test_output_paths_that_cannot_hold_a_run(saved_backbone, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for output, needle in ((a_file, "is a file"), (a_file / "sub", "is a file"), (Path("/proc/softprompt-run"), "softprompt-run")):
        code, _, err = run(capsys, *train_args(saved_backbone, output))
        one_error_line(code, err, needle)
    assert a_file.read_text() == "x"


def test_predict_bad_batch_size(trained, capsys):
    code, _, err = run(capsys, "predict", "--prompt", trained, "--input", "hypothesis: a premise: b", "--batch-size", "0")
    one_error_line(code, err, "batch_size")


def test_unknown_choices_are_refused_by_the_config():
    from softprompt.config import TrainConfig
    from softprompt.errors import SoftpromptError

    for field, value in (("tune", "lora"), ("eval_method", "vote"), ("target_format", "xml")):
        with pytest.raises(SoftpromptError, match=field):
            TrainConfig(**{field: value})
