"""Replicas sharing a prompt directory: a writable server writes what it loads, the others follow with rescan().

Two PromptDirectory objects over one root stand for two server processes, each with its own
bank on the same tiny backbone (real T5 vocabulary, random weights).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save

from conftest import tiny_adapter, tiny_backbone
from softprompt.errors import SoftpromptError
from softprompt.model import PromptedModel
from softprompt.prompt_io import METADATA_NAME, WEIGHTS_NAME, PromptMetadata, save_prompt
from softprompt.server.config import ServeConfig
from softprompt.server.prompt_store import VERSIONS
from softprompt.server.prompts import PromptDirectory, load_server_model, prompt_folders


@pytest.fixture(scope="module")
def backbone():
    return tiny_adapter("t5")


def upload(backbone, seed: int, length: int = 3) -> tuple[bytes, dict]:
    weight = torch.randn(length, backbone.width, generator=torch.Generator().manual_seed(seed))
    meta = PromptMetadata(length, backbone.width, "random-uniform", task="sst2", labels=["negative", "positive"],
                          backbone_kind=backbone.kind, backbone_fingerprint=backbone.fingerprint())
    return save({"prompt": weight}), json.loads(json.dumps(asdict(meta)))


@pytest.fixture
def replicas(backbone, tmp_path):
    """(writer, follower): a writable directory and a read-only one over the same root."""
    root = tmp_path / "prompts"
    root.mkdir()
    return (PromptDirectory(root, PromptedModel(backbone), writable=True),
            PromptDirectory(root, PromptedModel(backbone)))


def test_a_writable_upload_is_written_and_followed(replicas, backbone):
    writer, follower = replicas
    writer.put_upload("sst2", *upload(backbone, 0))
    link = writer.root / "sst2"
    assert link.is_symlink() and (link / WEIGHTS_NAME).is_file() and link.resolve().parent.name == VERSIONS
    assert [p.name for p in prompt_folders(writer.root)] == ["sst2"]

    assert follower.rescan() == (["sst2"], [])
    assert follower.content_hash("sst2") == writer.content_hash("sst2")
    assert writer.content_hash("sst2").startswith("sha256:") and follower.describe("sst2")["sha256"] == writer.content_hash("sst2")
    assert torch.equal(follower.model.bank["sst2"].weight, writer.model.bank["sst2"].weight)
    assert follower.rescan() == ([], []), "unchanged folders are not reloaded"
    assert writer.rescan() == ([], []), "the writer already holds what it wrote"

    first = writer.content_hash("sst2")
    (writer.root / ".tmp-sst2-crashed").mkdir()  # a writer that died mid-write
    writer.put_upload("sst2", *upload(backbone, 1))
    assert not (writer.root / ".tmp-sst2-crashed").exists(), "the next writer cleans up after it"
    assert writer.content_hash("sst2") != first
    assert [v.name for v in (writer.root / VERSIONS).iterdir()] == [link.resolve().name], "the old version is cleaned up"
    assert follower.rescan() == (["sst2"], []) and follower.content_hash("sst2") == writer.content_hash("sst2")


def test_remove_deletes_the_folder_and_followers_unload(replicas, backbone):
    writer, follower = replicas
    writer.put_upload("rte", *upload(backbone, 2))
    follower.rescan()
    writer.remove("rte")
    assert "rte" not in writer.model.bank and not (writer.root / "rte").exists() and not (writer.root / "rte").is_symlink()
    assert list((writer.root / VERSIONS).iterdir()) == []
    assert follower.rescan() == ([], ["rte"]) and "rte" not in follower.model.bank
    with pytest.raises(SoftpromptError, match="unknown prompt"):
        writer.remove("rte")


def test_put_folder_copies_another_folder_under_the_name(replicas, backbone):
    writer, follower = replicas
    weights, meta = upload(backbone, 3)
    source = writer.root / "runs" / "sst2"
    source.mkdir(parents=True)
    (source / WEIGHTS_NAME).write_bytes(weights)
    (source / METADATA_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    writer.put_folder("copy", "runs/sst2")
    assert (writer.root / "copy").is_symlink()
    assert follower.rescan() == (["copy"], [])
    uploaded = PromptDirectory(writer.root, PromptedModel(backbone))
    uploaded.load_upload("same", weights, meta)
    assert uploaded.content_hash("same") == writer.content_hash("copy") == follower.content_hash("copy"), \
        "an upload of a folder's files hashes as the folder"


def test_hidden_and_half_written_folders_are_never_prompts(replicas, backbone):
    writer, follower = replicas
    weights, meta = upload(backbone, 4)
    for name in (".tmp-ghost-1a2b3c", ".versions", ".hidden"):
        (writer.root / name).mkdir()
        (writer.root / name / WEIGHTS_NAME).write_bytes(weights)
        (writer.root / name / METADATA_NAME).write_text(json.dumps(meta))
    (writer.root / "half").mkdir()
    (writer.root / "half" / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 2])  # no prompt.json yet
    assert prompt_folders(writer.root) == []
    assert follower.rescan() == ([], []) and len(follower.model.bank) == 0
    with pytest.raises(SoftpromptError, match="hidden"):
        follower.load_folder("ghost", ".tmp-ghost-1a2b3c")


def test_in_memory_uploads_of_a_read_only_server_survive_rescans(replicas, backbone):
    _, follower = replicas
    follower.put_upload("memory", *upload(backbone, 5))
    assert not (follower.root / "memory").exists(), "a read-only server never writes"
    assert follower.rescan() == ([], []) and "memory" in follower.model.bank
    follower.remove("memory")
    assert "memory" not in follower.model.bank


def test_a_broken_folder_is_logged_once_and_the_loaded_version_stays(replicas, backbone, caplog):
    _, follower = replicas
    weights, meta = upload(backbone, 6)
    folder = follower.root / "cb"
    save_prompt(folder, torch.randn(3, backbone.width), PromptMetadata(**{**meta, "length": 3}))
    assert follower.rescan() == (["cb"], [])
    loaded = follower.content_hash("cb")
    (folder / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    (follower.root / "new").mkdir()
    (follower.root / "new" / WEIGHTS_NAME).write_bytes(weights)
    (follower.root / "new" / METADATA_NAME).write_text(json.dumps({**meta, "width": 7}))
    with caplog.at_level(logging.WARNING, logger="softprompt.server"):
        assert follower.rescan() == ([], [])
        assert follower.rescan() == ([], [])
    problems = [r.getMessage() for r in caplog.records if r.name == "softprompt.server"]
    assert len(problems) == 2, problems
    assert "corrupt" in problems[0] and problems[0].endswith("the version loaded before stays"), problems
    assert "shape" in problems[1] and "stays" not in problems[1], problems
    assert follower.content_hash("cb") == loaded and "new" not in follower.model.bank


def test_a_reader_never_sees_the_prompt_missing_while_it_is_rewritten(replicas, backbone):
    """The first write replaces a folder put there by hand; every later one swaps the link. A reader rescans throughout."""
    writer, follower = replicas
    weights, meta = upload(backbone, 7)
    save_prompt(writer.root / "qa", torch.randn(3, backbone.width), PromptMetadata(**meta))
    writer.load_all()
    follower.load_all()
    uploads = [upload(backbone, 100 + i) for i in range(12)]
    done, seen = threading.Event(), []

    def read() -> None:
        while not done.is_set():
            seen.append(follower.rescan())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for item in uploads:
            writer.put_upload("qa", *item)
    finally:
        done.set()
        reader.join(timeout=30)
    assert not reader.is_alive()
    seen.append(follower.rescan())
    assert all(unloaded == [] for _, unloaded in seen), [s for s in seen if s[1]]
    assert follower.content_hash("qa") == writer.content_hash("qa")
    assert len(list((writer.root / VERSIONS).iterdir())) == 1
    assert not [p for p in writer.root.iterdir() if p.name.startswith(".tmp-")]


def test_load_server_model_passes_prompts_writable(tmp_path):
    model, tokenizer = tiny_backbone("t5")
    model.save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    (tmp_path / "prompts").mkdir()
    for writable in (False, True):
        config = ServeConfig(prompts=str(tmp_path / "prompts"), model=str(tmp_path / "backbone"), prompts_writable=writable)
        assert load_server_model(config)[1].writable is writable
