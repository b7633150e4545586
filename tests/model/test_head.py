"""The learned head: balanced L2 softmax regression, the stratified split, the scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from resnext_cli.model.head import Head, class_weights, fit_head, score, stratified_split


def t(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


@dataclass(frozen=True)
class Fitted:
    """A numpy Head seen through torch: the tests build and check with torch."""

    head: Head

    @property
    def weight(self) -> torch.Tensor:
        return t(self.head.weight)

    @property
    def bias(self) -> torch.Tensor:
        return t(self.head.bias)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return t(self.head.predict(x.numpy()))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return t(self.head.logits(x.numpy()))


def split(y: torch.Tensor, classes: int, share: float, *, seed: int) -> tuple[torch.Tensor, ...]:
    return tuple(t(part) for part in stratified_split(y.numpy(), classes, share, seed=seed))


def fit(x: torch.Tensor, y: torch.Tensor, classes: int, **options: Any) -> Fitted:
    """fit_head on torch tensors."""
    return Fitted(fit_head(x.numpy(), y.numpy(), classes, **options))


def blobs(per_class: list[int], dim: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features around one centre per class (as pooled ReLU features are)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(len(per_class), dim, generator=g) * 3
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(per_class)])
    x = (centres[y] + 0.3 * torch.randn(len(y), dim, generator=g)).clamp(min=0)
    return x, y


def test_fit_separates_blobs_and_is_deterministic() -> None:
    x, y = blobs([30, 30, 30])
    head = fit(x, y, 3)
    assert (head.predict(x) == y).float().mean() == 1.0
    again = fit(x, y, 3)
    assert torch.equal(head.weight, again.weight) and torch.equal(head.bias, again.bias)
    # Logits on raw features: the head is fc, no standardisation left outside it.
    fc = torch.nn.Linear(64, 3)
    with torch.no_grad():
        fc.weight.copy_(head.weight)
        fc.bias.copy_(head.bias)
        torch.testing.assert_close(fc(x), head.logits(x))


def test_the_fit_minimises_the_regularised_balanced_loss() -> None:
    x, y = blobs([40, 8], dim=16, seed=3)
    head = fit(x, y, 2, c=1.0, max_iter=500)
    # The gradient of the objective at the fitted head is ~0, computed here from scratch.
    mean, std = x.mean(0), x.std(0, unbiased=False)
    w = (head.weight * std).clone().requires_grad_(True)
    b = (head.bias + head.weight @ mean).clone().requires_grad_(True)
    z = (x - mean) / std
    counts = torch.tensor([40.0, 8.0])
    sample = (48 / (2 * counts))[y]
    sample = sample / sample.sum()
    ce = torch.nn.functional.cross_entropy(z @ w.T + b, y, reduction="none")
    loss = (ce * sample).sum() + 0.5 / 48 * (w * w).sum()
    loss.backward()
    assert w.grad is not None and b.grad is not None
    assert float(w.grad.abs().max()) < 1e-3
    assert float(b.grad.abs().max()) < 1e-3


def test_class_weights_balance_the_classes() -> None:
    y = torch.tensor([0, 0, 0, 1])
    assert class_weights(y.numpy(), 2).tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])


def test_stratified_split_holds_out_a_share_of_each_class() -> None:
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    train, held = split(y, 4, 0.2, seed=7)
    assert sorted(torch.cat([train, held]).tolist()) == list(range(18))
    assert torch.bincount(y[held], minlength=4).tolist() == [2, 1, 0, 0]
    assert torch.bincount(y[train], minlength=4).tolist() == [8, 4, 1, 2]
    same = split(y, 4, 0.2, seed=7)
    other = split(y, 4, 0.2, seed=8)
    assert torch.equal(held, same[1])
    assert not torch.equal(held, other[1])


def test_scores_from_a_known_confusion() -> None:
    # Three classes; the head predicts class = argmax of the features themselves.
    head = Head(np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
    truth = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = [0, 0, 0, 1, 1, 0, 1, 1]
    features = torch.nn.functional.one_hot(torch.tensor(predicted), 3).float()
    result = score(head, features.numpy(), truth.numpy(), 3)
    assert result.total == 8
    assert result.accuracy == 4 / 8
    assert result.precision(0) == 3 / 4 and result.recall(0) == 3 / 4
    assert result.precision(1) == 1 / 4 and result.recall(1) == 1 / 2
    assert result.precision(2) is None and result.recall(2) == 0.0
    assert result.confused() == [(2, 1, 2), (0, 1, 1), (1, 0, 1)]


def test_features_of_any_float_type_give_the_float32_head() -> None:
    x, y = blobs([12, 9], dim=8, seed=5)
    head = fit(x, y, 2)
    for dtype in (torch.float64, torch.float16):
        other = fit(x.to(dtype), y, 2)
        assert other.weight.dtype == torch.float32
        assert (other.predict(x) == head.predict(x)).all()
        assert head.logits(x.to(dtype)).dtype == torch.float32
    torch.testing.assert_close(fit(x.double(), y, 2).weight, head.weight)
    torch.testing.assert_close(head.logits(x.double()), head.logits(x))


def test_class_weights_cover_classes_with_no_image() -> None:
    weights = class_weights(np.array([0, 0, 1]), 4)  # classes 2 and 3 have none
    assert weights.dtype == np.float32
    assert weights.tolist() == pytest.approx([3 / 8, 3 / 4, 3 / 4, 3 / 4])


def test_a_warm_start_from_the_fitted_head_stays_there() -> None:
    x, y = blobs([20, 15, 10], dim=12, seed=2)
    head = fit(x, y, 3, max_iter=500)
    # One more step from the optimum, given in raw-feature terms and in float64: the
    # start is carried into the standardised space exactly, so nothing moves.
    start = Head(head.head.weight.astype(np.float64), head.head.bias.astype(np.float64))
    again = fit(x, y, 3, max_iter=1, start=start)
    torch.testing.assert_close(again.weight, head.weight, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(again.bias, head.bias, atol=1e-4, rtol=1e-3)
    cold = fit(x, y, 3, max_iter=1)
    assert float((cold.weight - head.weight).abs().max()) > 1e-2  # one step is not enough


def test_the_fit_reaches_the_optimum_where_twenty_steps_do_not() -> None:
    # Eight overlapping classes in 32 dimensions: L-BFGS needs more than its default 20
    # iterations here, and a line search to take full steps safely.
    x, y = blobs([15] * 8, dim=32, seed=11)
    x = x + 2.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    head = fit(x, y, 8)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    w = (head.weight * std).clone().requires_grad_(True)
    b = (head.bias + head.weight @ mean).clone().requires_grad_(True)
    z = (x - mean) / std
    ce = torch.nn.functional.cross_entropy(z @ w.T + b, y)  # balanced classes: plain mean
    loss = ce + 0.5 / len(y) * (w * w).sum()
    loss.backward()
    assert w.grad is not None and b.grad is not None
    assert float(w.grad.abs().max()) < 1e-4 and float(b.grad.abs().max()) < 1e-4


def test_a_large_share_still_leaves_one_of_each_class_to_train_on() -> None:
    y = torch.tensor([0] * 2 + [1] * 5 + [2])
    train, held = split(y, 3, 0.9, seed=0)
    assert torch.bincount(y[held], minlength=3).tolist() == [1, 4, 0]
    assert torch.bincount(y[train], minlength=3).tolist() == [1, 1, 1]


def test_scores_of_a_class_never_held_out_and_of_few_mistakes() -> None:
    head = Head(np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
    truth = torch.tensor([0, 0, 1])  # nothing of class 2 held out
    features = torch.nn.functional.one_hot(torch.tensor([0, 1, 1]), 3).float()
    result = score(head, features.numpy(), truth.numpy(), 3)
    assert result.recall(2) is None and result.support(2) == 0
    assert result.confused() == [(0, 1, 1)]  # one mistake: no pairs of count 0
    many = Head(np.eye(5, dtype=np.float32), np.zeros(5, np.float32))
    truth = torch.tensor([0, 1, 2, 3, 4, 4])
    predicted = torch.tensor([1, 2, 3, 4, 0, 0])
    result = score(
        many, torch.nn.functional.one_hot(predicted, 5).float().numpy(), truth.numpy(), 5
    )
    assert result.confused() == [(4, 0, 2), (0, 1, 1), (1, 2, 1)]  # three by default
    assert len(result.confused(limit=10)) == 5


def test_features_are_standardised_by_the_population_deviation() -> None:
    # With five images the sample and population deviations differ by 12%: the L2 penalty
    # on the standardised weights, and so the optimum, depends on which one is used.
    x, y = blobs([3, 2], dim=4, seed=4)
    head = fit(x, y, 2, max_iter=500)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    w = (head.weight * std).clone().requires_grad_(True)
    b = (head.bias + head.weight @ mean).clone().requires_grad_(True)
    sample = torch.tensor([5 / 6, 5 / 6, 5 / 6, 5 / 4, 5 / 4])
    sample = sample / sample.sum()
    ce = torch.nn.functional.cross_entropy(((x - mean) / std) @ w.T + b, y, reduction="none")
    loss = (ce * sample).sum() + 0.5 / 5 * (w * w).sum()
    loss.backward()
    assert w.grad is not None and float(w.grad.abs().max()) < 1e-4
