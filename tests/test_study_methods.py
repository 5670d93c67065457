"""The `methods` study on tiny backbones: every method trains and is scored, counts match a direct count, the PEFT
rank scorer matches a brute-force computation, verdicts follow the numbers, bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PrefixTuningConfig, PromptEncoderConfig, TaskType, get_peft_model
from safetensors.torch import load_file

from conftest import tiny_backbone
from softprompt.backbones import adapter_for
from softprompt.cli import main
from softprompt.studies.methods import SETTINGS, parameter_verdict
from softprompt.studies.peft_runs import peft_rank_scores
from softprompt.studies.summary import Row
from softprompt.studies.verdicts import CONTRADICTED, NOT_TESTABLE, SUPPORTED

torch.set_num_threads(1)
P = 100  # the study's prompt length and virtual tokens (PromptConfig's default)


@pytest.fixture(autouse=True)
def data(monkeypatch, data_dir):
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))


@pytest.fixture(scope="module", params=["t5", pytest.param("gpt2", marks=pytest.mark.slow),
                                        pytest.param("llama", marks=pytest.mark.slow)])  # gpt2, llama: CI's second step
def saved(request, tmp_path_factory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model, tokenizer = tiny_backbone(request.param)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return request.param, path


def run(capsys, root: Path, *args) -> tuple[int, str, str]:
    code = main(["study", "methods", "--output", str(root), "--max-steps", "2", "--eval-examples", "8", "--seeds", "1",
                 "--quiet", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def direct_counts(kind: str) -> dict[str, int]:
    """Each method's trained parameters, counted from the backbone's own modules and config (not from PEFT)."""
    model, _ = tiny_backbone(kind)
    config, modules = model.config, dict(model.named_modules())
    width = model.get_input_embeddings().weight.shape[1]

    def dims(name: str) -> tuple[int, int]:  # (in, out) of a Linear or GPT-2's Conv1D (weight stored (in, out))
        weight = modules[name].weight
        return (weight.shape[1], weight.shape[0]) if isinstance(modules[name], torch.nn.Linear) else tuple(weight.shape)

    def named(*suffixes: str) -> list[str]:
        return [n for n in modules if n.split(".")[-1] in suffixes or any(n.endswith("." + s) for s in suffixes if "." in s)]

    lora_targets, ia3_out, ia3_in = {"t5": (("q", "v"), ("k", "v"), ("wo",)), "gpt2": (("c_attn",), ("c_attn",), ("mlp.c_proj",)),
                                     "llama": (("q_proj", "v_proj"), ("k_proj", "v_proj"), ("down_proj",))}[kind]
    lora = sum(8 * sum(dims(n)) for n in named(*lora_targets))
    ia3 = sum(dims(n)[1] for n in named(*ia3_out)) + sum(dims(n)[0] for n in named(*ia3_in))
    layers = getattr(config, "num_layers", None) or config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "d_kv", None) or width // config.num_attention_heads
    return {"prompt tuning": P * width, "LoRA": lora, "IA³": ia3, "prefix tuning": P * layers * 2 * heads * head_dim,
            "model tuning": sum(p.numel() for p in model.parameters()),
            "P-tuning kept": P * (2 if kind == "t5" else 1) * width}


def test_methods_study_trains_every_method_and_counts_its_parameters(capsys, tmp_path, saved):
    kind, path = saved
    code, out, err = run(capsys, tmp_path, "--model", path, "--task", "cb")
    assert code == 0, err
    assert json.loads(out)["ran"] == 6
    rows = [json.loads(line) for line in (tmp_path / "methods" / "results.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in rows] == list(SETTINGS)
    by = {r["setting"]: r for r in rows}
    counts = direct_counts(kind)
    for setting in ("prompt tuning", "LoRA", "IA³", "prefix tuning", "model tuning"):
        assert by[setting]["tuned_parameters"] == counts[setting], setting
    assert by["P-tuning"]["stored_parameters"] == counts["P-tuning kept"] < by["P-tuning"]["tuned_parameters"]
    assert all(r["parameters"] == counts["model tuning"] for r in rows)  # the backbone alone, without injected modules
    for r in rows:
        assert r["metric"] == "f1_macro" and 0 <= r["score"] <= 1 and r["chance"] is not None and r["x"] == r["tuned_parameters"]
        assert r["steps"] == 2 and r["seconds"] >= 0 and r["peak_memory_mb"] is not None
        assert r["optimizer"] == ("AdamW" if r.get("peft") else "Adafactor")
    for key in ("prefix", "ptuning", "lora", "ia3"):
        assert (tmp_path / "methods" / "runs" / path.name / key / "seed0" / "adapter" / "adapter_config.json").is_file()
    table = (tmp_path / "methods" / "table.md").read_text()
    assert all(f"| {s} |" in table for s in SETTINGS) and "Figure 4" in table and "fewer task-specific parameters" in table
    assert (tmp_path / "methods" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(capsys, tmp_path, "--model", path, "--task", "cb")
    assert code == 0 and json.loads(out)["ran"] == 0


@pytest.mark.parametrize("kind", ["t5", "gpt2", "llama"])
@pytest.mark.parametrize("method", ["prefix", "ptuning"])
def test_peft_rank_scorer_matches_brute_force(kind, method):
    backbone = adapter_for(*tiny_backbone(kind), name=f"tiny-{kind}")
    task_type = TaskType.SEQ_2_SEQ_LM if kind == "t5" else TaskType.CAUSAL_LM
    config = (PrefixTuningConfig if method == "prefix" else PromptEncoderConfig)(task_type=task_type, num_virtual_tokens=3)
    peft_model = get_peft_model(backbone.model, config).eval()
    with torch.no_grad():  # move the virtual tokens off their initialisation, so they matter
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    inputs = [backbone.input_ids(t, 64) for t in ("a short one", "a somewhat longer input sentence here", "mid length text")]
    candidates = [[backbone.target_ids(c, 16) for c in ("perhaps not at all", "yes", "no")] for _ in inputs]
    batched = peft_rank_scores(peft_model, backbone, inputs, candidates, batch_size=4)  # pairs of mixed lengths per batch

    def brute(inp: list[int], cand: list[int]) -> float:
        with torch.no_grad():
            if kind == "t5":
                start = [backbone.model.config.decoder_start_token_id]
                logits = peft_model(input_ids=torch.tensor([inp]), attention_mask=torch.ones(1, len(inp), dtype=torch.long),
                                    decoder_input_ids=torch.tensor([start + cand[:-1]])).logits[0]
                offset = 0
            else:
                prefix = ([backbone.bos_id] if backbone.bos_id is not None else []) + inp
                full = prefix + cand
                logits = peft_model(input_ids=torch.tensor([full]), attention_mask=torch.ones(1, len(full), dtype=torch.long)).logits[0]
                logits, offset = logits[-len(full):], len(prefix) - 1
            logp = torch.log_softmax(logits.double(), -1)
            return float(sum(logp[offset + j, tok] for j, tok in enumerate(cand)))

    expected = [[brute(i, c) for c in options] for i, options in zip(inputs, candidates)]
    assert torch.allclose(torch.tensor(batched), torch.tensor(expected, dtype=torch.float32), atol=1e-3), (batched, expected)


@pytest.mark.parametrize("kind", ["t5", "gpt2", "llama"])
def test_adapter_names_its_peft_task_type_and_lays_out_peft_batches(kind):
    """peft_runs asks the adapter, never the kind: T5 inputs and labels apart, decoder-only [BOS; X; Y] labelled on Y."""
    backbone = adapter_for(*tiny_backbone(kind), name=f"tiny-{kind}")
    assert TaskType(backbone.peft_task_type) == (TaskType.SEQ_2_SEQ_LM if kind == "t5" else TaskType.CAUSAL_LM)
    batch = {k: v.tolist() for k, v in backbone.forward_batch([[5, 6, 7], [8]], [[9, 1], [10]]).items()}
    n, b = backbone.tokenizer.pad_token_id, getattr(backbone, "bos_id", None)  # T5 has none
    expected = {
        "t5": {"input_ids": [[5, 6, 7], [8, n, n]], "attention_mask": [[1, 1, 1], [1, 0, 0]], "labels": [[9, 1], [10, -100]]},
        "gpt2": {"input_ids": [[5, 6, 7, 9, 1], [8, 10, n, n, n]], "attention_mask": [[1] * 5, [1, 1, 0, 0, 0]],
                 "labels": [[-100, -100, -100, 9, 1], [-100, 10, -100, -100, -100]]},
        "llama": {"input_ids": [[b, 5, 6, 7, 9, 1], [b, 8, 10, n, n, n]], "attention_mask": [[1] * 6, [1, 1, 1, 0, 0, 0]],
                  "labels": [[-100] * 4 + [9, 1], [-100, -100, 10, -100, -100, -100]]},
    }[kind]
    assert batch == expected and (b is not None) == (kind == "llama")


def test_methods_refuses_several_backbones_and_label_free_tasks(capsys, tmp_path):
    model, tokenizer = tiny_backbone("t5")
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for args, needle in ((("--model", path, "--model", path, "--task", "cb"), "one backbone"),
                         (("--model", path, "--task", "squad"), "has none")):
        code, _, err = run(capsys, tmp_path / "out", *args)
        lines = [line for line in err.splitlines() if line.startswith("softprompt: error:")]
        assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()


def rows(counts: dict[str, int], means: dict[str, float]) -> list[Row]:
    return [Row("m", s, "accuracy", (means.get(s, 0.7) - 0.01, means.get(s, 0.7) + 0.01), chance=0.5, parameters=10**6,
                tuned_parameters=counts[s]) for s in counts]


def test_verdicts_follow_the_counts_and_the_scores():
    counts = {"prompt tuning": 100, "prefix tuning": 900, "P-tuning": 500, "LoRA": 3000, "IA³": 400, "model tuning": 10**6}
    assert parameter_verdict(rows(counts, {}), "m").label == SUPPORTED
    assert parameter_verdict(rows({**counts, "IA³": 50}, {}), "m").label == SUPPORTED  # IA³ postdates Figure 4: not judged
    assert parameter_verdict(rows({**counts, "P-tuning": 50}, {}), "m").label == CONTRADICTED
    assert parameter_verdict(rows({k: v for k, v in counts.items() if k != "prefix tuning"}, {}), "m").label == NOT_TESTABLE


def test_peak_memory_sees_an_allocation():
    """In a fresh process: in a long one, freed-but-resident heap pages would hide the growth."""
    import subprocess
    import sys

    code = ("import torch; from softprompt.studies.methods import PeakMemory\n"
            "with PeakMemory(torch.device('cpu')) as memory:\n"
            "    block = torch.ones(64 * 2**20 // 4); del block\n"  # 64 MiB, touched
            "print(bool(memory.how), memory.mb)")
    how, mb = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert how == "True" and float(mb) >= 60


def test_peak_memory_of_a_second_point_is_not_hidden_by_the_first():
    """Points share a process: the pages the first point freed must not absorb the second's growth."""
    import subprocess
    import sys

    code = ("import torch; from softprompt.studies.methods import PeakMemory\n"
            "def point():\n"
            "    with PeakMemory(torch.device('cpu')) as memory:\n"
            "        blocks = [torch.ones(64 * 1024) for _ in range(1024)]; del blocks\n"  # 256 MiB in 256 KiB heap chunks
            "    return memory.mb\n"
            "print(point(), point())")
    first, second = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert first >= 240 and second >= 240, (first, second)


@pytest.mark.parametrize("key", ["lora", "ptuning"])
def test_a_peft_point_resumes_from_its_checkpoint_on_the_one_trainer(key, t5_dir, data_dir, tmp_path):
    """Stopped after 2 steps and continued to 4 (steps may grow on resume), a point ends as one trained straight to 4."""
    from softprompt.studies.peft_runs import ADAPTER_DIR, PEFT_METHODS, PeftRun, train_peft
    from softprompt.tasks import load_task

    method = next(m for m in PEFT_METHODS if m.key == key)
    dev = load_task("rte").load("validation", data_dir)[:6]

    def point(output: Path, steps: int) -> dict:
        return train_peft(PeftRun(method, str(t5_dir), "rte", output, steps, 4, 2, 0, 4, device="cpu", data_dir=str(data_dir)), dev)

    straight = point(tmp_path / "a", 4)
    point(tmp_path / "b", 2)
    (tmp_path / "b" / "result.json").unlink()  # as if the point had been stopped at its step-2 checkpoint
    resumed = point(tmp_path / "b", 4)
    assert resumed["best_step"] == straight["best_step"] and resumed["metrics"] == straight["metrics"]
    losses = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ab"]
    assert [r.get("loss") for r in losses[0]] == [r.get("loss") for r in losses[1]]
    a, b = (load_file(str(tmp_path / d / ADAPTER_DIR / "adapter_model.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_peft_point_chooses_its_step_on_held_out_training_examples(t5_dir, data_dir, tmp_path):
    """As prompt tuning's points do: the step is chosen on the held-out split, dev is scored at it and at the last step."""
    from softprompt.studies.peft_runs import PEFT_METHODS, PeftRun, train_peft
    from softprompt.tasks import load_task

    lora = next(m for m in PEFT_METHODS if m.key == "lora")
    dev = load_task("rte").load("validation", data_dir)[:6]
    result = train_peft(PeftRun(lora, str(t5_dir), "rte", tmp_path / "p", 4, 4, 2, 0, 4, device="cpu", data_dir=str(data_dir),
                                select_examples=12), dev)
    assert result["score"] == result["dev_best"][result["metric"]] and "accuracy" in result["dev_last"]
    assert result["select_score"] == pytest.approx(round(result["select_score"] * 12) / 12), "scored on the 12 held-out examples"
    assert result["score"] == pytest.approx(round(result["score"] * 6) / 6), "dev: the 6 dev examples"


@pytest.mark.multiprocess
@pytest.mark.parametrize("key", ["ptuning", "ia3"])  # PeftModel's own forward, and softprompt's adapter; neither has dropout
def test_a_peft_point_on_two_processes_ends_as_on_one(key, t5_dir, data_dir, tmp_path):
    """--nproc-per-point 2 for a PEFT point: a torchrun job of two gloo ranks, each with half of every batch, takes the
    single-process steps (RTE's labels differ in token length), chooses the same step, and writes its folder once."""
    from softprompt.studies.peft_runs import ADAPTER_DIR, CHECKPOINT_FILE, PEFT_METHODS, PeftRun, peft_processes, train_peft
    from softprompt.tasks import load_task

    method = next(m for m in PEFT_METHODS if m.key == key)
    dev = load_task("rte").load("validation", data_dir)[:6]

    def run(output: Path) -> PeftRun:
        return PeftRun(method, str(t5_dir), "rte", output, 4, 4, 2, 0, 4, device="cpu", data_dir=str(data_dir), select_examples=12)

    one = train_peft(run(tmp_path / "one"), dev)
    two = peft_processes(run(tmp_path / "two"), 6, 2)
    assert two["best_step"] == one["best_step"] and two["select_score"] == one["select_score"]
    assert two["dev_best"] == one["dev_best"] and two["dev_last"] == one["dev_last"]
    logs = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]], "each log line written once"
    assert [r["loss"] for r in logs[1]] == pytest.approx([r["loss"] for r in logs[0]], abs=1e-5)
    a, b = (load_file(str(tmp_path / d / ADAPTER_DIR / "adapter_model.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert torch.load(tmp_path / "two" / CHECKPOINT_FILE, weights_only=False)["world_size"] == 2
