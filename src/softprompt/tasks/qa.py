"""Extractive QA: SQuAD v1.1 (squad/{train,dev}-v1.1.json) and MRQA 2019 JSONL sets (mrqa/<Name>.jsonl).

`squad-dev-split` trains and selects on two fixed parts of the dev file, for data directories
(like ../shared/data) that hold no SQuAD train file.

Both become "question: {q} context: {c}" -> the first gold answer, scored with SQuAD EM/F1
against all gold answers. MRQA's out-of-domain sets are the paper's zero-shot transfer targets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from softprompt.errors import SoftpromptError
from softprompt.tasks.base import Example, Task
from softprompt.tasks.metrics import squad_f1_em
from softprompt.tasks.records import Record, read_json, read_jsonl
from softprompt.tasks.sources import HubSource, source_of, split_file, split_records

SQUAD_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}

# The paper's out-of-domain MRQA dev sets, as task name suffix -> file stem of the MRQA release.
MRQA_SETS = {
    "bioasq": "BioASQ",
    "drop": "DROP",
    "duorc": "DuoRC.ParaphraseRC",
    "race": "RACE",
    "relationextraction": "RelationExtraction",
    "textbookqa": "TextbookQA",
}


def qa_example(record: Record, labelled: bool) -> Example:
    """A question over a context -> its first gold answer; all gold answers kept for EM/F1."""
    answers = record.texts("answers") if record.has("answers") else ()
    if labelled and not answers:
        raise record.error("answers", "is empty")
    return Example(
        input=record.render("question: {question} context: {context}"),
        target=answers[0] if answers else "",
        answers=answers,
    )


def squad_file(root: Path, split: str) -> Path:
    """The path `squad/<split file>`."""
    return split_file(root, "squad", SQUAD_FILES, split)


def article_questions(articles: list[Record]) -> Iterator[Record]:
    """Flattens SQuAD's articles -> paragraphs -> qas into one record per question."""
    for article in articles:
        for paragraph in article.children("paragraphs"):
            context = paragraph.text("context")
            for qa in paragraph.children("qas"):
                answers = [answer.text("text") for answer in qa.children("answers")]
                fields = {"question": qa.text("question"), "context": context, "answers": answers}
                yield Record(fields, qa.where, qa.prefix)


def squad_question_records(root: Path, split: str) -> Iterator[Record]:
    return article_questions(read_json(squad_file(root, split)).children("data"))


def squad_hub_row(row: dict) -> dict:
    """The hub keeps answers as {"text": [...], "answer_start": [...]}; records keep the texts."""
    return {**row, "answers": list(row["answers"]["text"])}


SQUAD_HUB = HubSource("rajpurkar/squad", "plain_text", reshape=squad_hub_row)


def load_squad(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    records = split_records(split, data_dir, squad_question_records, SQUAD_HUB)
    return [qa_example(record, labelled=split != "test") for record in records]


SQUAD = Task(name="squad", load=load_squad, metric=squad_f1_em, source=source_of(squad_file, SQUAD_HUB))


# SQuAD v1.1 dev has 48 articles (10,570 questions): the first 40 (8,981) train, the last 8 (1,589) select.
DEV_SPLIT_TRAIN_ARTICLES = 40


def dev_split_records(root: Path, split: str) -> Iterator[Record]:
    """`squad-dev-split`: SQuAD's dev file cut by article, for a data directory without the train file.

    Cutting by article keeps every context on one side, so selection never sees a training paragraph.
    """
    if split not in ("train", "validation"):
        raise SoftpromptError(f"{squad_file(root, 'validation')}: squad-dev-split has train and validation splits, not {split}")
    articles = read_json(squad_file(root, "validation")).children("data")
    cut = DEV_SPLIT_TRAIN_ARTICLES
    return article_questions(articles[:cut] if split == "train" else articles[cut:])


def load_squad_dev_split(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    return [qa_example(record, labelled=True) for record in split_records(split, data_dir, dev_split_records, hub=None)]


SQUAD_DEV_SPLIT = Task(name="squad-dev-split", load=load_squad_dev_split, metric=squad_f1_em,
                       source=source_of(lambda root, split: squad_file(root, "validation"), hub=None))


def mrqa_question_records(path: Path) -> Iterator[Record]:
    """One record per question of an MRQA file (a header line, then one context with its qas per line)."""
    for line in read_jsonl(path):
        if line.has("header"):
            continue
        context = line.text("context")
        for qa in line.children("qas"):
            fields = {"question": qa.text("question"), "context": context, "answers": list(qa.texts("answers"))}
            yield Record(fields, qa.where, qa.prefix)


def load_mrqa(path: str | os.PathLike) -> list[Example]:
    """Examples of one MRQA JSONL file (.jsonl or .jsonl.gz); raises SoftpromptError on bad input."""
    return [qa_example(record, labelled=True) for record in mrqa_question_records(Path(path))]


def mrqa_file(root: Path, stem: str) -> Path:
    """`mrqa/<stem>.jsonl`, or the release's gzipped `.jsonl.gz`."""
    plain = root / "mrqa" / f"{stem}.jsonl"
    gzipped = plain.with_name(plain.name + ".gz")
    return gzipped if not plain.exists() and gzipped.exists() else plain


def mrqa_task(suffix: str, stem: str) -> Task:
    """`mrqa-<suffix>`: an MRQA dev set, so only its validation split exists."""

    def read(root: Path, split: str) -> Iterator[Record]:
        path = mrqa_file(root, stem)
        if split != "validation":
            raise SoftpromptError(f"{path}: MRQA {stem} has only a validation split, not {split}")
        return mrqa_question_records(path)

    def load(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        records = split_records(split, data_dir, read, hub=None)
        return [qa_example(record, labelled=True) for record in records]

    source = source_of(lambda root, split: mrqa_file(root, stem), hub=None)
    return Task(name=f"mrqa-{suffix}", load=load, metric=squad_f1_em, source=source)


QA_TASKS: tuple[Task, ...] = (SQUAD, SQUAD_DEV_SPLIT, *(mrqa_task(suffix, stem) for suffix, stem in MRQA_SETS.items()))
