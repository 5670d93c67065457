"""The prompted model on every backbone kind: frozen backbone, the splice, mixed batches, scores, the bank."""

import pytest
import torch

from conftest import ALL_KINDS, tiny_adapter
from softprompt.backbones.base import splice
from softprompt.data import Features, collate, encode
from softprompt.errors import SoftpromptError
from softprompt.evaluate import predict, rank_scores, rank_texts
from softprompt.model import PromptedModel
from softprompt.prompt_io import PromptMetadata
from softprompt.tasks.base import Example

TEXTS = ["sentence: a gripping , funny film .", "sentence: dull", "sentence: the plot never finds its footing and the jokes fall flat ."]
TARGETS = ["positive", "negative", "negative"]


@pytest.fixture(params=ALL_KINDS)
def model(request) -> PromptedModel:
    return PromptedModel(tiny_adapter(request.param))


def add_prompts(model, lengths=(3, 5), **settings):
    torch.manual_seed(1)
    for i, n in enumerate(lengths):
        meta = PromptMetadata(n, model.adapter.width, "random-uniform", labels=["negative", "positive"], **settings)
        model.add_prompt(f"p{i}", torch.randn(n, model.adapter.width), meta)


def features(model, prompts, targets=TARGETS):
    return [encode(model.adapter, p, model.bank[p], Example(t, y)) for t, y, p in zip(TEXTS, targets, prompts)]


def batch_of(model, feats, with_labels=True):
    return collate(model.adapter, feats, with_labels)


def test_backbone_frozen_and_only_prompts_trainable(model):
    add_prompts(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["bank.weights.p0", "bank.weights.p1"]


def test_splice_puts_prompt_directly_before_real_tokens(model):
    add_prompts(model)
    adapter = model.adapter
    feats = features(model, ["p0", "p1", "p0"])
    batch = batch_of(model, feats, with_labels=False)
    right_align = adapter.kind == "decoder-only"
    prompts = adapter._prefixed(model.bank.gather(batch["prompts"], model.device)) if right_align else \
        model.bank.gather(batch["prompts"], model.device)
    table = adapter.embeddings
    out = splice(prompts, table[batch["input_ids"]], batch["attention_mask"], right_align)
    for i, f in enumerate(feats):
        p = model.bank[f.prompt].weight
        if getattr(adapter, "bos_id", None) is not None:
            p = torch.cat([table[adapter.bos_id].unsqueeze(0), p])  # BOS first, then the prompt
        real = out.mask[i].nonzero().squeeze(1)
        assert len(real) == len(p) + len(f.input_ids)
        assert (real[1:] - real[:-1] == 1).all(), "prompt and tokens must be contiguous"
        start = int(real[0])
        torch.testing.assert_close(out.embeds[i, start : start + len(p)], p)
        torch.testing.assert_close(out.embeds[i, start + len(p) : start + len(p) + len(f.input_ids)], table[torch.tensor(f.input_ids)])
        assert start == 0 if not right_align else int(real[-1]) == out.mask.shape[1] - 1


def test_bos_comes_before_the_prompt_not_after():
    adapter = tiny_adapter("llama")
    assert adapter.bos_id == adapter.tokenizer.bos_token_id
    assert adapter.bos_id not in adapter.input_ids("sentence: dull", 16), "BOS belongs in front of the prompt"
    assert tiny_adapter("gpt2").bos_id is None  # GPT-2's tokenizer adds none


def test_leading_space_only_where_the_tokenizer_needs_it():
    gpt2, t5 = tiny_adapter("gpt2"), tiny_adapter("t5")
    assert gpt2.word_ids("positive") == gpt2.tokenizer(" positive", add_special_tokens=False).input_ids
    assert t5.word_ids("positive") == t5.tokenizer("positive", add_special_tokens=False).input_ids


def test_mixed_batch_equals_each_example_alone(model):
    add_prompts(model)
    feats = features(model, ["p0", "p1", "p1"])
    nll, count = model.nll(batch_of(model, feats))
    gen = model.generate(batch_of(model, feats, False), max_new_tokens=4)
    for i, f in enumerate(feats):
        nll_i, count_i = model.nll(batch_of(model, [f]))
        torch.testing.assert_close(nll[i], nll_i[0], rtol=1e-4, atol=1e-4)
        assert count[i] == count_i[0]
        gen_i = model.generate(batch_of(model, [f], False), max_new_tokens=4)
        assert gen[i, : gen_i.shape[1]].tolist() == gen_i[0].tolist()


def test_candidate_scores_equal_full_sequence_loss(model):
    add_prompts(model)
    feats = features(model, ["p0", "p1", "p0"])
    batch = batch_of(model, feats, with_labels=False)
    candidates = ["negative", "positive"]
    pair_example = torch.tensor([0, 0, 1, 1, 2, 2])
    cand = [model.adapter.target_ids(c, 16) for c in candidates] * 3
    width = max(len(c) for c in cand)
    cand_ids = torch.tensor([c + [-100] * (width - len(c)) for c in cand])
    scores = model.score(batch, pair_example, cand_ids)
    for k, (i, c) in enumerate(zip(pair_example.tolist(), candidates * 3)):
        f = feats[i]
        nll, _ = model.nll(batch_of(model, [Features(f.input_ids, model.adapter.target_ids(c, 16), f.prompt)]))
        torch.testing.assert_close(scores[k], -nll[0], rtol=1e-4, atol=1e-4)


def test_gradients_reach_only_the_prompts_the_batch_names(model):
    add_prompts(model, lengths=(3, 5, 2))
    before = {n: p.detach().clone() for n, p in model.base_model.named_parameters()}
    model(batch_of(model, features(model, ["p0", "p2", "p0"]))).backward()
    assert all(p.grad is None for p in model.base_model.parameters())
    grads = {name: model.bank[name].weight.grad for name in model.bank.names}
    assert grads["p0"].abs().sum() > 0 and grads["p2"].abs().sum() > 0
    assert grads["p1"] is None, "a prompt the batch does not name takes no part in the forward"
    for n, p in model.base_model.named_parameters():
        assert torch.equal(p, before[n])


def test_rank_scores_follow_each_examples_own_candidates(model):
    add_prompts(model)
    feats = features(model, ["p0", "p1", "p0"])
    candidates = [["negative", "positive"], ["positive", "neutral", "negative"], ["great"]]
    scores = rank_scores(model, feats, candidates, batch_size=2)  # two batches, longest example first
    assert [len(s) for s in scores] == [2, 3, 1]
    for f, options, row in zip(feats, candidates, scores):
        for c, score in zip(options, row):
            nll, _ = model.nll(batch_of(model, [Features(f.input_ids, model.adapter.target_ids(c, 16), f.prompt)]))
            assert abs(score + nll[0].item()) < 1e-3, c
    best = rank_texts(model, feats, candidates, batch_size=2)
    assert best == [options[row.index(max(row))] for options, row in zip(candidates, scores)]


def test_each_example_follows_its_own_prompts_settings():
    model = PromptedModel(tiny_adapter("t5"))
    width = model.adapter.width
    model.add_prompt("short", torch.randn(2, width), PromptMetadata(2, width, "random-uniform", max_input_length=4,
                                                                    target_format="sentinel", labels=["negative", "positive"]))
    model.add_prompt("long", torch.randn(3, width), PromptMetadata(3, width, "random-uniform", labels=["bad", "good"]))
    short, long = (encode(model.adapter, n, model.bank[n], Example(TEXTS[2], "positive")) for n in ("short", "long"))
    assert len(short.input_ids) == 4 < len(long.input_ids)
    assert short.target_ids[0] == model.adapter.tokenizer.convert_tokens_to_ids("<extra_id_0>") != long.target_ids[0]
    outputs = predict(model, [("short", TEXTS[0]), ("long", TEXTS[0]), ("short", TEXTS[1])], method="rank", batch_size=3)
    assert outputs[0] in ("negative", "positive") and outputs[1] in ("bad", "good") and outputs[2] in ("negative", "positive")


def test_bank_adds_and_removes_prompts_at_run_time(model):
    add_prompts(model)
    model.bank.remove("p0")
    assert model.bank.names == ["p1"] and [n for n, _ in model.named_parameters() if "bank" in n] == ["bank.weights.p1"]
    with pytest.raises(SoftpromptError, match="unknown prompt 'p0'"):
        model.bank.gather(["p1", "p0"], model.device)
    width = model.adapter.width
    model.add_prompt("v1.2", torch.zeros(4, width), PromptMetadata(4, width, "random-uniform"))  # dots are fine
    assert model.bank["v1.2"].length == 4
    for bad in ("../etc", "a/b", "", "x" * 200):
        with pytest.raises(SoftpromptError, match="prompt name"):
            model.add_prompt(bad, torch.zeros(1, width), PromptMetadata(1, width, "random-uniform"))


def test_prompt_names_that_a_parameter_dict_uses_itself(prompted):
    """'copy', 'keys', 'training' ... are attributes of nn.ParameterDict; they still name prompts."""
    width = prompted.adapter.width
    for k, name in enumerate(("copy", "keys", "training", "cpu", "a.b")):
        prompted.add_prompt(name, torch.full((2, width), float(k)), PromptMetadata(2, width, "random-uniform"))
    assert [float(prompted.bank[n].weight[0, 0]) for n in ("copy", "keys", "training", "cpu", "a.b")] == [0, 1, 2, 3, 4]
    prompted.bank.remove("copy")
    assert "copy" not in prompted.bank and "keys" in prompted.bank


def test_sorted_batches_keep_each_forward_within_a_token_budget():
    from softprompt.data import sorted_batches

    feats = [Features(list(range(n)), [], "p") for n in (3, 40, 7, 12, 40, 5, 9, 30)]
    batches = list(sorted_batches(feats, batch_size=4, max_tokens=80))
    assert sorted(i for b in batches for i in b) == list(range(len(feats)))
    for batch in batches:
        longest = max(feats[i].length for i in batch)
        assert len(batch) <= 4 and (len(batch) == 1 or len(batch) * longest <= 80)
        assert feats[batch[0]].length == longest
    assert [len(b) for b in batches] == [2, 2, 4]  # 40+40 | 30+12 | 9, 7, 5, 3
    assert [len(b) for b in sorted_batches(feats, batch_size=4)] == [4, 4]  # no budget: by count only
