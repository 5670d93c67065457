"""`scale`: prompt tuning vs model tuning vs prompt design across the sizes of one family (the paper's Figure 1).

Give the sizes as repeated `--model` (smallest first or not: they are ordered by parameter count).
Prompt design is a written prompt with no training, scored by rank classification: an
instruction naming the labels (zero-shot), then `FEW_SHOT` training examples with their answers
(few-shot, drawn per seed). Its text is embedded and placed where a soft prompt goes, with zero
training steps, which is the same sequence as the text written before the input (decoder-only:
after BOS). Model tuning trains every weight with no prompt, by T5's fine-tuning recipe
(`Context.model_tuning_config`: lr 1e-3, Adafactor with parameter scaling).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from ..config import PromptConfig
from ..errors import SoftpromptError
from ..tasks import Example, Task, load_task, resolve_data_dir
from .base import Context, Point, Study, model_keys
from .config import QUICK_BUDGET
from .stats import Arm
from .transfer import MODEL_TUNING, PROMPT_TUNING
from .verdicts import Claim, Verdict, judged, not_testable

FEW_SHOT = 4  # examples in context for few-shot prompt design
DEMO_POOL = 1000  # demonstrations are drawn from the first N training examples
ZERO_SHOT, FEW_SHOT_NAME = "prompt design (zero-shot)", f"prompt design ({FEW_SHOT}-shot)"
CLAIMS = [Claim("below XXL, model tuning > prompt tuning (Figure 1's gap at this size)", MODEL_TUNING, PROMPT_TUNING),
          Claim("prompt tuning > prompt design (zero-shot)", PROMPT_TUNING, ZERO_SHOT),
          Claim(f"prompt tuning > prompt design ({FEW_SHOT}-shot)", PROMPT_TUNING, FEW_SHOT_NAME)]
TREND = "prompt tuning approaches model tuning as the model grows (the gap narrows from the smallest size to the largest)"


def design_text(task: Task, train: list[Example], shots: int, seed: int) -> str:
    """The written prompt: an instruction naming the labels, then `shots` solved training examples."""
    instruction = f"Answer with one of: {', '.join(task.labels)}."
    demos = random.Random(seed).sample(train[:DEMO_POOL], min(shots, len(train))) if shots else []
    return " ".join([instruction, *(f"{e.input} answer: {e.target}" for e in demos)])


class ScaleStudy(Study):
    name = "scale"
    quick_budget = replace(QUICK_BUDGET, steps=300, eval_every=150)  # per size: 6 training runs and 6 prompt-design evaluations

    def check(self, ctx: Context) -> None:
        if not load_task(ctx.task).labels:
            raise SoftpromptError(f"study scale scores prompt design by rank classification over labels; task {ctx.task} has none")
        families = {model: family(ctx.backbone(model)) for model in ctx.models}
        if len(set(families.values())) > 1:
            listed = ", ".join(f"{m} ({f})" for m, f in families.items())
            raise SoftpromptError(f"study scale compares sizes of one family; these backbones are of different families: {listed}")

    def points(self, ctx: Context) -> list[Point]:
        task = load_task(ctx.task)
        train = task.load("train", resolve_data_dir(ctx.config.data_dir))
        keys, points = model_keys(ctx.models), []
        for seed in range(ctx.budget.seeds):
            for model in ctx.models:
                key = f"{keys[model]}/%s/seed{seed}"
                points.append(Point(key % "prompt", PROMPT_TUNING, model, seed, ctx.train_config(key % "prompt", model, seed)))
                points.append(Point(key % "model", MODEL_TUNING, model, seed, ctx.model_tuning_config(key % "model", model, seed)))
                for setting, shots, name in ((ZERO_SHOT, 0, "zero-shot"), (FEW_SHOT_NAME, FEW_SHOT, "few-shot")):
                    text = design_text(task, train, shots, seed)
                    length = len(ctx.backbone(model).word_ids(text))
                    prompt = PromptConfig(length=length, init="text", init_text=text)
                    points.append(Point(key % name, setting, model, seed, ctx.train_config(key % name, model, seed, prompt, max_steps=0)))
        return points

    def judge(self, records: list[dict[str, Any]], model: str) -> list[Verdict]:
        return judged(records, model, CLAIMS)

    def verdicts(self, records: list[dict[str, Any]]) -> list[tuple[str, Verdict]]:
        """The contrasts at each size, then the trend across sizes (smallest to largest by parameter count)."""
        out = super().verdicts(records)
        sizes = sorted(dict.fromkeys(r["model"] for r in records), key=lambda m: next(r["parameters"] for r in records if r["model"] == m))
        if len(sizes) < 2:
            return out + [("one size", not_testable(TREND, "backbone: one size; a trend needs at least 2 --model of one family"))]
        gaps = {m: gap_arm(records, m) for m in (sizes[0], sizes[-1])}
        arms = {"smallest": gaps[sizes[0]], "largest": gaps[sizes[-1]]}
        trend = judged(records, sizes[0], [Claim(TREND, "smallest", "largest")], arms=arms, gate={})
        return out + [(" / ".join(sizes), trend[0])]


def gap_arm(records: list[dict[str, Any]], model: str) -> Arm:
    """Per seed at one size: model tuning's score minus prompt tuning's (the gap Figure 1 shows closing)."""
    score = {(r["setting"], r["seed"]): float(r["score"]) for r in records if r["model"] == model}
    seeds = sorted(s for setting, s in score if setting == PROMPT_TUNING and (MODEL_TUNING, s) in score)
    return Arm(model, tuple(seeds), tuple(score[MODEL_TUNING, s] - score[PROMPT_TUNING, s] for s in seeds))


def family(backbone: Any) -> str:
    """A backbone's family: its kind and Hugging Face model type (T5 sizes share one; a Llama is another)."""
    return f"{backbone.kind}/{getattr(backbone.model.config, 'model_type', '?')}"
