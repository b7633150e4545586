"""A new classification head on frozen features: fit, split, score. Pure torch, no I/O.

The head is a multinomial logistic regression (softmax over a linear layer), L2-regularised
and with classes balanced, fitted full-batch with L-BFGS on standardised features; nothing
in it is random, so the same features give the same head. The only randomness of a learn
is the held-out split, drawn from a generator seeded by --seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# L2 strength on the standardised weights, as scikit-learn's C=1 default: the penalty is
# |W|^2 / (2 C n) beside the mean (class-weighted) cross-entropy.
DEFAULT_C = 1.0
MAX_ITER = 100
# Below this many multiply-adds per pass (images x features x classes), one thread is
# faster: the passes are short, and threads that wait on each other at every small op
# slow them down many times over on a busy machine.
_ONE_THREAD_WORK = 100_000_000


@contextmanager
def _threads(work: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if work < _ONE_THREAD_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Head:
    """fc's weight (classes x features) and bias, acting on raw pooled features."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits for N x D features."""
        return features.to(self.weight.dtype) @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The most likely class of each row (lowest index on a tie)."""
        return self.logits(features).argmax(dim=1)


def class_weights(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """n / (classes * n_k) for each class k: every class counts as much in the loss."""
    counts = torch.bincount(targets, minlength=classes).to(torch.float64)
    weights = targets.numel() / (classes * counts.clamp(min=1))
    return weights.to(torch.float32)


def fit_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    classes: int,
    *,
    c: float = DEFAULT_C,
    max_iter: int = MAX_ITER,
    start: Head | None = None,
) -> Head:
    """Fit a balanced, L2-regularised softmax regression of *targets* on *features*.

    *start* warm-starts the fit (the refit on every image starts from the held-out one).
    """
    x = features.to(torch.float32)
    n, _dim = x.shape
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant feature stays put
    z = (x - mean) / std
    sample_weight = class_weights(targets, classes)[targets]
    sample_weight = sample_weight / sample_weight.sum()
    l2 = 1.0 / (c * n)
    if start is not None:  # the same head, in the standardised space
        w = (start.weight.to(torch.float32) * std).clone()
        b = (start.bias.to(torch.float32) + start.weight.to(torch.float32) @ mean).clone()
    else:
        w = torch.zeros(classes, x.shape[1])
        b = torch.zeros(classes)
    w.requires_grad_(True)
    b.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-5,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = z @ w.T + b
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        total = (loss * sample_weight).sum() + 0.5 * l2 * (w * w).sum()
        total.backward()  # type: ignore[no-untyped-call]
        return total

    with torch.enable_grad(), _threads(n * x.shape[1] * classes):
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        weight = w.detach() / std
        bias = b.detach() - weight @ mean
    return Head(weight.contiguous(), bias.contiguous())


def stratified_split(
    targets: torch.Tensor, classes: int, share: float, *, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held out): about *share* of each class held out, at least one of
    each class left to train on, none held out of a class with one image."""
    generator = torch.Generator().manual_seed(seed)
    train: list[torch.Tensor] = []
    held: list[torch.Tensor] = []
    for k in range(classes):
        members = torch.nonzero(targets == k).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        take = min(round(members.numel() * share), members.numel() - 1)
        take = max(take, 0)
        held.append(members[:take])
        train.append(members[take:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(held)).values


@dataclass(frozen=True)
class Score:
    """How a head did on held-out images."""

    confusion: torch.Tensor  # [true, predicted] counts, classes x classes

    @property
    def total(self) -> int:
        """Images scored."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Share of images whose predicted class is their class."""
        return float(self.confusion.diag().sum()) / self.total if self.total else 0.0

    def precision(self, k: int) -> float | None:
        """Of the images predicted k, the share that are k (None: none predicted k)."""
        predicted = int(self.confusion[:, k].sum())
        return int(self.confusion[k, k]) / predicted if predicted else None

    def recall(self, k: int) -> float | None:
        """Of the images of class k, the share predicted k (None: none held out)."""
        support = int(self.confusion[k].sum())
        return int(self.confusion[k, k]) / support if support else None

    def support(self, k: int) -> int:
        """Held-out images of class k."""
        return int(self.confusion[k].sum())

    def confused(self, limit: int = 3) -> list[tuple[int, int, int]]:
        """The most frequent mistakes as (true, predicted, count), most frequent first."""
        off = self.confusion.clone()
        off.fill_diagonal_(0)
        pairs = [
            (int(t), int(p), int(off[t, p]))
            for t, p in torch.nonzero(off > 0).tolist()  # row-major: ties in class order
        ]
        pairs.sort(key=lambda pair: -pair[2])
        return pairs[:limit]


def score(head: Head, features: torch.Tensor, targets: torch.Tensor, classes: int) -> Score:
    """The confusion of *head* on held-out *features* with their true *targets*."""
    predicted = head.predict(features)
    confusion = torch.zeros(classes, classes, dtype=torch.int64)
    confusion.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
    return Score(confusion)
