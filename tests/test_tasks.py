"""Tasks: real data loads to the official counts and formats; metrics, loaders and bad input behave."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from functools import cache
from pathlib import Path

import pytest

from softprompt.errors import SoftpromptError
from softprompt.tasks import (
    DATA_DIR_ENV,
    SPLITS,
    TASKS,
    CustomTaskSpec,
    Example,
    Task,
    custom_task,
    get_task,
    label_map_for,
    load_examples,
    load_mrqa,
    mapped_task,
    require_examples,
    resolve_data_dir,
)
from softprompt.tasks.metrics import normalize_answer, refers_to
from softprompt.tasks.superglue import mark_pronoun

# `data_dir` (the real shared data) is the session fixture of tests/conftest.py.


@cache
def load(name: str, split: str, data_dir: Path) -> tuple[Example, ...]:
    """Each real split is read once per test session."""
    return tuple(get_task(name).load(split, data_dir))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    return write_lines(path, [json.dumps(r) for r in records])


def scores(task_name: str, predictions: list[str], examples: list[Example]) -> dict[str, float]:
    return get_task(task_name).metric(predictions, examples)


# --- real data: counts, formats, labels ------------------------------------------------------

OFFICIAL_COUNTS = [
    ("sst2", "validation", 872),
    ("sst2", "test", 1821),
    ("mrpc", "validation", 408),
    ("mrpc", "train", 3668),  # includes the quote-containing row that breaks naive readers
    ("mrpc", "test", 1725),
    ("rte", "validation", 277),
    ("cb", "validation", 56),
    ("copa", "validation", 100),
    ("boolq", "validation", 3270),
    ("boolq", "train", 9427),
    ("wic", "validation", 638),
    ("wsc", "validation", 104),
    ("wsc", "train", 259),  # 554 rows, of which the 259 correct-referent ones are kept for training
    ("multirc", "validation", 4848),  # answer options
    ("mrqa-relationextraction", "validation", 2948),
    ("axb", "validation", 1104),
    ("axg", "validation", 356),
    ("squad-dev-split", "train", 8981),  # the first 40 of dev-v1.1.json's 48 articles
    ("squad-dev-split", "validation", 1589),  # the last 8
]


@pytest.mark.parametrize("name, split, count", OFFICIAL_COUNTS)
def test_real_splits_have_official_counts(data_dir, name, split, count):
    assert len(load(name, split, data_dir)) == count


def test_multirc_validation_has_official_question_count(data_dir):
    assert len({e.group for e in load("multirc", "validation", data_dir)}) == 953


FIRST_VALIDATION_INPUTS = {
    "sst2": "sentence: it 's a charming and often affecting journey .",
    "mrpc": "sentence1: He said the foodservice pie business doesn 't fit the company 's long-term growth strategy . "
    'sentence2: " The foodservice pie business does not fit our long-term growth strategy .',
    "rte": "hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow of the actor Christopher Reeve, "
    "has died of lung cancer at age 44, according to the Christopher Reeve Foundation.",
    "copa": "choice1: The toilet filled with water. choice2: Water flowed from the spout. "
    "premise: The man turned on the faucet. question: effect",
    "wic": "sentence1: An emerging professional class. sentence2: Apologizing for losing your temper, "
    "even though you were badly provoked, showed real class. word: class",
    "wsc": "Bernard , who had not told the government official that he was less than 21 when he filed for a homestead "
    "claim, did not consider that he had done anything dishonest. Still, anyone who knew that he was 19 years old "
    "could take his claim away from *him* .",
    "mrqa-relationextraction": "question: Why did Ray Eberle die? context: Ray Eberle died of a heart attack in "
    "Douglasville, Georgia on August 25, 1979, aged 60.",
    "axb": "hypothesis: The cat did not sit on the mat. premise: The cat sat on the mat.",
}


@pytest.mark.parametrize("name", sorted(FIRST_VALIDATION_INPUTS))
def test_first_validation_input_is_exact(data_dir, name):
    assert load(name, "validation", data_dir)[0].input == FIRST_VALIDATION_INPUTS[name]


def first_line(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.loads(f.readline())


def test_long_first_inputs_follow_the_reference_formats(data_dir):
    boolq = first_line(data_dir / "superglue/BoolQ/val.jsonl")
    assert load("boolq", "validation", data_dir)[0].input == f"passage: {boolq['passage']} question: {boolq['question']}"
    cb = first_line(data_dir / "superglue/CB/val.jsonl")
    assert load("cb", "validation", data_dir)[0].input == f"hypothesis: {cb['hypothesis']} premise: {cb['premise']}"
    passage = first_line(data_dir / "superglue/MultiRC/val.jsonl")["passage"]
    question = passage["questions"][0]
    first = load("multirc", "validation", data_dir)[0]
    answer = question["answers"][0]["text"]
    assert first.input == f"question: {question['question']} answer: {answer} paragraph: {passage['text'].strip()}"
    assert first.group == "0-0"


@pytest.mark.parametrize("name", ["sst2", "mrpc", "rte", "cb", "copa", "boolq", "wic", "multirc"])
def test_targets_are_legal_labels_and_test_targets_are_empty(data_dir, name):
    task = get_task(name)
    validation = load(name, "validation", data_dir)
    assert {e.target for e in validation} == set(task.labels)
    assert all(e.candidates == task.labels for e in validation)
    assert {e.target for e in load(name, "test", data_dir)} == {""}


def test_label_strings_follow_the_official_label_order(data_dir):
    assert load("sst2", "validation", data_dir)[0].target == "positive"  # label 1
    assert load("copa", "validation", data_dir)[0].target == "choice2"  # label 1
    assert load("cb", "validation", data_dir)[0].target == "contradiction"
    assert load("wic", "validation", data_dir)[0].target == "False"  # label false


@pytest.mark.parametrize(
    "name", ["sst2", "mrpc", "rte", "cb", "copa", "boolq", "wic", "multirc", "wsc", "mrqa-relationextraction"]
)
def test_perfect_predictions_score_one(data_dir, name):
    examples = list(load(name, "validation", data_dir))
    # a perfect WSC model names the candidate exactly when it is the referent
    predictions = [e.target if name != "wsc" or e.label else "" for e in examples]
    result = scores(name, predictions, examples)
    assert result and all(value == pytest.approx(1.0) for value in result.values())


def test_wsc_marks_exactly_one_pronoun_everywhere(data_dir):
    for split in SPLITS:
        assert all(e.input.count("*") == 2 for e in load("wsc", split, data_dir))
    assert all(e.label is True for e in load("wsc", "train", data_dir))
    assert {e.label for e in load("wsc", "validation", data_dir)} == {True, False}


def test_wsc_tolerates_the_official_off_by_one_index(data_dir):
    marked = [e.input for e in load("wsc", "validation", data_dir) if "iron safe" in e.input]
    assert marked and "want to use *it* ," in marked[0]


# --- metrics on hand-made predictions --------------------------------------------------------


def examples_with(targets: list[str], **kwargs) -> list[Example]:
    return [Example(input="x", target=t, **kwargs) for t in targets]


def test_accuracy_strips_whitespace_of_predictions():
    examples = examples_with(["positive", "negative", "positive", "negative"])
    assert scores("sst2", [" positive", "negative\n", "negative", "junk"], examples) == {"accuracy": 0.5}


def test_mrpc_f1_counts_an_illegal_prediction_as_a_miss():
    examples = examples_with(["equivalent", "equivalent", "not_equivalent"])
    result = scores("mrpc", ["equivalent", "maybe", "not_equivalent"], examples)
    assert list(result) == ["f1", "accuracy"]
    assert result["f1"] == pytest.approx(2 / 3) and result["accuracy"] == pytest.approx(2 / 3)


def test_cb_macro_f1():
    examples = examples_with(["entailment", "contradiction", "neutral", "entailment"])
    result = scores("cb", ["entailment", "contradiction", "contradiction", "garbage"], examples)
    assert list(result) == ["f1_macro", "accuracy"]
    # per class F1: entailment 2/3, contradiction 2/3, neutral 0
    assert result["f1_macro"] == pytest.approx(4 / 9) and result["accuracy"] == pytest.approx(0.5)


def test_multirc_em_is_per_question_and_f1a_over_answers():
    examples = [
        Example("x", "True", group="0-0"),
        Example("x", "False", group="0-0"),
        Example("x", "True", group="0-1"),
        Example("x", "True", group="0-1"),
    ]
    result = scores("multirc", ["True", "False", "True", "False"], examples)
    assert list(result) == ["f1a", "em"]
    assert result["em"] == pytest.approx(0.5)
    assert result["f1a"] == pytest.approx(0.8)  # precision 1, recall 2/3


def test_squad_normalisation_and_max_over_gold_answers():
    assert normalize_answer("  The  Cat's, hat! ") == "cats hat"
    examples = [
        Example("x", "cat", answers=("a dog", "cat")),
        Example("x", "the cat", answers=("the cat",)),
    ]
    result = scores("squad", ["The cat.", "black cat sat"], examples)
    assert list(result) == ["f1", "em"]
    assert result["em"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx((1.0 + 0.5) / 2)  # second: precision 1/3, recall 1


def test_wsc_prediction_matches_the_candidate_after_normalisation():
    assert refers_to("Dog", "the dog")
    assert refers_to("barn", "the big red barn")
    assert refers_to("the big red barn.", "barn")
    assert not refers_to("", "Mary")
    assert not refers_to("Bill", "John")
    examples = [
        Example("x", "the dog", label=True),
        Example("x", "John", label=False),
        Example("x", "the big red barn", label=True),
        Example("x", "Mary", label=True),
    ]
    assert scores("wsc", ["Dog", "Bill", "barn", ""], examples) == {"accuracy": 0.75}


def test_mark_pronoun_handles_attached_punctuation():
    assert mark_pronoun('I told him," he said.', "him", 2) == 'I told *him*," he said.'
    assert mark_pronoun("no pronoun here", "it", 1) is None


def test_metric_rejects_mismatched_prediction_count():
    with pytest.raises(SoftpromptError, match="2 predictions for 1 examples"):
        scores("rte", ["entailment", "entailment"], examples_with(["entailment"]))


# --- loaders on small files in the official formats ------------------------------------------


def test_qqp_reads_the_official_tsv_columns(tmp_path):
    qqp = tmp_path / "glue/QQP"
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    write_lines(qqp / "dev.tsv", [header, '7\t1\t2\tHow do I "learn" Python?\tWhat is the best way to learn Python?\t1'])
    write_lines(qqp / "train.tsv", [header, "310137\t1\t2\tHow can I create an Android app?\t\t0"])  # as official
    write_lines(qqp / "test.tsv", ["id\tquestion1\tquestion2", "0\tWhy?\tWhy not?"])
    (dev,) = get_task("qqp").load("validation", tmp_path)
    assert dev.input == 'question1: How do I "learn" Python? question2: What is the best way to learn Python?'
    assert dev.target == "duplicate" and dev.candidates == ("not_duplicate", "duplicate")
    assert [e.target for e in get_task("qqp").load("test", tmp_path)] == [""]
    (train,) = get_task("qqp").load("train", tmp_path)
    assert (train.input, train.target) == ("question1: How can I create an Android app? question2: ", "not_duplicate")


RECORD_TEXT = "Tottenham beat Chelsea.\n@highlight\nSpurs won\n@highlight\nKane scored for Tottenham"


def span(word: str, after: int = 0) -> dict:
    """Official ReCoRD offsets of `word` (inclusive end), searching from `after`."""
    start = RECORD_TEXT.index(word, after)
    return {"start": start, "end": start + len(word) - 1, "text": word}


RECORD_LINE = {
    "source": "Daily mail",
    "passage": {
        "text": RECORD_TEXT,
        "entities": [{k: v for k, v in span(w, a).items() if k != "text"} for w, a in
                     [("Tottenham", 0), ("Chelsea", 0), ("Kane", 0), ("Tottenham", 1)]],
    },
    "qas": [
        {"query": "@placeholder lost the derby.", "answers": [span("Chelsea")], "idx": 0},
        {"query": "@placeholder won.", "answers": [span("Tottenham"), span("Tottenham", 1)], "idx": 1},
    ],
    "idx": 0,
}


def test_record_reads_one_example_per_query(tmp_path):
    write_jsonl(tmp_path / "superglue/ReCoRD/val.jsonl", [RECORD_LINE])
    first, second = get_task("record").load("validation", tmp_path)
    assert first.input == (
        "query: @placeholder lost the derby. entities: Tottenham, Chelsea, Kane "
        "passage: Tottenham beat Chelsea. Spurs won. Kane scored for Tottenham"
    )
    assert first.candidates == ("Tottenham", "Chelsea", "Kane")
    assert (first.target, first.answers) == ("Chelsea", ("Chelsea",))
    assert second.target == "Tottenham" and second.answers == ("Tottenham", "Tottenham")
    assert get_task("record").class_words == ("commonsense", "reasoning", "reading", "comprehension")
    assert scores("record", ["chelsea", "Kane"], [first, second]) == {"f1": 0.5, "em": 0.5}


def test_record_rejects_entity_offsets_outside_the_passage(tmp_path):
    line = json.loads(json.dumps(RECORD_LINE))
    line["passage"]["entities"][1]["end"] = 500
    write_jsonl(tmp_path / "superglue/ReCoRD/val.jsonl", [line])
    with pytest.raises(SoftpromptError, match=r"val\.jsonl, line 1: field 'passage\.entities\[1\]\.end'"):
        get_task("record").load("validation", tmp_path)


SQUAD_DOC = {
    "version": "1.1",
    "data": [
        {
            "title": "Cats",
            "paragraphs": [
                {
                    "context": "The cat sat on the mat.",
                    "qas": [
                        {"id": "q1", "question": "Where did the cat sit?", "answers": [
                            {"answer_start": 15, "text": "the mat"}, {"answer_start": 19, "text": "mat"}]},
                        {"id": "q2", "question": "Who sat?", "answers": [{"answer_start": 0, "text": "The cat"}]},
                    ],
                }
            ],
        }
    ],
}


def test_squad_reads_the_official_v11_json(tmp_path):
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad/dev-v1.1.json").write_text(json.dumps(SQUAD_DOC), encoding="utf-8")
    first, second = get_task("squad").load("validation", tmp_path)
    assert first.input == "question: Where did the cat sit? context: The cat sat on the mat."
    assert (first.target, first.answers) == ("the mat", ("the mat", "mat"))
    assert second.target == "The cat" and first.candidates == ()
    with pytest.raises(SoftpromptError, match="no test split"):
        get_task("squad").load("test", tmp_path)


def test_squad_dev_split_cuts_the_dev_file_by_article(data_dir):
    train, validation = (load("squad-dev-split", split, data_dir) for split in ("train", "validation"))
    dev = load("squad", "validation", data_dir)
    assert [e.input for e in train + validation] == [e.input for e in dev]
    contexts = lambda examples: {e.input.split(" context: ", 1)[1] for e in examples}  # noqa: E731
    assert not contexts(train) & contexts(validation)
    with pytest.raises(SoftpromptError, match="dev-v1.1.json: squad-dev-split has train and validation splits, not test"):
        load("squad-dev-split", "test", data_dir)


def test_axb_is_scored_by_matthews_correlation_and_reads_as_rte_with_its_own_metric(data_dir):
    task = get_task("AX-b")
    examples = load("axb", "validation", data_dir)[:40]
    scores = task.metric(["entailment"] * len(examples), examples)
    assert scores["mcc"] == 0.0 and 0 < scores["accuracy"] < 1
    mapped = mapped_task(task, label_map_for("rte", task), ("entailment", "not_entailment"))
    assert list(mapped.metric([e.target for e in examples], examples)) == ["mcc", "accuracy"]
    with pytest.raises(SoftpromptError, match="AX-b: this task has no train split"):
        task.load("train", data_dir)


def test_squad_names_the_json_path_of_a_missing_field(tmp_path):
    doc = json.loads(json.dumps(SQUAD_DOC))
    del doc["data"][0]["paragraphs"][0]["qas"][1]["question"]
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad/train-v1.1.json").write_text(json.dumps(doc), encoding="utf-8")
    field = r"'data\[0\]\.paragraphs\[0\]\.qas\[1\]\.question'"
    with pytest.raises(SoftpromptError, match=rf"train-v1\.1\.json: field {field} is missing"):
        get_task("squad").load("train", tmp_path)


def test_mrqa_reads_gzipped_files_and_skips_the_header(tmp_path):
    qas = [{"qid": "a", "question": "Age?", "answers": ["7"]}]
    lines = [{"header": {"dataset": "RACE"}}, {"context": "Ann is 7.", "qas": qas}]
    (tmp_path / "mrqa").mkdir()
    (tmp_path / "mrqa/RACE.jsonl.gz").write_bytes(gzip.compress("\n".join(map(json.dumps, lines)).encode()))
    (example,) = get_task("mrqa-race").load("validation", tmp_path)
    assert (example.input, example.target) == ("question: Age? context: Ann is 7.", "7")
    assert load_mrqa(tmp_path / "mrqa/RACE.jsonl.gz") == [example]


# --- custom tasks -----------------------------------------------------------------------------


def test_custom_task_from_jsonl_csv_and_tsv(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "Great film", "label": "pos"}, {"text": "Dull", "label": "neg"}])
    write_lines(tmp_path / "dev.csv", ["text,label", '"Fine, really",pos'])
    write_lines(tmp_path / "test.tsv", ["text", "Not bad"])
    spec = CustomTaskSpec(
        train_file=tmp_path / "train.jsonl",
        validation_file=tmp_path / "dev.csv",
        test_file=tmp_path / "test.tsv",
        input_template="review: {text}",
        target_field="label",
        labels=("neg", "pos"),
        name="reviews",
    )
    task = custom_task(spec)
    assert task.name == "reviews" and task.labels == ("neg", "pos")
    train = task.load("train", None)
    assert [(e.input, e.target, e.candidates) for e in train] == [
        ("review: Great film", "pos", ("neg", "pos")),
        ("review: Dull", "neg", ("neg", "pos")),
    ]
    assert [(e.input, e.target) for e in task.load("validation", None)] == [("review: Fine, really", "pos")]
    assert [(e.input, e.target) for e in task.load("test", None)] == [("review: Not bad", "")]
    assert task.metric(["pos", "pos"], train) == {"accuracy": 0.5, "f1_macro": pytest.approx(1 / 3)}


def test_custom_task_without_labels_is_scored_like_squad(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"q": "Capital of France?", "a": "Paris"}])
    task = custom_task(CustomTaskSpec(tmp_path / "train.jsonl", "question: {q}", "a"))
    (example,) = task.load("train", None)
    assert task.labels is None and example.answers == ("Paris",) and example.candidates == ()
    assert task.metric(["paris"], [example]) == {"f1": 1.0, "em": 1.0}
    with pytest.raises(SoftpromptError, match="has no validation file"):
        task.load("validation", None)


def test_custom_task_rejects_a_target_outside_the_labels(tmp_path):
    write_lines(tmp_path / "train.csv", ["text,label", "good,pos", "meh,neutral"])
    task = custom_task(CustomTaskSpec(tmp_path / "train.csv", "review: {text}", "label", labels=("neg", "pos")))
    with pytest.raises(SoftpromptError, match=r"train\.csv, line 3: field 'label' has value 'neutral'"):
        task.load("train", None)


def test_custom_task_rejects_bad_specs(tmp_path):
    with pytest.raises(SoftpromptError, match="names no field"):
        custom_task(CustomTaskSpec("x.jsonl", "no fields", "label"))
    with pytest.raises(SoftpromptError, match="malformed"):
        custom_task(CustomTaskSpec("x.jsonl", "review: {text", "label"))
    with pytest.raises(SoftpromptError, match="distinct"):
        custom_task(CustomTaskSpec("x.jsonl", "review: {text}", "label", labels=("a", "a")))
    write_lines(tmp_path / "train.txt", ["hello"])
    with pytest.raises(SoftpromptError, match=r"train\.txt: unknown file type"):
        custom_task(CustomTaskSpec(tmp_path / "train.txt", "{text}", "label")).load("train", None)


def test_custom_task_names_a_missing_template_field(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"body": "b", "label": "x"}])
    task = custom_task(CustomTaskSpec(tmp_path / "train.jsonl", "review: {text}", "label"))
    with pytest.raises(SoftpromptError, match=r"train\.jsonl, line 2: field 'text' is missing"):
        task.load("train", None)


def test_custom_task_reads_dotted_fields_of_nested_json(tmp_path):
    rows = [{"review": {"text": "Great film", "stars": 5}, "meta": {"label": "pos"}},
            {"review": {"text": "Dull", "stars": 1}, "meta": {"label": "neg"}}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    task = custom_task(CustomTaskSpec(tmp_path / "train.jsonl", "review: {review.text} ({review.stars!s:>2} stars)",
                                      "meta.label", labels=("neg", "pos")))
    assert [(e.input, e.target) for e in task.load("train", None)] == [
        ("review: Great film ( 5 stars)", "pos"), ("review: Dull ( 1 stars)", "neg")]
    write_jsonl(tmp_path / "gap.jsonl", [rows[0], {"review": {"stars": 3}, "meta": {"label": "pos"}}])
    with pytest.raises(SoftpromptError, match=r"gap\.jsonl, line 2: field 'review\.text' is missing"):
        custom_task(CustomTaskSpec(tmp_path / "gap.jsonl", "{review.text}", "meta.label")).load("train", None)
    with pytest.raises(SoftpromptError, match=r"'\{review\.0\}' must be a field name, or a dotted path"):
        custom_task(CustomTaskSpec(tmp_path / "train.jsonl", "{review.0}", "meta.label"))


@pytest.mark.parametrize("template, target, message", [
    ("review: {review}", "label", "field 'review' holds a JSON object, not text; name one of its fields with a dotted path, "
                                  "e.g. '{review.text}'"),
    ("review: {tags}", "label", "field 'tags' holds a JSON array, not text"),
    ("review: {review.text}", "review", "field 'review' holds a JSON object, not text"),
])
def test_custom_task_refuses_a_field_holding_json_object_or_array(tmp_path, template, target, message):
    """An object or array has no one text: refused, not trained on as its Python repr."""
    write_jsonl(tmp_path / "train.jsonl", [{"review": {"text": "fine"}, "tags": [], "label": "pos"}] * 2)
    task = custom_task(CustomTaskSpec(tmp_path / "train.jsonl", template, target))
    with pytest.raises(SoftpromptError, match=f"^{re.escape(str(tmp_path / 'train.jsonl'))}, line 1: {re.escape(message)}"):
        task.load("train", None)



# --- a custom task's spec as JSON data ---------------------------------------------------------


def test_custom_spec_round_trips_through_json(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "Great film", "label": "pos"}])
    write_lines(tmp_path / "dev.csv", ["text,label", "Dull,neg"])
    spec = CustomTaskSpec(tmp_path / "train.jsonl", "review: {text}", "label", validation_file=tmp_path / "dev.csv",
                          labels=("neg", "pos"), name="reviews")
    data = spec.to_dict()
    assert data == {
        "train_file": str(tmp_path / "train.jsonl"),
        "input_template": "review: {text}",
        "target_field": "label",
        "validation_file": str(tmp_path / "dev.csv"),
        "test_file": None,
        "labels": ["neg", "pos"],
        "name": "reviews",
    }
    back = CustomTaskSpec.from_dict(json.loads(json.dumps(data)), "prompt.json")
    assert back == CustomTaskSpec(str(tmp_path / "train.jsonl"), "review: {text}", "label",
                                  validation_file=str(tmp_path / "dev.csv"), labels=("neg", "pos"), name="reviews")
    assert back.to_dict() == data
    assert custom_task(back).load("validation", None) == custom_task(spec).load("validation", None)


def test_custom_spec_dict_leaves_out_nothing_and_fills_defaults():
    spec = CustomTaskSpec.from_dict({"train_file": "/d/t.jsonl", "input_template": "{q}", "target_field": "a"}, "run.json")
    assert spec == CustomTaskSpec("/d/t.jsonl", "{q}", "a")
    assert (spec.validation_file, spec.test_file, spec.labels, spec.name) == (None, None, None, "custom")


def test_custom_spec_dicts_are_equal_however_the_path_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    spellings = ["./x.jsonl", "x.jsonl", "sub/../x.jsonl", tmp_path / "x.jsonl", str(tmp_path / "x.jsonl")]
    dicts = [CustomTaskSpec(path, "{q}", "a", test_file=path).to_dict() for path in spellings]
    assert all(d == dicts[0] for d in dicts) and dicts[0]["test_file"] == str(tmp_path / "x.jsonl")
    assert CustomTaskSpec("y.jsonl", "{q}", "a").to_dict() != dicts[0]


REQUIRED_SPEC = {"train_file": "t.jsonl", "input_template": "{q}", "target_field": "a"}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train_file": "t.jsonl", "input_template": "{q}"}, "field 'target_field' is missing"),
        ({**REQUIRED_SPEC, "dev_file": "d.jsonl"}, "field 'dev_file' is unknown (known fields: train_file, input_template"),
        ({**REQUIRED_SPEC, "labels": "neg,pos"}, "field 'labels' must be a list of strings, found 'neg,pos'"),
        ({**REQUIRED_SPEC, "labels": ["neg", 1]}, "field 'labels' must be a list of strings, found ['neg', 1]"),
        ({**REQUIRED_SPEC, "train_file": 3}, "field 'train_file' must be a string, found int 3"),
        ({**REQUIRED_SPEC, "input_template": None}, "field 'input_template' must be a string, found NoneType None"),
        ({**REQUIRED_SPEC, "validation_file": ["d.jsonl"]}, "field 'validation_file' must be a string, found list"),
        ({**REQUIRED_SPEC, "name": None}, "field 'name' must be a string"),
    ],
)
def test_custom_spec_from_dict_names_the_source_and_the_bad_field(data, message):
    expected = f"prompt.json, metadata.task_spec: custom task spec {message}"
    with pytest.raises(SoftpromptError, match=f"^{re.escape(expected)}"):
        CustomTaskSpec.from_dict(data, "prompt.json, metadata.task_spec")


def test_custom_spec_from_dict_rejects_a_non_object():
    with pytest.raises(SoftpromptError, match=r"^config\.json: a custom task spec must be an object, found list"):
        CustomTaskSpec.from_dict(["t.jsonl"], "config.json")


def test_custom_spec_fields_carry_one_line_help_in_their_order():
    spec_fields = dataclasses.fields(CustomTaskSpec)
    order = ["train_file", "input_template", "target_field", "validation_file", "test_file", "labels", "name"]
    assert [f.name for f in spec_fields] == order
    assert all(f.metadata["help"].strip() and "\n" not in f.metadata["help"] for f in spec_fields)
    assert {f.name: f.metadata["flag"] for f in spec_fields if "flag" in f.metadata} == {"validation_file": "dev-file"}


# --- bad input: one SoftpromptError naming file, line and field ------------------------------


RTE_ROW = {"premise": "A man sleeps.", "hypothesis": "A man is awake.", "label": "not_entailment", "idx": 0}


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SoftpromptError, match=r"superglue/RTE/val\.jsonl: file not found"):
        get_task("rte").load("validation", tmp_path)


def test_row_missing_a_field(tmp_path):
    write_jsonl(tmp_path / "superglue/RTE/val.jsonl", [RTE_ROW, {"hypothesis": "h", "label": "entailment"}])
    with pytest.raises(SoftpromptError, match=r"val\.jsonl, line 2: field 'premise' is missing"):
        get_task("rte").load("validation", tmp_path)


def test_labelled_split_missing_its_label(tmp_path):
    write_jsonl(tmp_path / "superglue/RTE/train.jsonl", [{"premise": "p", "hypothesis": "h"}])
    with pytest.raises(SoftpromptError, match=r"train\.jsonl, line 1: field 'label' is missing"):
        get_task("rte").load("train", tmp_path)


def test_malformed_json_line(tmp_path):
    path = write_jsonl(tmp_path / "superglue/RTE/val.jsonl", [RTE_ROW, RTE_ROW])
    path.write_text(path.read_text() + '{"premise": "oops"\n', encoding="utf-8")
    with pytest.raises(SoftpromptError, match=r"val\.jsonl, line 3: malformed JSON"):
        get_task("rte").load("validation", tmp_path)


def test_label_not_in_the_label_list(tmp_path):
    write_jsonl(tmp_path / "superglue/CB/val.jsonl", [{**RTE_ROW, "label": "maybe"}])
    with pytest.raises(SoftpromptError, match=r"val\.jsonl, line 1: field 'label' has value 'maybe'"):
        get_task("cb").load("validation", tmp_path)


def test_empty_input_text(tmp_path):
    write_lines(tmp_path / "glue/SST-2/dev.tsv", ["sentence\tlabel", "fine .\t1", " \t0"])
    with pytest.raises(SoftpromptError, match=r"dev\.tsv, line 3: field 'sentence' is empty"):
        get_task("sst2").load("validation", tmp_path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "superglue/RTE/val.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(json.dumps(RTE_ROW).encode() + b'\n{"premise": "caf\xe9"}\n')
    with pytest.raises(SoftpromptError, match=r"val\.jsonl, line 2: not valid UTF-8"):
        get_task("rte").load("validation", tmp_path)


def test_tsv_row_with_the_wrong_number_of_columns(tmp_path):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    write_lines(tmp_path / "glue/MRPC/dev.tsv", [header, "1\t1\t2\tA .\tB .", "0\t3\t4\tonly one"])
    with pytest.raises(SoftpromptError, match=r"dev\.tsv, line 3: expected 5 fields"):
        get_task("mrpc").load("validation", tmp_path)


def test_nested_multirc_field_is_named_by_its_path(tmp_path):
    answers = [{"text": "yes", "idx": 0, "label": 1}, {"text": "no", "idx": 1}]
    line = {"idx": 0, "passage": {"text": "P.", "questions": [{"question": "Q?", "idx": 0, "answers": answers}]}}
    write_jsonl(tmp_path / "superglue/MultiRC/val.jsonl", [line])
    with pytest.raises(SoftpromptError, match=r"line 1: field 'passage\.questions\[0\]\.answers\[1\]\.label' is missing"):
        get_task("multirc").load("validation", tmp_path)


def test_wsc_index_that_misses_the_pronoun(tmp_path):
    row = {"text": "The cat ate because it was hungry .", "label": True, "idx": 0,
           "target": {"span1_index": 1, "span1_text": "cat", "span2_index": 0, "span2_text": "they"}}
    write_jsonl(tmp_path / "superglue/WSC/val.jsonl", [row])
    with pytest.raises(SoftpromptError, match=r"val\.jsonl, line 1: field 'span2_index' does not point at"):
        get_task("wsc").load("validation", tmp_path)


# --- registry and data-directory resolution --------------------------------------------------


def test_registry_names_and_aliases():
    expected = {"sst2", "mrpc", "qqp", "boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "squad"}
    assert expected <= set(TASKS) and "mrqa-relationextraction" in TASKS
    assert get_task("SST-2") is TASKS["sst2"]
    assert get_task("BoolQ") is TASKS["boolq"]
    assert get_task("MRQA_RelationExtraction") is TASKS["mrqa-relationextraction"]
    assert get_task("wsc").class_words == ("commonsense", "pronoun", "resolution")
    with pytest.raises(SoftpromptError, match=r"unknown task 'sst5'; known tasks: .*boolq.*sst2"):
        get_task("sst5")


def test_unknown_split():
    with pytest.raises(SoftpromptError, match="unknown split 'dev'"):
        get_task("rte").load("dev", "/")


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir(None) is None
    assert resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    with pytest.raises(SoftpromptError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")


def test_load_examples_reads_the_env_directory(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "superglue/RTE/val.jsonl", [RTE_ROW])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    (example,) = load_examples("rte", "validation")
    assert example.input == "hypothesis: A man is awake. premise: A man sleeps."


def test_without_a_data_dir_rows_come_from_the_hub(monkeypatch):
    """The hub is faked: each task's hub rows convert to the same examples as its files."""
    datasets = pytest.importorskip("datasets")
    rows = {
        ("nyu-mll/glue", "sst2", "validation"): [{"sentence": "great fun . ", "label": 1, "idx": 0}],
        ("nyu-mll/glue", "sst2", "test"): [{"sentence": "so so", "label": -1, "idx": 0}],
        ("aps/super_glue", "multirc", "validation"): [
            {"paragraph": "P.", "question": "Q?", "answer": "A", "idx": {"paragraph": 3, "question": 4, "answer": 5}, "label": 0}
        ],
        ("rajpurkar/squad", "plain_text", "validation"): [
            {"id": "1", "title": "t", "context": "C.", "question": "Q?", "answers": {"text": ["x", "y"], "answer_start": [0, 1]}}
        ],
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split: rows[(path, name, split)])
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert [(e.input, e.target) for e in get_task("sst2").load("validation", None)] == [("sentence: great fun .", "positive")]
    assert [e.target for e in get_task("sst2").load("test", None)] == [""]
    (multirc,) = get_task("multirc").load("validation", None)
    assert (multirc.input, multirc.target, multirc.group) == ("question: Q? answer: A paragraph: P.", "False", "3-4")
    (squad,) = get_task("squad").load("validation", None)
    assert (squad.target, squad.answers) == ("x", ("x", "y"))
    with pytest.raises(SoftpromptError, match="Hugging Face hub"):
        get_task("rte").load("validation", None)  # not in the fake: the failure is one clear message


# --- where a split comes from, for error messages ---------------------------------------------

LOCAL_SOURCES = [
    ("sst2", "validation", "glue/SST-2/dev.tsv"),
    ("mrpc", "train", "glue/MRPC/train.tsv"),
    ("qqp", "test", "glue/QQP/test.tsv"),
    ("rte", "validation", "superglue/RTE/val.jsonl"),
    ("cb", "test", "superglue/CB/test.jsonl"),
    ("multirc", "train", "superglue/MultiRC/train.jsonl"),
    ("wsc", "validation", "superglue/WSC/val.jsonl"),
    ("record", "validation", "superglue/ReCoRD/val.jsonl"),
    ("squad", "validation", "squad/dev-v1.1.json"),
    ("mrqa-drop", "validation", "mrqa/DROP.jsonl"),
]


@pytest.mark.parametrize("name, split, relative", LOCAL_SOURCES)
def test_describe_names_the_local_file_of_every_task_family(data_dir, name, split, relative):
    assert get_task(name).describe(split, data_dir) == str(data_dir / relative)


def test_describe_names_the_real_glue_dev_file_the_loader_reads(data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    path = Path(get_task("sst2").describe("validation", None))
    assert path == data_dir / "glue/SST-2/dev.tsv" and path.is_file()


def test_describe_names_the_hub_dataset_without_a_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert get_task("sst2").describe("validation") == "hub nyu-mll/glue/sst2"
    assert get_task("wsc").describe("train") == "hub aps/super_glue/wsc.fixed"
    assert get_task("squad").describe("validation") == "hub rajpurkar/squad/plain_text"


def test_describe_falls_back_to_the_task_and_split(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert get_task("mrqa-drop").describe("validation") == "task mrqa-drop, validation split"  # no hub copy
    assert get_task("squad").describe("test", tmp_path) == "task squad, test split"  # SQuAD has no test file
    bare = Task(name="bare", load=lambda split, data_dir: [], metric=lambda p, e: {})
    assert bare.describe("train") == "task bare, train split"


def test_custom_describe_names_the_spec_file_of_the_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = custom_task(CustomTaskSpec("train.csv", "{text}", "label", validation_file="./dev.csv", name="mine"))
    assert task.describe("train") == str(tmp_path / "train.csv")
    assert task.describe("validation", "/elsewhere") == str(tmp_path / "dev.csv")  # the data dir does not apply
    assert task.describe("test") == "task mine, test split"


def test_require_examples_names_the_csv_of_an_empty_split(tmp_path):
    path = write_lines(tmp_path / "train.csv", ["text,label"])  # a header row and nothing else
    task = custom_task(CustomTaskSpec(path, "review: {text}", "label", labels=("neg", "pos"), name="reviews"))
    examples = task.load("train", None)
    assert examples == []
    expected = f"{path}: the train split of task reviews holds no examples"
    with pytest.raises(SoftpromptError, match=f"^{re.escape(expected)}$"):
        require_examples(task, "train", None, examples)


def test_require_examples_passes_examples_through(data_dir):
    examples = load("cb", "validation", data_dir)
    assert require_examples(get_task("cb"), "validation", data_dir, examples) == list(examples)
