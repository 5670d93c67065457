"""Training on several processes (torchrun, gloo, one thread each) takes the single-process steps.

RTE's labels differ in token length ("entailment" / "not_entailment"), so a loss averaged per
rank would drift from the single-process one; the trainer divides by the global token count.
The tiny backbones have no dropout, so any split of a batch computes the same step up to rounding.

The tests that launch processes are marked `multiprocess`: the default run leaves them out to stay
under its time budget, and CI runs them as its second step (`python -m pytest -q -m "multiprocess or slow"`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softprompt.distributed import World, shard, unshard

multiprocess = pytest.mark.multiprocess
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SOFTPROMPT_DIST_TIMEOUT_S": "120"}


def launch(nproc: int, args: list[str], log: Path) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node N -m softprompt ...` (one process without torchrun), its own session."""
    command = [sys.executable, "-m", "softprompt", *args]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   "-m", "softprompt", *args]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def run(nproc: int, args: list[str], tmp_path: Path, name: str) -> str:
    log = tmp_path / f"{name}.log"
    process = launch(nproc, args, log)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    return log.read_text()


def common(model: Path, data_dir: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--task", "rte", "--data-dir", str(data_dir), "--output", str(output),
            "--prompt-length", "4", "--max-steps", "6", "--batch-size", "8", "--eval-every", "3", "--eval-examples", "10",
            "--checkpoint-every", "3", "--log-every", "1", "--seed", "3", "--train-examples", "96", "--device", "cpu",
            "--quiet", *extra]


def records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def losses(output: Path) -> list[float]:
    return [r["loss"] for r in records(output) if "loss" in r]


def assert_same_run(a: Path, b: Path, prompt_atol: float = 1e-6) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) > 0
    assert max(abs(x - y) for x, y in zip(la, lb)) <= 1e-5, (la, lb)
    pa, pb = load_file(str(a / "prompt.safetensors"))["prompt"], load_file(str(b / "prompt.safetensors"))["prompt"]
    # another summation order rounds differently by about one ulp per step: 1e-6 relative to the prompt's scale
    assert (pa - pb).abs().max().item() <= prompt_atol * max(1.0, pa.abs().max().item())
    ra, rb = (json.loads((p / "result.json").read_text()) for p in (a, b))
    assert ra["steps"] == rb["steps"] and ra["best_step"] == rb["best_step"]
    assert ra["best_metrics"] == pytest.approx(rb["best_metrics"], abs=1e-9)
    evals_a, evals_b = ([r["eval"] for r in records(p) if "eval" in r] for p in (a, b))
    assert evals_a == evals_b, "every rank scored its share and the shares were gathered in order"


def test_shard_and_unshard_are_inverse():
    items = list(range(11))
    parts = [shard(items, World(rank, 3)) for rank in range(3)]
    assert sorted(sum(parts, [])) == items and unshard(parts) == items
    assert shard([0], World(1, 2)) == [] and unshard([[0], []]) == [0]


@pytest.fixture(scope="module")
def gpt2_pair(gpt2_dir, data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The same GPT-2 run on 1 process and on 2 (torchrun), shared by the tests that need a reference."""
    tmp = tmp_path_factory.mktemp("gpt2-pair")
    run(1, common(gpt2_dir, data_dir, tmp / "one"), tmp, "one")
    out = run(2, common(gpt2_dir, data_dir, tmp / "two"), tmp, "two")
    assert sum(line.startswith("{") for line in out.splitlines()) == 1, "rank 0 alone prints the result"
    return tmp / "one", tmp / "two"


@multiprocess
def test_two_processes_take_the_single_process_steps_decoder_only(gpt2_pair):
    one, two = gpt2_pair
    assert_same_run(one, two)
    steps = [r["step"] for r in records(two) if "loss" in r]
    assert steps == list(range(1, 7)), "each log line written once"


@multiprocess
def test_two_processes_and_micro_batches_take_the_single_process_steps_encoder_decoder(t5_dir, data_dir, tmp_path):
    one, two, micro = tmp_path / "one", tmp_path / "two", tmp_path / "micro"
    run(1, common(t5_dir, data_dir, one), tmp_path, "one")
    run(2, common(t5_dir, data_dir, two), tmp_path, "two")
    run(1, common(t5_dir, data_dir, micro, "--micro-batch-size", "3"), tmp_path, "micro")  # 3 + 3 + 2
    assert_same_run(one, two)
    assert_same_run(one, micro)


@multiprocess
def test_model_tuning_under_ddp_takes_the_single_process_steps(t5_dir, data_dir, tmp_path):
    extra = ("--tune", "model", "--lr", "1e-3", "--recipe", "paper", "--max-steps", "4")
    one, two = tmp_path / "one", tmp_path / "two"
    run(1, common(t5_dir, data_dir, one, *extra), tmp_path, "one")
    run(2, common(t5_dir, data_dir, two, *extra), tmp_path, "two")
    assert_same_run(one, two)
    a, b = (load_file(str(p / "backbone" / "model.safetensors")) for p in (one, two))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


@multiprocess
def test_a_batch_smaller_than_the_world_and_an_agreed_time_stop(gpt2_dir, data_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run(1, common(gpt2_dir, data_dir, one, "--batch-size", "1"), tmp_path, "one")
    run(2, common(gpt2_dir, data_dir, two, "--batch-size", "1"), tmp_path, "two")  # rank 1 holds nothing each step
    assert_same_run(one, two)

    timed = tmp_path / "timed"
    run(2, common(gpt2_dir, data_dir, timed, "--max-steps", "100000", "--max-minutes", "0.05", "--eval-every", "100000"),
        tmp_path, "timed")
    result = json.loads((timed / "result.json").read_text())
    assert 0 < result["steps"] < 100000, "both ranks stopped at one step, decided together"


@multiprocess
def test_resume_needs_the_same_world_size(gpt2_pair, gpt2_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(gpt2_pair[1], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    log = tmp_path / "again.log"
    again = launch(1, [*common(gpt2_dir, data_dir, out, "--max-steps", "8"), "--resume"], log)
    assert again.wait(timeout=300) == 2
    text = log.read_text()
    assert "saved by 2 process(es), resumed with 1" in text and "Traceback" not in text
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, "refused before anything was written"


@multiprocess
def test_a_slurm_style_launch_takes_the_same_steps(gpt2_pair, gpt2_dir, data_dir, tmp_path):
    """srun sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID instead of torchrun's variables; the job sets the master."""
    two = tmp_path / "two"
    port = str(29500 + random.Random().randint(1, 2000))
    ranks = []
    for rank in range(2):
        env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        log = (tmp_path / f"rank{rank}.log").open("w")
        ranks.append(subprocess.Popen([sys.executable, "-m", "softprompt", *common(gpt2_dir, data_dir, two)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env))
    assert [p.wait(timeout=300) for p in ranks] == [0, 0], (tmp_path / "rank1.log").read_text()[-2000:]
    assert_same_run(gpt2_pair[0], two)


@multiprocess
def test_an_accelerate_launch_takes_the_same_steps(gpt2_pair, gpt2_dir, data_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` starts its ranks through torchrun with torchrun's variables;
    without a GPU (no --cpu, which would go through MPI) they train on the CPU over gloo, as torchrun's do."""
    two = tmp_path / "two"
    port = str(29500 + random.Random().randint(2001, 4000))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
               "-m", "softprompt", *common(gpt2_dir, data_dir, two)]
    log = tmp_path / "accelerate.log"
    job = subprocess.run(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV, timeout=600)
    assert job.returncode == 0, log.read_text()[-3000:]
    assert torch.load(two / "checkpoint.pt", weights_only=False)["world_size"] == 2
    assert_same_run(gpt2_pair[0], two)


@multiprocess
def test_killed_and_resumed_job_is_bit_identical_under_deterministic(t5_dir, data_dir, tmp_path):
    args = ("--deterministic", "--max-steps", "12", "--checkpoint-every", "1")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(2, common(t5_dir, data_dir, straight, *args), tmp_path, "straight")

    job = launch(2, common(t5_dir, data_dir, killed, *args), tmp_path / "killed.log")
    kill_at = random.Random().randint(2, 9)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(r.get("step", 0) >= kill_at for r in _safe_records(killed)):
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the whole job: torchrun and both ranks
    job.wait()
    assert not (killed / "result.json").exists(), "the job finished before it could be killed"
    run(2, [*common(t5_dir, data_dir, killed, *args), "--resume"], tmp_path, "resumed")

    for name in ("prompt.safetensors",):
        assert torch.equal(load_file(str(straight / name))["prompt"], load_file(str(killed / name))["prompt"])
    a, b = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (straight, killed))
    assert a["step"] == b["step"] == 12 and a["world_size"] == b["world_size"] == 2
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in records(p)] for p in (straight, killed)]
    assert untimed[0] == untimed[1], "the resumed log holds each step once, as the straight run's"


def _safe_records(output: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return []


def in_process(model: Path, data_dir: Path, output: Path, **settings) -> Path:
    from softprompt.config import PromptConfig, TrainConfig
    from softprompt.train import train

    train(TrainConfig(task="rte", model=str(model), data_dir=str(data_dir), output=str(output), prompt=PromptConfig(length=4),
                      max_steps=3, batch_size=8, eval_every=3, eval_examples=6, log_every=1, train_examples=96, device="cpu",
                      **settings), progress=False)
    return output


def test_micro_batches_take_the_whole_batch_step(gpt2_dir, data_dir, tmp_path):
    whole = in_process(gpt2_dir, data_dir, tmp_path / "whole")
    assert_same_run(whole, in_process(gpt2_dir, data_dir, tmp_path / "micro", micro_batch_size=3))  # 3 + 3 + 2


@pytest.mark.parametrize("kind_dir", ["t5_dir", "gpt2_dir"])
def test_gradient_checkpointing_trains_the_same_prompt(kind_dir, request, data_dir, tmp_path):
    model = request.getfixturevalue(kind_dir)
    results = [in_process(model, data_dir, tmp_path / str(c), gradient_checkpointing=c) for c in (False, True)]
    assert_same_run(*results, prompt_atol=1e-5)  # two identical runs on this CPU differ by ~3e-6 already (thread scheduling)



@multiprocess
@pytest.mark.parametrize("kind_dir", ["t5_dir", "gpt2_dir"])
def test_a_backbone_sharded_over_two_processes_takes_the_single_process_steps(kind_dir, request, data_dir, tmp_path):
    """FSDP2 shards the frozen blocks; the prompt splice reads the whole embedding; each rank scores every example."""
    model = request.getfixturevalue(kind_dir)
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    run(1, common(model, data_dir, one), tmp_path, "one")
    run(2, common(model, data_dir, sharded, "--shard-backbone"), tmp_path, "sharded")
    assert_same_run(one, sharded)


@pytest.mark.parametrize("extra, message", [
    (("--tune", "model"), "model tuning on a sharded backbone"),
    (("--eval-method", "generate"), "generation on a sharded backbone is not built"),
])
def test_what_a_sharded_backbone_cannot_run_is_refused_in_one_line(extra, message, gpt2_dir, data_dir, tmp_path):
    log = tmp_path / "log"
    process = launch(1, common(gpt2_dir, data_dir, tmp_path / "out", "--shard-backbone", *extra), log)
    assert process.wait(timeout=300) == 2
    text = log.read_text()
    assert message in text and "Traceback" not in text and not (tmp_path / "out").exists()


@multiprocess
def test_a_rank_that_dies_ends_the_job_instead_of_hanging(gpt2_dir, data_dir, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.log"
    job = launch(2, common(gpt2_dir, data_dir, out, "--max-steps", "100000", "--eval-every", "100000"), log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any("loss" in r for r in _safe_records(out)):
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)  # one rank dies mid-run
    started = time.monotonic()
    try:
        code = job.wait(timeout=180)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert code != 0 and time.monotonic() - started < 180, "the job ended, with an error, instead of waiting forever"


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "neither RANK nor SLURM_PROCID is set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 lies outside WORLD_SIZE=2"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR is not set"),
])
def test_a_launch_environment_that_describes_no_world_is_refused_in_one_line(env, message, monkeypatch):
    from softprompt.distributed import join
    from softprompt.errors import SoftpromptError

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SoftpromptError, match=message):
        join("cpu")


def test_one_gpu_named_for_several_ranks_is_refused(monkeypatch):
    from softprompt.distributed import World, _rank_device
    from softprompt.errors import SoftpromptError

    with pytest.raises(SoftpromptError, match="would put every rank on one GPU"):
        _rank_device("cuda:0", World(0, 2))
    assert _rank_device("cpu", World(1, 2)) == "cpu" and _rank_device("cuda:0", World()) == "cuda:0"
