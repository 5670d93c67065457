"""What a study is asked to do (`StudyConfig`, the `softprompt study` flags) and the budget it runs under.

The budget is the paper's (30,000 steps, batch 32, full dev sets, 3 seeds) unless `--quick` asks
for the CPU one, and `--max-steps`, `--eval-examples` and `--seeds` override either, so the same
study runs for a GPU, a laptop, or a test on a tiny model. The resolved budget is saved with the
study (`study.json`) and stated under every table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..config import at_least, check_fields, normalised, setting
from ..errors import SoftpromptError


@dataclass
class StudyConfig:
    """One `softprompt study NAME` call; None means "the study's default"."""

    name: str = setting("length", "the study to run", cli=False)
    output: str = setting("studies", "the root folder: the study writes ROOT/NAME/", path=True)
    model: tuple[str, ...] = setting((), "backbone; repeat for several (a family's sizes)", repeat=True)
    task: str | None = setting(None, "task to train on (default: the study's, e.g. sst2; transfer: rte)")
    data_dir: str | None = setting(None, "GLUE/SuperGLUE file layout; default $SOFTPROMPT_DATA_DIR, else the hub", path=True)
    seeds: int | None = setting(None, "seeds per point (default 3; ensemble: 5 prompts)")
    seeds_for: tuple[str, ...] = setting((), "SETTING:N, fewer seeds for one setting (e.g. p=5:2, for lengths that only shape "
                                         "a curve); repeatable; its contrasts pair the seeds both settings have", repeat=True)
    max_steps: int | None = setting(None, "optimizer steps per run (default: paper 30,000; --quick: the study's CPU budget)")
    eval_examples: int | None = setting(None, "dev examples scored (default: the full dev set; --quick: 200)")
    eval_every: int | None = setting(None, "steps between evaluations on the selection split: each run's learning curve "
                                     "(default: paper 1,000; --quick: the study's)")
    select_examples: int | None = setting(None, "choose each run's step on N examples held out of the training split, then "
                                          "score the full dev set at it (default 500, at most a fifth of the training split; 0: choose on the "
                                          "dev set, as the paper)")
    quick: bool = setting(False, "the CPU budget: one study on the packaged T5 in at most 30 minutes on 2 cores")
    workers: int = setting(1, "run this many points at once, each in its own process with one torch thread")
    shard: str | None = setting(None, "K/N: run only share K (1..N) of the training points, for N machines or array jobs on "
                                "one shared output folder; a last call without --shard runs what is left and writes the tables")
    steal: bool = setting(False, "with --shard: once its own share is done, train the other shards' unfinished points that "
                          "no process is training (a lock per point), so a shard that finishes early does not sit idle")
    nproc_per_point: int = setting(1, "train each point on this many processes (torchrun --standalone, one per GPU), "
                                   "each point then a data-parallel run")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...")
    prompt: tuple[str, ...] = setting((), "neighbors: also analyse this saved prompt directory; repeatable", repeat=True)
    target_task: str | None = setting(None, "transfer: the task(s) scored zero-shot, comma-separated (default: cb,axb for rte; qqp for mrpc; the MRQA sets present for squad, squad-dev-split)")
    label_map: str | None = setting(None, "transfer: TARGET_LABEL=SOURCE_LABEL,... (default: the built-in map)")
    lm_steps: str | None = setting(None, "objective: a `softprompt pretrain lm-adapt --snapshot-every N` run folder; prompt-tune "
                                   "its starting checkpoint, each snapshot and its final model (Figure 3d)", path=True)

    def __post_init__(self) -> None:
        self.model, self.prompt, self.seeds_for = tuple(self.model), tuple(self.prompt), tuple(self.seeds_for)
        check_fields(self)
        at_least(self, 1, "seeds", "eval_examples", "workers", "eval_every", "nproc_per_point")
        at_least(self, 0, "max_steps", "select_examples")
        if self.shard is not None:
            shard_of(self.shard)
        seeds_for(self)
        if self.steal and self.shard is None:
            raise SoftpromptError("--steal without --shard: a call without --shard already runs every point left")
        if self.shard is not None and self.workers > 1:
            raise SoftpromptError("--shard and --workers together: give a machine one shard, and --workers to the last call only")


def shard_of(text: str) -> tuple[int, int]:
    """(K, N) from "K/N", 1 <= K <= N; raises SoftpromptError naming the setting."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise SoftpromptError(f"shard={text!r} (--shard) must be K/N with 1 <= K <= N, e.g. 2/8")
    return int(k), int(n)


def seeds_for(config: StudyConfig) -> dict[str, int]:
    """{setting: seeds} from the `--seeds-for SETTING:N` flags; raises SoftpromptError naming the bad one."""
    out: dict[str, int] = {}
    for text in config.seeds_for:
        setting_name, _, n = text.rpartition(":")
        if not setting_name or not n.isdigit() or int(n) < 1:
            raise SoftpromptError(f"seeds_for={text!r} (--seeds-for) must be SETTING:N with N >= 1, e.g. p=5:2")
        if setting_name in out:
            raise SoftpromptError(f"seeds_for: setting {setting_name!r} is given twice (--seeds-for)")
        out[setting_name] = int(n)
    return out


@dataclass(frozen=True)
class Budget:
    """How much each run of a study gets; stated under its table."""

    steps: int
    batch_size: int
    eval_every: int
    eval_examples: int | None  # None: the full dev set
    seeds: int
    quick: bool
    select_examples: int | None = None  # None: each run's step is chosen on the dev set it is scored on


    def describe(self) -> str:
        dev = "full dev set" if self.eval_examples is None else f"first {self.eval_examples} dev examples"
        paper = self.steps >= PAPER_STEPS and self.batch_size >= 32
        mode = "--quick (CPU)" if self.quick else "the paper's" if paper else "a reduced"
        chosen = (f"step chosen on {self.select_examples} held-out training examples, {dev} scored at it" if self.select_examples
                  else f"step chosen on the {dev} it is scored on")
        fraction = f" ({100 * self.steps / PAPER_STEPS:.1f}% of the paper's {PAPER_STEPS:,})" if self.steps < PAPER_STEPS else ""
        return f"{self.steps} steps{fraction} at batch {self.batch_size}, {chosen}, {self.seeds} seed(s), {mode} budget"


# The paper's recipe (§3, Appendix A): 30,000 steps of batch 32, dev metric every 1,000 steps, full dev sets.
PAPER_STEPS = 30_000
PAPER_BUDGET = Budget(steps=PAPER_STEPS, batch_size=32, eval_every=1000, eval_examples=None, seeds=3, quick=False, select_examples=500)
# Measured on the packaged T5 nano, SST-2, batch 16, 2 shared CPU cores (2026-12, `length --quick --seeds 1
# --max-steps 100`): 100 steps with one 200-example evaluation took 7 / 8 / 11 / 29 / 43 s at p = 1 / 5 / 20 /
# 100 / 150, 98 s for all five; so 400 steps x 5 lengths x 3 seeds is about 20 minutes. Each study scales its
# steps to its number of runs (ensemble.py, neighbors.py, ...); those totals are estimates from these rates.
QUICK_BUDGET = Budget(steps=400, batch_size=16, eval_every=200, eval_examples=200, seeds=3, quick=True, select_examples=500)


def resolve_budget(config: StudyConfig, paper: Budget = PAPER_BUDGET, quick: Budget = QUICK_BUDGET) -> Budget:
    """The study's budget (`quick` or `paper`) with the flags given laid over it."""
    base = quick if config.quick else paper
    overrides: dict[str, Any] = {}
    if config.max_steps is not None:
        overrides["steps"] = config.max_steps
        overrides["eval_every"] = max(1, min(base.eval_every, config.max_steps))
    if config.eval_every is not None:
        overrides["eval_every"] = config.eval_every
    if config.eval_examples is not None:
        overrides["eval_examples"] = config.eval_examples
    if config.seeds is not None:
        overrides["seeds"] = config.seeds
    if config.select_examples is not None:
        overrides["select_examples"] = config.select_examples or None
    return replace(base, **overrides)


def saved_form(config: StudyConfig, budget: Budget, defaults: dict[str, Any]) -> dict[str, Any]:
    """What `study.json` holds: the config with the study's defaults filled in, and the budget.

    `device`, `output`, `workers`, `shard`, `steal` and `nproc_per_point` are left out: moving a study to a GPU,
    another folder or more processes is the same study.
    """
    data = normalised(config)
    for key in ("device", "output", "workers", "shard", "steal", "nproc_per_point"):
        data.pop(key)
    data.update({k: v for k, v in defaults.items() if data.get(k) in (None, [], ())})
    data["budget"] = asdict(budget)
    data["given"] = {"data_dir": config.data_dir}  # as typed: a report's commands must run on another machine too
    return data
