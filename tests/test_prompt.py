"""One matrix of variants (initialisation x backbone kind) through the shared behaviours."""

import pytest
import torch

from softprompt.config import INITS, PromptConfig
from softprompt.data import encode
from softprompt.errors import SoftpromptError
from softprompt.evaluate import evaluate
from softprompt.prompt import initial_prompt
from softprompt.prompt_io import PromptMetadata, load_prompt, save_prompt
from softprompt.tasks import get_task
from softprompt.tasks.base import Example

LABELS = ("negative", "positive")


def make_prompt(model, init: str, tmp_path, length: int = 6, words=LABELS) -> torch.Tensor:
    source, backbone = tmp_path / "source", model.adapter
    if init == "file":
        save_prompt(source, torch.randn(length, backbone.width), PromptMetadata(length, backbone.width, "random-uniform",
                                                                                backbone_fingerprint=backbone.fingerprint()))
    config = PromptConfig(length=length, init=init, init_text="a review of a film", init_file=str(source))
    return initial_prompt(config, backbone, words).weight


@pytest.mark.parametrize("init", INITS)
def test_init_save_load_generate_and_score(prompted, init, tmp_path, data_dir):
    width = prompted.adapter.width
    weight = make_prompt(prompted, init, tmp_path)
    assert weight.shape == (6, width) and torch.isfinite(weight).all()
    directory = save_prompt(tmp_path / "saved", weight, PromptMetadata(6, width, init, task="sst2", labels=list(LABELS)))
    loaded, metadata = load_prompt(directory)
    assert torch.equal(loaded, weight) and metadata.init == init
    prompted.add_prompt("sst2", loaded, metadata)
    task = get_task("sst2")
    examples = task.load("validation", data_dir)[:4]
    metrics = evaluate(prompted, task, examples, "sst2", method="both", batch_size=2)
    assert {"rank_accuracy", "generate_accuracy", "generate_invalid"} <= set(metrics)


def test_each_init_follows_its_rule(prompted, tmp_path):
    table = prompted.adapter.embeddings.detach()
    uniform = make_prompt(prompted, "random-uniform", tmp_path, length=50)
    assert uniform.min() >= -0.5 and uniform.max() <= 0.5 and uniform.std() > 0.2

    common = prompted.adapter.common_token_ids()[:5000]
    sampled = make_prompt(prompted, "sampled-vocab", tmp_path, length=50)
    rows = {tuple(r.tolist()) for r in table[torch.tensor(common)]}
    assert all(tuple(r.tolist()) in rows for r in sampled)
    assert len({tuple(r.tolist()) for r in sampled}) == 50, "drawn without replacement"

    labels = make_prompt(prompted, "class-label", tmp_path)
    for i, label in enumerate(LABELS):
        ids = prompted.adapter.word_ids(label)
        torch.testing.assert_close(labels[i], table[torch.tensor(ids)].mean(0))
    assert all(tuple(r.tolist()) in rows for r in labels[2:])

    text = make_prompt(prompted, "text", tmp_path)
    ids = prompted.adapter.word_ids("a review of a film")
    torch.testing.assert_close(text[: min(6, len(ids))], table[torch.tensor(ids[:6])])


def test_common_tokens_skip_special_tokens(prompted):
    common = prompted.adapter.common_token_ids()
    special = set(prompted.adapter.tokenizer.all_special_ids)
    assert common[:3] == [i for i in range(10) if i not in special][:3] and not special & set(common)


def test_file_init_of_wrong_shape_is_refused(prompted, tmp_path):
    width = prompted.adapter.width
    save_prompt(tmp_path / "source", torch.randn(3, width), PromptMetadata(3, width, "random-uniform"))
    with pytest.raises(SoftpromptError, match="shape"):
        initial_prompt(PromptConfig(length=6, init="file", init_file=str(tmp_path / "source")), prompted.adapter)


def test_file_init_from_another_backbone_is_refused(prompted, kind, tmp_path):
    """Defect 9: --init file checks the saved prompt's backbone fingerprint like every other load."""
    from conftest import tiny_adapter

    other = tiny_adapter(kind, seed=1)
    width = other.width
    save_prompt(tmp_path / "source", torch.randn(6, width), PromptMetadata(6, width, "random-uniform", backbone_kind=other.kind,
                                                                           backbone_fingerprint=other.fingerprint()))
    config = PromptConfig(length=6, init="file", init_file=str(tmp_path / "source"))
    with pytest.raises(SoftpromptError, match="allow-other-backbone"):
        initial_prompt(config, prompted.adapter)
    assert initial_prompt(config, prompted.adapter, allow_other_backbone=True).weight.shape == (6, width)


def test_class_label_without_labels_falls_back_to_sampled_vocab(prompted, tmp_path):
    """Defect 4: a task without labels (SQuAD) trains with the default init; the fallback is said."""
    initial = initial_prompt(PromptConfig(length=5), prompted.adapter, ())
    rows = {tuple(r.tolist()) for r in prompted.adapter.embeddings.detach()[torch.tensor(prompted.adapter.common_token_ids()[:5000])]}
    assert initial.init == "sampled-vocab" and "sampled vocabulary" in initial.note
    assert all(tuple(r.tolist()) in rows for r in initial.weight)


def test_sentinel_target_format_round_trip(prompted, data_dir):
    if prompted.adapter.kind != "encoder-decoder":
        pytest.skip("sentinels belong to T5 vocabularies")
    width, adapter = prompted.adapter.width, prompted.adapter
    prompted.add_prompt("sentinel", torch.randn(4, width), PromptMetadata(4, width, "random-uniform", target_format="sentinel"))
    prompted.add_prompt("plain", torch.randn(4, width), PromptMetadata(4, width, "random-uniform"))
    sentinel, plain = (encode(adapter, n, prompted.bank[n], Example("sentence: fine", "positive")) for n in ("sentinel", "plain"))
    assert sentinel.target_ids[0] == adapter.tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert sentinel.target_ids[1:] == plain.target_ids
    task = get_task("sst2")
    metrics = evaluate(prompted, task, task.load("validation", data_dir)[:4], "sentinel", method="both", batch_size=4)
    assert 0.0 <= metrics["rank_accuracy"] <= 1.0
