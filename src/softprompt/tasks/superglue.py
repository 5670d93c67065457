"""SuperGLUE tasks, read from the official JSONL files (superglue/<Task>/{train,val,test}.jsonl).

BoolQ, CB, COPA, RTE, WiC and MultiRC are table rows of classification tasks; MultiRC's
nested paragraphs are flattened to one record per answer option first. WSC and ReCoRD
generate free text and have their own example builders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from softprompt.tasks.base import Example, Metric, Task
from softprompt.tasks.classification import ClassificationSpec, classification_task
from softprompt.tasks.metrics import (
    accuracy,
    macro_f1_and_accuracy,
    matthews_and_accuracy,
    multirc_f1a_em,
    squad_f1_em,
    wsc_accuracy,
)
from softprompt.tasks.records import Record, read_jsonl
from softprompt.tasks.sources import HubSource, LocalFile, LocalReader, source_of, split_file, split_records

SUPERGLUE_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
SUPERGLUE_HUB = "aps/super_glue"
BOOLEAN_LABELS = ("False", "True")


def superglue_file(folder: str) -> LocalFile:
    """The path `superglue/<folder>/<split file>`."""
    return lambda root, split: split_file(root, f"superglue/{folder}", SUPERGLUE_FILES, split)


def superglue_lines(root: Path, folder: str, split: str) -> Iterator[Record]:
    """The records of `superglue/<folder>/<split file>` as written."""
    return read_jsonl(superglue_file(folder)(root, split))


def superglue_reader(folder: str) -> LocalReader:
    """Reads a task whose JSONL lines already have the hub's flat columns."""
    return lambda root, split: superglue_lines(root, folder, split)


BOOLQ = classification_task(
    ClassificationSpec(
        name="boolq",
        template="passage: {passage} question: {question}",
        labels=BOOLEAN_LABELS,
        metric=accuracy,
        local=superglue_reader("BoolQ"),
        local_file=superglue_file("BoolQ"),
        hub=HubSource(SUPERGLUE_HUB, "boolq"),
    )
)

CB_LABELS = ("entailment", "contradiction", "neutral")
CB = classification_task(
    ClassificationSpec(
        name="cb",
        template="hypothesis: {hypothesis} premise: {premise}",
        labels=CB_LABELS,
        metric=macro_f1_and_accuracy(CB_LABELS),
        local=superglue_reader("CB"),
        local_file=superglue_file("CB"),
        hub=HubSource(SUPERGLUE_HUB, "cb"),
    )
)

COPA = classification_task(
    ClassificationSpec(
        name="copa",
        template="choice1: {choice1} choice2: {choice2} premise: {premise} question: {question}",
        labels=("choice1", "choice2"),
        metric=accuracy,
        local=superglue_reader("COPA"),
        local_file=superglue_file("COPA"),
        hub=HubSource(SUPERGLUE_HUB, "copa"),
    )
)

RTE_LABELS = ("entailment", "not_entailment")
RTE = classification_task(
    ClassificationSpec(
        name="rte",
        template="hypothesis: {hypothesis} premise: {premise}",
        labels=RTE_LABELS,
        metric=accuracy,
        local=superglue_reader("RTE"),
        local_file=superglue_file("RTE"),
        hub=HubSource(SUPERGLUE_HUB, "rte"),
    )
)

WIC = classification_task(
    ClassificationSpec(
        name="wic",
        template="sentence1: {sentence1} sentence2: {sentence2} word: {word}",
        labels=BOOLEAN_LABELS,
        metric=accuracy,
        local=superglue_reader("WiC"),
        local_file=superglue_file("WiC"),
        hub=HubSource(SUPERGLUE_HUB, "wic"),
    )
)


# --- MultiRC: one example per answer option, grouped by question -------------------------


def multirc_answer_records(root: Path, split: str) -> Iterator[Record]:
    """Flattens paragraph -> questions -> answers into the hub's one-row-per-answer layout."""
    for line in superglue_lines(root, "MultiRC", split):
        paragraph_idx = line.integer("idx")
        passage = line.child("passage")
        paragraph = passage.text("text")
        for question in passage.children("questions"):
            question_text = question.text("question")
            for answer in question.children("answers"):
                fields = {
                    "paragraph": paragraph,
                    "question": question_text,
                    "answer": answer.text("text", allow_empty=True),  # a few official options are empty
                    "idx": {
                        "paragraph": paragraph_idx,
                        "question": question.integer("idx"),
                        "answer": answer.integer("idx"),
                    },
                    "label": answer.fields.get("label"),
                }
                yield Record(fields, answer.where, answer.prefix)


def multirc_question(record: Record) -> str:
    """The question an answer option belongs to, unique across paragraphs."""
    idx = record.child("idx")
    return f"{idx.integer('paragraph')}-{idx.integer('question')}"


MULTIRC = classification_task(
    ClassificationSpec(
        name="multirc",
        template="question: {question} answer: {answer} paragraph: {paragraph}",
        labels=BOOLEAN_LABELS,
        metric=multirc_f1a_em,
        local=multirc_answer_records,
        local_file=superglue_file("MultiRC"),
        hub=HubSource(SUPERGLUE_HUB, "multirc"),
        group=multirc_question,
        allow_empty=("answer",),
    )
)


# --- WSC: generate the referent of a marked pronoun ------------------------------------------


def wsc_records(root: Path, split: str) -> Iterator[Record]:
    """Lifts the official nested `target` object to the hub's flat span columns."""
    for line in superglue_lines(root, "WSC", split):
        target = line.child("target")
        fields = {**line.fields, **target.fields}
        yield Record(fields, line.where, "")


def mark_pronoun(text: str, pronoun: str, word_index: int) -> str | None:
    """The text with the pronoun at `word_index` written as *pronoun*; None when it is not there.

    The official indices count whitespace-separated words; a few are off by one or two,
    or point at a word with punctuation attached ('him,"'), so nearby words are tried too.
    """
    words = list(re.finditer(r"\S+", text))
    nearby = sorted(range(word_index - 2, word_index + 3), key=lambda j: abs(j - word_index))
    for j in nearby:
        if not 0 <= j < len(words):
            continue
        start = words[j].start()
        end = start + len(pronoun)
        if text[start:end].lower() == pronoun.lower() and not text[end : end + 1].isalnum():
            return f"{text[:start]}*{text[start:end]}*{text[end:]}"
    return None


def wsc_example(record: Record, labelled: bool) -> Example:
    """The marked text -> the candidate referent; `label` says whether the candidate is right."""
    text = record.text("text")
    pronoun = record.text("span2_text")
    marked = mark_pronoun(text, pronoun, record.integer("span2_index"))
    if marked is None:
        raise record.error("span2_index", f"does not point at the pronoun {pronoun!r} in the text")
    index = record.label_index(BOOLEAN_LABELS)
    if index is None and labelled:
        raise record.error("label", "is missing")
    return Example(input=marked, target=record.text("span1_text"), label=None if index is None else bool(index))


WSC_HUB = HubSource(SUPERGLUE_HUB, "wsc.fixed")


def load_wsc(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """WSC examples; training keeps only the correct-referent ones, as in the paper."""
    records = split_records(split, data_dir, wsc_records, WSC_HUB)
    examples = [wsc_example(record, labelled=split != "test") for record in records]
    return [e for e in examples if e.label] if split == "train" else examples


WSC = Task(
    name="wsc",
    load=load_wsc,
    metric=wsc_accuracy,
    init_words=("commonsense", "pronoun", "resolution"),
    source=source_of(superglue_file("WSC"), WSC_HUB),
)


# --- ReCoRD: generate an entity of the passage for the query's @placeholder -------------------


def record_query_records(root: Path, split: str) -> Iterator[Record]:
    """One record per query with the hub's columns: passage, query, entity strings, answer strings."""
    for line in superglue_lines(root, "ReCoRD", split):
        passage = line.child("passage")
        text = passage.text("text")
        entities = [entity_text(entity, text) for entity in passage.children("entities")]
        for qa in line.children("qas"):
            answers = [answer.text("text") for answer in qa.children("answers")] if qa.has("answers") else []
            fields = {"passage": text, "query": qa.text("query"), "entities": entities, "answers": answers}
            yield Record(fields, qa.where, qa.prefix)


def entity_text(entity: Record, passage: str) -> str:
    """The passage text an entity's character offsets cover (the official end offset is inclusive)."""
    start, end = entity.integer("start"), entity.integer("end")
    if not 0 <= start <= end < len(passage):
        raise entity.error("end", f"offsets {start}..{end} fall outside the passage ({len(passage)} characters)")
    return passage[start : end + 1]


def clean_record_passage(passage: str) -> str:
    """Joins CNN/Daily Mail '@highlight' bullet lines into sentences, as T5's ReCoRD preprocessing does."""
    passage = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", passage)
    return re.sub(r"\n@highlight\n", ". ", passage)


def record_example(record: Record, labelled: bool) -> Example:
    """A query over a passage and its entities -> the first gold entity; all golds kept for EM/F1."""
    query = record.text("query")
    if "@placeholder" not in query:
        raise record.error("query", "has no @placeholder")
    entities = tuple(dict.fromkeys(record.texts("entities")))
    answers = record.texts("answers") if record.has("answers") else ()
    if labelled and not answers:
        raise record.error("answers", "is empty")
    passage = clean_record_passage(record.text("passage"))
    return Example(
        input=f"query: {query} entities: {', '.join(entities)} passage: {passage}",
        target=answers[0] if answers else "",
        candidates=entities,
        answers=answers,
    )


RECORD_HUB = HubSource(SUPERGLUE_HUB, "record")


def load_record(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    records = split_records(split, data_dir, record_query_records, RECORD_HUB)
    return [record_example(record, labelled=split != "test") for record in records]


RECORD = Task(
    name="record",
    load=load_record,
    metric=squad_f1_em,
    init_words=("commonsense", "reasoning", "reading", "comprehension"),
    source=source_of(superglue_file("ReCoRD"), RECORD_HUB),
)



def diagnostic_file(folder: str) -> LocalFile:
    """`superglue/AX-b/AX-b.jsonl`: a diagnostic set is one labelled file, read as the validation split.

    The diagnostics are scored, never trained on (the paper reads AX-b with an RTE prompt), and
    their labels are in the file, so they are a validation split here; the hub calls it "test".
    """
    files = {"validation": f"{folder}.jsonl"}
    return lambda root, split: split_file(root, f"superglue/{folder}", files, split)


def diagnostic_task(name: str, folder: str, template: str, metric: Metric) -> Task:
    """An RTE-format diagnostic (entailment / not_entailment) scored zero-shot with an RTE prompt."""
    local = diagnostic_file(folder)
    return classification_task(
        ClassificationSpec(
            name=name, template=template, labels=RTE_LABELS, metric=metric,
            local=lambda root, split: read_jsonl(local(root, split)), local_file=local,
            hub=HubSource(SUPERGLUE_HUB, name, splits={"validation": "test"}),
        )
    )


# AX-b, the broad-coverage diagnostic, is scored by Matthews correlation; AX-g (Winogender) by accuracy.
AXB = diagnostic_task("axb", "AX-b", "hypothesis: {sentence2} premise: {sentence1}", matthews_and_accuracy)
AXG = diagnostic_task("axg", "AX-g", "hypothesis: {hypothesis} premise: {premise}", accuracy)

SUPERGLUE_TASKS: tuple[Task, ...] = (AXB, AXG, BOOLQ, CB, COPA, MULTIRC, RECORD, RTE, WIC, WSC)
