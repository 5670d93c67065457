"""The model card (README.md) of a pretrained backbone: what it was trained on, how long, how well, and how to rebuild it."""

from __future__ import annotations

import os
from pathlib import Path

from ..files import write_text_atomic


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "n/a" if value is None else str(value)


def _stage_rows(stages: dict[str, dict]) -> list[str]:
    rows = ["| stage | objective | corpus cache (train tokens) | steps | tokens seen (in + out) | final train loss | val loss "
            "| val ppl | encoder gap | wall time | device |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in stages.items():
        tokens = s["tokens_seen"]["inputs"] + s["tokens_seen"]["targets"]
        cache = f"{s['cache']['folder']} ({_fmt(s['cache']['tokens']['train'])})"
        rows.append(f"| {name} | {s['objective']} | {cache} | {_fmt(s['steps'])} | {_fmt(tokens)} | {_fmt(s['final_train_loss'])} "
                    f"| {_fmt(s['val_loss'])} | {_fmt(s['val_ppl'], 2)} | {_fmt(s['encoder_gap'])} "
                    f"| {s['wall_time_s'] / 60:.1f} min | {s['device']} |")
    return rows


def _corpus_lines(corpus: dict) -> list[str]:
    files = [s for s in corpus["sources"] if s["format"] != "texts"]
    extra = sum(s["documents"] for s in corpus["sources"] if s["format"] == "texts")
    folders = sorted({str(Path(s["path"]).parent) for s in files})
    return [
        f"- {len(files)} files ({', '.join(sorted({s['format'] for s in files})) or 'none'}) from: {', '.join(folders) or 'n/a'}",
        f"- extra texts (unlabeled task inputs): {_fmt(extra)} documents",
        f"- documents: {_fmt(corpus['documents']['train'])} train / {_fmt(corpus['documents']['val'])} validation; "
        f"tokens: {_fmt(corpus['tokens']['train'])} train / {_fmt(corpus['tokens']['val'])} validation; "
        f"<unk> rate {corpus['unk_fraction']:.2e}",
    ]


def model_card(stages: dict[str, dict], corpus: dict, command: str) -> str:
    """Markdown for a backbone trained by the stages `stages` (name -> pretrain summary, in order) on `corpus` (corpus.json)."""
    last = list(stages.values())[-1]
    arch = last["architecture"]
    lines = [
        "# T5 1.1-style backbone for prompt tuning",
        "",
        ("Pretrained from scratch with span corruption (T5), then LM-adapted with a prefix-LM objective"
         " (Lester et al. 2021), as prompt tuning needs." if "lm-adapt" in stages else
         "Pretrained from scratch with span corruption (T5) only: the paper's span-corruption baseline, before"
         " LM adaptation.") + " Built by `softprompt pretrain` (the commands below).",
        "",
        "## Model",
        f"- {_fmt(last['parameters'])} parameters; d_model {arch['d_model']}, d_ff {arch['d_ff']}, "
        f"{arch['num_layers']}+{arch['num_decoder_layers']} layers, {arch['num_heads']} heads of {arch['d_kv']}; "
        f"{arch['feed_forward_proj']}; vocabulary {_fmt(arch['vocab_size'])} ids (100 sentinels at the top)",
        "- load: `T5ForConditionalGeneration.from_pretrained(folder)`, `AutoTokenizer.from_pretrained(folder)`",
        "",
        f"## Corpus (of the last stage: {last['cache']['folder']})",
        *_corpus_lines(corpus),
        "",
        "## Training",
        *_stage_rows(stages),
        "",
        "Encoder gap: validation loss with encoder inputs shuffled across the batch minus the true loss;"
        " near 0 would mean the decoder ignores the encoder.",
        "",
        f"Versions: torch {last['versions']['torch']}, transformers {last['versions']['transformers']}.",
        "",
        "## Command",
        "```",
        command or "(not recorded)",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike, stages: dict[str, dict], corpus: dict, command: str) -> Path:
    path = Path(folder) / "README.md"
    write_text_atomic(path, model_card(stages, corpus, command))
    return path
