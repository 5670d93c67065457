"""The neighbors study (the paper's §7) on tiny backbones: nearest vocabulary tokens of trained prompts against controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.prompt_io import load_prompt
from softprompt.studies.neighbors import (
    CLUSTER_CLAIM,
    DISPLACED,
    EMBEDDING,
    INITIAL,
    LABEL_CLAIM,
    SHARED_CLAIM,
    TRAINED,
    UNIFORM,
    NeighborsStudy,
    embedding_gaussian,
    neighbours,
    sample_embedding_distribution,
)
from softprompt.studies.verdicts import CONTRADICTED, NOT_TESTABLE, SUPPORTED
from test_studies import TINY, results, study

torch.set_num_threads(1)
SETTINGS = [TRAINED, UNIFORM, INITIAL, DISPLACED, EMBEDDING]  # per seed, in the order the points run


@pytest.fixture(autouse=True)
def data(monkeypatch, data_dir):
    monkeypatch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))


@pytest.fixture(scope="module")
def studied(tmp_path_factory, t5_dir, data_dir) -> Path:
    """ROOT of one neighbors study on the tiny T5, task cb, 2 seeds of 2 steps (run once for the tests that read it)."""
    root = tmp_path_factory.mktemp("neighbors-root")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTPROMPT_DATA_DIR", str(data_dir))
        assert main(["study", "neighbors", "--output", str(root), *TINY, "--model", str(t5_dir), "--task", "cb"]) == 0
    return root


def control_weight(root: Path, record: dict) -> torch.Tensor:
    return load_prompt(root / "neighbors" / "runs" / record["key"])[0]


def by_seed(rows: list[dict], setting: str) -> dict[int, dict]:
    return {r["seed"]: r for r in rows if r["setting"] == setting}


def test_neighbours_of_token_embeddings_are_those_tokens(t5_dir):
    backbone = load_backbone(str(t5_dir))
    ids = backbone.word_ids("positive negative film")
    weight = backbone.embeddings.detach()[ids].clone()  # (p, e): exactly vocabulary rows
    found = neighbours(weight, backbone, ["negative"])
    assert [row[0] for row in found["ids"]] == ids
    assert [row[0] for row in found["pieces"]] == backbone.tokenizer.convert_ids_to_tokens(ids)
    assert [row[0] for row in found["tokens"]] == [backbone.tokenizer.decode([i]) for i in ids]
    assert not any("▁" in t for row in found["tokens"] for t in row)  # SentencePiece shown as text
    assert found["neighbour_cosine"] < 1 and found["label_rate"] >= 1 / len(ids)
    assert neighbours(weight[[0, 0]], backbone, [])["shared_rate"] == 1.0  # two equal rows share all neighbours


def test_byte_level_neighbours_are_decoded_not_shown_as_pieces(gpt2_dir):
    backbone = load_backbone(str(gpt2_dir))
    ids = [i for i in backbone.word_ids("the film was good and the acting great") if backbone.tokenizer.decode([i]).strip()]
    found = neighbours(backbone.embeddings.detach()[ids].clone(), backbone, [])
    assert any("Ġ" in piece for row in found["pieces"] for piece in row)  # the raw pieces do carry the marker
    assert not any("Ġ" in token for row in found["tokens"] for token in row)
    assert [row[0] for row in found["tokens"]] == [backbone.tokenizer.decode([i]) for i in ids]
    assert " the" in [row[0] for row in found["tokens"]]


def test_study_writes_every_control_with_the_seed_of_its_trained_prompt(studied):
    rows = results(studied, "neighbors")
    assert [r["setting"] for r in rows] == SETTINGS * 2 and [r["seed"] for r in rows] == [0] * 5 + [1] * 5
    for seed in (0, 1):
        trained, uniform = by_seed(rows, TRAINED)[seed], by_seed(rows, UNIFORM)[seed]
        assert trained["config"]["seed"] == uniform["config"]["seed"] == seed
        assert trained["config"]["prompt"]["init"] == "class-label" and uniform["config"]["prompt"]["init"] == "random-uniform"
        assert trained["config"]["prompt"]["length"] == 100
        for key in ("dev_correct", "chance", "metrics", "task_score", "cluster_cosine"):  # the learned gate reads the first three
            assert trained.get(key) is not None, key
        for setting in (INITIAL, DISPLACED, EMBEDDING):
            control = by_seed(rows, setting)[seed]
            saved = json.loads((studied / "neighbors" / "runs" / control["key"] / "neighbors.json").read_text())
            assert len(saved["tokens"]) == 100 and all(len(t) == 5 for t in saved["tokens"]) and saved["labels"][0] == "entailment"
            assert control_weight(studied, control).shape == (100, 32) and "dev_correct" not in control
    table = (studied / "neighbors" / "table.md").read_text()
    assert "Top-5 neighbours (decoded)" in table and f"`, {DISPLACED}: 0: " in table and "positions with a label (%)" in table


def test_initial_prompt_control_is_what_a_zero_step_run_starts_from(studied, tmp_path, t5_dir, capsys):
    rows = results(studied, "neighbors")
    inits = []
    for seed in (0, 1):
        run = tmp_path / f"zero{seed}"
        code = main(["train", "--model", str(t5_dir), "--task", "cb", "--max-steps", "0", "--seed", str(seed),
                     "--eval-examples", "4", "--output", str(run), "--quiet"])
        assert code == 0, capsys.readouterr()[1]
        initial = control_weight(studied, by_seed(rows, INITIAL)[seed])
        assert torch.equal(initial, load_prompt(run)[0])
        assert not torch.equal(initial, load_prompt(studied / by_seed(rows, TRAINED)[seed]["run"])[0])  # training moved it
        inits.append(initial)
    assert not torch.equal(inits[0], inits[1])  # the sampled rows follow the seed


def test_displacement_control_moves_each_row_as_far_as_training_did(studied):
    rows = results(studied, "neighbors")
    for seed in (0, 1):
        init = control_weight(studied, by_seed(rows, INITIAL)[seed])
        trained = load_prompt(studied / by_seed(rows, TRAINED)[seed]["run"])[0]
        moved = control_weight(studied, by_seed(rows, DISPLACED)[seed])
        distance = (trained - init).norm(dim=1)
        assert distance.min() > 0
        assert torch.allclose((moved - init).norm(dim=1), distance, rtol=0, atol=1e-5)
        cosine = torch.nn.functional.cosine_similarity(moved - init, trained - init, dim=1)
        assert cosine.abs().mean() < 0.5  # another direction than training's


def test_embedding_distribution_sampler_matches_the_table_moments_even_when_singular():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(4, 4, generator=generator)
    base = torch.randn(3000, 4, generator=generator) @ mixing + torch.tensor([3.0, -1.0, 0.5, 2.0])
    table = torch.cat([base, base[:, :1] + base[:, 1:2]], dim=1)  # (3000, 5): a column that is a sum of two, rank 4
    rows = table.double()
    covariance = torch.cov(rows.T)
    with pytest.raises(RuntimeError):
        torch.linalg.cholesky(covariance - 1e-9 * torch.eye(5, dtype=torch.float64))  # not positive definite
    gaussian = embedding_gaussian(table)
    assert torch.allclose(gaussian.factor @ gaussian.factor.T, covariance, atol=1e-8)
    draws = sample_embedding_distribution(table, 200_000, torch.Generator().manual_seed(1), gaussian).double()
    scale = covariance.diagonal().sqrt()  # (e,)
    assert ((draws.mean(0) - rows.mean(0)).abs() / scale).max() < 0.02
    relative = (torch.cov(draws.T) - covariance).abs() / torch.outer(scale, scale)
    assert relative.max() < 0.03
    first, again = (sample_embedding_distribution(table, 4, torch.Generator().manual_seed(2)) for _ in range(2))
    assert torch.equal(first, again)  # seeded: the same draws


def test_study_verdicts_are_not_testable_when_the_tiny_prompts_learned_nothing(studied):
    verdicts = NeighborsStudy().verdicts(results(studied, "neighbors"))
    assert [v.claim for _, v in verdicts] == [CLUSTER_CLAIM, LABEL_CLAIM, SHARED_CLAIM]
    assert all(v.label == NOT_TESTABLE and v.reason.startswith("budget: the trained prompts did not learn") for _, v in verdicts)
    table = (studied / "neighbors" / "table.md").read_text()
    assert "budget: the trained prompts did not learn" in table


def hand_made(trained_correct: str, trained_cluster: float = 0.6, control_cluster: float = 0.2) -> list[dict]:
    """Three seeds of a trained prompt and its four controls, with the trained measures above the controls' by default."""
    records = []
    for seed in range(3):
        records.append({"model": "m", "setting": TRAINED, "seed": seed, "dev_correct": trained_correct, "chance": 0.5,
                        "score": trained_correct.count("1") / len(trained_correct), "cluster_cosine": trained_cluster + 0.01 * seed,
                        "label_rate": 0.4 + 0.02 * seed, "shared_rate": 0.8 - 0.03 * seed, "neighbour_cosine": 0.5})
        for k, setting in enumerate((UNIFORM, INITIAL, DISPLACED, EMBEDDING)):
            records.append({"model": "m", "setting": setting, "seed": seed, "cluster_cosine": control_cluster + 0.02 * seed ** 2 + 0.01 * k,
                            "label_rate": 0.03 + 0.01 * (seed % 2), "shared_rate": 0.1 + 0.01 * seed ** 2, "neighbour_cosine": 0.3})
    return records


def test_verdict_logic_on_hand_made_records():
    study = NeighborsStudy()
    learned = "1" * 38 + "0" * 2  # 95% of 40 against chance 0.5: learned
    verdicts = dict((v.claim, v) for _, v in study.verdicts(hand_made(learned)))
    assert list(verdicts) == [CLUSTER_CLAIM, LABEL_CLAIM, SHARED_CLAIM]
    assert all(v.label == SUPPORTED for v in verdicts.values()), verdicts
    assert f"vs {DISPLACED}: supported" in verdicts[CLUSTER_CLAIM].reason and f"vs {UNIFORM} (reported)" in verdicts[CLUSTER_CLAIM].reason
    flipped = dict((v.claim, v) for _, v in study.verdicts(hand_made(learned, trained_cluster=0.1, control_cluster=0.6)))
    assert flipped[CLUSTER_CLAIM].label == CONTRADICTED
    one_learned = hand_made(learned)
    for record in one_learned:
        if record["setting"] == TRAINED and record["seed"] > 0:
            record["dev_correct"] = "1" * 20 + "0" * 20  # chance level: two of three seeds learned nothing
    assert all(v.label == NOT_TESTABLE and "budget" in v.reason for _, v in study.verdicts(one_learned))


def test_neighbors_of_a_saved_prompt_on_a_decoder_only_backbone(capsys, tmp_path, gpt2_dir):
    run = tmp_path / "run"
    code = main(["train", "--model", str(gpt2_dir), "--task", "cb", "--prompt-length", "6", "--max-steps", "1",
                 "--eval-examples", "4", "--output", str(run), "--quiet"])
    assert code == 0, capsys.readouterr()[1]
    code, _, err = study(capsys, "neighbors", tmp_path / "root", "--prompt", run)
    assert code == 0, err
    rows = results(tmp_path / "root", "neighbors")
    assert [r["model"] for r in rows] == [str(gpt2_dir)] * 2
    assert [r["setting"] for r in rows] == ["saved run", f"{EMBEDDING}, saved run"]
    assert len(rows[0]["tokens"]) == 6 and "steps" not in rows[0]  # analysed, not trained
    assert not any("Ġ" in t for r in rows for position in r["tokens"] for t in position)
    assert control_weight(tmp_path / "root", rows[1]).shape == (6, 32)
    verdicts = NeighborsStudy().verdicts(rows)
    assert len(verdicts) == 3 and all(v.label == NOT_TESTABLE and "no seeds to pair" in v.reason for _, v in verdicts)
    table = (tmp_path / "root" / "neighbors" / "table.md").read_text()
    assert "no seeds to pair" in table and "| saved run | 1 |" in table
