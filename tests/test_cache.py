"""The one cache of every artefact (gcd_lightning/cache.py): an entry is built once, read back whole, never half-written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from gcd_lightning.adversarial import AdversarialSet, Sets
from gcd_lightning.cache import Cache, Key, Memo, Summary, Weights


def tiny_set(n: int = 3) -> AdversarialSet:
    return AdversarialSet(index=torch.arange(n), x_adv=torch.rand(n, 1, 4, 4), y=torch.zeros(n, dtype=torch.long),
                          target=torch.full((n,), -1), success=torch.ones(n, dtype=torch.bool), l2=torch.rand(n),
                          linf=torch.rand(n), n_examined=n, seconds=0.5)


def test_an_entry_is_built_once_then_served_and_its_spec_is_kept_beside_it(tmp_path):
    cache, key = Cache(tmp_path), Key("mnist_pgd_test", {"seed": 0, "n": 3})
    built = []
    first, hit = cache.get_or_build(Sets(), key, lambda _: built.append(1) or tiny_set())
    again, hit_again = cache.get_or_build(Sets(), key, lambda _: built.append(1) or tiny_set())
    assert (hit, hit_again, len(built)) == (False, True, 1)
    assert torch.equal(again.x_adv, first.x_adv) and again.n_examined == 3
    path = cache.path(Sets(), key)
    assert path.parent == tmp_path / "adversarial" and path.name == f"{key.id}.pt"
    assert json.loads(path.with_name(f"{key.id}.spec.json").read_text()) == {"seed": 0, "n": 3}
    other = Key("mnist_pgd_test", {"seed": 1, "n": 3})  # any change to the spec: another entry
    assert cache.get_or_build(Sets(), other, lambda _: tiny_set(2))[0].n_examined == 2 and len(list(path.parent.glob("*.pt"))) == 2


def test_weights_load_into_the_network_and_a_half_written_entry_is_rebuilt(tmp_path):
    cache, key = Cache(tmp_path), Key("f", {"seed": 0}, group="run1")
    trained = nn.Linear(2, 2)

    def train(resume):
        resume.mkdir(parents=True)  # a build that trains keeps its checkpoint here ...
        (resume / "last.ckpt").write_text("epoch 1")
        return {"val_acc": 0.9}

    summary, hit = cache.get_or_build(Weights("detectors", trained, "detector"), key, train)
    path = cache.path(Weights("detectors", trained, "detector"), key)
    assert (summary, hit) == ({"val_acc": 0.9}, False) and path.parent == tmp_path / "detectors" / "run1"
    assert not path.with_suffix(".resume").exists()  # ... removed once the entry is written
    fresh = nn.Linear(2, 2)
    summary, hit = cache.get_or_build(Weights("detectors", fresh, "detector"), key, pytest.fail)
    assert hit and summary == {"val_acc": 0.9} and torch.equal(fresh.weight, trained.weight)

    path.with_suffix(".json").unlink()  # the summary is written last: without it the entry is incomplete
    assert not cache.get_or_build(Weights("detectors", fresh, "detector"), key, lambda _: {"val_acc": 0.8})[1]


def test_an_interrupted_build_leaves_nothing_and_a_corrupt_entry_names_the_fix(tmp_path):
    cache, key = Cache(tmp_path), Key("clean", {"n": 5})
    kind = Summary("rectifier_baseline", "clean accuracy")

    def interrupted(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(kind, key, interrupted)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert cache.get_or_build(kind, key, lambda _: {"acc": 0.5}) == ({"acc": 0.5}, False)

    cache.path(Sets(), key).parent.mkdir(parents=True)
    cache.path(Sets(), key).write_bytes(b"not a torch file")
    with pytest.raises(Exception, match="delete") as error:
        cache.get_or_build(Sets(), key, lambda _: tiny_set())
    assert str(cache.path(Sets(), key)) in str(error.value)


MERGE = """
import sys, torch
from pathlib import Path
from gcd_lightning.cache import Cache, Key, Memo
Cache(Path(sys.argv[1])).merge(Memo("baselines", "memo"), Key("memo", {"f": 1}), {sys.argv[2]: (float(sys.argv[3]),)})
"""


@pytest.mark.slow
def test_memos_of_parallel_runs_are_merged_not_overwritten(tmp_path):
    """Two processes add to one memo at once: each one's result stays."""
    cache, key, kind = Cache(tmp_path), Key("memo", {"f": 1}), Memo("baselines", "memo")
    assert cache.read(kind, key, {}) == {}
    runs = [subprocess.Popen([sys.executable, "-c", MERGE, str(tmp_path), f"image{i}", str(i)]) for i in range(2)]
    assert [run.wait(timeout=120) for run in runs] == [0] * 2
    assert cache.read(kind, key, {}) == {f"image{i}": (float(i),) for i in range(2)}
    cache.merge(kind, key, {"image0": (0.0,)})  # nothing new: the file is not rewritten
    assert cache.read(kind, key, {})["image1"] == (1.0,)
