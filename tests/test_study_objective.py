"""`objective --lm-steps`: prompt tuning on the checkpoints an LM-adaptation run keeps along the way (Figure 3d).

The backbones are pretrained here, in seconds: a tiny tokenizer and span-corruption T5 on a slice of
the shared Wikipedia text, then LM adaptation with `snapshot_every`, as `softprompt pretrain` does it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import DATA_DIR
from softprompt.cli import main
from softprompt.pretrain import CorpusConfig, PretrainConfig, TokenizerConfig, build_corpus_cache, pretrain, train_tokenizer

torch.set_num_threads(1)
TINY = ["--max-steps", "2", "--eval-examples", "8", "--seeds", "2", "--quiet", "--task", "cb"]


def config(**changes) -> PretrainConfig:
    settings = dict(model="tiny", steps=6, batch_size=8, inputs_length=64, targets_length=64, lr=3e-3, warmup_steps=1,
                    log_every=2, eval_every=1000, eval_batches=1, checkpoint_every=1000, device="cpu", progress=False, prefetch=0)
    return PretrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrained")
    lines = [line.strip() for line in (DATA_DIR / "corpus" / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
             if len(line.strip()) >= 40]
    (root / "wiki.txt").write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    train_tokenizer([root / "wiki.txt"], root / "tok", TokenizerConfig(vocab_size=600))
    build_corpus_cache([root / "wiki.txt"], root / "tok", root / "cache", CorpusConfig(val_fraction=0.05))
    pretrain(config(), root / "cache", root / "span", tokenizer_dir=root / "tok")
    pretrain(config(objective="lm-adapt", snapshot_every=2), root / "cache", root / "lm", init_from=root / "span")
    return root / "lm"


def study(capsys, root: Path, *args) -> tuple[int, str]:
    code = main(["study", "objective", "--output", str(root), *TINY, *map(str, args)])
    return code, capsys.readouterr()[1]


@pytest.mark.slow  # pretrains, then prompt-tunes each snapshot (~40 s): CI's second step runs it
def test_lm_steps_trains_a_prompt_on_each_kept_checkpoint(capsys, tmp_path, lm_run, data_dir):
    code, err = study(capsys, tmp_path, "--lm-steps", lm_run, "--data-dir", data_dir)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "objective" / "results.jsonl").read_text().splitlines()]
    assert [r["x"] for r in rows] == [0, 2, 4, 6] * 2  # the span checkpoint, two snapshots, the final model; two seeds
    assert [Path(r["model"]).name for r in rows[:4]] == ["span", "step-2", "step-4", "lm"]
    assert rows[1]["setting"] == "LM adaptation, 2 steps" and all(r["family"] == str(lm_run) for r in rows)
    table = (tmp_path / "objective" / "table.md").read_text()
    assert "| LM adaptation, 6 steps |" in table and "illegal outputs" in table
    assert (tmp_path / "objective" / "plot.png").stat().st_size > 1000


def test_lm_steps_refuses_a_folder_that_is_not_a_finished_lm_adaptation(capsys, tmp_path, lm_run, data_dir):
    for bad, needle in ((lm_run.parent / "span", "not a finished `softprompt pretrain lm-adapt` run folder"),
                        (tmp_path / "missing", "not a finished")):
        code, err = study(capsys, tmp_path / "out", "--lm-steps", bad, "--data-dir", data_dir)
        lines = [line for line in err.splitlines() if line.startswith("softprompt: error:")]
        assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    code, err = study(capsys, tmp_path / "out", "--lm-steps", lm_run, "--model", lm_run, "--data-dir", data_dir)
    assert code == 2 and "not both" in err
    assert not (tmp_path / "out").exists()
