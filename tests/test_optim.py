"""The scale-aware learning rate: the paper's on T5's scale, proportional to the embedding RMS elsewhere."""

import json

import pytest
import torch

from conftest import tiny_adapter
from softprompt.backbones import load_backbone
from softprompt.config import PromptConfig, TrainConfig
from softprompt.optim import T5_EMBEDDING_RMS, embedding_rms, learning_rate, make_optimizer
from softprompt.train import train


def test_reference_scale_is_the_packaged_t5s():
    assert embedding_rms(load_backbone("packaged:default")) == pytest.approx(T5_EMBEDDING_RMS, rel=0.01)


@pytest.mark.parametrize("kind", ["t5", "gpt2", "llama"])
def test_scaled_recipe_follows_the_embedding_rms(kind):
    backbone = tiny_adapter(kind)
    rms = embedding_rms(backbone)
    assert learning_rate(TrainConfig(), backbone) == pytest.approx(0.3 * rms / T5_EMBEDDING_RMS)
    assert learning_rate(TrainConfig(recipe="paper"), backbone) == 0.3
    assert learning_rate(TrainConfig(recipe="paper", lr=0.1), backbone) == 0.1
    assert learning_rate(TrainConfig(tune="model", lr=1e-3, prompt=PromptConfig(length=0)), backbone) == 1e-3


def test_the_run_log_records_the_rate_used(saved_backbone, tmp_path, data_dir):
    config = TrainConfig(task="cb", model=str(saved_backbone), output=str(tmp_path / "run"), data_dir=str(data_dir),
                         prompt=PromptConfig(length=2), max_steps=1, batch_size=2, eval_examples=2)
    result = train(config, progress=False)
    first = json.loads((result.output / "metrics.jsonl").read_text().splitlines()[0])
    assert first["recipe"] == "scaled" and first["lr"] == pytest.approx(learning_rate(config, load_backbone(str(saved_backbone))))


@pytest.mark.parametrize("scaling", [False, True])
def test_parameter_scaling_makes_the_step_proportional_to_the_weight(scaling):
    """Off (prompt tuning, paper section 3): every tensor moves by about lr a step. On (T5's fine-tuning):
    by about lr x its RMS, so a tensor 100x smaller moves 100x less."""
    torch.manual_seed(0)
    big, small = torch.nn.Parameter(torch.randn(8, 8)), torch.nn.Parameter(torch.randn(8, 8) * 0.01)
    before = [big.detach().clone(), small.detach().clone()]
    optimizer = make_optimizer([big, small], TrainConfig(tune="model", lr=1e-3, weight_decay=0.0, parameter_scaling=scaling))
    (big.sum() + small.sum()).backward()
    optimizer.step()
    moved = [float((p.detach() - b).pow(2).mean().sqrt()) for p, b in zip((big, small), before)]
    ratio = moved[0] / moved[1]
    if scaling:
        assert ratio == pytest.approx(float(before[0].pow(2).mean().sqrt() / before[1].pow(2).mean().sqrt()), rel=0.05)
    else:
        assert ratio == pytest.approx(1.0, rel=0.05) and moved[0] == pytest.approx(1e-3, rel=0.05)
