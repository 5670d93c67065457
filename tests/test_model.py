import torch

from softprompt.data import Encoder, collate
from softprompt.evaluate import rank_scores, rank_texts
from softprompt.prompt import SoftPrompt
from softprompt.tasks.base import Example

TEXTS = ["sentence: a gripping , funny film .", "sentence: dull", "sentence: the plot never finds its footing and the jokes fall flat ."]
TARGETS = ["positive", "negative", "negative"]


def add_prompts(model, lengths=(3, 5)):
    torch.manual_seed(1)
    return [model.add_prompt(f"p{i}", SoftPrompt(torch.randn(n, model.width))) for i, n in enumerate(lengths)]


def features(model, prompts):
    enc = Encoder(model.tokenizer, model.is_encoder_decoder)
    return [enc.features(Example(t, y), prompt=p) for t, y, p in zip(TEXTS, TARGETS, prompts)]


def batch_of(model, feats, with_labels=True):
    return collate(feats, model.tokenizer.pad_token_id, model.is_encoder_decoder, with_labels)


def test_backbone_frozen_and_only_prompts_trainable(prompted):
    add_prompts(prompted)
    trainable = [n for n, p in prompted.named_parameters() if p.requires_grad]
    assert trainable == ["prompts.p0.weight", "prompts.p1.weight"]


def test_splice_puts_prompt_directly_before_real_tokens(prompted):
    add_prompts(prompted)
    feats = features(prompted, [0, 1, 0])
    batch = batch_of(prompted, feats, with_labels=False)
    out = prompted.splice(batch["input_ids"], batch["attention_mask"], batch["prompt_index"])
    embeds, mask = out["inputs_embeds"], out["attention_mask"]
    table = prompted.backbone.get_input_embeddings().weight
    for i, f in enumerate(feats):
        p = prompted.prompts[f"p{f.prompt}"].weight
        real = mask[i].nonzero().squeeze(1)
        assert len(real) == len(p) + len(f.input_ids)
        assert (real[1:] - real[:-1] == 1).all(), "prompt and tokens must be contiguous"
        start = int(real[0])
        torch.testing.assert_close(embeds[i, start : start + len(p)], p)
        torch.testing.assert_close(embeds[i, start + len(p) : start + len(p) + len(f.input_ids)], table[torch.tensor(f.input_ids)])
        if prompted.is_encoder_decoder:
            assert start == 0
        else:
            assert int(real[-1]) == mask.shape[1] - 1
            assert out["position_ids"][i, start] == 0


def test_mixed_batch_equals_each_example_alone(prompted):
    add_prompts(prompted)
    feats = features(prompted, [0, 1, 1])
    batch = batch_of(prompted, feats)
    nll, count = prompted(**batch)
    gen = prompted.generate(**{k: v for k, v in batch_of(prompted, feats, False).items()}, max_new_tokens=4)
    for i, f in enumerate(feats):
        alone = batch_of(prompted, [f])
        nll_i, count_i = prompted(**alone)
        torch.testing.assert_close(nll[i], nll_i[0], rtol=1e-4, atol=1e-4)
        assert count[i] == count_i[0]
        gen_i = prompted.generate(**batch_of(prompted, [f], False), max_new_tokens=4)
        assert gen[i, : gen_i.shape[1]].tolist() == gen_i[0].tolist()


def test_candidate_scores_equal_full_sequence_loss(prompted):
    add_prompts(prompted)
    feats = features(prompted, [0, 1, 0])
    batch = batch_of(prompted, feats, with_labels=False)
    enc = Encoder(prompted.tokenizer, prompted.is_encoder_decoder)
    candidates = ["negative", "positive"]
    pair_example = torch.tensor([0, 0, 1, 1, 2, 2])
    cand = [enc.target_ids(c) for c in candidates] * 3
    width = max(len(c) for c in cand)
    cand_ids = torch.tensor([c + [-100] * (width - len(c)) for c in cand])
    scores = prompted.score_candidates(**batch, pair_example=pair_example, candidate_ids=cand_ids)
    for k, (i, c) in enumerate(zip(pair_example.tolist(), candidates * 3)):
        f = feats[i]
        alone = type(f)(f.input_ids, enc.target_ids(c), f.prompt)
        nll, _ = prompted(**batch_of(prompted, [alone]))
        torch.testing.assert_close(scores[k], -nll[0], rtol=1e-4, atol=1e-4)


def test_gradients_reach_prompt_only(prompted):
    add_prompts(prompted)
    before = {n: p.detach().clone() for n, p in prompted.backbone.named_parameters()}
    loss = prompted.loss(batch_of(prompted, features(prompted, [0, 1, 0])))
    loss.backward()
    assert all(p.grad is None for p in prompted.backbone.parameters())
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in prompted.prompt_parameters())
    for n, p in prompted.backbone.named_parameters():
        assert torch.equal(p, before[n])


def test_rank_scores_follow_each_examples_own_candidates(prompted):
    add_prompts(prompted)
    feats = features(prompted, [0, 1, 0])
    enc = Encoder(prompted.tokenizer, prompted.is_encoder_decoder)
    candidates = [["negative", "positive"], ["positive", "neutral", "negative"], ["great"]]
    scores = rank_scores(prompted, feats, candidates, enc, batch_size=2)  # two batches, longest example first
    assert [len(s) for s in scores] == [2, 3, 1]
    for f, options, row in zip(feats, candidates, scores):
        for c, score in zip(options, row):
            nll, _ = prompted(**batch_of(prompted, [type(f)(f.input_ids, enc.target_ids(c), f.prompt)]))
            assert abs(score + nll[0].item()) < 1e-3, c
    best = rank_texts(prompted, feats, candidates, enc, batch_size=2)
    assert best == [options[row.index(max(row))] for options, row in zip(candidates, scores)]
