"""DDP on CPU: shards and gathers, attacks and saliency maps equal to one process's, a DDP fit, a whole DDP run.

The multi-process tests start two processes with ``torch.multiprocessing`` and make them ranks
0 and 1 the way the pipeline's processes become them (``LOCAL_RANK``, ``WORLD_SIZE``, … in the
environment, then ``distributed.launch`` of ``trainer=ddp_cpu``: a gloo process group). A failed
assertion in a worker fails the test with the worker's traceback.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from torch import nn
from torch.utils.data import TensorDataset

from conftest import compose_config, shrink, lean_whitebox
from gcd_lightning import distributed
from gcd_lightning.adversarial import AdversarialSet, Sets, generate
from gcd_lightning.attacks import PGD
from gcd_lightning.cache import Cache, Key
from gcd_lightning.defense.detector import SubDetector
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.models import SmallCNN
from gcd_lightning.pipeline import run
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.pipeline.components import ensemble_saliency
from gcd_lightning.pipeline.training import fit_best
from gcd_lightning.utils.files import load_json, save_json

WORLD = 2
N, BATCH, CLASSES = 45, 8, 3  # 6 attack batches, the last one short: ranks take 24 and 21 rows


@pytest.mark.parametrize("n", [0, 1, 5, 7, 45])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_blocks_cover_every_row_once_in_rank_order(n, world):
    blocks = [distributed.shard(n, rank, world) for rank in range(world)]
    assert [row for block in blocks for row in block] == list(range(n))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_shard_refuses_impossible_splits():
    for args, match in (((5, 0, 0), "world size"), ((5, 2, 2), "rank 2"), ((-1, 0, 1), "negative")):
        with pytest.raises(ValueError, match=match):
            distributed.shard(*args)


def test_single_process_helpers_are_rank_zero_of_one(tmp_path):
    assert not distributed.initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_rank_zero()) == (0, 1, True)
    rows = torch.arange(12.0).reshape(4, 3)
    assert distributed.gather_rows(rows) is rows
    assert distributed.broadcast({"hit": True}) == {"hit": True}
    distributed.barrier()
    distributed.write_on_rank_zero(Path.write_text, tmp_path / "f.txt", "rank 0")
    assert (tmp_path / "f.txt").read_text() == "rank 0"


def test_map_batches_in_one_process_concatenates_seeded_batches_in_order():
    def noisy(i: int, rows: slice) -> dict[str, torch.Tensor]:
        return {"rows": torch.arange(rows.start, rows.stop), "noise": torch.rand(rows.stop - rows.start)}

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    out = distributed.map_batches(noisy, 10, 4, seed=7)
    assert torch.equal(out["rows"], torch.arange(10))
    for i, rows in enumerate((slice(0, 4), slice(4, 8), slice(8, 10))):  # batch i drew right after seeding 7 + i
        torch.manual_seed(7 + i)
        assert torch.equal(out["noise"][rows], torch.rand(rows.stop - rows.start))
    torch.manual_seed(123)
    distributed.map_batches(noisy, 10, 4, seed=7)
    assert torch.equal(torch.rand(1), before)  # the caller's generator is left as it was
    empty = distributed.map_batches(lambda _, rows: torch.zeros(rows.stop - rows.start, 3), 0, 4)
    assert empty.shape == (0, 3)
    with pytest.raises(ValueError, match="batch_size"):
        distributed.map_batches(noisy, 10, 0)


def test_launch_leaves_single_process_configs_alone_and_refuses_spawn(tmp_path):
    for trainer in ("default", "gpu"):
        assert not distributed.launch(compose_config([f"trainer={trainer}"], tmp_path).trainer)
    assert not distributed.launch({"accelerator": "cpu", "devices": 1, "strategy": "ddp"})  # one process: nothing to start
    assert not distributed.initialized()
    distributed.shutdown()  # no group: nothing to leave
    with pytest.raises(ValueError, match="ddp_spawn.*use strategy=ddp"):
        distributed.launch({"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(worker, tmp_path: Path) -> None:
    """Run ``worker(rank, port, tmp_path)`` in ``WORLD`` fresh processes; re-raise a worker's failure."""
    torch.multiprocessing.spawn(worker, args=(free_port(), tmp_path), nprocs=WORLD, join=True)


def join(rank: int, port: int, tmp_path: Path) -> None:
    """Make this process rank ``rank`` of a ``trainer=ddp_cpu`` run, as a launched pipeline process is.

    The worker ends with ``distributed.shutdown()``: a process that exits with its gloo group open can abort.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0", LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    assert distributed.launch(compose_config(["trainer=ddp_cpu"], tmp_path).trainer)  # this call opened the group
    assert (distributed.rank(), distributed.world_size()) == (rank, WORLD)


def tiny_problem() -> tuple[nn.Module, TensorDataset, GCD]:
    """A seeded classifier, images it labels itself (all correct) and two untrained detectors: the same in every process."""
    torch.manual_seed(0)
    model = SmallCNN(1, CLASSES, image_size=8, width=4, hidden=16).eval()
    x = torch.rand(N, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    detectors = [
        SubDetector(SmallCNN(1, 2, image_size=8, width=4, hidden=16), kind, classifier=model).eval() for kind in ("org", "is")
    ]
    return model, TensorDataset(x, y), GCD(model, detectors)


def sharded_work_worker(rank: int, port: int, tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the same arithmetic before and after joining
    model, dataset, gcd = tiny_problem()
    attack = PGD(model, eps=0.1, nb_iter=3, eps_iter=0.05, rand_init=True, targeted=True)

    def build() -> AdversarialSet:
        return generate(model, attack, dataset, n=N, num_classes=CLASSES, seed=3, batch_size=BATCH, progress=False)

    alone = build()
    saliency_alone = ensemble_saliency(gcd, alone.x_adv, BATCH)
    join(rank, port, tmp_path)

    rows = []
    perturb = attack.perturb
    attack.perturb = lambda x, y, target=None: rows.append(len(x)) or perturb(x, y, target)
    cache, key = Cache(tmp_path), Key("set", {"seed": 3})
    path = cache.path(Sets(), key)
    together, hit = cache.get_or_build(Sets(), key, lambda _: build())
    assert not hit and path.is_file() and path.with_name(f"{key.id}.spec.json").is_file()  # rank 0 wrote, both waited
    assert sum(rows) == (24, 21)[rank]  # this rank's batches only ...
    for name in ("index", "x_adv", "y", "target", "success", "l2", "linf"):  # ... and the single process's set
        assert torch.equal(getattr(together, name), getattr(alone, name)), name
    both = distributed.gather_rows(together.x_adv)
    assert torch.equal(both[:N], both[N:])  # the same on every rank
    assert torch.equal(AdversarialSet.load(path).x_adv, alone.x_adv)
    assert cache.get_or_build(Sets(), key, lambda _: build())[1]  # every rank hits the cache rank 0 wrote

    assert torch.equal(ensemble_saliency(gcd, alone.x_adv, BATCH), saliency_alone)

    uneven = torch.arange(3.0 * (2 + rank)).reshape(2 + rank, 3) + 100 * rank  # 2 rows on rank 0, 3 on rank 1
    expected = torch.cat([torch.arange(6.0).reshape(2, 3), torch.arange(9.0).reshape(3, 3) + 100])
    assert torch.equal(distributed.gather_rows(uneven), expected)
    assert distributed.gather_rows(torch.zeros(0, 3)).shape == (0, 3)
    assert distributed.broadcast(f"rank {rank}") == "rank 0"

    def rows_and_rank(_: int, rows: slice) -> dict[str, torch.Tensor]:
        return {"rows": torch.arange(rows.start, rows.stop), "rank": torch.full((rows.stop - rows.start,), rank)}

    shared = distributed.map_batches(rows_and_rank, 11, 4)  # 3 batches: rank 0 takes 2, rank 1 one
    assert torch.equal(shared["rows"], torch.arange(11))
    assert torch.equal(shared["rank"], torch.tensor([0] * 8 + [1] * 3))
    alone = distributed.map_batches(rows_and_rank, 3, 4)  # fewer batches than ranks: each rank does all
    assert torch.equal(alone["rows"], torch.arange(3)) and torch.equal(alone["rank"], torch.full((3,), rank))
    distributed.shutdown()


@pytest.mark.slow
def test_sharded_attack_and_saliency_equal_one_process_on_every_rank(tmp_path):
    spawn(sharded_work_worker, tmp_path)


class CountingDetector(SubDetector):
    """A ``SubDetector`` that records the size of every training batch it sees."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_rows: list[int] = []

    def training_step(self, batch, batch_idx):
        self.batch_rows.append(len(batch[0]))
        return super().training_step(batch, batch_idx)


def fit_worker(rank: int, port: int, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    join(rank, port, tmp_path)
    cfg = compose_config(["trainer=ddp_cpu"], tmp_path)
    with open_dict(cfg):
        cfg.trainer.enable_model_summary = False
    ctx = RunContext(cfg=cfg, datamodule=None, output_dir=tmp_path, cache_dir=tmp_path, device=torch.device("cpu"), loggers=[])
    torch.manual_seed(rank)  # different initial weights per rank: DDP starts every rank from rank 0's
    module = CountingDetector(SmallCNN(1, 2, image_size=8, width=4, hidden=16), "org", optimizer=torch.optim.Adam)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=generator)
    x[1::2] += 0.5  # odd rows "adversarial": brighter
    label = torch.arange(64) % 2
    best, _ = fit_best(ctx, module, (x[:48], label[:48]), (x[48:], label[48:]), max_epochs=2, batch_size=8, monitor="val/auc")

    assert module.batch_rows == [8, 8, 8] * 2  # each rank trains on its half of the 48 pairs, 2 epochs
    bests = [None] * WORLD
    torch.distributed.all_gather_object(bests, best)
    assert bests[0] == bests[1] and 0.0 <= best <= 1.0  # the same kept epoch on every rank ...
    weights = torch.cat([p.detach().flatten() for p in module.state_dict().values() if p.is_floating_point()])
    gathered = distributed.gather_rows(weights[None])
    assert torch.equal(gathered[0], gathered[1])  # ... and the same weights
    distributed.shutdown()


@pytest.mark.slow
def test_ddp_fit_best_trains_each_rank_on_its_share_and_keeps_the_same_epoch(tmp_path):
    spawn(fit_worker, tmp_path)


def pipeline_config(tmp_path: Path, *overrides: str):
    """A tiny PGD-T run with white-box attacks, in batches small enough that two ranks share every pass."""
    cfg = shrink(compose_config(["+experiment=mnist_pgd_targeted", "threat=whitebox", *overrides], tmp_path))
    with open_dict(cfg):
        cfg.adversarial.batch_size = 40  # attacks 5 + 3 batches, the clean split 5 batches
        cfg.threat.batch_size = 2  # white-box: 3 batches, two on rank 0
        cfg.trainer.limit_train_batches = 40  # per rank (two ranks: 80 batches in all)
        cfg.detector.max_epochs, cfg.rectifier.max_epochs = 3, 2  # every module trained with DDP, briefly
    return lean_whitebox(cfg, n_test=6)  # each kind of white-box attack once, every one shared by the ranks


def pipeline_worker(rank: int, port: int, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    join(rank, port, tmp_path)
    metrics = run(pipeline_config(tmp_path / "ddp", "trainer=ddp_cpu"))
    save_json(metrics, tmp_path / f"metrics_rank{rank}.json")
    distributed.shutdown()  # run() leaves the group to whoever opened it


def comparable(metrics: dict) -> dict:
    """The metrics that must not depend on the world size: no wall times, no cache flags."""
    return {key: value for key, value in metrics.items() if "seconds" not in key and "cached" not in key}


@pytest.mark.slow
def test_ddp_pipeline_trains_every_module_and_shares_evaluation_like_one_process(tmp_path):
    """``trainer=ddp_cpu`` from scratch: f, both detectors and f_rec trained with DDP, every pass shared.

    A single process then evaluates and attacks the same trained models (the DDP run's caches,
    white-box attacks removed so that they are recomputed): every metric equals the DDP run's.
    """
    spawn(pipeline_worker, tmp_path)
    rank0, rank1 = (load_json(tmp_path / f"metrics_rank{rank}.json", "metrics") for rank in range(WORLD))
    assert comparable(rank0) == pytest.approx(comparable(rank1), nan_ok=True)
    assert all(rank0[flag] == 0.0 for flag in ("classifier.cached", "detector.cached.org", "detector.cached.is", "rectifier.cached"))
    assert rank0["classifier.test_acc"] >= 0.9
    assert rank0["detector.auc.gcd"] > 0.8 and rank0["gcd.acc.adv"] > rank0["base.acc.adv"]
    assert rank0["whitebox.success.nodet"] >= 5 / 6  # the quick suite misses at most one of the 6 images

    shutil.copytree(tmp_path / "ddp" / "cache", tmp_path / "alone" / "cache", ignore=shutil.ignore_patterns("evaluation", "whitebox"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' arithmetic
    try:
        alone = run(pipeline_config(tmp_path / "alone"))
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "alone" / "cache" / "whitebox").is_dir()  # recomputed in one process
    assert all(alone[flag] == 1.0 for flag in ("classifier.cached", "attack.test.cached", "rectifier.cached"))
    assert alone["evaluate.cached"] == 0.0  # the grey-box evaluation recomputed in one process too
    assert comparable(alone) == pytest.approx(comparable(rank0), nan_ok=True)
