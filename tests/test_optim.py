"""The scale-aware learning rate: the paper's on T5's scale, proportional to the embedding RMS elsewhere."""

import json

import pytest

from conftest import tiny_adapter
from softprompt.backbones import load_backbone
from softprompt.config import PromptConfig, TrainConfig
from softprompt.optim import T5_EMBEDDING_RMS, embedding_rms, learning_rate
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
