"""Scores of predicted strings against examples; the first key of each is the one model selection uses.

Classification metrics come from scikit-learn; SQuAD-style EM/F1 follow the official SQuAD v1.1
evaluation script (its answer normalisation and token-overlap F1, max over gold answers).
All scores are fractions in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence

from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from softprompt.errors import SoftpromptError
from softprompt.tasks.base import Example, Metric


def _pair(predictions: Sequence[str], examples: Sequence[Example]) -> tuple[list[str], list[str]]:
    """Stripped predictions and targets; raises SoftpromptError when the counts differ or are zero."""
    if len(predictions) != len(examples):
        raise SoftpromptError(f"{len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        raise SoftpromptError("no examples to score")
    return [p.strip() for p in predictions], [e.target for e in examples]


def accuracy(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """Exact-match accuracy of the predicted label strings."""
    preds, targets = _pair(predictions, examples)
    return {"accuracy": float(accuracy_score(targets, preds))}


def f1_and_accuracy(positive: str) -> Metric:
    """F1 of the `positive` class (any other prediction counts as negative), then accuracy: MRPC, QQP."""

    def metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        preds, targets = _pair(predictions, examples)
        f1 = f1_score(targets, preds, labels=[positive], average="micro", zero_division=0)
        return {"f1": float(f1), "accuracy": float(accuracy_score(targets, preds))}

    return metric


def macro_f1_and_accuracy(labels: Sequence[str]) -> Metric:
    """Macro-F1 over the task's labels (an illegal prediction is wrong for every class), then accuracy: CB."""

    def metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        preds, targets = _pair(predictions, examples)
        f1 = f1_score(targets, preds, labels=list(labels), average="macro", zero_division=0)
        return {"f1_macro": float(f1), "accuracy": float(accuracy_score(targets, preds))}

    return metric


def accuracy_and_macro_f1(labels: Sequence[str]) -> Metric:
    """Accuracy first, then macro-F1: custom classification tasks."""
    macro = macro_f1_and_accuracy(labels)

    def metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        scores = macro(predictions, examples)
        return {"accuracy": scores["accuracy"], "f1_macro": scores["f1_macro"]}

    return metric


def matthews_and_accuracy(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """Matthews correlation (SuperGLUE's AX-b score; an illegal prediction is its own wrong class), then accuracy."""
    preds, targets = _pair(predictions, examples)
    return {"mcc": float(matthews_corrcoef(targets, preds)), "accuracy": float(accuracy_score(targets, preds))}


def multirc_f1a_em(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """MultiRC: F1 of "True" over all answer options, and the share of questions with every option right."""
    preds, targets = _pair(predictions, examples)
    f1a = f1_score(targets, preds, labels=["True"], average="micro", zero_division=0)
    question_right: dict[str | None, bool] = defaultdict(lambda: True)
    for pred, target, example in zip(preds, targets, examples, strict=True):
        question_right[example.group] = question_right[example.group] and pred == target
    em = sum(question_right.values()) / len(question_right)
    return {"f1a": float(f1a), "em": float(em)}


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """The official SQuAD token-overlap F1 of one prediction against one gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_f1_em(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """SQuAD / ReCoRD / MRQA: F1 and exact match, each the best over an example's gold answers."""
    preds, _ = _pair(predictions, examples)
    f1 = em = 0.0
    for pred, example in zip(preds, examples, strict=True):
        golds = example.answers or (example.target,)
        f1 += max(token_f1(pred, gold) for gold in golds)
        em += max(float(normalize_answer(pred) == normalize_answer(gold)) for gold in golds)
    return {"f1": f1 / len(examples), "em": em / len(examples)}


def refers_to(prediction: str, referent: str) -> bool:
    """Whether a generated WSC answer names the candidate referent.

    As in T5's WSC post-processing: after normalisation, the words of one must contain
    the words of the other ("the dog" / "dog" match); an empty prediction matches nothing.
    """
    pred_words = set(normalize_answer(prediction).split())
    referent_words = set(normalize_answer(referent).split())
    if not pred_words or not referent_words:
        return False
    return pred_words <= referent_words or referent_words <= pred_words


def wsc_accuracy(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """WSC: a prediction says "True" when it names the example's candidate; right when that equals the label."""
    preds, _ = _pair(predictions, examples)
    said_true = [refers_to(pred, example.target) for pred, example in zip(preds, examples, strict=True)]
    labels = [bool(example.label) for example in examples]
    return {"accuracy": float(accuracy_score(labels, said_true))}
