"""Bayesian linear least squares from normal equations: the exact output-layer fit and its posterior.

A weighted least-squares problem min_theta sum_r w_r (a_r . theta - y_r)^2 is kept as its sufficient
statistics (`NormalEquations`: G = sum w a a^T, b = sum w a y, yy = sum w y^2, the row count and the total
frame weight), so frames are added once and never revisited. `solve` adds a Gaussian prior centred on the
starting parameters, one precision per parameter group, and chooses those precisions and the noise level by
evidence maximisation (MacKay's fixed point; Bishop, PRML 3.5): nothing is guessed, and the effective number
of well-determined parameters comes out with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg


@dataclass
class NormalEquations:
    """Sufficient statistics of a weighted linear least-squares problem with `size` unknowns."""

    gram: np.ndarray  # (P, P)
    moment: np.ndarray  # (P,)
    yy: float = 0.0
    rows: float = 0.0  # number of observations (rows times their multiplicity)
    weight: float = 0.0  # total frame weight: the loss is a weighted mean over frames

    @classmethod
    def empty(cls, size: int) -> "NormalEquations":
        return cls(np.zeros((size, size)), np.zeros(size))

    def add(self, rows: np.ndarray, labels: np.ndarray, row_weights: np.ndarray, frame_weight: float = 1.0) -> None:
        """Add one frame: its rows (R, P), labels (R,), the loss weight of each row and the frame's weight."""
        w = row_weights * frame_weight
        self.gram += (rows * w[:, None]).T @ rows
        self.moment += rows.T @ (w * labels)
        self.yy += float(w @ labels**2)
        self.rows += len(labels) * (frame_weight > 0)
        self.weight += frame_weight

    def __add__(self, other: "NormalEquations") -> "NormalEquations":
        return NormalEquations(self.gram + other.gram, self.moment + other.moment, self.yy + other.yy,
                               self.rows + other.rows, self.weight + other.weight)

    def loss(self, theta: np.ndarray) -> float:
        """The weighted mean loss at theta (deepmd-kit's training loss at its limit prefactors)."""
        ssr = self.yy - 2 * theta @ self.moment + theta @ self.gram @ theta
        return float(max(ssr, 0.0) / max(self.weight, 1e-300))

    def optimum(self) -> np.ndarray:
        """The unregularised minimiser (least-norm where the problem is rank-deficient)."""
        return linalg.lstsq(self.gram, self.moment, cond=1e-12, lapack_driver="gelsy")[0]

    def save(self, path) -> None:
        np.savez(path, gram=self.gram, moment=self.moment, yy=self.yy, rows=self.rows, weight=self.weight)

    @classmethod
    def load(cls, path) -> "NormalEquations":
        with np.load(path) as f:
            return cls(f["gram"], f["moment"], float(f["yy"]), float(f["rows"]), float(f["weight"]))


@dataclass
class Posterior:
    """The posterior of theta: mean, precision (inverse covariance), the prior precision of each group, the
    noise precision beta of a unit-weight row, and gamma, the effective number of parameters per group."""

    mean: np.ndarray
    precision: np.ndarray
    alpha: list[float]
    beta: float
    gamma: list[float]
    iterations: int
    at_floor: list[bool]  # the evidence wanted a weaker prior than the solver allows (the data dominate)

    def covariance(self) -> np.ndarray:
        return linalg.cho_solve(linalg.cho_factor(self.precision), np.eye(len(self.mean)))


def solve(normal: NormalEquations, prior_mean: np.ndarray, groups: list[np.ndarray], max_iter: int = 200,
          tol: float = 1e-6) -> Posterior:
    """MAP estimate with the Gaussian prior N(prior_mean, diag(1/alpha_g)) on each group g, alpha_g and the
    noise precision beta chosen by evidence maximisation."""
    size = len(prior_mean)
    gram = normal.gram
    shifted = normal.moment - gram @ prior_mean  # the problem in delta = theta - prior_mean
    yy = normal.yy - 2 * prior_mean @ normal.moment + prior_mean @ gram @ prior_mean
    scale = max(np.trace(gram) / size, 1e-300)
    n_obs = max(normal.rows, 1.0)
    beta = n_obs / max(yy, 1e-30 * scale)
    alpha = np.full(len(groups), 1e-6 * scale * beta)
    member = np.empty(size, dtype=int)
    for g, idx in enumerate(groups):
        member[idx] = g
    delta = np.zeros(size)
    for it in range(1, max_iter + 1):
        precision = beta * gram + np.diag(alpha[member])
        lower = linalg.cholesky(precision, lower=True)
        delta = linalg.cho_solve((lower, True), beta * shifted)
        inv_lower = linalg.solve_triangular(lower, np.eye(size), lower=True)
        diag_cov = np.einsum("ij,ij->j", inv_lower, inv_lower)  # diagonal of the posterior covariance
        gamma = np.array([np.sum(1 - alpha[g] * diag_cov[idx]) for g, idx in enumerate(groups)])
        norms = np.array([delta[idx] @ delta[idx] for idx in groups])
        # the noise cannot be told from the fit when the data are interpolated (N <= gamma): floor its variance
        ssr = max(yy - 2 * delta @ shifted + delta @ gram @ delta, 1e-10 * yy, 1e-300)
        new_beta = max(n_obs - gamma.sum(), 1e-3) / ssr
        floor = 1e-9 * scale * new_beta  # keeps the precision matrix positive definite in floating point
        new_alpha = np.clip(gamma / np.maximum(norms, 1e-300), floor, 1e12 * scale * new_beta)
        done = np.all(np.abs(np.log(new_alpha / alpha)) < tol) and abs(np.log(new_beta / beta)) < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    precision = beta * gram + np.diag(alpha[member])
    delta = linalg.cho_solve(linalg.cho_factor(precision), beta * shifted)
    return Posterior(mean=prior_mean + delta, precision=precision, alpha=[float(a) for a in alpha], beta=float(beta),
                     gamma=[float(g) for g in gamma], iterations=it,
                     at_floor=[bool(a <= 1e-9 * scale * beta * (1 + 1e-9)) for a in alpha])
