"""The training loop on tiny backbones and real data: frozen backbone, learning, exact resume."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softprompt.backbones import load_backbone
from softprompt.config import PromptConfig, TrainConfig
from softprompt.data import BatchStream, Features, collate, encode_all
from softprompt.errors import SoftpromptError
from softprompt.model import PromptedModel, build_model
from softprompt.prompt_io import load_prompt
from softprompt.run import Stopper
from softprompt.tasks import get_task
from softprompt.train import train


def tiny_config(backbone_dir: Path, output: Path, **overrides) -> TrainConfig:
    values = dict(task="cb", model=str(backbone_dir), output=str(output), prompt=PromptConfig(length=4), max_steps=6,
                  batch_size=4, eval_every=3, eval_examples=8, checkpoint_every=1, log_every=1, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def test_batches_grouped_by_length_or_random():
    rng = torch.Generator().manual_seed(0)
    features = [Features(list(range(n)), [1]) for n in torch.randint(1, 200, (3200,), generator=rng).tolist()]

    def one_epoch(group_by_length: bool) -> list[list[Features]]:
        stream = BatchStream(features, 32, seed=0, group_by_length=group_by_length)
        return [stream.next() for _ in range(100)]

    epochs = {g: one_epoch(g) for g in (True, False)}
    for batches in epochs.values():
        assert sorted(id(f) for batch in batches for f in batch) == sorted(map(id, features))  # every example once per epoch
    spread = {g: sum(max(f.length for f in b) - min(f.length for f in b) for b in batches) / 100 for g, batches in epochs.items()}
    assert spread[True] < 20 < 150 < spread[False]  # similar lengths together, or random draws of the whole range


def test_backbone_bit_identical_after_training(saved_backbone, tmp_path, data_dir):
    before = load_backbone(str(saved_backbone)).model
    result = train(tiny_config(saved_backbone, tmp_path / "run", data_dir=str(data_dir)), progress=False)
    after = load_backbone(str(saved_backbone)).model
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items()):
        assert torch.equal(a, b), name
    weight, metadata = load_prompt(result.output)
    assert weight.shape == (4, 32) and metadata.task == "cb" and metadata.labels == ["entailment", "contradiction", "neutral"]


def mean_dev_nll(model: PromptedModel, name: str, examples) -> float:
    feats = encode_all(model.adapter, name, model.bank[name], examples, "dev")
    with torch.no_grad():
        return float(model(collate(model.adapter, feats)))


def test_trained_prompt_beats_its_initialisation(saved_backbone, tmp_path, data_dir):
    config = tiny_config(saved_backbone, tmp_path / "run", task="sst2", data_dir=str(data_dir), max_steps=60, train_examples=2000,
                         batch_size=16, eval_every=1000, checkpoint_every=1000, prompt=PromptConfig(length=5, init="sampled-vocab"))
    result = train(config, progress=False)
    model = PromptedModel(load_backbone(str(saved_backbone))).eval()
    dev = get_task("sst2").load("validation", data_dir)[:64]
    model.load_prompt(result.output, "trained")
    trained = mean_dev_nll(model, "trained", dev)
    saved = load_file(str(Path(result.output) / "prompt.safetensors"))
    fresh, _ = build_model(config, get_task("sst2"))  # the same seeded initial prompt, untrained
    untrained = mean_dev_nll(fresh.eval(), "sst2", dev)
    assert trained < untrained - 0.5, (trained, untrained)
    assert saved["prompt"].shape == (5, 32)


def test_weight_average_is_evaluated_and_saved(saved_backbone, tmp_path, data_dir):
    """--ema-decay d: after one step the saved prompt is d * initial + (1 - d) * trained."""
    def saved_prompt(name: str, **overrides) -> torch.Tensor:
        config = tiny_config(saved_backbone, tmp_path / name, data_dir=str(data_dir), eval_every=1000, **overrides)
        return load_file(str(train(config, progress=False).output / "prompt.safetensors"))["prompt"]

    initial, stepped = saved_prompt("initial", max_steps=0), saved_prompt("stepped", max_steps=1)
    averaged = saved_prompt("averaged", max_steps=1, ema_decay=0.75)
    assert not torch.allclose(initial, stepped)
    torch.testing.assert_close(averaged, 0.75 * initial + 0.25 * stepped)


def run_cli(args, stderr_file: Path) -> subprocess.Popen:
    """The command line in a child process; its error output goes to a file so no pipe can fill."""
    return subprocess.Popen([sys.executable, "-m", "softprompt.cli", *args], stdout=subprocess.DEVNULL, stderr=stderr_file.open("w"))


@pytest.mark.parametrize("kind", ["t5", pytest.param("gpt2", marks=pytest.mark.slow)])  # GPT-2's: in CI's second step
@pytest.mark.parametrize("average", [[], pytest.param(["--ema-decay", "0.9"], marks=pytest.mark.slow)],  # in CI's second step
                         ids=["last-step", "weight-average"])
def test_resume_after_kill_equals_uninterrupted_run(saved_backbone, tmp_path, data_dir, average):
    common = ["train", "--model", str(saved_backbone), "--task", "cb", "--data-dir", str(data_dir), "--prompt-length", "4",
              "--max-steps", "24", "--batch-size", "4", "--eval-every", "10", "--eval-examples", "8",
              "--checkpoint-every", "1", "--seed", "5", "--quiet", *average]
    err = tmp_path / "stderr.txt"
    straight = run_cli([*common, "--output", str(tmp_path / "a")], err)
    assert straight.wait(timeout=300) == 0, err.read_text()

    interrupted = run_cli([*common, "--output", str(tmp_path / "b")], err)
    log = tmp_path / "b" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and log.read_text().count('"loss"') >= 1):
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    assert not (tmp_path / "b" / "result.json").exists(), "the run finished before it could be killed"
    resumed = run_cli([*common, "--output", str(tmp_path / "b"), "--resume"], err)
    assert resumed.wait(timeout=300) == 0, err.read_text()

    def records(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert records("a") == records("b"), "defect 12: the resumed log holds each step once, as the straight run's"
    for name in ("prompt.safetensors", "checkpoint.pt"):
        a_file, b_file = tmp_path / "a" / name, tmp_path / "b" / name
        if name.endswith(".safetensors"):
            assert torch.equal(load_file(str(a_file))["prompt"], load_file(str(b_file))["prompt"])
        else:
            a, b = torch.load(a_file, weights_only=False), torch.load(b_file, weights_only=False)
            assert a["trainable"].keys() == b["trainable"].keys() and a["step"] == b["step"] == 24
            assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])
            assert (a["average"] is None) == (b["average"] is None) == (not average)
            assert all(torch.equal(x, y) for x, y in zip(a["average"] or [], b["average"] or []))


def test_model_tuning_baseline_trains_every_weight(saved_backbone, tmp_path, data_dir):
    config = tiny_config(saved_backbone, tmp_path / "run", data_dir=str(data_dir), tune="model", lr=1e-3,
                         prompt=PromptConfig(length=0), max_steps=3, eval_every=3)
    result = train(config, progress=False)
    before = load_backbone(str(saved_backbone)).model
    tuned = load_backbone(str(result.output / "backbone"))
    changed = [n for (n, a), (_, b) in zip(before.named_parameters(), tuned.model.named_parameters()) if not torch.equal(a, b)]
    assert len(changed) > len(list(before.parameters())) // 2
    assert PromptedModel(tuned).load_prompt(result.output, "cb") == "cb", "the empty prompt matches the tuned backbone's fingerprint"
    assert load_prompt(result.output)[1].backbone == str((result.output / "backbone").resolve()), "defect 14: names the tuned backbone"


def test_a_checkpoint_from_before_the_base_model_rename_resumes(saved_backbone, tmp_path, data_dir):
    """Model tuning's checkpoint named the backbone's weights `backbone.*` before `PromptedModel.base_model`: such a
    checkpoint resumes to the weights of a run that never stopped, and one holding weights the run lacks is refused."""
    config = tiny_config(saved_backbone, tmp_path / "a", data_dir=str(data_dir), tune="model", lr=1e-3,
                         prompt=PromptConfig(length=0), max_steps=4, eval_every=2, eval_examples=4)
    straight = train(config, progress=False)
    resumed = replace(config, output=str(tmp_path / "b"))
    train(replace(resumed, max_steps=2), progress=False)
    checkpoint = tmp_path / "b" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False)
    state["trainable"] = {k.replace("base_model.", "backbone.", 1): v for k, v in state["trainable"].items()}
    torch.save(state, checkpoint)
    (tmp_path / "b" / "result.json").unlink()  # as if stopped at its step-2 checkpoint
    train(resumed, resume=True, progress=False)
    a, b = (load_backbone(str(tmp_path / d / "backbone")).model.state_dict() for d in "ab")
    assert straight.steps == 4 and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    state["trainable"]["backbone.no.such.weight"] = torch.zeros(1)
    torch.save(state, checkpoint)
    with pytest.raises(SoftpromptError, match="trained weights are not this run's"):
        train(resumed, resume=True, progress=False)


@pytest.mark.slow  # compiling costs about a minute on this CPU: CI's second step runs it
@pytest.mark.parametrize("kind", ["t5"])  # one family
def test_compiled_backbone_trains_like_eager(saved_backbone, tmp_path, data_dir):
    """--compile only changes speed: the same losses, dev metrics and prompt as the eager run."""
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    runs = {}
    for compiled in (False, True):
        config = tiny_config(saved_backbone, tmp_path / f"compile-{compiled}", task="sst2", data_dir=str(data_dir),
                             max_steps=4, eval_every=2, compile=compiled)
        runs[compiled] = train(config, progress=False).output
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before, "the compiled run compiled nothing"
    logs = {c: [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r or "eval" in r]
            for c, out in runs.items()}
    assert len(logs[False]) == len(logs[True]) == 6  # 4 losses, 2 evaluations
    for eager, compiled in zip(logs[False], logs[True]):
        assert eager.keys() == compiled.keys() and eager["step"] == compiled["step"]
        assert abs(eager.get("loss", 0) - compiled.get("loss", 0)) < 1e-3 and eager.get("eval") == compiled.get("eval")
    prompts = {c: torch.load(out / "checkpoint.pt", weights_only=False)["trainable"] for c, out in runs.items()}
    assert prompts[False].keys() == prompts[True].keys()
    assert all(torch.allclose(prompts[False][k], prompts[True][k], atol=1e-3) for k in prompts[False])


def test_a_resumed_run_counts_the_time_its_earlier_calls_spent(saved_backbone, tmp_path, data_dir):
    """The checkpoint keeps the run's elapsed time: after a resume the log's clock goes on from it, and the result's
    `seconds` is the whole run's, not only the last call's (a study's record keeps it as the point's training time)."""
    config = tiny_config(saved_backbone, tmp_path / "run", data_dir=str(data_dir), max_steps=4, eval_every=2, log_every=1)
    train(replace(config, max_steps=2), progress=False)
    before = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["seconds"]
    assert before > 0
    resumed = train(config, resume=True, progress=False)
    clock = [(r["step"], r["seconds"]) for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if "seconds" in r]
    assert [step for step, _ in clock] == [1, 2, 3, 4]
    assert all(a <= b for (_, a), (_, b) in zip(clock, clock[1:])), clock
    assert clock[2][1] >= before and resumed.seconds >= clock[-1][1]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["seconds"] >= before


def test_resuming_a_finished_run_changes_nothing(saved_backbone, tmp_path, data_dir):
    """Defect 12: no second evaluation, no new log lines, the same result."""
    config = tiny_config(saved_backbone, tmp_path / "run", data_dir=str(data_dir), max_steps=4, eval_every=2)
    first = train(config, progress=False)
    log = (first.output / "metrics.jsonl").read_text()
    again = train(config, resume=True, progress=False)
    assert (first.output / "metrics.jsonl").read_text() == log
    assert (again.steps, again.best_step, again.best_metrics) == (first.steps, first.best_step, first.best_metrics)


@pytest.mark.parametrize("bad", [
    {"model": "/no/such/backbone"}, {"device": "cuda:7"}, {"prompt": PromptConfig(length=100_000)},
], ids=["bad-model", "no-cuda", "huge-prompt"])
def test_a_failed_start_leaves_nothing_behind(bad, saved_backbone, tmp_path, data_dir):
    """Defect 1: a run that fails before it starts writes no run.json, so the folder takes the next run."""
    output = tmp_path / "run"
    with pytest.raises(SoftpromptError):
        train(tiny_config(saved_backbone, output, data_dir=str(data_dir), **bad), progress=False)
    assert not (output / "run.json").exists()
    assert train(tiny_config(saved_backbone, output, data_dir=str(data_dir), max_steps=1), progress=False).steps == 1


def test_a_run_that_died_before_its_first_checkpoint_can_be_restarted(saved_backbone, tmp_path, data_dir):
    output = tmp_path / "run"
    output.mkdir()
    (output / "run.json").write_text(json.dumps({"task": "cb", "lr": 9.0}))  # what a crash in the first step leaves
    (output / "metrics.jsonl").write_text("")
    for resume in (False, True):
        assert train(tiny_config(saved_backbone, output, data_dir=str(data_dir), max_steps=1), resume=resume, progress=False).steps == 1
        for name in ("checkpoint.pt", "prompt.safetensors", "prompt.json", "result.json"):
            (output / name).unlink()  # back to a folder with only run.json and a log


def test_labels_free_task_trains_with_the_default_init(saved_backbone, tmp_path, data_dir, capsys):
    """Defect 4: class-label init on a task without labels falls back to sampled vocabulary and says so."""
    rows = tmp_path / "qa.jsonl"
    rows.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) + "\n" for i in range(6)))
    spec = {"train_file": str(rows), "validation_file": str(rows), "input_template": "q: {q}", "target_field": "a"}
    result = train(tiny_config(saved_backbone, tmp_path / "run", task="custom", task_spec=spec, max_steps=2, eval_every=2,
                               eval_method="generate"), progress=False)
    assert "sampled vocabulary" in capsys.readouterr().err
    notes = [r for r in map(json.loads, (result.output / "metrics.jsonl").read_text().splitlines()) if "note" in r]
    assert len(notes) == 1 and load_prompt(result.output)[1].init == "sampled-vocab"


def test_progress_bar_ends_where_a_timed_run_ends():
    """Item 9: under --max-minutes the bar's total follows the speed, not --max-steps."""
    stopper = Stopper(max_steps=30_000, max_minutes=0.002, step=0, desc="t", progress=True)
    step = 0
    while not stopper.should_stop(step):
        time.sleep(0.01)
        step += 1
        stopper.advance(step)
    assert step < 100 and stopper.bar.total < 1000, "the total was re-estimated from the speed"
    stopper.close()
    assert stopper.bar.total == stopper.bar.n == step


@pytest.mark.parametrize("tune", ["prompt", "model"])
def test_select_split_chooses_the_step_and_scores_dev_at_it(saved_backbone, tmp_path, data_dir, tune):
    """With --select-examples the step is chosen on held-out training rows; the dev set is scored at that step and the last."""
    overrides = dict(tune="model", lr=1e-3, prompt=PromptConfig(length=0)) if tune == "model" else {}
    config = tiny_config(saved_backbone, tmp_path / "run", data_dir=str(data_dir), select_examples=12, eval_examples=None, **overrides)
    result = train(config, progress=False)
    log = [json.loads(line) for line in (result.output / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval" in r]
    assert evals and all(r["split"] == "select" for r in evals)
    assert result.best_step == max(evals, key=lambda r: r["eval"]["accuracy"])["step"]
    predictions = json.loads((result.output / "dev_predictions.json").read_text())
    dev = get_task("cb").load("validation", data_dir)
    assert len(predictions["best"]) == len(predictions["last"]) == len(dev) == 56  # the full CB dev set
    accuracy = {k: sum(p == e.target for p, e in zip(predictions[k], dev)) / len(dev) for k in ("best", "last")}
    assert result.dev_best["accuracy"] == pytest.approx(accuracy["best"]) and result.dev_last["accuracy"] == pytest.approx(accuracy["last"])
    saved = json.loads((result.output / "result.json").read_text())
    assert saved["dev_best"] == result.dev_best and saved["dev_last"] == result.dev_last
    again = train(config, resume=True, progress=False)  # a finished run: nothing is scored again
    assert again.dev_best == result.dev_best and (result.output / "metrics.jsonl").read_text().count("dev_best") == 1


def test_select_split_is_fixed_and_disjoint(data_dir):
    from softprompt.tasks import hold_out

    train_rows = get_task("cb").load("train", data_dir)
    rest, held = hold_out(train_rows, 50, "cb train")
    rest2, held2 = hold_out(train_rows, 50, "cb train")
    assert held == held2 and len(held) == 50 and len(rest) == len(train_rows) - 50
    assert not {id(e) for e in held} & {id(e) for e in rest}
    with pytest.raises(SoftpromptError, match="select_examples=250 .*only 250 examples"):
        hold_out(train_rows, 250, "cb train")


def test_a_run_saved_before_a_setting_existed_resumes_and_a_different_value_is_refused(saved_backbone, tmp_path, data_dir):
    """A field added to TrainConfig since (here `parameter_scaling`, default off) reads as its default in an
    older run.json: the run resumes. The same run saved with the setting on is another run."""
    config = tiny_config(saved_backbone, tmp_path / "run", data_dir=str(data_dir), max_steps=2)
    train(replace(config, max_steps=1), progress=False)
    run_file = tmp_path / "run" / "run.json"
    saved = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({k: v for k, v in saved.items() if k != "parameter_scaling"}))
    assert train(config, resume=True, progress=False).steps == 2
    run_file.write_text(json.dumps({**saved, "parameter_scaling": True}))
    with pytest.raises(SoftpromptError, match="parameter_scaling differ"):
        train(replace(config, max_steps=3), resume=True, progress=False)
