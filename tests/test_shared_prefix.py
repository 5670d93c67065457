"""Decoder-only prompts computed once per batch equal the concatenated computation: loss, gradients, scores, generation.

Mixed batches of prompts of different lengths, with padding, on absolute (GPT-2) and rotary (Llama,
with BOS before the prompt) positions.
"""

import pytest
import torch

from conftest import tiny_backbone
from softprompt.backbones import DecoderOnly
from softprompt.backbones.shared_prefix import SharedPrefixDecoderOnly
from softprompt.data import Features, collate, encode
from softprompt.model import PromptedModel
from softprompt.prompt_io import PromptMetadata
from softprompt.tasks.base import Example

TEXTS = ["sentence: a gripping , funny film .", "sentence: dull", "sentence: the plot never finds its footing .", "sentence: fine"]
TARGETS = ["positive", "negative", "negative", "positive"]
NAMES = ["long", "short", "long", "mid"]  # three prompts of different lengths, one used twice


def pair(kind: str) -> tuple[PromptedModel, PromptedModel]:
    """The same tiny backbone and prompts under the shared-prefix and the concatenated adapter."""
    model, tokenizer = tiny_backbone(kind)
    models = []
    for cls in (SharedPrefixDecoderOnly, DecoderOnly):
        prompted = PromptedModel(cls(model, tokenizer, f"tiny-{kind}"))
        torch.manual_seed(2)
        for name, length in (("long", 7), ("short", 2), ("mid", 4)):
            width = prompted.adapter.width
            prompted.add_prompt(name, torch.randn(length, width), PromptMetadata(length, width, "random-uniform"))
        models.append(prompted.eval())
    return models[0], models[1]


def batch_of(model, with_labels=True, targets=TARGETS):
    feats = [encode(model.adapter, n, model.bank[n], Example(t, y)) for t, y, n in zip(TEXTS, targets, NAMES)]
    return collate(model.adapter, feats, with_labels), feats


@pytest.fixture(params=["gpt2", "llama"])
def models(request):
    return pair(request.param)


def test_loss_and_prompt_gradients_equal_concatenation(models):
    shared, concatenated = models
    losses, grads = [], []
    for model in (shared, concatenated):
        batch, _ = batch_of(model)
        nll, count = model.nll(batch)
        (nll.sum() / count.sum()).backward()
        losses.append((nll.detach(), count))
        grads.append({n: model.bank[n].weight.grad.clone() for n in model.bank.names})
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(losses[0][1], losses[1][1])
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
        assert grads[0][name].abs().sum() > 0


def test_rank_scores_equal_concatenation(models):
    shared, concatenated = models
    scores = []
    for model in (shared, concatenated):
        batch, _ = batch_of(model, with_labels=False)
        candidates = [model.adapter.target_ids(c, 16) for c in ("negative", "positive", "neutral")]
        pair_example = torch.tensor([0, 0, 1, 2, 2, 2, 3])
        chosen = [candidates[i] for i in (0, 1, 0, 0, 1, 2, 1)]
        width = max(len(c) for c in chosen)
        cand_ids = torch.tensor([c + [-100] * (width - len(c)) for c in chosen])
        scores.append(model.score(batch, pair_example, cand_ids))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-5, atol=1e-5)


def test_greedy_generation_equals_concatenation(models):
    shared, concatenated = models
    outputs = [model.generate(batch_of(model, with_labels=False)[0], max_new_tokens=6) for model in (shared, concatenated)]
    assert outputs[0].tolist() == outputs[1].tolist()


def test_each_example_alone_equals_the_mixed_batch(models):
    shared, _ = models
    batch, feats = batch_of(shared)
    nll, _ = shared.nll(batch)
    for i, f in enumerate(feats):
        alone, _ = shared.nll(collate(shared.adapter, [Features(f.input_ids, f.target_ids, f.prompt)]))
        torch.testing.assert_close(nll[i], alone[0], rtol=1e-4, atol=1e-4)


def rank_scores_of(model):
    batch, _ = batch_of(model, with_labels=False)
    cand_ids = torch.tensor([model.adapter.target_ids(c, 16) for c in ("negative", "positive", "positive", "negative")])
    return model.score(batch, torch.arange(4), cand_ids)


def test_prefix_cache_serves_the_same_scores_and_generation(models):
    shared, concatenated = models
    cache = shared.adapter.enable_prefix_cache(1 << 30)
    expected = rank_scores_of(concatenated)
    torch.testing.assert_close(rank_scores_of(shared), expected, rtol=1e-5, atol=1e-5)
    assert (cache.misses, cache.hits, len(cache)) == (3, 0, 3)  # three distinct prompts, computed alone once each
    torch.testing.assert_close(rank_scores_of(shared), expected, rtol=1e-5, atol=1e-5)
    assert (cache.misses, cache.hits) == (3, 3)
    outputs = [m.generate(batch_of(m, with_labels=False)[0], max_new_tokens=6).tolist() for m in (shared, concatenated)]
    assert outputs[0] == outputs[1]


def test_prefix_cache_recomputes_a_changed_or_replaced_prompt(models):
    shared, concatenated = models
    cache = shared.adapter.enable_prefix_cache(1 << 30)
    rank_scores_of(shared)
    with torch.no_grad():  # an optimizer step changes the weight in place
        for model in (shared, concatenated):
            model.bank["long"].weight.mul_(0.5)
    torch.testing.assert_close(rank_scores_of(shared), rank_scores_of(concatenated), rtol=1e-5, atol=1e-5)
    replacement = torch.randn(3, shared.adapter.width)
    for model in (shared, concatenated):  # a prompt replaced under the same name
        model.add_prompt("mid", replacement, PromptMetadata(3, replacement.shape[1], "random-uniform"))
    torch.testing.assert_close(rank_scores_of(shared), rank_scores_of(concatenated), rtol=1e-5, atol=1e-5)
    assert cache.misses == 3 + 2


def test_prefix_cache_stays_within_its_budget_and_training_bypasses_it(models):
    shared, concatenated = models
    probe = shared.adapter.enable_prefix_cache(1 << 30)
    rank_scores_of(shared)
    largest = max(entry.nbytes for entry in probe._entries.values())
    cache = shared.adapter.enable_prefix_cache(largest)  # room for the longest prompt, not for all three
    torch.testing.assert_close(rank_scores_of(shared), rank_scores_of(concatenated), rtol=1e-5, atol=1e-5)
    assert len(cache) < 3 and cache.nbytes <= largest and cache.evictions >= 1
    batch, _ = batch_of(shared)
    misses = cache.misses
    shared.nll(batch)[0].sum().backward()  # with gradients the states are computed afresh, never cached
    assert cache.misses == misses and shared.bank["long"].weight.grad is not None


def test_encoder_decoder_keeps_no_prefix_cache():
    from conftest import tiny_adapter
    assert tiny_adapter("t5").enable_prefix_cache(1 << 20) is None
