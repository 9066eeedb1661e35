"""Candidate networks of task grouping: specs, training jobs, records, reruns, executors."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch

import mtgraph
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.errors import ConfigError
from mtgraph.strategies.grouping import (
    CandidateSpec,
    TrainingSetup,
    TrainOptions,
    candidate_specs,
    load_candidate,
    network_costs,
    train_candidates,
    validation_losses,
)
from mtgraph.strategies.grouping import candidates as C
from mtgraph.zoo import resnet_tiny

SIZE = 32


def _backbone(width: int = 2) -> mtgraph.Backbone:
    torch.manual_seed(0)
    return mtgraph.trace(resnet_tiny(width=width).eval(), torch.zeros(2, 3, SIZE, SIZE))


def _tasks() -> dict[str, T.Task]:
    return {"seg": T.segmentation(5, hidden=4), "unrelated": T.regression(name="unrelated", hidden=4)}


def _setup(folder: Path, *, lr: float = 3e-3, small: bool = False, options: TrainOptions | None = None) -> TrainingSetup:
    backbone = _backbone()
    tasks = _tasks()
    torch.manual_seed(1)
    heads = {n: t.make_head(backbone.output_shape[0], (SIZE, SIZE)) for n, t in tasks.items()}
    variants = {}
    if small:
        small_backbone = _backbone(1)
        variants["small"] = (small_backbone, {n: t.make_head(small_backbone.output_shape[0], (SIZE, SIZE))
                                              for n, t in tasks.items()})
    return TrainingSetup(
        backbone=backbone, heads=heads, tasks=tasks,
        train_data=SceneDataset(16, size=SIZE, seed=0, unrelated_strength=0.1),
        val_data=SceneDataset(8, size=SIZE, seed=1, unrelated_strength=0.1),
        options=options or TrainOptions(epochs=1, batch_size=8, lr=lr, eval_batch_size=8), folder=folder, seed=0,
        variants=variants,
    )


def test_specs_cover_every_subset_and_match_selection_names() -> None:
    specs = candidate_specs(("a", "b", "c"), small=True)
    assert [s.name for s in specs] == ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c", "a[small]", "b[small]", "c[small]"]
    assert len(candidate_specs(tuple("abcd"))) == 2**4 - 1
    assert [s.name for s in candidate_specs(tuple("abc"), max_order=2)] == ["a", "b", "c", "a+b", "a+c", "b+c"]
    # The record's selection candidate carries the same name (label "small").
    assert specs[-1].folder_name == "c-small"
    with pytest.raises(ConfigError, match="phase must be one of"):
        CandidateSpec(("a",), phase="later")
    with pytest.raises(ConfigError, match="max_order"):
        candidate_specs(("a",), max_order=0)


def test_setup_pickles_with_tasks(tmp_path: Path) -> None:
    # Task values hold a read-only mapping that pickle refuses; the setup sends their fields instead.
    setup = _setup(tmp_path)
    back = pickle.loads(pickle.dumps(setup))
    assert list(back.tasks) == ["seg", "unrelated"]
    assert dict(back.tasks["seg"].higher_is_better) == {"miou": True, "pixel_acc": True}
    assert back.digest == setup.digest
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(back.backbone(x), setup.backbone(x))


def test_validation_losses_are_the_per_sample_mean_of_task_losses(tmp_path: Path) -> None:
    setup = _setup(tmp_path)
    graph = mtgraph.one_net(setup.backbone.num_blocks, ("seg", "unrelated"))
    params = mtgraph.ParamStore.create(graph, setup.backbone, setup.heads)
    got = validation_losses(graph, params, setup.tasks, setup.val_data, batch_size=3)  # batches of 3, 3, 2
    module = mtgraph.compile(graph, params).eval()
    images = torch.stack([setup.val_data[i][0] for i in range(8)])
    with torch.no_grad():
        out = module(images)
    seg = torch.stack([setup.val_data[i][1]["seg"] for i in range(8)])
    assert got["seg"] == pytest.approx(float(setup.tasks["seg"].loss(out["seg"], seg)), rel=1e-5)


def test_rerun_skips_finished_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fit = C.fit

    def counting_fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs["phase"])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(C, "fit", counting_fit)
    setup = _setup(tmp_path)
    specs = candidate_specs(("seg", "unrelated"))
    first = train_candidates(setup, specs)
    # Every fit call is named explicitly by network and phase (its checkpoint files carry the name).
    assert calls == ["grouping-full-seg", "grouping-full-unrelated", "grouping-full-seg-unrelated"]
    assert first.trained == ("seg", "unrelated", "seg+unrelated") and first.reused == ()
    record = first.records["seg+unrelated"]
    assert set(record.val_losses) == {"seg", "unrelated"} and record.steps == 2
    assert json.loads((tmp_path / record.model / "..").resolve().joinpath("full.json").read_text())["name"] == "seg+unrelated"
    # A rerun (new setup object, same everything) reads the records and trains nothing.
    again = train_candidates(_setup(tmp_path), specs)
    assert len(calls) == 3
    assert again.trained == () and again.reused == ("seg", "unrelated", "seg+unrelated")
    assert {n: r.val_losses for n, r in again.records.items()} == {n: r.val_losses for n, r in first.records.items()}
    # Only a missing record is retrained: the job resumes its finished checkpoint (no new steps) and rewrites it.
    (tmp_path / "candidates" / "seg" / "full.json").unlink()
    third = train_candidates(_setup(tmp_path), specs)
    assert third.trained == ("seg",) and len(calls) == 4
    assert third.records["seg"].val_losses == first.records["seg"].val_losses


def test_options_make_the_optimizer_and_size_the_early_runs() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    sgd = TrainOptions(optimizer="sgd", lr=0.1, momentum=0.8, weight_decay=1e-4).make_optimizer()([("w", weight)])
    assert type(sgd).__name__ == "SGD" and sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 1e-4
    adam = TrainOptions(lr=2e-3).make_optimizer()([("w", weight)])
    assert type(adam).__name__ == "Adam" and adam.defaults["lr"] == 2e-3
    # An early run is one pass over a fraction of the data, independent of the full schedule's length.
    for epochs in (1, 4, 30):
        options = TrainOptions(epochs=epochs, early_fraction=0.25)
        assert options.steps("early", batches_per_epoch=8) == 2
        assert options.steps("full", batches_per_epoch=8) == 8 * epochs
    assert TrainOptions(early_fraction=0.01).steps("early", batches_per_epoch=8) == 1  # at least one step
    with pytest.raises(ConfigError, match="TrainOptions.optimizer must be one of"):
        TrainOptions(optimizer="lbfgs")


def test_folder_of_another_run_is_refused(tmp_path: Path) -> None:
    train_candidates(_setup(tmp_path), [CandidateSpec(("seg",))])
    with pytest.raises(ConfigError, match="different run"):
        train_candidates(_setup(tmp_path, lr=1e-2), [CandidateSpec(("seg",))])


def test_saved_candidate_reloads_bit_identical_and_costs_add_up(tmp_path: Path) -> None:
    setup = _setup(tmp_path, small=True)
    run = train_candidates(setup, [CandidateSpec(("seg", "unrelated")), CandidateSpec(("seg",), "small")])
    for record in run.records.values():
        graph, params = load_candidate(setup, record)
        assert validation_losses(graph, params, setup.tasks, setup.val_data, batch_size=8) == pytest.approx(
            record.val_losses, rel=1e-6
        )
        report = mtgraph.cost(graph, params)
        assert record.macs + sum(record.head_macs.values()) == report.total_macs
        assert (record.macs, record.head_macs, record.params) == network_costs(graph, params)
    full, small = run.records["seg+unrelated"], run.records["seg[small]"]
    assert full.macs == setup.backbone.macs and small.macs == setup.variants["small"][0].macs
    assert small.candidate(0.25).name == "seg[small]" and small.label == "small" and full.label is None
    with pytest.raises(ConfigError, match=r"needs the 'half' backbone; the setup has \['small'\]"):
        train_candidates(setup, [CandidateSpec(("seg",), "half")])
    with pytest.raises(ConfigError, match="letters, digits or '_'"):
        CandidateSpec(("seg",), "x2.5")


def test_keep_best_keeps_the_lowest_mean_validation_epoch(tmp_path: Path) -> None:
    # A large step makes later epochs likely worse than earlier ones.
    setup = _setup(tmp_path, options=TrainOptions(epochs=3, batch_size=8, lr=0.3, eval_batch_size=8, keep="best"))
    record = train_candidates(setup, [CandidateSpec(("unrelated",))]).records["unrelated"]
    means = {e["step"]: e["losses"]["unrelated"] for e in record.evaluations}
    assert [e["epoch"] for e in record.evaluations] == [0, 1, 2]
    assert record.kept_step == min(means, key=lambda s: means[s])
    assert record.val_losses["unrelated"] == min(means.values())
    graph, params = load_candidate(setup, record)
    assert validation_losses(graph, params, setup.tasks, setup.val_data, batch_size=8)["unrelated"] == pytest.approx(
        min(means.values()), rel=1e-6
    )


def test_unknown_executor_and_missing_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = _setup(tmp_path)
    with pytest.raises(ConfigError, match="executor must be one of"):
        train_candidates(setup, [CandidateSpec(("seg",))], executor="threads")
    with pytest.raises(ConfigError, match="listed twice"):
        train_candidates(setup, [CandidateSpec(("seg",)), CandidateSpec(("seg",), phase="early")])
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(ConfigError, match=r"pip install .mtgraph\[ray\]."):
            train_candidates(setup, [CandidateSpec(("seg",))], executor="ray")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (optional: pip install ray)")
def test_ray_path_gives_the_sequential_losses(tmp_path: Path) -> None:  # pragma: no cover - needs ray
    specs = candidate_specs(("seg", "unrelated"))
    seq = train_candidates(_setup(tmp_path / "seq"), specs)
    remote = train_candidates(_setup(tmp_path / "ray"), specs, executor="ray")
    assert {n: r.val_losses for n, r in remote.records.items()} == {n: r.val_losses for n, r in seq.records.items()}


def test_unpicklable_setup_is_refused_for_processes(tmp_path: Path) -> None:
    setup = _setup(tmp_path)
    setup.train_data = _LocalDataset()  # a class defined in a function is not importable by a worker
    with pytest.raises(ConfigError, match="cannot be pickled"):
        train_candidates(setup, [CandidateSpec(("seg",))], executor="process", workers=1)


def _local_dataset_class() -> type:
    class Local(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            raise IndexError

    return Local


_LocalDataset = _local_dataset_class()


@pytest.mark.slow
def test_process_pool_gives_the_sequential_losses(tmp_path: Path) -> None:
    specs = candidate_specs(("seg", "unrelated"))
    seq = train_candidates(_setup(tmp_path / "seq"), specs)
    pool = train_candidates(_setup(tmp_path / "pool"), specs, executor="process", workers=2)
    assert pool.trained == seq.trained
    # Same initial weights, seed and data order in every process (one torch thread each): the same numbers.
    assert {n: r.val_losses for n, r in pool.records.items()} == {n: r.val_losses for n, r in seq.records.items()}
    assert {n: r.evaluations for n, r in pool.records.items()} == {n: r.evaluations for n, r in seq.records.items()}
