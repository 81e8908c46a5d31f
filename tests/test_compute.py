"""transferlab.compute: the thread rule, batch sharding, and DistributedDataParallel on CPU.

The 2-process test runs `fit` under gloo (torch.multiprocessing, a file rendezvous) and checks
it against one process: every step, the ranks' parts of the batch put together are exactly the
one-process batch (same images, same order, same augmentation), and the trained weights agree
to float rounding (DDP averages the ranks' gradients: the same sum in another order, so not bit
for bit; measured max |diff| 3e-8 on a model without BatchNorm, tolerance 1e-5). With
BatchNorm, each rank normalises by the statistics of its own half batch: that is a different
function, not rounding, so there the test only asks that every rank ends with one same model.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from tests.conftest import make_images
from transferlab import compute
from transferlab.errors import UserError
from transferlab.models import Classifier, SmallCNN
from transferlab.train import Adapt, Stream, fit, make_deterministic


def test_auto_threads_share_the_cores_between_stages_and_processes():
    assert compute.threads_for("auto", nproc=1, jobs=1, cores=8) == 8
    assert compute.threads_for("auto", nproc=1, jobs=2, cores=8) == 4
    assert compute.threads_for("auto", nproc=2, jobs=2, cores=8) == 2
    assert compute.threads_for("auto", nproc=2, jobs=4, cores=2) == 1  # never 0
    assert compute.threads_for(3, nproc=2, jobs=4, cores=8) == 3  # a number is taken as given
    # ... up to the usable cores: 1000 threads on 2 cores made an epoch 22x slower
    assert compute.threads_for(1000, nproc=1, jobs=1, cores=2) == 2
    assert compute.threads_for(3, nproc=2, jobs=4, cores=2) == 2


def test_parallel_stages_from_the_environment_or_the_live_queue_workers(tmp_path):
    assert compute.parallel_stages({}) == 1
    assert compute.parallel_stages({compute.JOBS_ENV: "3"}) == 3
    with pytest.raises(UserError, match=compute.JOBS_ENV):
        compute.parallel_stages({compute.JOBS_ENV: "two"})
    celery = tmp_path / ".dvc" / "tmp" / "exps" / "celery"
    celery.mkdir(parents=True)
    queued = {"DVC_EXP_NAME": "exp-1", "DVC_ROOT": str(tmp_path)}
    assert compute.parallel_stages(queued) == 1  # no worker file: at least 1
    for n, (pid, code) in enumerate([(os.getpid(), None), (os.getppid(), None),
                                     (os.getpid(), 0), (2 ** 22 + 12345, None)]):
        (celery / f"dvc-exp-worker-{n}.json").write_text(json.dumps({"pid": pid, "returncode": code}))
    (celery / "dvc-exp-worker-9.json").write_text("not json")
    assert compute.parallel_stages(queued) == 2  # live and running: ended and dead ones not
    assert compute.parallel_stages({**queued, compute.JOBS_ENV: "1"}) == 1  # the variable wins


@pytest.mark.parametrize("n,world", [(16, 2), (50, 3), (3, 3), (128, 4)])
def test_the_ranks_parts_tile_the_batch_and_their_mean_loss_is_the_batch_loss(n, world):
    parts = []
    for rank in range(world):
        compute.configure(compute.Setup(rank=rank, world=world))
        parts.append(compute.shard(n))
    compute.configure(compute.Setup())
    assert [i for part, _ in parts for i in range(n)[part]] == list(range(n))
    # mean over ranks of scale x mean(part) = sum over all / n
    losses = torch.arange(n, dtype=torch.float64)
    ranked = sum(scale * losses[part].mean() for part, scale in parts) / world
    assert torch.isclose(ranked, losses.mean())


def test_more_processes_than_images_in_a_batch_is_refused():
    compute.configure(compute.Setup(rank=0, world=4))
    try:
        with pytest.raises(UserError, match="compute.nproc=4 is more than a batch of 3"):
            compute.shard(3)
    finally:
        compute.configure(compute.Setup())


def test_one_process_starts_no_process_group(tiny_params):
    import torch.distributed as dist

    compute.launch(tiny_params.compute)
    assert compute.current() == compute.Setup() and not dist.is_initialized()


def test_fp16_without_a_gpu_is_one_clear_line(tiny_params):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="compute.precision=fp16 needs a CUDA GPU"):
        compute.launch(tiny_params.compute.model_copy(update={"precision": "fp16"}))
    compute.configure(compute.Setup())


def test_bf16_autocast_trains_on_cpu(tiny_source):
    compute.configure(compute.Setup(precision="bf16"))
    try:
        result = train(tiny_source, batch_norm=True, steps=6, record=None)
    finally:
        compute.configure(compute.Setup())
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result[0].history)


class NoBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 6, 3, padding=1), nn.Linear(6 * 16, 4)

    def forward(self, x):
        return self.head(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def train(source, batch_norm: bool, steps: int, record: list | None):
    """fit on `source` with two streams (as joint training does); `record` gets every batch."""
    make_deterministic(0)
    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, [4, 8, 8]), 4) if batch_norm else NoBatchNorm()

    def seen(x):
        if record is not None:
            record.append(x.detach().clone())
        return model(x)

    x, y = source["x_train"], source["y_train"]
    streams = [Stream(x, y, seen), Stream(x[:40], y[:40], model, 0.5)]
    result = fit(model, [{"params": list(model.parameters()), "lr": 0.01}], streams,
                 (source["x_val"], source["y_val"], model), steps=steps, batch_size=16,
                 weight_decay=5e-4, shift_px=1, seed=0, eval_every=3)
    return result, model


def adapt_train(source, steps: int, record: list | None):
    """fit with an unlabelled target stream and MCC's term (a domain-adaptation step: one
    forward over the labelled and unlabelled batches); `record` gets every unlabelled batch."""
    from transferlab.strategies.mcc import class_confusion

    make_deterministic(0)
    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, [4, 8, 8]), 4)

    def term(batch):
        if record is not None:
            record.append(batch.target_x.detach().clone())
        return class_confusion(batch.target_logits, 2.0)

    x, y = source["x_train"], source["y_train"]
    result = fit(model, [{"params": list(model.parameters()), "lr": 0.01}], [Stream(x, y, model)],
                 (source["x_val"], source["y_val"], model), steps=steps, batch_size=16,
                 weight_decay=5e-4, shift_px=1, seed=0, eval_every=3,
                 adapt=Adapt(source["x_unlabelled"], model.encoder, model.head, term, 1.0))
    return result, model


def _rank(rank: int, world: int, store: str, out: str, batch_norm: bool | str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    compute.configure(compute.Setup(rank=rank, world=world))
    x, y = make_images(20, size=8, seed=3)
    xv, yv = make_images(5, size=8, seed=4)
    record = []
    data = {"x_train": x, "y_train": y, "x_val": xv, "y_val": yv,
            "x_unlabelled": make_images(10, size=8, seed=5)[0]}
    result, model = (adapt_train(data, steps=12, record=record) if batch_norm == "adapt" else
                     train(data, batch_norm, steps=12, record=record))
    torch.save({"record": record, "state": model.state_dict(), "history": result.history},
               f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True], ids=["no-batchnorm", "batchnorm"])
def test_two_processes_see_the_one_process_batches_and_end_at_its_weights(tmp_path, batch_norm):
    import torch.multiprocessing as mp

    x, y = make_images(20, size=8, seed=3)
    xv, yv = make_images(5, size=8, seed=4)
    source = {"x_train": x, "y_train": y, "x_val": xv, "y_val": yv}
    torch.set_num_threads(1)
    alone_record = []
    alone, model = train(source, batch_norm, steps=12, record=alone_record)
    out = str(tmp_path / "rank")
    mp.start_processes(_rank, args=(2, str(tmp_path / "store"), out, batch_norm), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]

    assert len(alone_record) == 12 == len(ranks[0]["record"]) == len(ranks[1]["record"])
    for step, batch in enumerate(alone_record):
        halves = torch.cat([ranks[0]["record"][step], ranks[1]["record"][step]])
        assert torch.equal(halves, batch), f"step {step}: not the one-process batch"
    for key, value in ranks[0]["state"].items():  # one model on every rank (rank 0's buffers)
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert [r["step"] for r in ranks[0]["history"]] == [r["step"] for r in alone.history]
    if not batch_norm:
        for key, value in model.state_dict().items():
            assert torch.allclose(ranks[0]["state"][key], value, rtol=0, atol=1e-5), key
        for two, one in zip(ranks[0]["history"], alone.history):
            assert abs(two["train_loss"] - one["train_loss"]) < 1e-5


@pytest.mark.slow
def test_adaptation_under_two_processes_shards_the_unlabelled_batch_too(tmp_path):
    """Domain adaptation (MCC) under DDP: each step's unlabelled batch is split between the
    ranks like the labelled ones, and every rank ends with one same model. (MCC's class
    confusion is a batch statistic, computed per rank on its half: like BatchNorm, a different
    function from one process, so the weights are not compared with it.)"""
    import torch.multiprocessing as mp

    x, y = make_images(20, size=8, seed=3)
    xv, yv = make_images(5, size=8, seed=4)
    data = {"x_train": x, "y_train": y, "x_val": xv, "y_val": yv,
            "x_unlabelled": make_images(10, size=8, seed=5)[0]}
    torch.set_num_threads(1)
    alone_record = []
    alone, _ = adapt_train(data, steps=12, record=alone_record)
    out = str(tmp_path / "rank")
    mp.start_processes(_rank, args=(2, str(tmp_path / "store"), out, "adapt"), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    assert len(alone_record) == 12 == len(ranks[0]["record"])
    for step, batch in enumerate(alone_record):
        assert torch.equal(torch.cat([ranks[0]["record"][step], ranks[1]["record"][step]]), batch)
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert [r["step"] for r in ranks[0]["history"]] == [r["step"] for r in alone.history]


@pytest.mark.slow
def test_dvc_repro_with_two_processes_writes_each_output_once(tmp_path):
    """The real stage commands under `dvc repro` with compute.nproc=2: pretrain and a transfer
    strategy run as two torchrun processes; outputs complete, dvc.lock up to date."""
    from tests.conftest import tiny_params_dict
    from tests.dvc_helpers import copy_project, dvc, ran

    repo = copy_project(tmp_path / "repo", tiny_params_dict(compute={"nproc": 2}))
    output = dvc(repo, "repro", "transfer@finetune")
    assert ran(output)[-2:] == ["pretrain", "transfer@finetune"], output  # finetune reads no features
    assert output.count("2 processes (DistributedDataParallel, gloo)") == 2, output
    for path in ("models/source.safetensors", "models/transfer/finetune.safetensors",
                 "metrics/pretrain.json", "metrics/transfer/finetune.json"):
        assert (repo / path).is_file(), path
    assert not list(repo.rglob("*.tmp")), "a rank left a temporary file"
    assert "up to date" in dvc(repo, "status", "transfer@finetune")


def test_every_training_stage_sets_its_threads():
    """A stage that trains sets torch's threads from compute.threads (auto: cores / stages at
    once): without it two study cells run by transferlab-fanout each took every core and spun
    on each other's, 4x slower per cell (measured on 2 cores)."""
    import ast

    from tests.conftest import ROOT

    for name in ("pretrain", "transfer", "study_cell", "study_layers", "ranking_candidate"):
        calls = {f"{node.func.value.id}.{node.func.attr}"
                 for node in ast.walk(ast.parse((ROOT / f"stages/{name}.py").read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and isinstance(node.func.value, ast.Name)}
        assert calls & {"compute.launch", "compute.set_threads"}, name
