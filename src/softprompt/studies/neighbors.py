"""`neighbors`: what learned prompts are near in the vocabulary (the paper's §7), against controls that share their seed.

For each prompt position the top-5 cosine-nearest vocabulary embeddings. Measured per prompt: the
mean cosine to the 5 neighbours (how close to real tokens), the mean pairwise cosine among them (how
tight the cluster), how often a label word's token is among them, and how many positions share a
neighbour with another position.

The trained prompt (p = 100, class-label init: the default cell, shared with the other studies'
run cache) is compared, seed by seed, with four controls of the same seed:

1. `initial prompt`: the untrained prompt, regenerated exactly as training made it (same prompt
   config, backbone, task class words, and a generator seeded with the run's seed). It starts as
   vocabulary rows (the label words, then sampled tokens), so it is no "random vector".
2. `init + random displacement`: the initial prompt with each row moved as far as training moved it
   (‖trained_i − init_i‖), in a random direction. This is the null for "training made the clusters":
   it keeps the init's closeness to the vocabulary and its label rows, and loses only where the
   movement went.
3. `random (embedding distribution)`: vectors drawn from a Gaussian with the vocabulary table's mean
   and covariance (not isotropic: a cosine ignores norms, so only a direction distribution shaped
   like the table's is a fair "random vector").
4. `trained from random-uniform init`: a second training run (shared with the init study's cache).

The verdicts (stats.py, paired by seed) are gated on the trained prompts having learned the task:
the neighbours of a prompt that learned nothing say nothing about what prompt tuning learns. With
`--prompt RUN` saved prompts are analysed instead (no training, no known init: control 3 only, and
no seeds to pair, so the table has the numbers and the verdicts say why they are not testable).
Each point writes its neighbours (decoded tokens, and the raw vocabulary pieces) to
`neighbors.json` in its run directory, and each control its vectors as a prompt file.
"""

from __future__ import annotations

import math
import statistics
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import Backbone, BackboneSpec, load_backbone
from ..config import PromptConfig, TrainConfig
from ..files import write_json_atomic
from ..prompt import initial_prompt
from ..prompt_io import load_prompt, save_prompt
from ..tasks import load_task
from .base import Context, Point, Study, model_keys, training_record
from .config import QUICK_BUDGET
from .plot import save_figure
from .stats import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from .summary import Row, models_of, summarise
from .verdicts import NOT_TESTABLE, Claim, Verdict, arms_of, judged, not_testable, run_learned

TOP_K, SHOWN_POSITIONS, MIN_LEARNED_SEEDS = 5, 8, 2
TRAINED = "trained prompt"
INITIAL = "initial prompt"
DISPLACED = "init + random displacement"
EMBEDDING = "random (embedding distribution)"
UNIFORM = "trained from random-uniform init"
SAVED = "saved"  # saved prompts: "saved NAME", and their control "random (embedding distribution), saved NAME"
CONTROL_SEEDS = {DISPLACED: 20_000, EMBEDDING: 30_000}  # generator seed = offset + the run's seed
MEASURES = {"neighbour_cosine": "neighbour cosine", "cluster_cosine": "neighbours' pairwise cosine",
            "label_rate": "positions with a label (%)", "shared_rate": "positions sharing a neighbour (%)"}

CLUSTER_CLAIM = "learned prompts have tighter neighbour clusters than random vectors"
LABEL_CLAIM = "class labels often appear among the neighbours"
SHARED_CLAIM = "tokens share neighbours"
CLUSTER_CONTROLS = (DISPLACED, EMBEDDING)  # the random vectors the sub-claim is about
REPORTED_CONTROLS = (INITIAL, UNIFORM)  # tested in the same Holm family and shown, but not part of the verdict


class NeighborsStudy(Study):
    name = "neighbors"
    # 2 runs (class-label, random-uniform) x 3 seeds at p = 100: about 30 minutes on the 2-core reference machine.
    quick_budget = replace(QUICK_BUDGET, steps=1000, eval_every=500)

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
                setting = saved_setting(Path(directory).name)
                points += [Point(f"{name}/saved", setting, model, 0, extra=extra),
                           Point(f"{name}/embedding", f"{EMBEDDING}, {setting}", model, 0, extra=extra)]
            return points
        # seed-major; each seed's controls after the runs they read. ("trained", not the old "prompt": records of the
        # norm-matched study under the old key are not taken for this one; the runs themselves are cached by config.)
        for seed in range(ctx.budget.seeds):
            for model in ctx.models:
                key, uniform = f"{keys[model]}/trained/seed{seed}", f"{keys[model]}/random-uniform/seed{seed}"
                config = ctx.train_config(key, model, seed)
                extra = {"source": key, "train": config}
                points += [Point(key, TRAINED, model, seed, config),
                           Point(uniform, UNIFORM, model, seed, ctx.train_config(uniform, model, seed, PromptConfig(init="random-uniform"))),
                           Point(f"{keys[model]}/initial/seed{seed}", INITIAL, model, seed, extra=extra),
                           Point(f"{keys[model]}/displaced/seed{seed}", DISPLACED, model, seed, extra=extra),
                           Point(f"{keys[model]}/embedding/seed{seed}", EMBEDDING, model, seed, extra=extra)]
        return points

    def run_point(self, ctx: Context, point: Point) -> dict[str, Any]:
        backbone = ctx.backbone(point.model)
        record: dict[str, Any] = {}
        if point.config is not None:  # a training run: its record (task score, dev_correct, chance) is the learned gate's
            record = training_record(ctx, point)
            record.update(task_score=record.get("score"), task_metric=record.get("metric"))
            weight, metadata = load_prompt(ctx.run_dir(point.key))
        else:
            source = Path(point.extra.get("prompt_dir") or ctx.run_dir(point.extra["source"]))
            trained, metadata = load_prompt(source)
            weight = self.control(ctx, point, trained, backbone)
            if weight is None:  # a saved prompt analysed as it is
                weight = trained
            else:
                metadata = replace(metadata, step=None, metrics=None, extra={**metadata.extra, "control": point.setting,
                                                                             "source": str(source)})
        analysis = neighbours(weight, backbone, metadata.labels or ())
        out = ctx.folder.run_dir(point.key)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "neighbors.json", analysis)
        if point.config is None and "control" in metadata.extra:
            save_prompt(out, weight, metadata)  # the control's vectors, for checking (load_prompt reads them)
        measures = {k: analysis[k] for k in MEASURES}
        return {**record, **measures, "tokens": analysis["tokens"][:SHOWN_POSITIONS]}

    def control(self, ctx: Context, point: Point, trained: torch.Tensor, backbone: Backbone) -> torch.Tensor | None:
        """The control vectors of `point` (p, e), or None for a saved prompt itself."""
        config: TrainConfig | None = point.extra.get("train")
        if point.setting.startswith(EMBEDDING):
            generator = torch.Generator().manual_seed(CONTROL_SEEDS[EMBEDDING] + point.seed)
            vocab = vocabulary(backbone)
            return sample_embedding_distribution(vocab.usable_table(), trained.shape[0], generator, vocab.gaussian())
        if point.setting.startswith(SAVED) or config is None:
            return None
        init = initial_weight(config, backbone)
        if point.setting == INITIAL:
            return init
        generator = torch.Generator().manual_seed(CONTROL_SEEDS[DISPLACED] + point.seed)
        return displaced(init, trained, generator)

    def rows(self, records: list[dict[str, Any]]) -> list[Row]:
        """One row per setting: the neighbours' pairwise cosine (the cluster tightness), for the plot."""
        return [replace(r, metric=MEASURES["cluster_cosine"], chance=None) for r in summarise(records, "cluster_cosine")]

    def plot(self, rows: list[Row], path: Path, title: str) -> Path:
        """The cluster cosine per setting (a cosine, not a percentage), one marker per backbone, seed std as bars."""
        import matplotlib.pyplot as plt  # the Agg backend is chosen by .plot, imported with .base

        fig, ax = plt.subplots(figsize=(7.2, 4.4))
        settings = list(dict.fromkeys(r.setting for r in rows))
        for model in models_of(rows):
            line = [next((r for r in rows if r.model == model and r.setting == s), None) for s in settings]
            xs = [i for i, r in enumerate(line) if r is not None]
            ys = [line[i].mean for i in xs]
            errors = [0.0 if math.isnan(line[i].std) else line[i].std for i in xs]
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, linestyle="none", label=model)
        ax.set_xticks(range(len(settings)), settings, rotation=20, ha="right", fontsize="small")
        ax.set_ylabel(f"{MEASURES['cluster_cosine']} (top-{TOP_K})")
        return save_figure(fig, ax, path, title)

    def table(self, rows: list[Row], records: list[dict[str, Any]]) -> str:
        """Mean ± std over seeds of each measure per backbone and setting, with the task score of the trained ones."""
        header = ["backbone", "setting", "seeds", "task dev score (%)", "chance (%)", "learned", *MEASURES.values()]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in records:
            groups.setdefault((record["model"], record["setting"]), []).append(record)
        for (model, setting), group in groups.items():
            trained = [r for r in group if r.get("task_score") is not None]
            task = spread([r["task_score"] for r in trained], 100) if trained else ""
            chance = f"{100 * trained[0]['chance']:.1f}" if trained and trained[0].get("chance") is not None else ""
            states = [run_learned(r) for r in trained]
            learned = f"{sum(bool(s) for s in states)}/{len(states)}" if trained else ""
            cells = [spread([r[m] for r in group], 1 if "cosine" in m else 100) for m in MEASURES]
            lines.append("| " + " | ".join([f"`{model}`", setting, str(len(group)), task, chance, learned, *cells]) + " |")
        return "\n".join(lines)

    def sections(self, records: list[dict[str, Any]]) -> str:
        shown = [r for r in records if r["seed"] == 0 and (r["setting"] in (TRAINED, DISPLACED) or r["setting"].startswith(SAVED))]
        lines = [f"Top-{TOP_K} neighbours (decoded) of the first {SHOWN_POSITIONS} positions (seed 0):", ""]
        for r in shown:
            lines.append(f"- `{r['model']}`, {r['setting']}: " + "; ".join(
                f"{i}: {' | '.join(shown_token(t) for t in tokens)}" for i, tokens in enumerate(r["tokens"])))
        return "\n".join(lines)

    def verdicts(self, records: list[dict[str, Any]]) -> list[tuple[str, Verdict]]:
        """Per backbone, one verdict per sub-claim: tighter clusters than random vectors, labels among the neighbours,
        shared neighbours; all gated on the trained prompts having learned the task."""
        out: list[tuple[str, Verdict]] = []
        for model in dict.fromkeys(r["model"] for r in records):
            out += [(model, v) for v in model_verdicts(records, model)]
        return out


def model_verdicts(records: list[dict[str, Any]], model: str) -> list[Verdict]:
    mine = [r for r in records if r["model"] == model]
    claims = (CLUSTER_CLAIM, LABEL_CLAIM, SHARED_CLAIM)
    trained = [r for r in mine if r["setting"] == TRAINED]
    if not trained:
        why = ("one saved prompt has no seeds to pair with its controls (and no known initial prompt to displace), "
               "so no paired test can be made; the table shows its numbers") if any(r["setting"].startswith(SAVED) for r in mine) \
            else f"no {TRAINED} runs"
        return [not_testable(c, why) for c in claims]
    states = [run_learned(r) for r in trained]
    learned_seeds = sum(bool(s) for s in states)
    if learned_seeds < MIN_LEARNED_SEEDS:
        why = (f"budget: the trained prompts did not learn the task ({learned_seeds} of {len(trained)} seeds beat the majority "
               f"class, one-sided binomial p < 0.01; at least {MIN_LEARNED_SEEDS} needed), so their neighbours say nothing "
               "about what prompt tuning learns")
        return [not_testable(c, why) for c in claims]
    verdicts = [cluster_verdict(mine, model)]
    for measure, text in (("label_rate", LABEL_CLAIM), ("shared_rate", SHARED_CLAIM)):
        claim = Claim(text, TRAINED, DISPLACED)
        verdicts += judged(mine, model, [claim], score=measure, arms=measure_arms(mine, model, measure), gate={})
    return verdicts


def cluster_verdict(records: list[dict[str, Any]], model: str) -> Verdict:
    """Trained > each control on the cluster cosine, Holm across the four; the verdict rests on the random-vector controls
    (displacement and embedding distribution), the other two are reported beside them."""
    controls = (*CLUSTER_CONTROLS, *REPORTED_CONTROLS)
    claims = [Claim(f"{CLUSTER_CLAIM}: {TRAINED} > {c}", TRAINED, c) for c in controls]
    results = judged(records, model, claims, score="cluster_cosine", arms=measure_arms(records, model, "cluster_cosine"), gate={})
    deciding = results[: len(CLUSTER_CONTROLS)]
    labels = [v.label for v in deciding]
    if NOT_TESTABLE in labels:
        label = NOT_TESTABLE
    elif all(x == SUPPORTED for x in labels):
        label = SUPPORTED
    elif CONTRADICTED in labels:
        label = CONTRADICTED
    else:
        label = INCONCLUSIVE
    parts = [f"vs {c}{' (reported)' if c in REPORTED_CONTROLS else ''}: {v.label}, {v.reason}" for c, v in zip(controls, results)]
    return Verdict(label, "cosine x 100, Holm across the four controls; " + "; ".join(parts), CLUSTER_CLAIM)


def measure_arms(records: list[dict[str, Any]], model: str, measure: str) -> dict:
    """The arms of one neighbour measure, without per-example dev scores: those are the task's, not this measure's."""
    return arms_of(records, model, score=measure, correct="per_example_" + measure)


def saved_setting(name: str) -> str:
    return f"{SAVED} {name}"


def spread(values: list[float], scale: float) -> str:
    digits = 3 if scale == 1 else 1
    if len(values) > 1:
        return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"
    return f"{scale * values[0]:.{digits}f}" if values else ""


def shown_token(text: str) -> str:
    """A decoded token for a markdown line: its own spaces dropped, a pipe or backtick escaped, nothing blank."""
    text = text.strip().replace("|", "\\|").replace("`", "\\`")
    return text or "␣"


# ---- the controls ----------------------------------------------------------------------------------------


def initial_weight(config: TrainConfig, backbone: Backbone) -> torch.Tensor:
    """The (p, e) prompt training run `config` started from, made as build_model makes it (model.py)."""
    if config.dtype != "fp32" or backbone.embeddings.dtype != torch.float32:
        backbone = load_backbone(BackboneSpec(config.model, config.dtype, "cpu"))  # the init reads the table as training stored it
    task = load_task(config.task, config.task_spec)
    generator = torch.Generator().manual_seed(config.seed)
    return initial_prompt(config.prompt, backbone, task.class_words, generator).weight.float().cpu()


def displaced(init: torch.Tensor, trained: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each row of `init` moved as far as training moved it (‖trained_i − init_i‖), in a uniformly random direction."""
    init64 = init.double()
    distance = (trained.double() - init64).norm(dim=1, keepdim=True)  # (p, 1)
    direction = F.normalize(torch.randn(init.shape, generator=generator, dtype=torch.float64), dim=1)  # (p, e)
    return (init64 + distance * direction).float()


@dataclass(frozen=True)
class Gaussian:
    """A Gaussian by its mean (e,) and a factor (e, e) with factor @ factor.T = covariance, both float64."""

    mean: torch.Tensor
    factor: torch.Tensor


def embedding_gaussian(table: torch.Tensor) -> Gaussian:
    """The Gaussian with `table`'s (n, e) row mean and covariance. The factor comes from an eigendecomposition with
    negative round-off eigenvalues clipped to 0, so a singular covariance (rank < e, n <= e) is sampled as well."""
    rows = table.detach().double().cpu()
    mean = rows.mean(0)
    centred = rows - mean
    covariance = centred.T @ centred / max(1, rows.shape[0] - 1)  # (e, e)
    values, vectors = torch.linalg.eigh(covariance)
    return Gaussian(mean, vectors * values.clamp(min=0).sqrt())


def sample_embedding_distribution(table: torch.Tensor, n: int, generator: torch.Generator,
                                  gaussian: Gaussian | None = None) -> torch.Tensor:
    """`n` vectors (n, e), float32, from the Gaussian with `table`'s mean and covariance."""
    gaussian = gaussian or embedding_gaussian(table)
    z = torch.randn(n, gaussian.mean.shape[0], generator=generator, dtype=torch.float64)
    return (gaussian.mean + z @ gaussian.factor.T).float()


# ---- the neighbours ----------------------------------------------------------------------------------------


@dataclass
class Vocabulary:
    """A backbone's embedding table with, per row, whether it is searched (not special, not blank, a real token) and
    its text: decoded (byte-level BPE as text, SentencePiece without ▁) and as the raw vocabulary piece."""

    table: torch.Tensor  # (V, e) float32
    usable: torch.Tensor  # (V,) bool
    texts: list[str]
    pieces: list[str]
    version: int
    _gaussian: Gaussian | None = None

    def usable_table(self) -> torch.Tensor:
        return self.table[self.usable]

    def gaussian(self) -> Gaussian:
        """The Gaussian of the searched rows (made once: a float64 covariance and its eigendecomposition)."""
        if self._gaussian is None:
            self._gaussian = embedding_gaussian(self.usable_table())
        return self._gaussian


_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary(backbone: Backbone) -> Vocabulary:
    """The backbone's Vocabulary, made once per backbone (and again if its table changes in place)."""
    embeddings = backbone.embeddings
    found = _VOCABULARIES.get(backbone)
    if found is not None and found.version == embeddings._version:
        return found
    table = embeddings.detach().float().cpu()  # (V, e)
    tokenizer = backbone.tokenizer
    known = min(len(tokenizer), table.shape[0])  # T5's table has padding rows past the tokenizer
    texts = tokenizer.batch_decode([[i] for i in range(known)]) + [""] * (table.shape[0] - known)
    pieces = [p or "" for p in tokenizer.convert_ids_to_tokens(list(range(known)))] + [""] * (table.shape[0] - known)
    special = set(tokenizer.all_special_ids)
    usable = torch.tensor([i < known and i not in special and bool(texts[i].strip()) for i in range(table.shape[0])])
    found = Vocabulary(table, usable, texts, pieces, embeddings._version)
    _VOCABULARIES[backbone] = found
    return found


@torch.no_grad()
def neighbours(weight: torch.Tensor, backbone: Backbone, labels: tuple[str, ...] | list[str], k: int = TOP_K) -> dict[str, Any]:
    """Each position's top-k cosine-nearest vocabulary tokens (special and blank tokens excluded) and the four measures."""
    vocab = vocabulary(backbone)
    unit = F.normalize(vocab.table, dim=1)  # (V, e)
    cosine = F.normalize(weight.float().cpu(), dim=1) @ unit.T  # (p, V)
    cosine[:, ~vocab.usable] = -2.0
    top = cosine.topk(k, dim=1)  # values, indices (p, k)
    ids = top.indices
    neighbour_vectors = unit[ids]  # (p, k, e)
    pairwise = neighbour_vectors @ neighbour_vectors.transpose(1, 2)  # (p, k, k)
    off_diagonal = pairwise.sum((1, 2)) - pairwise.diagonal(dim1=1, dim2=2).sum(1)  # (p,)
    label_ids = {i for label in labels for i in backbone.word_ids(label) if vocab.usable[i]}
    sets = [set(row) for row in ids.tolist()]
    shared = [any(s & other for j, other in enumerate(sets) if j != i) for i, s in enumerate(sets)]
    return {
        "neighbour_cosine": float(top.values.mean()),
        "cluster_cosine": float((off_diagonal / (k * (k - 1))).mean()),
        "label_rate": sum(bool(s & label_ids) for s in sets) / len(sets),
        "shared_rate": sum(shared) / len(sets),
        "tokens": [[vocab.texts[i] for i in row] for row in ids.tolist()],
        "pieces": [[vocab.pieces[i] for i in row] for row in ids.tolist()],
        "ids": ids.tolist(),
        "labels": list(labels),
    }
