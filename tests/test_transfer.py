"""Zero-shot label maps: parsing, the built-in maps, mapped examples and metrics on real data, bad maps."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from softprompt.errors import SoftpromptError
from softprompt.tasks import (
    BUILTIN_LABEL_MAPS,
    PARAPHRASE_LABEL_MAP,
    Example,
    Task,
    get_task,
    label_map_for,
    mapped_task,
    parse_label_map,
)
from softprompt.tasks.metrics import accuracy

# `data_dir` (the real shared data) is the session fixture of tests/conftest.py.

RTE_LABELS = ("entailment", "not_entailment")
CB_LABELS = "entailment, contradiction, neutral"


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


# --- parsing ----------------------------------------------------------------------------------


def test_parse_label_map_reads_pairs_and_strips_whitespace():
    text = " duplicate = equivalent ,not_duplicate=not_equivalent "
    assert parse_label_map(text) == {"duplicate": "equivalent", "not_duplicate": "not_equivalent"}
    assert parse_label_map("neutral=not_entailment") == {"neutral": "not_entailment"}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("duplicate", "'duplicate' needs exactly one '='; write task_label=prompt_label"),
        ("a=b, c=d=e", "'c=d=e' needs exactly one '='; write task_label=prompt_label"),
        ("=equivalent", "'=equivalent' has an empty label name"),
        ("duplicate=equivalent,not_duplicate= ", "'not_duplicate=' has an empty label name"),
        ("a=b,,c=d", "entry 2 is empty; write task_label=prompt_label"),
        ("", "entry 1 is empty; write task_label=prompt_label"),
        ("a=b, a = c", "task label 'a' is mapped twice"),
    ],
)
def test_parse_label_map_names_the_bad_piece(text, problem):
    with pytest.raises(SoftpromptError, match=exactly(f"label map {text!r}: {problem}")):
        parse_label_map(text)


# --- built-in maps ----------------------------------------------------------------------------


def test_builtin_paraphrase_maps_go_both_ways():
    assert label_map_for("mrpc", get_task("qqp")) == {"duplicate": "equivalent", "not_duplicate": "not_equivalent"}
    assert label_map_for("qqp", get_task("mrpc")) == {"equivalent": "duplicate", "not_equivalent": "not_duplicate"}
    assert PARAPHRASE_LABEL_MAP == label_map_for("mrpc", get_task("qqp"))


def test_builtin_rte_to_cb_folds_contradiction_and_neutral():
    expected = {"entailment": "entailment", "contradiction": "not_entailment", "neutral": "not_entailment"}
    assert label_map_for("rte", get_task("cb")) == expected
    assert label_map_for("RTE", get_task("CB")) == expected  # prompt metadata may spell names either way


def test_label_map_for_is_none_without_a_builtin_map():
    cb = get_task("cb")
    assert label_map_for(None, cb) is None
    assert label_map_for("cb", cb) is None  # a prompt on its own task needs no map
    assert label_map_for("cb", get_task("rte")) is None  # only rte -> cb is built in
    assert label_map_for("sst2", cb) is None


def test_label_map_for_returns_a_copy():
    label_map_for("rte", get_task("cb"))["neutral"] = "entailment"
    assert BUILTIN_LABEL_MAPS[("rte", "cb")]["neutral"] == "not_entailment"


@pytest.mark.parametrize("prompt, evaluated", sorted(BUILTIN_LABEL_MAPS))
def test_every_builtin_map_fits_its_two_tasks(prompt, evaluated):
    task, prompt_labels = get_task(evaluated), get_task(prompt).labels
    mapping = BUILTIN_LABEL_MAPS[(prompt, evaluated)]
    assert set(mapping) == set(task.labels) and set(mapping.values()) == set(prompt_labels)
    assert mapped_task(task, mapping, prompt_labels).labels == prompt_labels


# --- mapped examples and metric on real data --------------------------------------------------


def rte_view_of_cb() -> Task:
    return mapped_task(get_task("cb"), label_map_for("rte", get_task("cb")), get_task("rte").labels)


def test_mapped_cb_validation_speaks_rtes_labels(data_dir):
    original = get_task("cb").load("validation", data_dir)
    task = rte_view_of_cb()
    examples = task.load("validation", data_dir)
    assert task.name == "cb" and task.labels == RTE_LABELS
    assert len(examples) == len(original) == 56
    assert [e.input for e in examples] == [e.input for e in original]
    assert {e.target for e in examples} == set(RTE_LABELS)
    assert all(e.candidates == RTE_LABELS for e in examples)
    folded = ["entailment" if e.target == "entailment" else "not_entailment" for e in original]
    assert [e.target for e in examples] == folded
    assert examples[0].target == "not_entailment"  # the first CB validation row is a contradiction


def test_mapped_metric_scores_in_the_prompts_label_space(data_dir):
    task = rte_view_of_cb()
    examples = task.load("validation", data_dir)
    perfect = task.metric([e.target for e in examples], examples)
    assert list(perfect) == ["accuracy", "f1_macro"] and perfect == {"accuracy": 1.0, "f1_macro": 1.0}
    entailed = Counter(e.target for e in get_task("cb").load("validation", data_dir))["entailment"]
    constant = task.metric(["entailment"] * len(examples), examples)
    assert constant["accuracy"] == pytest.approx(entailed / 56) and constant["accuracy"] < 1.0
    assert constant["f1_macro"] < 1.0
    # CB's own macro-F1 runs over CB's labels, which "not_entailment" is not one of
    assert get_task("cb").metric([e.target for e in examples], examples)["f1_macro"] < 1.0


def test_mapped_test_split_keeps_its_targets_empty(data_dir):
    examples = rte_view_of_cb().load("test", data_dir)
    assert examples and {e.target for e in examples} == {""}
    assert all(e.candidates == RTE_LABELS for e in examples)


def toy_task() -> Task:
    """Two yes/no examples whose answers list the gold label too."""
    rows = [Example("x", "yes", candidates=("yes", "no"), answers=("yes",)), Example("y", "no", candidates=("yes", "no"))]
    return Task(name="toy", load=lambda split, data_dir=None: list(rows), metric=accuracy, labels=("yes", "no"))


def test_mapping_onto_part_of_the_prompts_labels():
    task = mapped_task(toy_task(), {"yes": "b", "no": "a"}, ["a", "b", "c"])
    first, second = task.load("validation", None)
    assert task.labels == ("a", "b", "c")
    assert (first.target, first.candidates, first.answers) == ("b", ("a", "b"), ("b",))
    assert (second.target, second.candidates, second.answers) == ("a", ("a", "b"), ())
    # macro-F1 runs over the labels the map reaches, so the unreachable "c" does not cost a third
    assert task.metric(["b", "a"], [first, second]) == {"accuracy": 1.0, "f1_macro": 1.0}


# --- bad maps ---------------------------------------------------------------------------------

CB_TO_RTE = {"entailment": "entailment", "contradiction": "not_entailment", "neutral": "not_entailment"}
LISTS = f"task cb has labels {CB_LABELS}; the prompt's labels are entailment, not_entailment"


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({**CB_TO_RTE, "maybe": "entailment"}, f"label map: 'maybe' is not a label of task cb ({LISTS})"),
        ({**CB_TO_RTE, "neutral": "neutral"}, f"label map: 'neutral' maps to 'neutral', not a prompt label ({LISTS})"),
        ({"entailment": "entailment", "contradiction": "not_entailment"},
         f"label map leaves out label 'neutral' of task cb ({LISTS})"),
    ],
)
def test_mapped_task_rejects_a_map_that_does_not_fit(mapping, message):
    with pytest.raises(SoftpromptError, match=exactly(message)):
        mapped_task(get_task("cb"), mapping, RTE_LABELS)


def test_mapped_task_rejects_a_task_without_labels():
    message = "task squad has no labels, so a label map cannot apply to it (the prompt's labels are entailment, not_entailment)"
    with pytest.raises(SoftpromptError, match=exactly(message)):
        mapped_task(get_task("squad"), {"entailment": "entailment"}, RTE_LABELS)
