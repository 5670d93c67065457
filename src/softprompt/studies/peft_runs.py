"""PEFT's methods (prefix tuning, P-tuning, LoRA, IA³) trained under a study's budget, for the `methods` study.

PEFT is imported here and nowhere in the core. LoRA and IA³ inject modules into the Hugging Face
model, so the injected model stays behind softprompt's own adapter wearing an empty (p = 0) prompt:
the loss, the batches and rank classification are softprompt's (`PromptedModel`, `softprompt.data`,
`softprompt.evaluate`). Prefix tuning and P-tuning change the forward pass itself (keys and values
per layer, a prompt encoder), so they run through PeftModel: `peft_nll` takes each example's target
NLL from its logits and `peft_rank_scores` ranks candidates by their summed log-probability, on batches
the backbone adapter lays out for its kind (`forward_batch`, `forward_nll`). Both pad on the right, so
the virtual tokens sit directly before the real ones without position ids (which PEFT drops for
P-tuning); a decoder-only tokenizer's BOS follows the virtual tokens.

Every PEFT method trains with AdamW at a constant rate, as PEFT's examples do. A PEFT point trains on
the one trainer (`softprompt.trainer`), as prompt and model tuning do: the same step, loss over the
batch's target tokens, checkpoint every evaluation and exact resume. With `--nproc-per-point N` a
point is a `torchrun` job of N ranks (`peft_processes`, which starts this module's `main`): the
method's few weights are summed over ranks once per step as the prompt bank's are, the selection
and dev scores are sharded and gathered, and rank 0 alone writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, PromptEncoderConfig, TaskType, get_peft_model
from peft.utils.constants import (
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
)

from ..backbones import Backbone, BackboneSpec, load_backbone
from ..config import PromptConfig, TrainConfig
from ..data import BatchStream, Features, collate, encode_all
from ..device import to_device
from ..distributed import SINGLE, World, gather, join, shard, unshard
from ..errors import SoftpromptError
from ..evaluate import best_candidate, evaluate
from ..model import PromptedModel, prompt_metadata
from ..run import RESULT_FILE, RunDir, Stopper, seed_everything
from ..tasks import Example, Task, hold_out, load_task, require_examples, resolve_data_dir
from ..trainer import Trainer, seed_rank

ADAPTER_DIR, CHECKPOINT_FILE = "adapter", "checkpoint.pt"


@dataclass(frozen=True)
class Method:
    """One PEFT method as the study trains it: its table label, run-directory name and AdamW rate."""

    name: str
    key: str
    lr: float
    prompt_learning: bool  # runs through PeftModel's own forward (virtual tokens), not softprompt's adapter

    def peft_config(self, backbone: Backbone, virtual_tokens: int):
        task_type = TaskType(backbone.peft_task_type)
        if self.key == "prefix":
            return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=virtual_tokens)
        if self.key == "ptuning":
            return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=virtual_tokens)
        if self.key == "lora":
            return LoraConfig(task_type=task_type, r=8, lora_alpha=16, lora_dropout=0.1)
        return IA3Config(task_type=task_type)


# Rates in the range PEFT's examples use for each method (AdamW, no schedule here: constant like the paper's).
PEFT_METHODS = (Method("prefix tuning", "prefix", 1e-2, True), Method("P-tuning", "ptuning", 1e-3, True),
                Method("LoRA", "lora", 1e-3, False), Method("IA³", "ia3", 3e-3, False))


def check_backbone(backbone: Backbone, methods: Sequence[Method], virtual_tokens: int) -> None:
    """Refuse a backbone PEFT has no default LoRA / IA³ modules for, or too short for the virtual tokens."""
    model_type = backbone.model.config.model_type
    for name, mapping in (("LoRA", TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING),
                          ("IA³", TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING)):
        if any(m.name == name for m in methods) and model_type not in mapping:
            raise SoftpromptError(f"study methods: PEFT has no default {name} target modules for model type {model_type!r} "
                                  f"({backbone.name}); use a T5, GPT-2, Llama or another architecture PEFT knows")
    backbone.input_budget(virtual_tokens, 512, 16)


@dataclass(frozen=True)
class PeftRun:
    """What one PEFT point trains: the method, backbone, task, budget and seed."""

    method: Method
    model: str
    task: str
    output: Path
    steps: int
    batch_size: int
    eval_every: int
    seed: int
    virtual_tokens: int
    device: str = "auto"
    data_dir: str | None = None
    max_input_length: int = 512
    max_target_length: int = 16
    eval_batch_size: int = 64
    select_examples: int | None = None  # choose the step on this many held-out training examples, as prompt tuning does

    def describe(self) -> dict[str, Any]:
        """The record's account of the run (the `config` of a softprompt point)."""
        return {"method": self.method.name, "optimizer": "AdamW", "lr": self.method.lr, "steps": self.steps,
                "batch_size": self.batch_size, "eval_every": self.eval_every, "seed": self.seed, "output": str(self.output),
                "virtual_tokens": self.virtual_tokens if self.method.prompt_learning else None,
                **({"select_examples": self.select_examples} if self.select_examples else {})}


def tuned_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stored_parameters(peft_model: PeftModel) -> int:
    """What inference keeps: PEFT's saved adapter, where P-tuning's prompt encoder is folded into its virtual tokens."""
    config = peft_model.active_peft_config
    if config.peft_type.value == "P_TUNING":
        return config.num_virtual_tokens * config.num_transformer_submodules * config.token_dim
    return tuned_parameters(peft_model)


# ---- PeftModel's own forward (batches laid out by the adapter): per-example NLL, rank scores ----------------------
def peft_nll(peft_model: PeftModel, backbone: Backbone, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example target NLL sums and token counts, (b,) each, of a `backbone.forward_batch` through PeftModel's forward."""
    config = peft_model.active_peft_config
    shift = config.num_virtual_tokens if config.peft_type.value != "PREFIX_TUNING" else 0  # P-tuning's tokens come first
    return backbone.forward_nll(peft_model, batch, shift)


@torch.no_grad()
def peft_rank_scores(peft_model: PeftModel, backbone: Backbone, inputs: Sequence[list[int]],
                     candidates: Sequence[Sequence[list[int]]], batch_size: int) -> list[list[float]]:
    """Each example's candidate log-likelihoods (sum over target tokens); pairs run in length order, so little is padded."""
    pairs = sorted(((i, j, c) for i, options in enumerate(candidates) for j, c in enumerate(options)),
                   key=lambda pair: len(inputs[pair[0]]) + len(pair[2]))
    scores = [[0.0] * len(options) for options in candidates]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = to_device(backbone.forward_batch([inputs[i] for i, _, _ in chunk], [c for _, _, c in chunk]), backbone.device)
        nll, _ = peft_nll(peft_model, backbone, batch)
        for (i, j, _), value in zip(chunk, (-nll).tolist()):
            scores[i][j] = value
    return scores


def peft_evaluate(peft_model: PeftModel, backbone: Backbone, task: Task, features: list[Features], examples: list[Example],
                  max_target_length: int, batch_size: int, world: World = SINGLE) -> dict[str, float]:
    """Rank classification over each example's candidates, scored by the task's metric.

    On several ranks each scores its share and the choices are gathered back in order, so every rank
    computes the same metrics (and keeps the same best step).
    """
    mine = shard(list(range(len(examples))), world)
    options = [[backbone.target_ids(c, max_target_length) for c in examples[i].candidates] for i in mine]
    scores = peft_rank_scores(peft_model, backbone, [features[i].input_ids for i in mine], options, batch_size)
    chosen = [best_candidate(examples[i].candidates, row) for i, row in zip(mine, scores)]
    if world.distributed:
        chosen = unshard(gather(chosen))
    return task.metric(chosen, examples)


def _plain(value: Any) -> Any:
    """JSON for what PEFT's config dicts hold besides plain values (sets of module names, enums)."""
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


# ---- training --------------------------------------------------------------------------------
def build(run: PeftRun, task: Task) -> tuple[Backbone, PeftModel, PromptedModel]:
    """The backbone with the method applied, and softprompt's model over it with an empty prompt for `task`."""
    backbone = load_backbone(BackboneSpec(run.model, "fp32", run.device))
    virtual = run.virtual_tokens if run.method.prompt_learning else 0
    max_input = backbone.input_budget(virtual, run.max_input_length, run.max_target_length)
    peft_model = get_peft_model(backbone.model, run.method.peft_config(backbone, run.virtual_tokens))
    prompted = PromptedModel(backbone)  # LoRA / IA³ modules live inside backbone.model; p = 0
    config = TrainConfig(task=task.name, model=run.model, output=str(run.output), prompt=PromptConfig(length=1),
                         max_input_length=max_input, max_target_length=run.max_target_length)
    prompted.add_prompt(task.name, torch.zeros(0, backbone.width), replace(prompt_metadata(config, task, backbone, "none"), length=0))
    return backbone, peft_model, prompted


class PeftLoop:
    """The trainer's `Objective` for one PEFT point: PeftModel's loss, its scores, the adapter kept at the best step.

    The step is chosen on `select` (held-out training examples; else the dev set, as the paper chose), and its
    weights are kept in memory (and in the checkpoint: a PEFT method's weights are small) to score dev at the end.
    """

    def __init__(self, run: PeftRun, task: Task, backbone: Backbone, peft_model: PeftModel, prompted: PromptedModel,
                 select: list[Example], world: World = SINGLE):
        self.run, self.task, self.backbone, self.peft_model, self.prompted = run, task, backbone, peft_model, prompted
        self.select, self.world = select, world
        self.features: dict[int, list[Features]] = {}  # each scored split tokenised once, not at every evaluation
        self.state: dict[str, Any] = {"best": {}, "best_step": -1, "evaluated_at": -1, "seconds": 0.0, "best_weights": None}
        self.started = time.perf_counter()

    def nll(self, items: list[Features]) -> torch.Tensor:
        backbone = self.backbone
        if not self.run.method.prompt_learning:
            return self.prompted(to_device(collate(backbone, items), backbone.device), reduction="sum")
        batch = backbone.forward_batch([f.input_ids for f in items], [f.target_ids for f in items])
        nll, _ = peft_nll(self.peft_model, backbone, to_device(batch, backbone.device))
        return nll.sum()

    def tokens(self, items: list[Features]) -> int:
        return sum(len(f.target_ids) for f in items)

    def after_step(self, step: int) -> None:
        pass

    def trainable(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.peft_model.named_parameters() if v.requires_grad}

    def scores(self, examples: list[Example]) -> dict[str, float]:
        """The task's metrics on `examples` for the weights as they are now (rank classification)."""
        run, peft_model, task = self.run, self.peft_model, self.task
        peft_model.eval()
        if run.method.prompt_learning:
            if id(examples) not in self.features:
                record = self.prompted.bank[task.name]
                self.features[id(examples)] = encode_all(self.backbone, task.name, record, examples, task.name, with_target=False)
            features = self.features[id(examples)]
            metrics = peft_evaluate(peft_model, self.backbone, task, features, examples, run.max_target_length,
                                    run.eval_batch_size, self.world)
        else:
            metrics = evaluate(self.prompted, task, examples, task.name, "rank", run.eval_batch_size, world=self.world)
        peft_model.train()
        return metrics

    def evaluate(self, step: int) -> None:
        metrics = self.scores(self.select)
        self.state["evaluated_at"] = step
        best = self.state["best"]
        if not best or next(iter(metrics.values())) > next(iter(best.values())):
            self.state.update(best=metrics, best_step=step, best_weights=self.trainable())
            if self.world.writer:
                self.peft_model.save_pretrained(self.run.output / ADAPTER_DIR)

    def dev_at_best_and_last(self, dev: list[Example]) -> tuple[dict[str, float], dict[str, float]]:
        """Dev metrics at the chosen step and at the last one (the trained weights are put back after)."""
        last, current = self.scores(dev), self.trainable()
        self.peft_model.load_state_dict(self.state["best_weights"], strict=False)
        best = self.scores(dev)
        self.peft_model.load_state_dict(current, strict=False)
        return best, last

    def seconds(self) -> float:
        """Training seconds over every call that trained this point (a resumed point adds to its first call's)."""
        return self.state["seconds"] + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"trainable": self.trainable(), **self.state, "seconds": self.seconds()}

    def load_state(self, saved: dict[str, Any]) -> None:
        self.peft_model.load_state_dict(saved["trainable"], strict=False)
        self.state.update({k: saved[k] for k in self.state if k in saved})
        self.started = time.perf_counter()


def finished_peft(run: PeftRun) -> dict[str, Any] | None:
    """The result a finished PEFT point wrote, else None."""
    path = run.output / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def train_peft(run: PeftRun, dev_examples: list[Example], world: World = SINGLE) -> dict[str, Any]:
    """Train one PEFT point on the one trainer (resuming it from its checkpoint), or read its finished result.

    `world`: the ranks of a `torchrun` job this process is one of (`peft_processes`); `run.device` is this rank's.
    """
    finished = finished_peft(run)
    if finished is not None:
        return finished
    folder = RunDir(run.output, {**run.describe(), "model": run.model, "task": run.task}, {"output", "steps"}, resume=True,
                    markers=(CHECKPOINT_FILE,), checkpoint_name=CHECKPOINT_FILE, writer=world.writer)
    folder.check()
    task = load_task(run.task)
    data_dir = resolve_data_dir(run.data_dir)
    train_examples = require_examples(task, "train", data_dir, task.load("train", data_dir))
    select = dev_examples
    if run.select_examples:
        train_examples, select = hold_out(train_examples, run.select_examples, task.describe("train", data_dir))
    seed_everything(run.seed)
    backbone, peft_model, prompted = build(run, task)  # the method's initial weights: the same on every rank
    seed_rank(run.seed, world.rank)  # then each rank its own dropout
    record = prompted.bank[task.name]
    features = encode_all(backbone, task.name, record, train_examples, f"{task.name} train")
    stream = BatchStream(features, run.batch_size, run.seed, group_by_length=True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    trainer = Trainer(folder, world, stream, torch.optim.AdamW(params, lr=run.method.lr), params, device=backbone.device)
    loop = PeftLoop(run, task, backbone, peft_model, prompted, select, world)
    peft_model.train()
    trainer.start(loop)
    stopper = Stopper(run.steps, None, trainer.step_count, run.method.key, progress=False)  # agreed by the ranks in `fit`
    trainer.fit(loop, stopper, log_every=min(10, run.eval_every), eval_every=run.eval_every, checkpoint_every=run.eval_every)
    stopper.close()
    if loop.state["evaluated_at"] != trainer.step_count:  # the last step (or, with zero steps, the untrained method)
        loop.evaluate(trainer.step_count)
    best = loop.state["best"]
    metric = next(iter(best))
    if run.select_examples:  # the step was chosen on held-out training examples: dev scored at it, and at the last step
        dev_best, dev_last = loop.dev_at_best_and_last(dev_examples)
        scores = {"score": dev_best[metric], "score_last": dev_last[metric], "select_score": best[metric],
                  "metrics": dev_best, "dev_best": dev_best, "dev_last": dev_last}
    else:
        scores = {"score": best[metric], "metrics": best}
    result = {"metric": metric, **scores, "steps": run.steps, "best_step": loop.state["best_step"],
              "seconds": round(loop.seconds(), 1),
              "parameters": sum(p.numel() for p in backbone.model.parameters() if not p.requires_grad),
              "tuned_parameters": tuned_parameters(peft_model), "stored_parameters": stored_parameters(peft_model),
              "peft": run.describe(), "peft_config": json.loads(json.dumps(peft_model.active_peft_config.to_dict(), default=_plain))}
    folder.write_result(result)
    return result


# ---- one point as several processes ----------------------------------------------------------
def peft_processes(run: PeftRun, eval_examples: int | None, nproc: int) -> dict[str, Any]:
    """Train (or resume) `run` as one `torchrun` job of `nproc` ranks; its result, scored on dev's first `eval_examples`.

    The run travels as a JSON file to `python -m softprompt.studies.peft_runs` (`main`) on each rank.
    Raises SoftpromptError with the job's first error line when it fails.
    """
    from .runs import torchrun

    finished = finished_peft(run)
    if finished is not None:
        return finished
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "peft_run.json"
        fields = {**{k: getattr(run, k) for k in run.__dataclass_fields__}, "method": run.method.key, "output": str(run.output)}
        spec.write_text(json.dumps({"run": fields, "eval_examples": eval_examples}), encoding="utf-8")
        torchrun(["-m", "softprompt.studies.peft_runs", str(spec)], run.output, nproc)
    finished = finished_peft(run)
    if finished is None:
        raise SoftpromptError(f"{run.output}: the {nproc}-process PEFT run ended without a result")
    return finished


def run_on_rank(spec_path: str) -> None:
    """One rank of `peft_processes`' job: join the world, load dev as the study does, train."""
    from ..cli import on_every_rank

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    fields = spec["run"]
    method = next(m for m in PEFT_METHODS if m.key == fields["method"])
    run = PeftRun(**{**fields, "method": method, "output": Path(fields["output"])})
    task, data_dir = load_task(run.task), resolve_data_dir(run.data_dir)
    dev = require_examples(task, "validation", data_dir, task.load("validation", data_dir)[: spec["eval_examples"]])

    def work() -> dict[str, Any]:
        world, device = join(run.device)
        return train_peft(replace(run, device=device), dev, world)

    on_every_rank(work)


def main(argv: list[str] | None = None) -> int:
    """`python -m softprompt.studies.peft_runs SPEC.json`: a failure is one line on stderr and exit 2, as the CLI's."""
    args = sys.argv[1:] if argv is None else argv
    try:
        run_on_rank(args[0])
    except SoftpromptError as err:
        print(f"softprompt: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
