"""The command line end to end on a tiny backbone, and one clear line for every bad input."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from softprompt.cli import main


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
    assert metrics["task"] == "cb" and metrics["examples"] == 6
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


def test_help_everywhere(capsys):
    for command in ([], ["train"], ["eval"], ["predict"], ["export"], ["import"], ["inspect"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: softprompt" in capsys.readouterr().out
