"""A new classification head on frozen features: fit, split, score. Pure numpy, no I/O.

The head is a multinomial logistic regression (softmax over a linear layer), L2-regularised
and with classes balanced, fitted full-batch with L-BFGS on standardised features; nothing
in it is random, so the same features give the same head. The only randomness of a learn
is the held-out split, drawn from a generator seeded by --seed.

numpy, not torch: a re-learn whose features are all cached (or computed through OpenVINO)
never imports torch, whose import alone takes longer than the rest of such a run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from resnext_cli.model import blas

Array = np.ndarray[Any, Any]

# L2 strength on the standardised weights, as scikit-learn's C=1 default: the penalty is
# |W|^2 / (2 C n) beside the mean (class-weighted) cross-entropy.
DEFAULT_C = 1.0
MAX_ITER = 100
# L-BFGS: pairs of steps kept, and when to stop (the largest gradient entry; a change of
# the loss or of the parameters below TOLERANCE_CHANGE), as torch.optim.LBFGS counts them.
HISTORY = 20
TOLERANCE_GRAD = 1e-5
TOLERANCE_CHANGE = 1e-9
# Backtracking: the sufficient decrease a step must make (Armijo), and halvings at most.
_ARMIJO = 1e-4
_HALVINGS = 30


@dataclass(frozen=True)
class Head:
    """fc's weight (classes x features) and bias, float32, acting on raw pooled features."""

    weight: Array
    bias: Array

    def logits(self, features: Array) -> Array:
        """The head's logits for N x D features."""
        logits: Array = np.asarray(features, dtype=np.float32) @ self.weight.T + self.bias
        return logits

    def predict(self, features: Array) -> Array:
        """The most likely class of each row (lowest index on a tie)."""
        best: Array = np.argmax(self.logits(features), axis=1)
        return best


def class_weights(targets: Array, classes: int) -> Array:
    """n / (classes * n_k) for each class k: every class counts as much in the loss."""
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    weights = targets.size / (classes * np.maximum(counts, 1.0))
    return weights.astype(np.float32)


class _Objective:
    """The balanced, L2-regularised cross-entropy of a softmax regression on standardised
    features, and its gradient, over the flat parameters (W row by row, then b)."""

    def __init__(self, z: Array, targets: Array, sample: Array, classes: int, l2: float):
        self.z, self.targets, self.sample = z, targets, sample
        self.classes, self.l2 = classes, l2
        self.rows = np.arange(len(targets))

    def split(self, theta: Array) -> tuple[Array, Array]:
        k, d = self.classes, self.z.shape[1]
        return theta[: k * d].reshape(k, d), theta[k * d :]

    def __call__(self, theta: Array) -> tuple[float, Array]:
        w, b = self.split(theta)
        logits = (self.z @ w.astype(np.float32).T).astype(np.float64) + b
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        total = exp.sum(axis=1)
        ce = np.log(total) - logits[self.rows, self.targets]
        loss = float(self.sample @ ce) + 0.5 * self.l2 * float(np.vdot(w, w))
        g = exp / total[:, None]
        g[self.rows, self.targets] -= 1.0
        g *= self.sample[:, None]
        grad_w = (g.astype(np.float32).T @ self.z).astype(np.float64) + self.l2 * w
        return loss, np.concatenate([grad_w.ravel(), g.sum(axis=0)])


def _lbfgs(objective: _Objective, theta: Array, max_iter: int) -> Array:
    """Minimise *objective* from *theta*: L-BFGS with a backtracking line search."""
    loss, grad = objective(theta)
    if np.abs(grad).max() <= TOLERANCE_GRAD:
        return theta
    steps: deque[tuple[Array, Array, float]] = deque(maxlen=HISTORY)  # (s, y, 1 / y.s)
    for iteration in range(max_iter):
        if iteration == 0:
            direction = -grad
            t = min(1.0, 1.0 / float(np.abs(grad).sum()))
        else:
            direction = _two_loop(grad, steps)
            t = 1.0
        slope = float(grad @ direction)
        if slope > -TOLERANCE_CHANGE:
            break
        for _ in range(_HALVINGS):
            new_theta = theta + t * direction
            new_loss, new_grad = objective(new_theta)
            if new_loss <= loss + _ARMIJO * t * slope:
                break
            t *= 0.5
        else:
            break  # no step decreases the loss: as close as float arithmetic gets
        s, y = new_theta - theta, new_grad - grad
        ys = float(y @ s)
        if ys > 1e-10:
            steps.append((s, y, 1.0 / ys))
        change = abs(new_loss - loss)
        theta, loss, grad = new_theta, new_loss, new_grad
        if np.abs(grad).max() <= TOLERANCE_GRAD or change < TOLERANCE_CHANGE:
            break
        if np.abs(s).max() <= TOLERANCE_CHANGE:
            break
    return theta


def _two_loop(grad: Array, steps: deque[tuple[Array, Array, float]]) -> Array:
    """-H grad, H the inverse Hessian the kept steps estimate."""
    q = -grad
    alphas = []
    for s, y, rho in reversed(steps):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if steps:
        s, y, rho = steps[-1]
        q *= 1.0 / (rho * float(y @ y))  # ys / yy: the scale of the latest curvature
    for (s, y, rho), alpha in zip(steps, reversed(alphas), strict=True):
        beta = rho * float(y @ q)
        q += (alpha - beta) * s
    return q


def fit_head(
    features: Array,
    targets: Array,
    classes: int,
    *,
    c: float = DEFAULT_C,
    max_iter: int = MAX_ITER,
    start: Head | None = None,
) -> Head:
    """Fit a balanced, L2-regularised softmax regression of *targets* on *features*.

    *start* warm-starts the fit (the refit on every image starts from the held-out one).
    """
    x = np.asarray(features, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    n, dim = x.shape
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)  # a constant feature stays put
    z = ((x - mean) / std).astype(np.float32)
    sample = class_weights(targets, classes)[targets].astype(np.float64)
    sample /= sample.sum()
    if start is not None:  # the same head, in the standardised space
        w0 = np.asarray(start.weight, dtype=np.float64) * std
        b0 = np.asarray(start.bias, dtype=np.float64) + np.asarray(start.weight, np.float64) @ mean
    else:
        w0, b0 = np.zeros((classes, dim)), np.zeros(classes)
    objective = _Objective(z, targets, sample, classes, 1.0 / (c * n))
    with blas.one_thread():  # model/blas.py: BLAS's threads only slow these products
        theta = _lbfgs(objective, np.concatenate([w0.ravel(), b0]), max_iter)
    w, b = objective.split(theta)
    weight = w / std
    bias = b - weight @ mean
    return Head(
        np.ascontiguousarray(weight, dtype=np.float32), np.ascontiguousarray(bias, np.float32)
    )


def stratified_split(
    targets: Array, classes: int, share: float, *, seed: int
) -> tuple[Array, Array]:
    """Indices (train, held out): about *share* of each class held out, at least one of
    each class left to train on, none held out of a class with one image."""
    generator = np.random.default_rng(seed)
    train: list[Array] = []
    held: list[Array] = []
    for k in range(classes):
        members = np.flatnonzero(targets == k)
        members = members[generator.permutation(members.size)]
        take = max(min(round(members.size * share), members.size - 1), 0)
        held.append(members[:take])
        train.append(members[take:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


@dataclass(frozen=True)
class Score:
    """How a head did on held-out images."""

    confusion: Array  # [true, predicted] counts, classes x classes

    @property
    def total(self) -> int:
        """Images scored."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Share of images whose predicted class is their class."""
        return float(np.trace(self.confusion)) / self.total if self.total else 0.0

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
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        pairs = [
            (int(t), int(p), int(off[t, p]))
            for t, p in zip(*np.nonzero(off > 0), strict=True)  # row-major: ties in class order
        ]
        pairs.sort(key=lambda pair: -pair[2])
        return pairs[:limit]


def score(head: Head, features: Array, targets: Array, classes: int) -> Score:
    """The confusion of *head* on held-out *features* with their true *targets*."""
    predicted = head.predict(features)
    flat = np.asarray(targets, dtype=np.int64) * classes + predicted
    confusion = np.bincount(flat, minlength=classes * classes).reshape(classes, classes)
    return Score(confusion.astype(np.int64))
