"""`neighbors`: what learned prompts are near in the vocabulary (the paper's §7), against random vectors.

For each prompt position the top-5 cosine-nearest vocabulary embeddings; the same for random
directions scaled to the prompt's own row norms (so only direction differs). Measured per prompt:
the mean cosine to the 5 neighbours (how close to real tokens), the mean pairwise cosine among
them (how tight the cluster), how often a label word's token is among them, and how many
positions share a neighbour with another position. The study trains prompts (one per seed) or,
with `--prompt RUN`, analyses saved prompts instead; the neighbours themselves are written to
each point's run directory (`neighbors.json`) and the first positions printed in the table.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..files import write_json_atomic
from ..prompt_io import load_prompt
from .base import Context, Point, Study, model_keys, training_record
from .config import QUICK_BUDGET
from .summary import Row, markdown_table, summarise
from .verdicts import FINDINGS, NOT_REPRODUCED, REPRODUCED, Verdict, exceeds, untestable

TOP_K = 5
TRAINED, RANDOM, SHOWN_POSITIONS = "prompt", "random (norm-matched)", 8
MEASURES = {"cluster_cosine": "neighbours' pairwise cosine", "label_rate": "positions with a label (%)",
            "shared_rate": "positions sharing a neighbour (%)"}


class NeighborsStudy(Study):
    name = "neighbors"
    finding = FINDINGS["neighbors"]
    quick_budget = replace(QUICK_BUDGET, steps=1000, eval_every=500)  # 3 runs at p = 100: about 15 minutes

    def context(self, config, progress: bool = False) -> Context:
        ctx = super().context(config, progress)
        if config.prompt and not config.model:  # saved prompts name their own backbone
            ctx.models = tuple(dict.fromkeys(load_prompt(p)[1].backbone for p in config.prompt))
        return ctx

    def check(self, ctx: Context) -> None:
        if ctx.config.prompt:
            for directory in ctx.config.prompt:
                load_prompt(directory)  # a bad file is refused now, before the folder is written
            return
        super().check(ctx)

    def points(self, ctx: Context) -> list[Point]:
        keys, points = model_keys(ctx.models), []
        if ctx.config.prompt:
            for k, directory in enumerate(ctx.config.prompt):
                model = ctx.config.model[0] if ctx.config.model else load_prompt(directory)[1].backbone
                name = f"saved{k}-{Path(directory).resolve().name}"
                extra = {"prompt_dir": str(Path(directory).resolve())}
                setting = f"saved {Path(directory).name}"
                points += [Point(f"{name}/{TRAINED}", setting, model, 0, extra=extra),
                           Point(f"{name}/random", random_setting(setting), model, 0, extra=extra)]
            return points
        for seed in range(ctx.budget.seeds):
            for model in ctx.models:
                key = f"{keys[model]}/prompt/seed{seed}"
                points += [Point(key, TRAINED, model, seed, ctx.train_config(key, model, seed)),
                           Point(f"{keys[model]}/random/seed{seed}", RANDOM, model, seed, extra={"prompt_dir": str(ctx.run_dir(key))})]
        return points

    def run_point(self, ctx: Context, point: Point) -> dict[str, Any]:
        record = training_record(ctx, point) if point.config is not None else {}
        directory = Path(point.extra.get("prompt_dir") or ctx.run_dir(point.key))
        weight, metadata = load_prompt(directory)
        if point.setting.startswith(RANDOM):
            generator = torch.Generator().manual_seed(10_000 + point.seed)
            weight = F.normalize(torch.randn(weight.shape, generator=generator), dim=1) * weight.norm(dim=1, keepdim=True)  # (p, e)
        backbone = ctx.backbone(point.model)
        analysis = neighbours(weight, backbone, metadata.labels or ())
        out = ctx.folder.run_dir(point.key)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "neighbors.json", analysis)
        measures = {k: analysis[k] for k in ("neighbour_cosine", *MEASURES)}
        return {**{k: v for k, v in record.items() if k not in ("metric", "score")}, **measures, "metric": "neighbour cosine",
                "score": analysis["neighbour_cosine"], "task_score": record.get("score"), "tokens": analysis["tokens"][:SHOWN_POSITIONS]}

    def rows(self, records: list[dict[str, Any]]) -> list[Row]:
        return [replace(r, chance=None) for r in summarise(records)]  # a cosine has no majority-class level

    def table(self, rows: list[Row], records: list[dict[str, Any]]) -> str:
        trained = [r for r in records if r.get("task_score") is not None]
        columns = {"task dev score (%)": {(r.model, r.setting): cell(r, 100) for r in summarise(trained, "task_score")}}
        for measure, title in MEASURES.items():
            scale = 1 if measure == "cluster_cosine" else 100
            columns[title] = {(r.model, r.setting): cell(r, scale) for r in summarise(records, measure)}
        return markdown_table(rows, columns)

    def sections(self, records: list[dict[str, Any]]) -> str:
        lines = [f"Top-{TOP_K} neighbours of the first {SHOWN_POSITIONS} positions (seed 0):", ""]
        for r in records:
            if r["seed"] == 0:
                lines.append(f"- `{r['model']}`, {r['setting']}: " + "; ".join(f"{i}: {' '.join(t)}" for i, t in enumerate(r["tokens"])))
        return "\n".join(lines)

    def verdicts(self, records: list[dict[str, Any]]) -> list[tuple[str, Verdict]]:
        """Per backbone and prompt source: closer to the vocabulary than random vectors (beyond the spread) and meeting labels more often."""
        cosine, labels = self.rows(records), summarise(records, "label_rate")
        out = []
        for row in (r for r in cosine if not r.setting.startswith(RANDOM)):
            random = next((r for r in cosine if r.model == row.model and r.setting == random_setting(row.setting)), None)
            label_of = {(r.model, r.setting): r.mean for r in labels}
            blocked = untestable([row, random] if random is not None else [])
            if blocked:
                out.append((row.model, blocked))
                continue
            closer = exceeds(row.mean, row.std, random.mean, random.std)
            more_labels = label_of[row.model, row.setting] > label_of[random.model, random.setting]
            reason = (f"neighbour cosine {row.mean:.3f} ± {row.std:.3f} ({row.setting}) vs {random.mean:.3f} ± {random.std:.3f} "
                      f"(random); label among neighbours at {100 * label_of[row.model, row.setting]:.0f}% vs "
                      f"{100 * label_of[random.model, random.setting]:.0f}% of positions")
            out.append((row.model, Verdict(REPRODUCED if closer and more_labels else NOT_REPRODUCED, reason)))
        return out


def random_setting(setting: str) -> str:
    """The name of the random counterpart of prompt setting `setting` (one per saved prompt)."""
    return RANDOM if setting == TRAINED else f"{RANDOM}, {setting}"


def cell(row: Row, scale: float) -> str:
    digits = 3 if scale == 1 else 1
    return f"{scale * row.mean:.{digits}f}" + (f" ± {scale * row.std:.{digits}f}" if row.n > 1 else "")


@torch.no_grad()
def neighbours(weight: torch.Tensor, backbone: Backbone, labels: tuple[str, ...] | list[str], k: int = TOP_K) -> dict[str, Any]:
    """Each position's top-k cosine-nearest vocabulary tokens (special and blank tokens excluded) and the four measures."""
    table = backbone.embeddings.detach().float().cpu()  # (V, e)
    tokenizer = backbone.tokenizer
    texts = tokenizer.convert_ids_to_tokens(list(range(table.shape[0])))
    usable = torch.tensor([i not in set(tokenizer.all_special_ids) and bool((t or "").strip("▁Ġ ")) for i, t in enumerate(texts)])  # (V,)
    unit = F.normalize(table, dim=1)  # (V, e)
    cosine = F.normalize(weight.float(), dim=1) @ unit.T  # (p, V)
    cosine[:, ~usable] = -2.0
    top = cosine.topk(k, dim=1)  # values, indices (p, k)
    ids = top.indices
    neighbour_vectors = unit[ids]  # (p, k, e)
    pairwise = neighbour_vectors @ neighbour_vectors.transpose(1, 2)  # (p, k, k)
    off_diagonal = pairwise.sum((1, 2)) - pairwise.diagonal(dim1=1, dim2=2).sum(1)  # (p,)
    label_ids = {i for label in labels for i in backbone.word_ids(label) if usable[i]}
    sets = [set(row) for row in ids.tolist()]
    shared = [any(s & other for j, other in enumerate(sets) if j != i) for i, s in enumerate(sets)]
    return {
        "neighbour_cosine": float(top.values.mean()),
        "cluster_cosine": float((off_diagonal / (k * (k - 1))).mean()),
        "label_rate": sum(bool(s & label_ids) for s in sets) / len(sets),
        "shared_rate": sum(shared) / len(sets),
        "tokens": [[texts[i] for i in row] for row in ids.tolist()],
        "labels": list(labels),
    }
