"""Forms of accuracy against compute: bounded least-squares fits, held-out choice, bootstrap.

With v = log10(c / c0), c0 the smallest compute of the fitted points:

- log-linear: acc = a + b·v. a is the accuracy at c0, b the accuracy gained per tenfold
  compute. Fitted as its values at the two ends of the fitted range, each in [0, 1], so the
  line stays in [0, 1] there; beyond the range it is clipped to [0, 1].
- power (saturating): acc = A − (A − a)·(c / c0)^(−α), the form A − B·c^(−α) with
  B = (A − a)·c0^α. a is the accuracy at c0, A the ceiling approached as compute grows, α
  the rate; a, A ∈ [0, 1] and α ∈ [ALPHA_MIN, ALPHA_MAX], so every prediction at c ≥ c0
  lies between a and A (below c0 it is clipped to [0, 1]).

Both are least squares on the points' mean accuracies: with the same problems at every
point that is least squares over problems × points. For a fixed α the power form is linear
in (a, A), so each fit is least squares in two coefficients over the box [0, 1]², which has
a closed form (the unconstrained optimum if inside the box, else the best of the box's four
edges, each a clipped one-dimensional optimum); α is profiled on a log grid and refined by
golden section. Everything is vectorized over leading axes, so the thousands of fits of a
bootstrap run as a few array operations (a loop of scipy.optimize calls would take minutes).

The form of a curve is chosen by held-out error: leave one budget out (each but the smallest),
fit the rest, predict it; the lowest root-mean-square error wins, ties to the form with fewer
coefficients.
Intervals are percentile intervals over problems resampled with replacement.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

ALPHA_MIN, ALPHA_MAX = 0.01, 10.0  # power-form rate per tenfold compute: flat … a step within a decade
_ALPHA_GRID = np.geomspace(ALPHA_MIN, ALPHA_MAX, 61)
_GOLDEN_STEPS = 30  # the bracket shrinks by 0.618 per step: 5e-7 of its start
_INVPHI = (np.sqrt(5) - 1) / 2


def _box_lstsq2(ff, gg, fg, fy, gy, yy):
    """argmin over p, q ∈ [0, 1] of ||y − p·f − q·g||², from the Gram terms; every argument
    broadcasts. Returns (p, q, residual sum of squares)."""
    sse = lambda p, q: yy - 2 * p * fy - 2 * q * gy + p * p * ff + q * q * gg + 2 * p * q * fg  # noqa: E731
    with np.errstate(divide="ignore", invalid="ignore"):
        det = ff * gg - fg * fg
        p, q = (gg * fy - fg * gy) / det, (ff * gy - fg * fy) / det
        inside = (p >= 0) & (p <= 1) & (q >= 0) & (q <= 1) & (np.abs(det) > 1e-12 * ff * gg)
        best = np.where(inside, sse(p, q), np.inf)
        # else the best of the four edges: one coefficient at 0 or 1, the other's 1-D optimum clipped
        for edge_p, edge_q in ((0.0, np.clip(gy / gg, 0, 1)), (1.0, np.clip((gy - fg) / gg, 0, 1)),
                               (np.clip(fy / ff, 0, 1), 0.0), (np.clip((fy - fg) / ff, 0, 1), 1.0)):
            error = np.nan_to_num(sse(edge_p, edge_q), nan=np.inf)  # an undefined candidate never wins
            better = error < best
            p, q, best = np.where(better, edge_p, p), np.where(better, edge_q, q), np.where(better, error, best)
    return p, q, np.maximum(best, 0.0)


@dataclass(frozen=True)
class Form:
    """One form; coefficients are relative to u0 = log10(c0), the fitted points' smallest compute."""

    name: str
    coefficients: tuple[str, ...]
    equation: str

    @property
    def min_points(self) -> int:
        """Distinct computes a fit needs (the free coefficients)."""
        return 2 if self.name == "log-linear" else 3

    def fit(self, u: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Coefficients [..., k] of the fit to y [..., n] at u = log10(compute) [n]."""
        u, y = np.asarray(u, float), np.asarray(y, float)
        if len(np.unique(u)) < self.min_points:
            raise ValueError(f"the {self.name} form needs {self.min_points} distinct computes, got {len(np.unique(u))}")
        v = u - u.min()
        return _fit_log_linear(v, y) if self.name == "log-linear" else _fit_power(v, y)

    def predict(self, coefficients: np.ndarray, u: np.ndarray, u0: float) -> np.ndarray:
        """Accuracy [..., m] at u [m] from coefficients [..., k]."""
        c = np.asarray(coefficients, float)[..., None, :]
        v = np.asarray(u, float) - u0
        if self.name == "log-linear":
            out = c[..., 0] + c[..., 1] * v
        else:
            out = c[..., 1] + (c[..., 0] - c[..., 1]) * 10.0 ** (-c[..., 2] * v)
        return np.clip(out, 0.0, 1.0)


FORMS = {
    "log-linear": Form("log-linear", ("a", "b"), "a + b·log10(c/c0)"),
    "power": Form("power", ("a", "ceiling", "alpha"), "A − (A − a)·(c/c0)^(−α) = A − B·c^(−α)"),
}


def _fit_log_linear(v: np.ndarray, y: np.ndarray) -> np.ndarray:
    t = v / v.max()
    f, g = 1 - t, t  # y ≈ p·f + q·g: p, q the line's values at the range's ends
    p, q, _ = _box_lstsq2(f @ f, g @ g, f @ g, y @ f, y @ g, (y * y).sum(-1))
    return np.stack([p, (q - p) / v.max()], axis=-1)


def _power_at(v: np.ndarray, y: np.ndarray, alpha: np.ndarray):
    """(a, A, sse) of the best power fit at rate `alpha` [...] for y [..., n]."""
    z = 10.0 ** (-alpha[..., None] * v)  # [..., n]: 1 at c0, toward 0 as compute grows
    f, g = z, 1 - z  # y ≈ a·z + A·(1 − z)
    return _box_lstsq2((f * f).sum(-1), (g * g).sum(-1), (f * g).sum(-1), (y * f).sum(-1), (y * g).sum(-1),
                       (y * y).sum(-1))


def _fit_power(v: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = 10.0 ** (-_ALPHA_GRID[:, None] * v)  # [grid, n], the same for every fit: Gram terms by matmul
    fy = y @ z.T  # [..., grid]
    _, _, sse = _box_lstsq2((z * z).sum(-1), ((1 - z) ** 2).sum(-1), (z * (1 - z)).sum(-1), fy,
                            y.sum(-1)[..., None] - fy, (y * y).sum(-1)[..., None])
    i = np.argmin(sse, axis=-1)  # [...]
    lo = np.log(_ALPHA_GRID[np.maximum(i - 1, 0)])
    hi = np.log(_ALPHA_GRID[np.minimum(i + 1, len(_ALPHA_GRID) - 1)])
    at = lambda log_alpha: _power_at(v, y, np.exp(log_alpha))[2]  # noqa: E731
    x1, x2 = hi - _INVPHI * (hi - lo), lo + _INVPHI * (hi - lo)
    e1, e2 = at(x1), at(x2)
    for _ in range(_GOLDEN_STEPS):  # golden section in log α within the best grid cell's neighbours
        left = e1 <= e2  # the minimum lies in [lo, x2]: x1 becomes the new x2
        lo, hi = np.where(left, lo, x1), np.where(left, x2, hi)
        fresh = np.where(left, hi - _INVPHI * (hi - lo), lo + _INVPHI * (hi - lo))
        e_fresh = at(fresh)
        x1, x2 = np.where(left, fresh, x2), np.where(left, x1, fresh)
        e1, e2 = np.where(left, e_fresh, e2), np.where(left, e1, e_fresh)
    refined = np.exp((lo + hi) / 2)
    grid_best = _ALPHA_GRID[i]
    alpha = np.where(at(np.log(refined)) <= np.take_along_axis(sse, i[..., None], -1)[..., 0], refined, grid_best)
    a, ceiling, _ = _power_at(v, y, alpha)
    return np.stack([a, ceiling, alpha], axis=-1)


def heldout_rmse(form: Form, u: np.ndarray, y: np.ndarray) -> float | None:
    """Root-mean-square error predicting each budget above the smallest from a fit to the others (None:
    too few budgets). The smallest is never held out: the forms are anchored there and the report never
    asks a fit below its smallest compute, where a power form's (c/c0)^(−α) explodes."""
    u, y = np.asarray(u, float), np.asarray(y, float)
    if len(np.unique(u)) < form.min_points + 1:
        return None
    errors = []
    for j in np.flatnonzero(u > u.min()):
        rest = np.arange(len(u)) != j
        if len(np.unique(u[rest])) < form.min_points:
            return None
        coefficients = form.fit(u[rest], y[rest])
        errors.append(form.predict(coefficients, u[j:j + 1], u[rest].min())[0] - y[j])
    return float(np.sqrt(np.mean(np.square(errors))))


def choose_form(u: np.ndarray, y: np.ndarray) -> tuple[str, dict[str, float | None]]:
    """(chosen form, held-out RMSE per form). Forms without a held-out error cannot win; with none
    judged, the log-linear form is kept (the fewest coefficients)."""
    scores = {name: heldout_rmse(form, u, y) for name, form in FORMS.items()}
    judged = {name: s for name, s in scores.items() if s is not None}
    if not judged:
        return "log-linear", scores
    best = min(judged.values())
    # forms are listed by coefficient count: the first within rounding of the best wins
    return next(name for name, s in judged.items() if s <= best + 1e-12), scores


def resample_weights(problems: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, problems]: how often each problem is drawn in each bootstrap resample."""
    if problems < 1 or resamples < 1:
        raise ValueError(f"a bootstrap needs problems ≥ 1 and resamples ≥ 1, got {problems} and {resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(problems, np.full(problems, 1 / problems), size=resamples).astype(float)


def resampled_means(correct: np.ndarray, graded: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean accuracy [resamples, points] of points with per-problem accuracy `correct` [points,
    problems] over the problems they graded (`graded`, bool, same shape); NaN in a resample that drew
    none of a point's problems."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ (correct * graded).T) / (weights @ graded.T.astype(float))


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring NaN resamples."""
    tail = (1 - level) / 2
    with warnings.catch_warnings():  # NaN resamples are skipped; a column NaN in all of them gives NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(samples, tail, axis=0), np.nanquantile(samples, 1 - tail, axis=0)


def fit_resampled(form: Form, u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """form.fit over resamples y [resamples, n]; rows with a NaN point give NaN coefficients."""
    bad = np.isnan(y).any(-1)
    out = form.fit(u, np.where(bad[:, None], 0.0, y))
    out[bad] = np.nan
    return out
