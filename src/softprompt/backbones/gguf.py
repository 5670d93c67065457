"""GGUF files as backbones: dequantised once through transformers' GGUF support, then read from the cache.

A `.gguf` file (llama.cpp's format; quantised weights, config and tokenizer in one file) loads
through `from_pretrained(..., gguf_file=...)`, model and tokenizer from the same file, dequantised
to fp32. That takes seconds to tens of seconds (about 20 s for SmolLM2-135M's 93 MB), so the result
is saved once as an ordinary Hugging Face folder (model.safetensors, config, tokenizer) in the cache
(`cache.py`), and every later load reads that folder. Entries are stored in fp32; the spec's dtype
applies when the folder is loaded.

The cache key is the SHA-256 of the whole file, read in 1 MiB chunks. It costs 0.08 s for the 93 MB
SmolLM2 file (about 1 GB/s, paid on every load) and is exact: a copied, moved or touched file keeps
its entry, a file changed in place gets a new one. A cheaper key (size + mtime + hashes of the first
and last MiB) would save those 0.08 s but can miss an edit in the middle of a file, and a rename or
`cp` would rebuild for nothing. For a multi-GB GGUF the full hash costs a few seconds per load, still
far below its dequantisation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GgufConfig

from ..errors import SoftpromptError
from .cache import CacheEntry, cached_folder

GGUF_MAGIC = b"GGUF"
GGUF_SUFFIX = ".gguf"
LAYOUT = "gguf-v1"  # the folder of GGUF entries in the cache; a new layout gets a new name
HASH_CHUNK = 1 << 20


def is_gguf_file(path: str | os.PathLike) -> bool:
    """Whether `path` is an existing file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def check_gguf_path(path: Path) -> None:
    """Raise SoftpromptError unless `path` is a file that starts like a GGUF file."""
    if not path.is_file():
        raise SoftpromptError(f"no GGUF file at {path}")
    if not is_gguf_file(path):
        raise SoftpromptError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _diagnose(path: Path, err: Exception) -> str:
    """One line that says why transformers could not read `path`: truncated/corrupt, or not supported."""
    from gguf import GGUFReader  # the reference reader: if it fails too, the file itself is broken

    try:
        reader = GGUFReader(path)
        size = path.stat().st_size
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        if end > size:
            return f"GGUF file {path} is truncated: its tensors need {end:,} bytes, the file has {size:,}"
        field = reader.fields.get("general.architecture")
        architecture = field.contents() if field is not None else "unknown"
    except Exception as reader_err:  # any failure of the reference reader means a damaged file
        return f"GGUF file {path} is truncated or corrupt ({_first_line(reader_err)})"
    return (f"transformers {transformers.__version__} cannot load GGUF file {path} "
            f"(architecture {architecture!r}): {_first_line(err)}")


def read_gguf(path: str | os.PathLike):
    """(model, tokenizer) from one GGUF file, dequantised to fp32; raises SoftpromptError naming the file."""
    path = Path(path).expanduser().resolve()
    check_gguf_path(path)
    folder, file = str(path.parent), str(path)  # an absolute gguf_file: never a same-named file in the cwd
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=file)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(folder, gguf_file=file, dtype=torch.float32,
                                     quantization_config=GgufConfig(dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    except Exception as err:  # the reader raises struct.error, IndexError, ValueError ... on a bad file
        raise SoftpromptError(_diagnose(path, err)) from err
    # The weights are plain fp32 tensors now; the GGUF quantizer marker would make save_pretrained
    # refuse and a saved config claim a GGUF checkpoint. dequantize=True removes it; make sure.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model.eval(), tokenizer


def save_dequantised(path: Path, folder: Path) -> None:
    """Write the GGUF file `path` into `folder` as an fp32 Hugging Face folder."""
    model, tokenizer = read_gguf(path)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def gguf_folder(path: str | os.PathLike, rebuild: bool = False) -> CacheEntry:
    """The cached fp32 Hugging Face folder of a GGUF file, built on first use (or again with `rebuild`)."""
    path = Path(path).expanduser().resolve()
    check_gguf_path(path)
    digest = file_sha256(path)
    return cached_folder(
        f"{LAYOUT}/{digest[:32]}",
        expect={"sha256": digest, "dtype": "float32"},
        build=lambda tmp: save_dequantised(path, tmp),
        record={"source": str(path), "source_bytes": path.stat().st_size, "transformers": transformers.__version__},
        rebuild=rebuild,
    )
