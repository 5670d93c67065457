"""A study's folder, ROOT/NAME/: its saved config, a record file per finished point, and results.jsonl.

Each finished point writes `records/KEY.json` atomically (a file of its own, never an append to a
shared one, so shards on several machines and a shared filesystem cannot tear or interleave it);
a rerun skips exactly the points whose record is there. The last, unsharded call gathers the
records into `results.jsonl` in the study's order: the hand-off to tables, plots and REPORT.md.
`study.json` is the config the results were made with; a rerun with another config is refused
instead of mixing two studies in one folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import SoftpromptError
from ..files import write_json_atomic, write_text_atomic
from ..run import check_writable, config_differences

STUDY_FILE, RESULTS_FILE, TABLE_FILE, PLOT_FILE, CURVES_FILE, RUNS_DIR, RECORDS_DIR = (
    "study.json", "results.jsonl", "table.md", "plot.png", "curves.png", "runs", "records")
GIVEN = "given"  # study.json's record of paths as the user typed them (for the commands in reports); not compared


class StudyFolder:
    """ROOT/NAME and the files in it."""

    def __init__(self, root: str | os.PathLike, name: str):
        self.root = Path(root)
        self.path = self.root / name
        self.name = name

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_FILE

    def run_dir(self, key: str) -> Path:
        return self.path / RUNS_DIR / key

    def check(self, saved_form: dict[str, Any]) -> None:
        """Refuse a folder holding another study config, or one that cannot be written; writes nothing."""
        check_writable(self.path)
        study_file = self.path / STUDY_FILE
        if not study_file.is_file():
            if self.results_path.exists():
                raise SoftpromptError(f"{self.path} holds {RESULTS_FILE} but no {STUDY_FILE}; choose another --output")
            return
        try:
            saved = json.loads(study_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SoftpromptError(f"{study_file}: corrupt study config ({err}); choose another --output") from None
        differing = config_differences(comparable(saved), comparable(saved_form), ())
        if differing:
            raise SoftpromptError(f"{self.path} holds results of a different {self.name} study ({', '.join(differing)} differ); "
                                  "rerun with the same flags to resume it, or choose another --output")

    def start(self, saved_form: dict[str, Any]) -> None:
        """Create the folder and write (or update, for more seeds) its study config."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SoftpromptError(f"{self.path}: cannot create the study folder ({err.strerror})") from None
        write_json_atomic(self.path / STUDY_FILE, saved_form)

    def saved_config(self) -> dict[str, Any]:
        return json.loads((self.path / STUDY_FILE).read_text(encoding="utf-8"))

    def record_path(self, key: str) -> Path:
        return self.path / RECORDS_DIR / (key.replace("/", "__") + ".json")

    def save_record(self, record: dict[str, Any]) -> None:
        """One finished point, in a file of its own, written atomically."""
        path = self.record_path(record["key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)

    def records(self) -> dict[str, dict[str, Any]]:
        """Every finished point by key: the record files, and the lines of results.jsonl (older studies have only those)."""
        found = {record["key"]: record for record in self.results()}
        for path in sorted((self.path / RECORDS_DIR).glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise SoftpromptError(f"{path}: not a whole JSON record; delete it to rerun that point") from None
            found[record["key"]] = record
        return found

    def write_results(self, order: list[str]) -> None:
        """results.jsonl from the records of the study's points (in its order), replaced atomically.

        Records of points the study no longer has (a rerun with fewer seeds) stay in records/ but leave the results.
        """
        records = self.records()
        keys = [k for k in order if k in records]
        write_text_atomic(self.results_path, "".join(json.dumps(records[k], sort_keys=True) + "\n" for k in keys))

    def results(self) -> list[dict[str, Any]]:
        """The records gathered in results.jsonl, in the study's order."""
        if not self.results_path.is_file():
            return []
        records = []
        for number, line in enumerate(self.results_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise SoftpromptError(f"{self.results_path}, line {number}: not a whole JSON line") from None
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Add one finished point: one line, one write on an O_APPEND descriptor, so never half a line."""
        data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):  # a full disk: say so rather than leave a torn line unexplained
            raise SoftpromptError(f"{self.results_path}: only {written} of {len(data)} bytes written (disk full?)")


def comparable(form: dict[str, Any]) -> dict[str, Any]:
    """A study config less what a rerun may change: paths as typed, and the number of seeds, overall or per
    setting (more seeds extend a study: its finished points keep their keys and records). The
    `--select-examples` flag as typed is left out too: its effect is the budget's `select_examples` (0 and a
    study saved before the flag existed are both "choose on dev": None there)."""
    out = {k: v for k, v in form.items() if k not in (GIVEN, "seeds", "seeds_for", "select_examples")}
    if isinstance(out.get("budget"), dict):
        out["budget"] = {k: v for k, v in out["budget"].items() if k != "seeds"}
    return out


def study_folders(root: str | os.PathLike) -> list[StudyFolder]:
    """Every study under ROOT that has a results file: ROOT/NAME, then ROOT/GROUP/NAME.

    A group is another `--output` inside ROOT (report/smollm2 for the studies rerun on a second
    backbone), so one report holds both without their configs clashing in one folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise SoftpromptError(f"{root}: no such folder; give the --output ROOT of `softprompt study`")

    def studies_in(folder: Path) -> list[StudyFolder]:
        return [StudyFolder(folder, p.name) for p in sorted(folder.iterdir()) if (p / RESULTS_FILE).is_file() and (p / STUDY_FILE).is_file()]

    groups = [p for p in sorted(root.iterdir()) if p.is_dir() and not (p / STUDY_FILE).is_file()]
    return studies_in(root) + [folder for group in groups for folder in studies_in(group)]
