"""Backbone pretraining: tokenizer layout, objectives, corpus cache, loop (checkpoint, resume), errors.

Everything runs on CPU on a tokenizer trained from a few hundred WikiText-2 lines and a 2-layer model.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, T5ForConditionalGeneration

from softprompt.errors import SoftpromptError
from softprompt.pretrain import (
    BackboneConfig,
    CorpusConfig,
    PretrainConfig,
    TokenizerConfig,
    build_backbone,
    build_corpus_cache,
    lineage,
    load_cache,
    parameter_count,
    presets,
    pretrain,
    read_cache_meta,
    train_tokenizer,
    write_lineage_card,
)
from softprompt.pretrain.checkpoint import STATE_FILE, STATE_FORMAT, read_snapshots
from softprompt.pretrain.objectives import PrefixLM, SpanCorruption, compute_input_and_target_lengths, random_spans_noise_mask
from softprompt.pretrain.optimizer import AdamWScale
from softprompt.pretrain.tokenizer import sentinel_id

DATA_DIR = Path(os.environ.get("SOFTPROMPT_DATA_DIR", "/work/shared/data"))
WIKITEXT = DATA_DIR / "corpus" / "wikitext-2" / "wiki.valid.tokens"
VOCAB = 600  # 3 specials + ~497 pieces + 100 sentinels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when other processes load the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    if not WIKITEXT.is_file():
        pytest.fail(f"test data not found at {WIKITEXT}; set SOFTPROMPT_DATA_DIR")
    lines = [line.strip() for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if len(line.strip()) >= 40]
    path = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    path.write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(corpus_file, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer([corpus_file], folder, TokenizerConfig(vocab_size=VOCAB))
    return folder


@pytest.fixture(scope="module")
def cache_dir(corpus_file, tokenizer_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache") / "cache"
    build_corpus_cache([corpus_file], tokenizer_dir, folder, CorpusConfig(val_fraction=0.05))
    return folder


def tiny_config(**changes) -> PretrainConfig:
    settings = dict(model="tiny", steps=30, batch_size=8, inputs_length=64, targets_length=64, lr=3e-3,
                    warmup_steps=3, log_every=5, eval_every=1000, eval_batches=2, checkpoint_every=1000,
                    device="cpu", progress=False, prefetch=2)
    return PretrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def span_run(cache_dir, tokenizer_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "span"
    return out, pretrain(tiny_config(), cache_dir, out, tokenizer_dir=tokenizer_dir, command="pytest")


# --- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_has_t5_special_ids_and_sentinels(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    n = len(tok)
    assert [tok.convert_tokens_to_ids(f"<extra_id_{k}>") for k in (0, 1, 99)] == [n - 1, n - 2, n - 100]
    assert sentinel_id(tok, 0) == n - 1


def test_tokenizer_round_trip_through_auto_tokenizer(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    ids = tok("hello").input_ids
    assert ids[-1] == tok.eos_token_id and len(ids) >= 2 and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "hello"
    text = "The song was released in 2010 ."
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert tok("a  b\n c").input_ids == tok("a b c").input_ids  # whitespace collapsed as SentencePiece does


def test_vocabulary_is_ordered_most_frequent_first(tokenizer_dir, corpus_file):
    model = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    scores = [score for _, score in model["vocab"][3:]]
    assert scores == sorted(scores, reverse=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    counts = Counter()
    for line in corpus_file.read_text(encoding="utf-8").splitlines():
        counts.update(tok(line, add_special_tokens=False).input_ids)
    pieces = len(model["vocab"]) - 3
    frequent = [i for i, _ in counts.most_common(50)]
    assert np.median(frequent) < 3 + 0.25 * pieces  # the common tokens sit at the low ids


# --- objectives ------------------------------------------------------------------------------------


def test_lengths_match_t5():
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)  # T5's 512-token inputs


def test_noise_mask_density_and_spans():
    rng = np.random.default_rng(0)
    mask = random_spans_noise_mask(64, 284, 0.15, 3.0, rng)
    assert mask.shape == (64, 284)
    assert abs(mask.mean() - 0.15) < 0.01
    assert len(set(mask.sum(1))) == 1  # same noise count in every row
    assert not mask[:, 0].any() and mask[:, -1].all()  # T5: non-noise first, noise last
    starts = mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :-1]
    assert abs(mask.sum(1)[0] / starts.sum(1)[0] - 3.0) < 0.5  # mean span length


def _reconstruct(inputs: list[int], targets: list[int], first_sentinel: int) -> list[int]:
    """Put each target span back at its sentinel in the input."""
    spans, current = {}, None
    for t in targets[:-1]:
        if t > first_sentinel - 100:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in inputs[:-1]:
        out.extend(spans[t] if t in spans else [t])
    return out


def test_span_corruption_shapes_sentinels_and_reconstruction():
    top = 999
    objective = SpanCorruption(inputs_length=128, first_sentinel=top, eos_id=1)
    rng = np.random.default_rng(1)
    windows = rng.integers(3, 800, size=(16, objective.window_length))
    batch = objective(windows, np.random.default_rng(2))
    assert batch["input_ids"].shape == (16, 128) and batch["labels"].shape == (16, objective.targets_length)
    assert batch["attention_mask"].all() and (batch["labels"] != -100).all()  # fixed shape, no padding
    for row in range(16):
        inputs, targets = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        assert inputs[-1] == 1 and targets[-1] == 1
        sentinels = [t for t in inputs if t > top - 100]
        assert sentinels == list(range(top, top - len(sentinels), -1))  # <extra_id_0>, <extra_id_1>, ...
        assert [t for t in targets if t > top - 100] == sentinels and targets[0] == top
        assert _reconstruct(inputs, targets, top) == windows[row].tolist()


def test_prefix_lm_split_reconstructs_the_window():
    objective = PrefixLM(inputs_length=32, targets_length=32, eos_id=1)
    windows = np.random.default_rng(3).integers(3, 500, size=(64, objective.window_length))
    batch = objective(windows, np.random.default_rng(4))
    assert batch["input_ids"].shape == (64, 32) and batch["labels"].shape == (64, 32)
    splits = set()
    for row in range(64):
        n_in = int(batch["attention_mask"][row].sum())
        inputs = batch["input_ids"][row, :n_in].tolist()
        labels = [t for t in batch["labels"][row].tolist() if t != -100]
        assert inputs[-1] == 1 and labels[-1] == 1
        assert (batch["input_ids"][row, n_in:] == 0).all()
        assert inputs[:-1] + labels[:-1] == windows[row].tolist()
        splits.add(n_in)
    assert len(splits) > 10  # the split point is random


# --- corpus cache ----------------------------------------------------------------------------------


def test_wikiextractor_cache_strips_doc_lines(tokenizer_dir, tmp_path):
    body = "The river flows through three counties before it reaches the sea near the old harbour."
    wiki = tmp_path / "wiki_00"
    wiki.write_text(
        '<doc id="1" url="?curid=1" title="A Long Title Of A Stub Article With Many Words In It">\n'
        "A Long Title Of A Stub Article With Many Words In It\n\n</doc>\n"
        '<doc id="2" url="?curid=2" title="River">\nRiver\n\n' + body + "\nGeography.\n" + body + "\n</doc>\n",
        encoding="utf-8",
    )
    meta = build_corpus_cache([wiki], tokenizer_dir, tmp_path / "cache", CorpusConfig(val_fraction=0.0))
    assert meta["documents"] == {"train": 1, "val": 0} and meta["sources"][0]["format"] == "wikiextractor"
    cache = load_cache(tmp_path / "cache", AutoTokenizer.from_pretrained(tokenizer_dir))
    text = AutoTokenizer.from_pretrained(tokenizer_dir).decode(cache.train.tolist())
    assert text == body + " " + body + "</s>"
    assert cache.train.dtype == np.uint16 and meta["tokens"]["train"] == cache.train.size


def test_cli_cache_stage_tokenises_task_inputs_with_an_existing_tokenizer(tokenizer_dir, tmp_path, capsys):
    from softprompt.cli import main
    from softprompt.tasks import get_task

    out = tmp_path / "sst2-cache"
    assert main(["pretrain", "cache", "--tokenizer", str(tokenizer_dir), "--task-inputs", "sst2",
                 "--data-dir", str(DATA_DIR), "--output", str(out)]) == 0
    documents = json.loads(capsys.readouterr().out)["documents"]
    assert documents["train"] + documents["val"] == len(get_task("sst2").load("train", DATA_DIR))  # every input, once
    cache = load_cache(out, AutoTokenizer.from_pretrained(tokenizer_dir))
    assert cache.train.size > 0 and cache.val.size > 0
    assert main(["pretrain", "cache", "--task-inputs", "sst2", "--data-dir", str(DATA_DIR), "--output", str(tmp_path / "x")]) != 0
    assert "needs --tokenizer" in capsys.readouterr().err


# --- the loop --------------------------------------------------------------------------------------


def test_presets_grow_about_3x(capsys):
    counts = {name: parameter_count(name, 8192) for name in ("nano", "micro", "mini")}
    with capsys.disabled():
        print("\nparameters at 8,192 ids: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in counts.items()))
    assert 4e6 <= counts["nano"] <= 6e6 and 12e6 <= counts["micro"] <= 18e6 and 40e6 <= counts["mini"] <= 50e6
    assert 2.5 < counts["micro"] / counts["nano"] < 3.5 and 2.5 < counts["mini"] / counts["micro"] < 3.5


def test_initial_logits_are_order_one():
    model = presets.build_model("nano", 8192)
    with torch.no_grad():
        ids = torch.randint(3, 8000, (2, 16))
        logits = model(input_ids=ids, decoder_input_ids=ids).logits
    assert 0.3 < logits.std().item() < 3.0  # an std-1.0 head unscaled would give ~sqrt(d_model) = 14


def test_adamw_scale_steps_relative_to_each_parameter():
    """Adam's bias-corrected step times max(1e-3, RMS(param)), with decoupled weight decay (nanoT5's AdamWScale)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(20, 8) * 0.01), torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.zeros(3))]
    expected = [p.detach().clone() for p in params]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in expected]
    optimizer = AdamWScale(params, lr=2e-2, weight_decay=0.1)
    for t in (1, 2, 3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        for e, g, (m, v) in zip(expected, grads, moments, strict=True):
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            scale = max(1e-3, (e.norm() / math.sqrt(e.numel())).item())
            e.mul_(1 - 2e-2 * 0.1)
            e.sub_(m / (v.sqrt() + 1e-8) * 2e-2 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * scale)
    assert all(torch.allclose(p.detach(), e, atol=1e-6) for p, e in zip(params, expected, strict=True))


def test_pretrain_writes_a_loadable_checkpoint_and_loss_falls(span_run, tokenizer_dir):
    out, summary = span_run
    assert summary["complete"] and summary["steps"] == 30
    model = T5ForConditionalGeneration.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == len(AutoTokenizer.from_pretrained(tokenizer_dir))
    losses = [r["loss"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    saved = json.loads((out / "pretrain_summary.json").read_text())
    for key in ("val_loss", "val_ppl", "encoder_gap", "tokens_seen", "wall_time_s", "device", "config"):
        assert key in saved
    assert saved["tokens_seen"]["inputs"] == 30 * 8 * 64 and saved["command"] == "pytest"


def test_resume_after_stop_equals_uninterrupted_run(cache_dir, tokenizer_dir, tmp_path):
    config = tiny_config(steps=6, log_every=2)
    straight = pretrain(config, cache_dir, tmp_path / "a", tokenizer_dir=tokenizer_dir)
    stopped = pretrain(config, cache_dir, tmp_path / "b", tokenizer_dir=tokenizer_dir, stop_at=3)
    assert not stopped["complete"] and stopped["steps"] == 3
    resumed = pretrain(config, cache_dir, tmp_path / "b", tokenizer_dir=tokenizer_dir)
    assert resumed["complete"] and resumed["steps"] == 6
    a = T5ForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    b = T5ForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_train_loss"] == straight["final_train_loss"]
    steps = [r["step"] for r in map(json.loads, (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [2, 3, 4, 6]  # no record repeated after the resume


def test_lm_adapt_continues_a_checkpoint(span_run, cache_dir, tmp_path):
    summary = pretrain(tiny_config(objective="lm-adapt", steps=4), cache_dir, tmp_path / "lm", init_from=span_run[0])
    assert summary["complete"] and summary["init_from"] == str(span_run[0])
    assert np.isfinite(summary["val_loss"]) and np.isfinite(summary["encoder_gap"])


def test_snapshots_are_kept_beside_the_run_through_checkpoints_and_a_resume(span_run, cache_dir, tmp_path):
    config = tiny_config(objective="lm-adapt", steps=6, snapshot_every=2, checkpoint_every=1)
    out = tmp_path / "lm"
    pretrain(config, cache_dir, out, init_from=span_run[0], stop_at=3)
    assert [step for step, _ in read_snapshots(out)] == [2]
    pretrain(replace(config, snapshot_every=4), cache_dir, out, init_from=span_run[0])  # resumable: changes no update
    snapshots = read_snapshots(out)
    assert [step for step, _ in snapshots] == [2, 4] and snapshots[0][1] == tmp_path / "lm-snapshots" / "step-2"
    first = T5ForConditionalGeneration.from_pretrained(snapshots[0][1]).state_dict()
    final = T5ForConditionalGeneration.from_pretrained(out).state_dict()
    assert not all(torch.equal(first[k], final[k]) for k in first)
    assert json.loads((snapshots[1][1] / "snapshot.json").read_text())["objective"] == "lm-adapt"
    (snapshots[1][1] / "snapshot.json").unlink()
    with pytest.raises(SoftpromptError, match="step-4: not a snapshot"):
        read_snapshots(out)


def test_a_second_lm_adaptation_round_is_carded_with_its_whole_lineage(span_run, cache_dir, corpus_file, tokenizer_dir, tmp_path):
    first = tmp_path / "lm"
    pretrain(tiny_config(objective="lm-adapt", steps=2), cache_dir, first, init_from=span_run[0], command="round one")
    other_cache = tmp_path / "other-cache"  # a later round may adapt on other text (e.g. a task's inputs)
    build_corpus_cache([corpus_file], tokenizer_dir, other_cache, CorpusConfig(val_fraction=0.1))
    pretrain(tiny_config(objective="lm-adapt", steps=2, seed=1), other_cache, tmp_path / "lm-2", init_from=first, command="round two")
    stages = lineage(tmp_path / "lm-2")
    assert list(stages) == ["span-corruption", "lm-adapt", "lm-adapt (round 2)"]
    meta = read_cache_meta(other_cache)  # the card needs corpus.json only, not the token arrays
    assert meta == load_cache(other_cache).meta
    card = write_lineage_card(tmp_path / "lm-2", meta).read_text()
    assert card.index("pytest") < card.index("round one") < card.index("round two") and "lm-adapt (round 2)" in card
    rows = [line for line in card.splitlines() if line.startswith("| ") and "objective" not in line]
    assert str(cache_dir) in rows[0] and str(cache_dir) in rows[1] and str(other_cache) in rows[2]


def test_cli_span_corruption_can_continue_a_checkpoint(span_run, cache_dir, tmp_path, capsys):
    from softprompt.cli import main

    out = tmp_path / "span-2"  # e.g. further span corruption on a task's unlabeled inputs
    assert main(["pretrain", "span-corruption", "--init-from", str(span_run[0]), "--cache", str(cache_dir),
                 "--output", str(out), "--size", "tiny", "--batch-size", "8", "--inputs-length", "64",
                 "--span-steps", "2", "--lr", "3e-3", "--warmup-steps", "1", "--device", "cpu", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["complete"] and summary["init_from"] == str(span_run[0])
    assert summary["val_loss"] < span_run[1]["val_loss"] + 0.5  # continued the trained model, not a fresh one
    assert list(lineage(out)) == ["span-corruption", "span-corruption (round 2)"]
    assert "span-corruption (round 2)" in (out / "README.md").read_text()


def _as_format_1(state_file: Path) -> None:
    """Rewrite a trainer state as format 1 wrote it: torch's generators only, no precision setting."""
    state = torch.load(state_file, weights_only=True)
    old = {k: v for k, v in state.items() if k not in ("random", "scaler")}
    old.update(format=1, rng_cpu=state["random"]["torch"], rng_cuda=[],
               config={k: v for k, v in state["config"].items() if k != "precision"})
    torch.save(old, state_file)


def test_a_format_1_trainer_state_still_resumes_exactly(cache_dir, tokenizer_dir, tmp_path):
    config = tiny_config(steps=4, log_every=2)
    pretrain(config, cache_dir, tmp_path / "a", tokenizer_dir=tokenizer_dir)
    pretrain(config, cache_dir, tmp_path / "b", tokenizer_dir=tokenizer_dir, stop_at=2)
    _as_format_1(tmp_path / "b" / STATE_FILE)
    assert pretrain(config, cache_dir, tmp_path / "b", tokenizer_dir=tokenizer_dir)["complete"]
    a = T5ForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    b = T5ForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)["format"] == STATE_FORMAT


def test_resume_refuses_other_settings_but_takes_a_new_time_limit(cache_dir, tokenizer_dir, tmp_path):
    config = tiny_config(steps=4)
    pretrain(config, cache_dir, tmp_path / "run", tokenizer_dir=tokenizer_dir, stop_at=1)
    with pytest.raises(SoftpromptError, match=r"holds a different run \(lr, precision differ\)"):
        pretrain(tiny_config(steps=4, lr=1e-3, precision="bf16"), cache_dir, tmp_path / "run", tokenizer_dir=tokenizer_dir)
    resumed = pretrain(tiny_config(steps=4, max_minutes=60, log_every=1), cache_dir, tmp_path / "run", tokenizer_dir=tokenizer_dir,
                       stop_at=2)
    assert not resumed["complete"] and resumed["steps"] == 2
    (tmp_path / "run" / STATE_FILE).write_bytes(b"torn")
    with pytest.raises(SoftpromptError, match="unreadable trainer state"):
        pretrain(config, cache_dir, tmp_path / "run", tokenizer_dir=tokenizer_dir)


def test_a_folder_holding_something_else_is_refused_and_left_as_it_is(cache_dir, tokenizer_dir, tmp_path):
    """The run folder is a RunDir: a folder with other files in it is not taken for a new run, and nothing is written."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(SoftpromptError, match="run is not empty and holds no softprompt run"):
        pretrain(tiny_config(steps=2), cache_dir, tmp_path / "run", tokenizer_dir=tokenizer_dir)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


def test_bf16_autocast_runs_on_the_cpu_when_asked(cache_dir, tokenizer_dir, tmp_path):
    summary = pretrain(tiny_config(steps=2, precision="bf16"), cache_dir, tmp_path / "run", tokenizer_dir=tokenizer_dir)
    assert summary["complete"] and summary["precision"] == "bf16" and np.isfinite(summary["val_loss"])


def test_wall_clock_limit_stops_cleanly(cache_dir, tokenizer_dir, tmp_path):
    stopped = pretrain(tiny_config(steps=50, max_minutes=1e-6), cache_dir, tmp_path / "run", tokenizer_dir=tokenizer_dir)
    assert not stopped["complete"] and stopped["steps"] == 1
    assert T5ForConditionalGeneration.from_pretrained(tmp_path / "run") is not None


def test_build_backbone_runs_every_stage_and_skips_them_on_rerun(corpus_file, tmp_path):
    config = BackboneConfig(tokenizer=TokenizerConfig(vocab_size=VOCAB), corpus=CorpusConfig(val_fraction=0.05),
                            span_corruption=tiny_config(steps=4), lm_adapt=tiny_config(objective="lm-adapt", steps=2))
    result = build_backbone(tmp_path / "bb", [corpus_file], config, extra_texts=["an unlabeled task input"],
                            command="python -m build --size tiny")
    assert result["complete"] and result["checkpoint"] == str(tmp_path / "bb" / "lm-adapted")
    assert [s["objective"] for s in result["stages"].values()] == ["span-corruption", "lm-adapt"]
    card = (tmp_path / "bb" / "lm-adapted" / "README.md").read_text()
    assert "python -m build --size tiny" in card and "encoder gap" in card.lower()
    stamp = (tmp_path / "bb" / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    assert build_backbone(tmp_path / "bb", [corpus_file], config)["stages"] == result["stages"]
    assert (tmp_path / "bb" / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == stamp


# --- settings and the command line ---------------------------------------------------------------


def test_config_checks_name_the_field():
    for changes, message in [({"steps": 0}, "PretrainConfig.steps=0 must be at least 1"),
                             ({"objective": "mlm"}, "PretrainConfig.objective='mlm' is not one of span-corruption, lm-adapt"),
                             ({"optimizer": "sgd"}, "PretrainConfig.optimizer='sgd'"),
                             ({"model": "huge"}, "PretrainConfig.model='huge'"),
                             ({"precision": "fp8"}, "PretrainConfig.precision='fp8'"),
                             ({"noise_density": 0.6}, r"PretrainConfig.noise_density=0.6 must be in \(0, 0.5\)"),
                             ({"lr": 0.0}, "PretrainConfig.lr=0.0 must be positive")]:
        with pytest.raises(SoftpromptError, match=message):
            PretrainConfig(**changes)
    assert get_args(presets.ModelSize) == tuple(presets.PRESETS)


def test_fp16_on_the_cpu_is_refused_before_anything_is_written(cache_dir, tokenizer_dir, tmp_path):
    with pytest.raises(SoftpromptError, match="fp16"):
        pretrain(tiny_config(precision="fp16"), cache_dir, tmp_path / "run", tokenizer_dir=tokenizer_dir)
    assert not (tmp_path / "run").exists()


def _cli_configs(*flags: str) -> tuple[PretrainConfig, PretrainConfig]:
    from softprompt.cli import build_parser, pretrain_configs

    return pretrain_configs(build_parser().parse_args(["pretrain", *flags]))


def test_cli_without_flags_builds_the_library_stages():
    library = BackboneConfig()
    assert _cli_configs("backbone", "--output", "X", "--corpus", "Y") == (library.span_corruption, library.lm_adapt)
    span, lm = _cli_configs("backbone", "--output", "X", "--corpus", "Y", "--quiet")  # --quiet sets progress only
    assert (replace(span, progress=True), replace(lm, progress=True)) == (library.span_corruption, library.lm_adapt)
    assert not span.progress and not lm.progress


def test_cli_flags_override_the_library_stages():
    library = BackboneConfig()
    span, lm = _cli_configs("backbone", "--output", "X", "--corpus", "Y", "--size", "nano", "--batch-size", "16",
                            "--span-steps", "10", "--lm-steps", "300", "--warmup-steps", "500", "--lm-lr", "0.005",
                            "--precision", "bf16", "--max-minutes", "30")
    assert (span.model, span.batch_size, span.steps, span.warmup_steps, span.lr) == ("nano", 16, 10, 500, library.span_corruption.lr)
    assert (lm.model, lm.batch_size, lm.steps, lm.warmup_steps, lm.lr) == ("nano", 16, 300, 30, 0.005)  # warmup: a tenth of 300
    assert span.precision == lm.precision == "bf16" and span.max_minutes == lm.max_minutes == 30
    assert lm.eval_every == library.lm_adapt.eval_every and span.eval_every == library.span_corruption.eval_every
    _, lm = _cli_configs("backbone", "--output", "X", "--warmup-steps", "500", "--lm-warmup-steps", "7")
    assert lm.warmup_steps == 7
    # the README's second LM-adaptation round: the interval flags apply to the stage run, --inputs-length sets its targets
    _, lm = _cli_configs("lm-adapt", "--init-from", "A", "--cache", "B", "--output", "C", "--size", "nano", "--batch-size", "64",
                         "--inputs-length", "128", "--lm-steps", "300", "--warmup-steps", "30", "--eval-every", "100",
                         "--checkpoint-every", "100")
    assert (lm.steps, lm.warmup_steps, lm.eval_every, lm.checkpoint_every, lm.inputs_length, lm.targets_length) == \
        (300, 30, 100, 100, 128, 128)


def test_cli_refuses_bad_pretrain_settings(tmp_path, capsys):
    from softprompt.cli import main

    assert main(["pretrain", "backbone", "--output", str(tmp_path / "x"), "--corpus", "y", "--lm-steps", "0"]) == 2
    assert "PretrainStages.lm_steps=0 must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "backbone", "--output", str(tmp_path / "x"), "--size", "huge"])
    assert not (tmp_path / "x").exists()


# --- errors ----------------------------------------------------------------------------------------


def test_lm_adapt_from_a_folder_that_is_not_a_checkpoint(cache_dir, tokenizer_dir, tmp_path):
    with pytest.raises(SoftpromptError, match="not a model checkpoint"):
        pretrain(tiny_config(objective="lm-adapt"), cache_dir, tmp_path / "lm", init_from=tokenizer_dir)


def test_empty_corpus(tokenizer_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("short\n\n= Title =\n", encoding="utf-8")
    with pytest.raises(SoftpromptError, match="empty corpus.*empty.txt"):
        build_corpus_cache([empty], tokenizer_dir, tmp_path / "cache")


def test_tokenizer_and_model_size_mismatch(span_run, corpus_file, cache_dir, tmp_path):
    other = tmp_path / "other-tokenizer"
    train_tokenizer([corpus_file], other, TokenizerConfig(vocab_size=VOCAB - 50))
    with pytest.raises(SoftpromptError, match="embedding has"):
        pretrain(tiny_config(steps=2), cache_dir, tmp_path / "run", tokenizer_dir=other, init_from=span_run[0])


def test_cache_made_with_another_tokenizer(cache_dir, corpus_file, tmp_path):
    other = tmp_path / "other-tokenizer"
    train_tokenizer([corpus_file], other, TokenizerConfig(vocab_size=VOCAB - 50))
    with pytest.raises(SoftpromptError, match="another tokenizer"):
        pretrain(tiny_config(steps=2), cache_dir, tmp_path / "run", tokenizer_dir=other)
    with pytest.raises(SoftpromptError, match="another tokenizer"):
        read_cache_meta(cache_dir, AutoTokenizer.from_pretrained(other))


def test_packaged_checkpoint_is_half_precision_and_loads_for_prompt_tuning(span_run, tmp_path):
    from softprompt.backbones import load_backbone
    from softprompt.pretrain import package_checkpoint

    run_dir, _ = span_run
    packaged = package_checkpoint(run_dir, tmp_path / "packaged")
    assert (packaged / "pretrain_summary.json").is_file()
    assert {t.dtype for t in load_file(str(packaged / "model.safetensors")).values()} == {torch.float16}
    backbone = load_backbone(str(packaged))
    model, tokenizer = backbone.model, backbone.tokenizer
    original = T5ForConditionalGeneration.from_pretrained(str(run_dir))
    assert next(model.parameters()).dtype == torch.float32 and len(tokenizer) == model.config.vocab_size
    for (name, a), (_, b) in zip(original.state_dict().items(), model.state_dict().items(), strict=True):
        torch.testing.assert_close(a.half().float(), b, msg=name)


@pytest.mark.multiprocess
def test_span_corruption_on_two_processes_takes_the_single_process_steps(cache_dir, tokenizer_dir, tmp_path):
    """torchrun, 2 gloo ranks under DistributedDataParallel: the same losses and weights as one process (no dropout)."""
    import subprocess
    import sys

    def launch(nproc: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else [sys.executable]
        args = ["-m", "softprompt", "pretrain", "span-corruption", "--tokenizer", str(tokenizer_dir), "--cache", str(cache_dir),
                "--output", str(out), "--size", "tiny", "--batch-size", "8", "--inputs-length", "64", "--span-steps", "6",
                "--lr", "3e-3", "--warmup-steps", "1", "--log-every", "1", "--device", "cpu", "--quiet", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SOFTPROMPT_DIST_TIMEOUT_S": "120"}
        return subprocess.run([*head, *args], capture_output=True, text=True, timeout=600, env=env)

    one, two = launch(1, tmp_path / "one"), launch(2, tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert sum(line.startswith("{") for line in two.stdout.splitlines()) == 1, "rank 0 alone prints the summary"
    logs = [[json.loads(line) for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in ("one", "two")]
    losses = [[r["loss"] for r in log if "loss" in r] for log in logs]
    assert len(losses[0]) == len(losses[1]) == 6 and max(abs(a - b) for a, b in zip(*losses)) <= 1e-5
    a = T5ForConditionalGeneration.from_pretrained(tmp_path / "one").state_dict()
    b = T5ForConditionalGeneration.from_pretrained(tmp_path / "two").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    state = torch.load(tmp_path / "two" / STATE_FILE, weights_only=True)
    assert state["world_size"] == 2 and len(state["random_ranks"]) == 2

    (tmp_path / "two" / "pretrain_summary.json").unlink()  # as if stopped after its last checkpoint
    again = launch(1, tmp_path / "two")
    assert again.returncode == 2 and "saved by 2 process(es), resumed with 1" in again.stderr, again.stderr[-2000:]
