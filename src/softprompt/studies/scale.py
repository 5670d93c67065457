"""`scale`: prompt tuning vs model tuning vs prompt design across the sizes of one family (the paper's Figure 1).

Give the sizes as repeated `--model` (smallest first or not: they are ordered by parameter count).
Prompt design is a written prompt with no training, scored by rank classification: an
instruction naming the labels (zero-shot), then `FEW_SHOT` training examples with their answers
(few-shot, drawn per seed). Its text is embedded and placed where a soft prompt goes, with zero
training steps, which is the same sequence as the text written before the input (decoder-only:
after BOS). Model tuning trains every weight at lr 1e-3 with no prompt.
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
from .summary import Row, models_of
from .transfer import MODEL_TUNING, MODEL_TUNING_LR, PROMPT_TUNING
from .verdicts import FINDINGS, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, Verdict, exceeds, untestable

FEW_SHOT = 4  # examples in context for few-shot prompt design
DEMO_POOL = 1000  # demonstrations are drawn from the first N training examples
ZERO_SHOT, FEW_SHOT_NAME = "prompt design (zero-shot)", f"prompt design ({FEW_SHOT}-shot)"


def design_text(task: Task, train: list[Example], shots: int, seed: int) -> str:
    """The written prompt: an instruction naming the labels, then `shots` solved training examples."""
    instruction = f"Answer with one of: {', '.join(task.labels)}."
    demos = random.Random(seed).sample(train[:DEMO_POOL], min(shots, len(train))) if shots else []
    return " ".join([instruction, *(f"{e.input} answer: {e.target}" for e in demos)])


class ScaleStudy(Study):
    name = "scale"
    finding = FINDINGS["scale"]
    quick_budget = replace(QUICK_BUDGET, steps=300, eval_every=150)  # per size: 6 training runs and 6 prompt-design evaluations

    def check(self, ctx: Context) -> None:
        if not load_task(ctx.task).labels:
            raise SoftpromptError(f"study scale scores prompt design by rank classification over labels; task {ctx.task} has none")

    def points(self, ctx: Context) -> list[Point]:
        task = load_task(ctx.task)
        train = task.load("train", resolve_data_dir(ctx.config.data_dir))
        keys, points = model_keys(ctx.models), []
        for seed in range(ctx.budget.seeds):
            for model in ctx.models:
                key = f"{keys[model]}/%s/seed{seed}"
                points.append(Point(key % "prompt", PROMPT_TUNING, model, seed, ctx.train_config(key % "prompt", model, seed)))
                points.append(Point(key % "model", MODEL_TUNING, model, seed, ctx.train_config(
                    key % "model", model, seed, PromptConfig(length=0), tune="model", lr=MODEL_TUNING_LR)))
                for setting, shots, name in ((ZERO_SHOT, 0, "zero-shot"), (FEW_SHOT_NAME, FEW_SHOT, "few-shot")):
                    text = design_text(task, train, shots, seed)
                    length = len(ctx.backbone(model).word_ids(text))
                    prompt = PromptConfig(length=length, init="text", init_text=text)
                    points.append(Point(key % name, setting, model, seed, ctx.train_config(key % name, model, seed, prompt, max_steps=0)))
        return points

    def verdicts(self, records: list[dict[str, Any]]) -> list[tuple[str, Verdict]]:
        """One verdict for the family: the model-tuning gap shrinks from the smallest to the largest size."""
        rows = self.rows(records)
        family = " / ".join(models_of(rows))
        return [(family, self.family_verdict(rows))]

    def family_verdict(self, rows: list[Row]) -> Verdict:
        """Reproduced when (model tuning - prompt tuning) shrinks from smallest to largest by more than prompt tuning's
        spread, and prompt tuning beats the better prompt design at the largest size beyond the spread."""
        blocked = untestable(rows)
        if blocked:
            return blocked
        sizes = sorted(models_of(rows), key=lambda m: next(r.parameters for r in rows if r.model == m))
        if len(sizes) < 2:
            return Verdict(NOT_TESTABLE, "one size: a trend across sizes needs at least 2 --model")
        table = {(r.model, r.setting): r for r in rows}
        small, large = sizes[0], sizes[-1]
        gap = {m: table[m, MODEL_TUNING].mean - table[m, PROMPT_TUNING].mean for m in (small, large)}
        spread = max(table[small, PROMPT_TUNING].std, table[large, PROMPT_TUNING].std)
        design = max((table[large, ZERO_SHOT], table[large, FEW_SHOT_NAME]), key=lambda r: r.mean)
        tuned = table[large, PROMPT_TUNING]
        narrows = gap[small] - gap[large] > spread
        beats_design = exceeds(tuned.mean, tuned.std, design.mean, design.std)
        reason = (f"model-tuning gap {100 * gap[small]:.1f} points at the smallest, {100 * gap[large]:.1f} at the largest "
                  f"(spread {100 * spread:.1f}); prompt tuning {tuned.cell()} vs {design.setting} {design.cell()} at the largest")
        return Verdict(REPRODUCED if narrows and beats_design else NOT_REPRODUCED, reason)
