"""Attention-based knowledge amalgamation (ATT), papers/000 §3.3 eq. 2.

After the task nodes of a group are averaged into a new group node, the group
node is trained to reproduce each task node's features through a per-task
channel attention:

    L_KA = 1/N Σ_i mean( (F_i − ATT_i(𝓕) ⊙ 𝓕)² )

with ``F_i`` the (frozen) output of task node ``i``, ``𝓕`` the group node's
output on the same input and ``ATT_i`` a per-task network "of two linear
layers with an intermediate ReLU activation and a final sigmoid activation"
giving a ``1 × C`` vector that scales 𝓕's channels.

Choices where the paper is silent (each stated once here):

* **Input of ATT_i.** A ``1 × C`` output from two linear layers needs a
  vector input: 𝓕 is global-average-pooled over space first (as the
  squeeze-and-excitation attention of Ye et al. 2019 does), one vector per
  image, so the attention is per image and per channel.
* **Hidden width** C: the paper does not give it; the authors' released
  code uses two ``C → C`` linear layers, and so do we by default
  (``reduction = 1``). ``reduction = r`` gives ``max(C // r, min_hidden)``
  (``min_hidden = 1``); mtgraph used C/4 before following the released code.
* **Pooling input** is what the released code does too (spatial mean of 𝓕).
* **The 1/N of eq. 2** is kept: the released code sums the N per-task MSE
  terms instead. ATT has its own Adam, which is invariant to a constant
  factor on its loss except for the relative size of Adam's epsilon and of
  the (L2) weight decay, both small.
* **Squared difference** is averaged over every element (batch, channel,
  space) of each task's term, then averaged over the N tasks, so the loss is
  on the scale of an MSE whatever the feature size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.macs import evaluation_mode
from mtgraph.errors import ConfigError, TrainError
from mtgraph.frontend import primary

__all__ = ["AmalgamationJob", "ChannelAttention", "amalgamate", "amalgamation_loss", "attention_networks"]


class ChannelAttention(nn.Module):
    """``ATT_i``: pooled group features → Linear → ReLU → Linear → sigmoid → ``[N, C]`` weights.

    Args:
        channels: C, the group node's output channels.
        reduction: the hidden width is ``max(channels // reduction, min_hidden)``
            (default 1: width C, as the authors' released code).
        min_hidden: the smallest hidden width.

    Raises:
        ConfigError: an argument < 1 (here), or features without ``channels`` channels (in ``forward``).

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.mtsl import ChannelAttention
        >>> attention = ChannelAttention(16)
        >>> weights = attention(torch.randn(2, 16, 5, 5))
        >>> weights.shape, attention.fc1.out_features, bool(((weights > 0) & (weights < 1)).all())
        (torch.Size([2, 16]), 16, True)
        >>> ChannelAttention(16, reduction=4).fc1.out_features
        4
    """

    def __init__(self, channels: int, *, reduction: int = 1, min_hidden: int = 1) -> None:
        super().__init__()
        if channels < 1 or reduction < 1 or min_hidden < 1:
            raise ConfigError(
                f"ChannelAttention needs channels, reduction and min_hidden >= 1, got {channels}, {reduction}, {min_hidden}"
            )
        hidden = max(channels // reduction, min_hidden)
        self.channels = channels
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, group_features: torch.Tensor) -> torch.Tensor:
        """Attention weights in ``(0, 1)``, shape ``[N, C]``, from features ``[N, C, *spatial]``."""
        if group_features.ndim < 2 or group_features.shape[1] != self.channels:
            raise ConfigError(
                f"ChannelAttention expects features [N, {self.channels}, ...], got {list(group_features.shape)}"
            )
        pooled = (
            group_features.mean(dim=tuple(range(2, group_features.ndim))) if group_features.ndim > 2 else group_features
        )
        return torch.sigmoid(self.fc2(self.relu(self.fc1(pooled))))


def attention_networks(channels: int, count: int, *, reduction: int = 1, min_hidden: int = 1) -> nn.ModuleList:
    """One fresh :class:`ChannelAttention` per task node of a group.

    Args:
        channels: C, the group node's output channels.
        count: the number of task nodes in the group.
        reduction: as for :class:`ChannelAttention`.
        min_hidden: as for :class:`ChannelAttention`.

    Returns:
        ``count`` independent attention networks.

    Raises:
        ConfigError: ``channels``, ``reduction`` or ``min_hidden`` < 1.

    Examples:
        >>> from mtgraph.strategies.mtsl import attention_networks
        >>> networks = attention_networks(16, 3)
        >>> len(networks), networks[0] is networks[1]
        (3, False)
    """
    return nn.ModuleList(ChannelAttention(channels, reduction=reduction, min_hidden=min_hidden) for _ in range(count))


def amalgamation_loss(
    group_features: torch.Tensor,
    task_features: Sequence[torch.Tensor],
    attentions: Sequence[nn.Module],
) -> torch.Tensor:
    """Eq. 2: mean over tasks of the mean squared ``F_i − ATT_i(𝓕) ⊙ 𝓕``.

    Args:
        group_features: 𝓕, the group node's output ``[N, C, *spatial]``.
        task_features: ``F_i`` per task node (same shape as 𝓕; detached
            targets: the task nodes are teachers).
        attentions: ``ATT_i`` per task node, each mapping 𝓕 to ``[N, C]``.

    Returns:
        A 0-d tensor (differentiable in 𝓕 and the attention networks).

    Raises:
        ConfigError: no task features, not one attention network per task
            node, or task and group features of different shapes.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.mtsl import amalgamation_loss, attention_networks
        >>> group = torch.randn(2, 4, 3, 3)
        >>> loss = amalgamation_loss(group, [group, torch.zeros(2, 4, 3, 3)], attention_networks(4, 2))
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
    """
    if len(task_features) != len(attentions) or not task_features:
        raise ConfigError(
            f"amalgamation needs one attention network per task node, got {len(task_features)} task features "
            f"and {len(attentions)} attention networks"
        )
    terms = []
    for target, attention in zip(task_features, attentions):
        if target.shape != group_features.shape:
            raise ConfigError(
                f"task node features {list(target.shape)} and group node features {list(group_features.shape)} differ"
            )
        weights = attention(group_features)
        scale = weights.reshape(*weights.shape, *([1] * (group_features.ndim - 2)))
        terms.append(((target - scale * group_features) ** 2).mean())
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class AmalgamationJob:
    """One new group node to train by ATT.

    Attributes:
        label: e.g. ``"b2.S+E"`` (for errors and logs).
        source: computes the group node's input from a batch of images
            (the frozen network up to the node's source; no gradients).
        teachers: the removed task nodes' modules, in task order (frozen).
        student: the group node's module (trained).
        prefix: the modules ``source`` runs (kept in eval mode, no gradients).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from mtgraph.strategies.mtsl import AmalgamationJob, amalgamate
        >>> _ = torch.manual_seed(0)
        >>> teachers = (nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3))  # two task nodes reading the input
        >>> job = AmalgamationJob("b0.a+b", source=lambda x: x, teachers=teachers, student=nn.Conv2d(3, 4, 3))
        >>> job.label, len(job.teachers), job.prefix
        ('b0.a+b', 2, ())
    """

    label: str
    source: Callable[[torch.Tensor], torch.Tensor]
    teachers: tuple[nn.Module, ...]
    student: nn.Module
    prefix: tuple[nn.Module, ...] = ()


def _cycle(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def amalgamate(
    jobs: Sequence[AmalgamationJob],
    data: Dataset,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    reduction: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Train every job's group node with eq. 2 for ``steps`` Adam steps; return the loss per step.

    Only the network up to the task nodes runs: each job's source (frozen,
    eval mode), its teachers (frozen, eval mode: their outputs are fixed
    targets and their BatchNorm statistics must not move) and its student
    (train mode, so its BatchNorm statistics adapt to the averaged weights).
    The jobs' losses are summed: they share no parameters, so this trains
    each as if alone. Attention networks are created here (from ``seed``) and
    discarded afterwards: they only exist to shape the transfer. Global RNG
    state is left as it was.

    LOCAL WORKAROUND (not :func:`mtgraph.train.fit`): ``fit`` trains a whole
    compiled MTGraph on task losses; ATT trains a group node and attention
    networks against frozen teachers on a partial network, an objective
    ``fit`` cannot express. This is the smallest loop that does it: Adam,
    seeded shuffling, nothing else (no checkpoints, no DDP).

    Args:
        jobs: the group nodes to train.
        data: map-style dataset whose items start with an image.
        steps: Adam steps (0: nothing is trained).
        batch_size: images per step.
        lr: Adam's learning rate.
        weight_decay: Adam's weight decay.
        reduction: hidden-width reduction of the attention networks.
        seed: seeds the attention networks and the data order.
        device: where to train.

    Returns:
        The summed loss of every step.

    Raises:
        ConfigError: ``steps < 0``, ``batch_size < 1`` or a group node whose output has no channel dimension.
        TrainError: the loss became NaN or infinite.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from mtgraph.strategies.mtsl import AmalgamationJob, amalgamate
        >>> _ = torch.manual_seed(0)
        >>> teachers = (nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3))  # two task nodes reading the input
        >>> job = AmalgamationJob("b0.a+b", source=lambda x: x, teachers=teachers, student=nn.Conv2d(3, 4, 3))
        >>> losses = amalgamate([job], TensorDataset(torch.randn(8, 3, 8, 8)), steps=5, batch_size=4, lr=1e-2)
        >>> len(losses), losses[-1] < losses[0]
        (5, True)
    """
    if steps < 0 or batch_size < 1:
        raise ConfigError(f"amalgamation needs steps >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    losses: list[float] = []
    if steps == 0 or not jobs:
        return losses
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        attentions = []
        for job in jobs:
            channels = _probe_channels(job, data, device)
            attentions.append(attention_networks(channels, len(job.teachers), reduction=reduction).to(device))
        trainable = [p for job, att in zip(jobs, attentions) for p in (*job.student.parameters(), *att.parameters())]
        optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        frozen = [m for job in jobs for m in (*job.teachers, *job.prefix)]
        students = [job.student for job in jobs]
        flags = {m: m.training for s in students for m in s.modules()}
        try:
            for s in students:
                s.train()
            batches = _cycle(loader)
            for _ in range(steps):
                images = next(batches)[0].to(device)
                total = torch.zeros((), device=device)
                for job, att in zip(jobs, attentions):
                    with evaluation_mode(*frozen):
                        x = job.source(images)
                        targets = [primary(teacher(x)) for teacher in job.teachers]
                    total = total + amalgamation_loss(primary(job.student(x)), targets, list(att))
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                value = float(total.detach())
                if not math.isfinite(value):
                    raise TrainError(f"amalgamation loss became {value} while training {[j.label for j in jobs]}")
                losses.append(value)
        finally:
            for m, flag in flags.items():
                m.training = flag
    return losses


def _probe_channels(job: AmalgamationJob, data: Dataset, device: torch.device) -> int:
    """Channel count of the group node's output, from one image."""
    image = data[0][0].unsqueeze(0).to(device)
    with evaluation_mode(job.student, *job.teachers, *job.prefix):
        out = primary(job.student(job.source(image)))
    if out.ndim < 2:
        raise ConfigError(f"group node {job.label} outputs shape {list(out.shape)}; ATT needs [N, C, ...] features")
    return int(out.shape[1])
