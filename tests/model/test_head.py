"""The learned head: balanced L2 softmax regression, the stratified split, the scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pytest
import torch

from resnext_cli.model.head import (
    Head,
    _lbfgs,
    _Objective,
    class_weights,
    fit_head,
    score,
    stratified_split,
)


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


# -- the optimiser, against torch.optim.LBFGS ------------------------------------------------
#
# The module's L-BFGS keeps HISTORY=20 pairs and stops as torch.optim.LBFGS does (largest
# gradient entry <= 1e-5; directional derivative > -1e-9; change of the loss or of the
# parameters below 1e-9), first step min(1, 1/|g|_1), then unit steps, each checked by
# an Armijo backtracking line search. Where no step needs shortening (smooth functions
# that L-BFGS never overshoots), that is torch's LBFGS with lr=1 and no line search,
# point for point: the same iterates and the same number of evaluations.


class Recorded:
    """f and its gradient (by torch autograd, float64) at every point the optimiser asks."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.points: list[np.ndarray[Any, Any]] = []

    def __call__(self, theta: np.ndarray[Any, Any]) -> tuple[float, np.ndarray[Any, Any]]:
        self.points.append(theta.copy())
        p = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        loss = self.f(p)
        loss.backward()
        assert p.grad is not None
        return float(loss.detach()), p.grad.numpy().copy()


def lbfgs(f: Any, start: list[float] | np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], int]:
    """The module's optimiser on *f* from *start*: the result and the evaluations it made."""
    objective = Recorded(f)
    result = _lbfgs(cast(Any, objective), np.array(start, dtype=np.float64), 1000)
    return result, len(objective.points)


def torch_lbfgs(
    f: Any, start: list[float] | np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], int]:
    """torch.optim.LBFGS with the module's documented settings and fixed unit steps."""
    p = torch.tensor(np.array(start, dtype=np.float64), requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [p],
        lr=1,
        max_iter=1000,
        max_eval=10**6,
        tolerance_grad=1e-5,
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn=None,
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = f(p)
        loss.backward()
        return loss

    optimiser.step(closure)
    return p.detach().numpy(), int(optimiser.state[p]["func_evals"])


def quartic(
    dim: int, seed: int, *, scale: float = 1.0, spread: float = 3.0, offset: float = 0.0
) -> Any:
    """sum_i c_i ((Q theta - m)_i)^4 + offset, Q a rotation: flatter towards its minimum,
    so L-BFGS's unit steps fall short of it and none of those below is ever shortened."""
    g = np.random.default_rng(seed)
    q = torch.from_numpy(np.linalg.qr(g.standard_normal((dim, dim)))[0])
    c = torch.from_numpy(scale * np.geomspace(0.2, 5.0, dim))
    m = torch.from_numpy(spread * g.standard_normal(dim))
    return lambda p: c @ (q @ p - m) ** 4 + offset


@pytest.mark.parametrize(
    ("f", "start"),
    [
        # |g|_1 in the hundreds: a first step of 1/|g|_1; 24 iterations, all 20 pairs used.
        (quartic(10, 0), np.zeros(10)),
        # |g|_1 < 1: the first step is 1, not 1/|g|_1.
        (quartic(4, 2, spread=0.3), np.zeros(4)),
        # From 0.8125 to -0.8125 in the first step (t = 1/|g|_1 = 1/4 from (1, 1) lands at
        # (0.75, 0.25)): the loss changed by 1.625, not by less than 1e-9, though the two
        # losses sum to 0.
        (lambda p: 0.5 * (p[0] ** 2 + 3 * p[1] ** 2) - 1.1875, [1.0, 1.0]),
        # One long first step with |g|_1 = 1000: Armijo's decrease is c * t * slope.
        (lambda p: 0.5 * p @ p, [1000.0]),
        # The largest gradient entry is exactly 1e-5 (torch's <=): nothing to do.
        (lambda p: 0.5 * p @ p, np.full(100, 1e-5)),
        # 2e-5 > 1e-5, but the directional derivative -4e-10 > -1e-9: no step either.
        (lambda p: 0.5 * p @ p, [2e-5, 0.0, 0.0]),
    ],
    ids=[
        "history",
        "unit-first-step",
        "loss-crosses-zero",
        "long-first-step",
        "gradient-at-tolerance",
        "slope-above-tolerance",
    ],
)
def test_lbfgs_takes_torchs_steps_and_stops_where_torch_stops(f: Any, start: Any) -> None:
    result, evaluations = lbfgs(f, start)
    expected, expected_evaluations = torch_lbfgs(f, start)
    assert evaluations == expected_evaluations
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-12)


def test_a_step_that_does_not_lower_the_loss_enough_is_halved() -> None:
    # f = 2 theta^2 from 0.5: g = 2, so the first step t = min(1, 1/|g|_1) = 0.5 lands on
    # -0.5, where the loss is the same, short of Armijo's decrease (1e-4 * t * -g^2); half
    # of it lands on 0, the minimum, where the gradient is 0.
    objective = Recorded(lambda p: 2 * p @ p)
    result = _lbfgs(cast(Any, objective), np.array([0.5]), 100)
    assert [float(p[0]) for p in objective.points] == [0.5, -0.5, 0.0]
    assert result.tolist() == [0.0]


def documented_loss(
    z: torch.Tensor, y: torch.Tensor, classes: int, w: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """The module's objective written from its docstrings, in float64: the balanced mean
    cross-entropy (sample k weighted n / (classes * n_k), the weights summing to 1) plus
    |W|^2 / (2 C n), C = 1 as scikit-learn's default; the bias is not penalised."""
    n = len(y)
    counts = torch.bincount(y, minlength=classes).double()
    sample = (n / (classes * counts))[y]
    sample = sample / sample.sum()
    ce = torch.nn.functional.cross_entropy(z @ w.T + b, y, reduction="none")
    return (sample * ce).sum() + 0.5 / n * (w * w).sum()


def test_the_objective_is_the_documented_loss_and_its_gradient() -> None:
    # Three classes of 6, 4 and 2 images; parameters at two scales, the second giving
    # logits in the thousands, the rows' largest ones thousands apart.
    g = np.random.default_rng(0)
    z = g.standard_normal((12, 5)).astype(np.float32)
    y = np.array([0] * 6 + [1] * 4 + [2] * 2)
    sample = np.array([12 / 18] * 6 + [12 / 12] * 4 + [12 / 6] * 2)
    objective = _Objective(z, y, sample / sample.sum(), 3, 1 / 12)
    for scale in (1.0, 1000.0):
        theta = scale * g.standard_normal(3 * 5 + 3)
        loss, grad = objective(theta)
        p = torch.tensor(theta, requires_grad=True)
        expected = documented_loss(t(z).double(), t(y), 3, p[:15].reshape(3, 5), p[15:])
        expected.backward()
        assert p.grad is not None
        assert np.isfinite(loss) and loss == pytest.approx(float(expected.detach()), rel=1e-5)
        np.testing.assert_allclose(grad, p.grad.numpy(), rtol=1e-4, atol=1e-4 * scale)


def test_the_head_depends_on_the_feature_values_not_their_type() -> None:
    # float32 and float16 features are widened to float64 before anything is computed:
    # the same values in float64 give the very same head.
    x, y = blobs([12, 9], dim=8, seed=5)
    for dtype in (torch.float32, torch.float16):
        low = x.to(dtype)
        narrow, wide = fit(low, y, 2), fit(low.double(), y, 2)
        assert torch.equal(narrow.weight, wide.weight) and torch.equal(narrow.bias, wide.bias)


def test_class_numbers_of_any_numeric_type_give_the_same_head_and_score() -> None:
    x, y = blobs([10, 8, 6], dim=6, seed=1)
    head = fit_head(x.numpy(), y.numpy(), 3)
    for dtype in (np.uint8, np.int32, np.float64):
        other = fit_head(x.numpy(), y.numpy().astype(dtype), 3)
        assert np.array_equal(other.weight, head.weight)
        assert np.array_equal(other.bias, head.bias)
    # Twenty classes, their numbers in uint8: true * classes + predicted is past 255.
    eye = Head(np.eye(20, dtype=np.float32), np.zeros(20, np.float32))
    truth = np.array([19, 19, 18, 0], dtype=np.uint8)
    predicted = np.array([19, 17, 18, 19])
    result = score(eye, np.eye(20, dtype=np.float32)[predicted], truth, 20)
    expected = np.zeros((20, 20), dtype=np.int64)
    for true, guess in [(19, 19), (19, 17), (18, 18), (0, 19)]:
        expected[true, guess] += 1
    assert np.array_equal(result.confusion, expected)
    # The confusion holds counts: integers, not floats.
    assert result.confusion.dtype == np.int64


def test_a_feature_that_varies_by_no_more_than_1e_6_is_not_scaled_up() -> None:
    # Feature 0 tells the classes apart by 2e-6 only (a deviation of exactly 1e-6): float
    # noise on a constant, left unscaled as scikit-learn's StandardScaler leaves a
    # constant; blown up to unit variance it would take a weight in the millions.
    x, y = blobs([6, 6], dim=4, seed=8)
    x = x.double()
    x[:, 0] = t(np.where(y.numpy() == 0, 0.0, 2e-6))
    assert float(np.std(x[:, 0].numpy())) == 1e-6
    head = fit(x, y, 2)
    assert float(head.weight[:, 0].abs().max()) < 1.0


def test_one_iteration_from_a_warm_start_is_torchs_first_lbfgs_step() -> None:
    # Feature 2 is constant: standardised by a deviation of 1 (scikit-learn's
    # StandardScaler too), so its weight of 40 is penalised as 40.
    x, y = blobs([9, 6], dim=5, seed=6)
    x = x.double()
    x[:, 2] = 1.5
    g = np.random.default_rng(3)
    weight = g.standard_normal((2, 5)).astype(np.float32)
    weight[:, 2] = 40.0
    start = Head(weight, g.standard_normal(2).astype(np.float32))
    one = fit_head(x.numpy(), y.numpy(), 2, max_iter=1, start=start)
    # The same step by torch.optim.LBFGS (its first: -g scaled by min(1, 1/|g|_1)) on the
    # documented loss in the standardised space.
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std[2] = 1.0
    w0, b0 = t(weight).double() * std, t(start.bias).double() + t(weight).double() @ mean
    p = torch.cat([w0.flatten(), b0]).requires_grad_(True)
    optimiser = torch.optim.LBFGS([p], lr=1, max_iter=1, line_search_fn=None)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = documented_loss((x - mean) / std, y, 2, p[:10].reshape(2, 5), p[10:])
        loss.backward()
        return loss

    optimiser.step(closure)
    w1, b1 = p.detach()[:10].reshape(2, 5) / std, p.detach()[10:]
    assert float((w1 - w0 / std).abs().max()) > 1e-2  # the step moved the head
    torch.testing.assert_close(t(one.weight).double(), w1, rtol=0, atol=1e-5)
    torch.testing.assert_close(t(one.bias).double(), b1 - w1 @ mean, rtol=0, atol=1e-5)
