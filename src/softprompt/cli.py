"""The `softprompt` command line: argument parsing only; each subcommand calls one library function.

The arguments of train, eval and predict are generated from their config dataclasses
(configargs.py), so every flag's help and default is the library's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import EvalConfig, PredictConfig, TrainConfig
from .configargs import add_config_arguments, config_from_args, given, merged
from .errors import SoftpromptError
from .files import json_text
from .server.config import ServeConfig
from .tasks.custom import CustomTaskSpec

CUSTOM = "custom."  # where the custom-task flags land in the parsed arguments
CUSTOM_FLAGS = {"train_file": "--train-file", "input_template": "--input-template", "target_field": "--target-field"}


def custom_spec(args: argparse.Namespace, task: str | None) -> dict | None:
    """The custom task's spec (CustomTaskSpec.to_dict()) when the task is 'custom' and its flags are given."""
    fields = given(args, CUSTOM)
    if task != "custom":
        if fields:
            raise SoftpromptError(f"{', '.join('--' + k.replace('_', '-') for k in fields)} only apply with --task custom")
        return None
    missing = [flag for name, flag in CUSTOM_FLAGS.items() if name not in fields]
    if missing:
        raise SoftpromptError(f"--task custom needs {', '.join(missing)}")
    return CustomTaskSpec.from_dict(fields, "the custom-task flags").to_dict()


def read_config_file(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoftpromptError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SoftpromptError(f"{path}: not a JSON config ({err})") from None


def print_json(data, **options) -> None:
    """Print `data` as JSON, "è" as itself where stdout's encoding can write it (`json_text`)."""
    print(json_text(data, sys.stdout.encoding or "utf-8", **options))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """Library defaults, else a saved run.json (--config), with the typed flags laid over them."""
    base = read_config_file(args.config)
    task = getattr(args, "task", base.get("task", TrainConfig.task))
    spec = custom_spec(args, task)
    overrides = {k: v for k, v in given(args).items() if k in TrainConfig.__dataclass_fields__}
    if spec is not None:
        overrides["task_spec"] = spec
    elif "task" in overrides:
        overrides["task_spec"] = None
    return config_from_args(TrainConfig, argparse.Namespace(), merged(base, overrides), args.config or "arguments")


def on_every_rank(work: Callable[[], Any]) -> Any:
    """Run `work` on this rank (one of several under torchrun or srun); a failed peer ends it in one line."""
    from . import distributed

    try:
        return work()
    except RuntimeError as err:  # a collective that failed: a peer died, or timed out
        if not (distributed.active() and distributed.is_peer_failure(err)):
            raise
        raise SoftpromptError(distributed.peer_failure(err)) from None
    finally:
        distributed.leave()


def writes_output() -> bool:
    """Rank 0 alone prints (one process: always)."""
    from .distributed import world_from_env

    return world_from_env().writer


def cmd_train(args: argparse.Namespace) -> None:
    """Under torchrun or srun every rank runs this; rank 0 alone prints."""
    from .train import train

    result = on_every_rank(lambda: train(train_config(args), resume=args.resume, progress=not args.quiet))
    if writes_output():
        print(json.dumps({"output": str(result.output), "steps": result.steps, "best_step": result.best_step, "best": result.best_metrics}))


def cmd_eval(args: argparse.Namespace) -> None:
    from .inference import eval_prompts

    spec = custom_spec(args, getattr(args, "task", None))
    config = config_from_args(EvalConfig, args, {"task_spec": spec} if spec else None)
    for result in eval_prompts(config, progress=not args.quiet):
        print_json(result)


def cmd_predict(args: argparse.Namespace) -> None:
    from .inference import predict_inputs

    for row in predict_inputs(config_from_args(PredictConfig, args)):
        print_json(row)


def cmd_serve(args: argparse.Namespace) -> None:
    from .server import serve

    serve(config_from_args(ServeConfig, args))


def cmd_export(args: argparse.Namespace) -> None:
    from .interop import export_prompt

    print(export_prompt(args.prompt, args.output, args.format))


def cmd_import(args: argparse.Namespace) -> None:
    from .interop import import_prompt

    model = None
    if args.model:
        from .backbones import load_backbone

        model = load_backbone(args.model)
    labels = tuple(args.labels.split(",")) if args.labels else None
    print(import_prompt(args.input, args.output, args.format, model=model, task=args.task, labels=labels))


def cmd_inspect(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .prompt_io import load_prompt

    weight, metadata = load_prompt(args.prompt)
    stats = {"norm_mean": round(float(weight.norm(dim=1).mean()), 4)}
    print_json({**asdict(metadata), **stats}, indent=2)


def pretrain_configs(args: argparse.Namespace):
    """The two training stages' configs from the pretrain flags (shared by all pretrain commands).

    The flags given are laid over `BackboneConfig()`'s stages: PretrainConfig's fields for both,
    PretrainStages' per stage; with no flags the configs are the library's (no progress bar under --quiet).
    """
    from .pretrain import PretrainStages

    shared = given(args, "pretrain.")
    if args.quiet:
        shared["progress"] = False
    return PretrainStages.from_flags(given(args, "stages."), shared).configs(shared)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .distributed import world_from_env
    from .pretrain import (
        BackboneConfig,
        TokenizerConfig,
        build_backbone,
        build_corpus_cache,
        package_checkpoint,
        pretrain,
        read_cache_meta,
        write_lineage_card,
    )
    from .pretrain.corpus import task_inputs

    span, lm = pretrain_configs(args)
    command = "softprompt " + " ".join(sys.argv[1:])
    if world_from_env().distributed and args.stage not in ("span-corruption", "lm-adapt"):
        raise SoftpromptError(f"pretrain {args.stage} runs on one process; launch the span-corruption and lm-adapt stages "
                              "with torchrun")
    if args.stage == "backbone":
        if not args.corpus:
            raise SoftpromptError("pretrain backbone needs at least one --corpus")
        config = BackboneConfig(tokenizer=TokenizerConfig(vocab_size=args.vocab_size), span_corruption=span, lm_adapt=lm)
        result = build_backbone(args.output, args.corpus, config, task_inputs(args.task_inputs, args.data_dir), command)
    elif args.stage == "cache":
        if not args.tokenizer:
            raise SoftpromptError("pretrain cache needs --tokenizer (a tokenizer or checkpoint folder)")
        meta = build_corpus_cache(args.corpus, args.tokenizer, args.output, extra_texts=task_inputs(args.task_inputs, args.data_dir))
        result = {"cache": args.output, "tokens": meta["tokens"], "documents": meta["documents"]}
    elif args.stage == "package":
        if not args.init_from:
            raise SoftpromptError("pretrain package needs --init-from CHECKPOINT")
        result = {"packaged": str(package_checkpoint(args.init_from, args.output))}
    else:
        if not args.cache:
            raise SoftpromptError(f"pretrain {args.stage} needs --cache (a corpus cache folder)")
        if args.stage == "span-corruption":
            result = on_every_rank(lambda: pretrain(span, args.cache, args.output, tokenizer_dir=args.tokenizer,
                                                    init_from=args.init_from, command=command))
        elif not args.init_from:
            raise SoftpromptError("pretrain lm-adapt needs --init-from CHECKPOINT")
        else:
            result = on_every_rank(lambda: pretrain(lm, args.cache, args.output, init_from=args.init_from, command=command))
        if not writes_output():
            return
        if result["complete"]:
            write_lineage_card(args.output, read_cache_meta(args.cache))
    print_json(result, default=str)


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    """Folders by hand; settings generated from PretrainStages (per stage) and PretrainConfig (the rest, both stages)."""
    from .pretrain import PretrainConfig, PretrainStages, TokenizerConfig
    from .pretrain.stages import STAGE_FIELDS

    p.add_argument("stage", choices=("backbone", "cache", "span-corruption", "lm-adapt", "package"),
                   help="backbone: every stage (tokenizer, cache, span corruption, LM adaptation), skipping complete ones; "
                        "cache: tokenise a corpus with an existing --tokenizer (e.g. a task's inputs for further LM adaptation); "
                        "package: copy a checkpoint in float16 for shipping")
    p.add_argument("--output", required=True, help="output folder (backbone: holds one subfolder per stage)")
    p.add_argument("--corpus", action="append", default=[], help="text, WikiExtractor or JSONL file/folder; repeatable")
    p.add_argument("--task-inputs", action="append", default=[], help="add the unlabeled inputs of this task's train split; repeatable")
    p.add_argument("--data-dir", help="task data (default $SOFTPROMPT_DATA_DIR)")
    p.add_argument("--cache", help="span-corruption / lm-adapt: a corpus cache folder")
    p.add_argument("--tokenizer", help="span-corruption, cache: a tokenizer (or checkpoint) folder")
    p.add_argument("--init-from", help="lm-adapt (required), span-corruption (optional, e.g. further pretraining on a task's inputs): "
                        "the checkpoint to continue; package: the checkpoint to copy")
    p.add_argument("--vocab-size", type=int, default=TokenizerConfig().vocab_size,
                   help="backbone: tokenizer ids, sentinels included (default: %(default)s)")
    add_config_arguments(p, PretrainStages, dest_prefix="stages.")
    add_config_arguments(p, PretrainConfig, skip=STAGE_FIELDS, dest_prefix="pretrain.")


def cmd_study(args: argparse.Namespace) -> None:
    from .studies import StudyConfig, run_study

    outcome = run_study(config_from_args(StudyConfig, args, {"name": args.name}), progress=not args.quiet)
    print_json({"study": str(outcome.folder), "ran": outcome.ran, "skipped": outcome.skipped,
                "table": outcome.table and str(outcome.table), "plot": outcome.plot and str(outcome.plot)})


def cmd_report(args: argparse.Namespace) -> None:
    from .studies import write_report

    print(write_report(args.root))


def add_study_commands(command: Callable[[str, Callable, str], argparse.ArgumentParser]) -> None:
    """`study NAME` (flags generated from StudyConfig) and `report ROOT`."""
    from .studies import STUDIES, StudyConfig

    s = command("study", cmd_study, "Run one of the paper's studies: ROOT/NAME/results.jsonl, table.md, plot.png.")
    s.add_argument("name", metavar="NAME", help=f"the study: {', '.join(STUDIES)}")
    add_config_arguments(s, StudyConfig, required=("output",))
    r = command("report", cmd_report, "Write ROOT/REPORT.md from every study under ROOT, with computed verdicts.")
    r.add_argument("root", metavar="ROOT", help="the --output of `softprompt study`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprompt", description="Prompt tuning of frozen Hugging Face models (Lester et al., 2021).")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    t = command("train", cmd_train, "Prompt-tune a frozen backbone on a task; the best prompt by dev metric is kept.")
    add_config_arguments(t, TrainConfig)
    add_config_arguments(t, CustomTaskSpec, skip=("name",), dest_prefix=CUSTOM)
    t.add_argument("--config", help="a saved RUN/run.json: rerun that run exactly; flags given here override its fields")
    t.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")

    e = command("eval", cmd_eval, "Score saved prompts on a task split by rank classification and/or generation.")
    add_config_arguments(e, EvalConfig, required=("prompt",))
    add_config_arguments(e, CustomTaskSpec, skip=("name",), dest_prefix=CUSTOM)

    pr = command("predict", cmd_predict, "Run prompts on inputs; each input may name its prompt, so tasks mix in one batch.")
    add_config_arguments(pr, PredictConfig, required=("prompt",))

    sv = command("serve", cmd_serve, "Serve every prompt of a directory over HTTP on one frozen backbone, requests mixed in each batch.")
    add_config_arguments(sv, ServeConfig, required=("prompts",))

    x = command("export", cmd_export, "Write a prompt in another library's format.")
    x.add_argument("--prompt", required=True, help="prompt directory")
    x.add_argument("--format", choices=("peft", "npy"), required=True)
    x.add_argument("--output", required=True, help="adapter directory (peft) or .npy file")

    i = command("import", cmd_import, "Turn a PEFT adapter or reference .npy into a softprompt prompt directory.")
    i.add_argument("--input", required=True, help="adapter directory (peft) or .npy file")
    i.add_argument("--format", choices=("peft", "npy"), required=True)
    i.add_argument("--output", required=True, help="prompt directory to write")
    i.add_argument("--model", help="backbone the prompt belongs to (records its fingerprint, checks the width)")
    i.add_argument("--task", help="task name to record")
    i.add_argument("--labels", help="comma-separated labels to record")

    n = command("inspect", cmd_inspect, "Print a prompt file's metadata.")
    n.add_argument("--prompt", required=True, help="prompt directory")

    add_pretrain_args(command("pretrain", cmd_pretrain, "Build T5-style backbones: tokenizer, span corruption, LM adaptation."))
    add_study_commands(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SoftpromptError as err:
        print(f"softprompt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("softprompt: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
