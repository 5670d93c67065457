"""One matrix of variants (initialisation x backbone kind) through the shared behaviours."""

import pytest
import torch

from softprompt.config import INITS, PromptConfig
from softprompt.data import Encoder, collate
from softprompt.errors import SoftpromptError
from softprompt.evaluate import evaluate
from softprompt.prompt import SoftPrompt, initial_prompt, most_common_token_ids
from softprompt.prompt_io import PromptMetadata, load_prompt, save_prompt
from softprompt.tasks import get_task

LABELS = ("negative", "positive")


def make_prompt(model, init: str, tmp_path, length: int = 6) -> torch.Tensor:
    source = tmp_path / "source"
    if init == "file":
        save_prompt(source, torch.randn(length, model.width), PromptMetadata(length, model.width, "random-uniform"))
    config = PromptConfig(length=length, init=init, init_text="a review of a film", init_file=str(source))
    return initial_prompt(config, model.embeddings.detach(), model.encode_words, model.common_token_ids(), LABELS)


@pytest.mark.parametrize("init", INITS)
def test_init_save_load_generate_and_score(prompted, init, tmp_path, data_dir):
    weight = make_prompt(prompted, init, tmp_path)
    assert weight.shape == (6, prompted.width) and torch.isfinite(weight).all()
    directory = save_prompt(tmp_path / "saved", weight, PromptMetadata(6, prompted.width, init, task="sst2", labels=list(LABELS)))
    loaded, metadata = load_prompt(directory)
    assert torch.equal(loaded, weight) and metadata.init == init
    prompted.add_prompt("sst2", SoftPrompt(loaded))
    task = get_task("sst2")
    examples = task.load("validation", data_dir)[:4]
    metrics = evaluate(prompted, task, examples, Encoder(prompted.tokenizer, prompted.is_encoder_decoder), method="both", batch_size=2)
    assert {"rank_accuracy", "generate_accuracy", "generate_invalid"} <= set(metrics)


def test_each_init_follows_its_rule(prompted, tmp_path):
    table = prompted.embeddings.detach()
    uniform = make_prompt(prompted, "random-uniform", tmp_path, length=50)
    assert uniform.min() >= -0.5 and uniform.max() <= 0.5 and uniform.std() > 0.2

    common = prompted.common_token_ids()[:5000]
    sampled = make_prompt(prompted, "sampled-vocab", tmp_path, length=50)
    rows = {tuple(r.tolist()) for r in table[torch.tensor(common)]}
    assert all(tuple(r.tolist()) in rows for r in sampled)
    assert len({tuple(r.tolist()) for r in sampled}) == 50, "drawn without replacement"

    labels = make_prompt(prompted, "class-label", tmp_path)
    for i, label in enumerate(LABELS):
        ids = prompted.encode_words(label)
        torch.testing.assert_close(labels[i], table[torch.tensor(ids)].mean(0))
    assert all(tuple(r.tolist()) in rows for r in labels[2:])

    text = make_prompt(prompted, "text", tmp_path)
    ids = prompted.encode_words("a review of a film")
    torch.testing.assert_close(text[: min(6, len(ids))], table[torch.tensor(ids[:6])])


def test_most_common_skips_special_tokens():
    assert most_common_token_ids(10, [0, 1, 2], 4) == [3, 4, 5, 6]


def test_file_init_of_wrong_shape_is_refused(prompted, tmp_path):
    save_prompt(tmp_path / "source", torch.randn(3, prompted.width), PromptMetadata(3, prompted.width, "random-uniform"))
    with pytest.raises(SoftpromptError, match="shape"):
        initial_prompt(
            PromptConfig(length=6, init="file", init_file=str(tmp_path / "source")),
            prompted.embeddings.detach(), prompted.encode_words, prompted.common_token_ids())


def test_sentinel_target_format_round_trip(prompted, data_dir):
    if not prompted.is_encoder_decoder:
        pytest.skip("sentinels belong to T5 vocabularies")
    encoder = Encoder(prompted.tokenizer, True, target_format="sentinel")
    ids = encoder.target_ids("positive")
    assert ids[0] == prompted.tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert ids[1:] == Encoder(prompted.tokenizer, True).target_ids("positive")
    prompted.add_prompt("sst2", SoftPrompt(torch.randn(4, prompted.width)))
    task = get_task("sst2")
    metrics = evaluate(prompted, task, task.load("validation", data_dir)[:4], encoder, method="both", batch_size=4)
    assert 0.0 <= metrics["rank_accuracy"] <= 1.0
