"""How much SST-2 sentiment a backbone's frozen encoder carries: a linear probe, against bag of words.

A cheap check of a pretrained backbone before a prompt-tuning run: encode N SST-2 training inputs
(the task's own text format), mean-pool the encoder's last hidden states over the real tokens, fit a
logistic regression (scikit-learn) and report dev accuracy. A binary bag-of-words logistic
regression on the same N examples is the yardstick: an encoder that carries less than bag of words
gives prompt tuning little to steer. Writes results/backbone_probe.json.

    python benchmarks/backbone_probe.py packaged:default packaged:span-corruption --train-examples 4000
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from backbones import data_dir
from measurement import environment, write_json
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from softprompt.backbones import load_backbone
from softprompt.tasks import get_task

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def mean_pooled_encoder(name: str, splits: list[list[str]], batch_size: int) -> list[np.ndarray]:
    """Per split, [len(texts), d_model]: the encoder's last hidden states averaged over each input's real tokens."""
    backbone = load_backbone(name)
    model, tokenizer = backbone.model, backbone.tokenizer
    if backbone.kind != "encoder-decoder":
        raise SystemExit(f"{name}: the probe reads an encoder; this backbone is decoder-only")
    encoder = model.eval().get_encoder()
    features = []
    for texts in splits:
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True)
            hidden = encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            mask = batch.attention_mask.unsqueeze(-1).float()
            rows.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        features.append(np.concatenate(rows))
    return features


def probe_accuracy(train_x, train_y, dev_x, dev_y) -> float:
    return float(LogisticRegression(max_iter=3000).fit(train_x, train_y).score(dev_x, dev_y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbones", nargs="+", help="hub names, local paths or packaged:NAME (encoder-decoder)")
    parser.add_argument("--train-examples", type=int, default=4000, help="SST-2 train examples (shuffled, seed 0)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", default=str(HERE / "results" / "backbone_probe.json"))
    args = parser.parse_args()

    task, root = get_task("sst2"), data_dir(args.data_dir)
    train = list(task.load("train", root))
    random.Random(0).shuffle(train)
    train, dev = train[: args.train_examples], list(task.load("validation", root))
    train_text, dev_text = [e.input for e in train], [e.input for e in dev]
    train_y, dev_y = [e.target for e in train], [e.target for e in dev]

    words = CountVectorizer(binary=True).fit(train_text)
    results = {"bag_of_words": probe_accuracy(words.transform(train_text), train_y, words.transform(dev_text), dev_y)}
    for name in args.backbones:
        train_x, dev_x = mean_pooled_encoder(name, [train_text, dev_text], args.batch_size)
        results[name] = probe_accuracy(train_x, train_y, dev_x, dev_y)
        print(f"{name}: encoder probe {results[name]:.4f}", flush=True)
    print(f"bag of words: {results['bag_of_words']:.4f}")
    write_json(Path(args.output), {"task": "sst2", "train_examples": len(train), "dev_examples": len(dev),
                                   "dev_accuracy": results, "environment": environment(torch.device("cpu"))})


if __name__ == "__main__":
    main()
