"""Ratings from blind pairwise votes: counts, Bradley-Terry, bootstrap, online Elo, bias checks.

Pure Python, numpy and scipy; no Django import. Selectors turn querysets into the plain
inputs used here (sequences of names and outcomes, or per-cell counts from a SQL
``GROUP BY``); this module returns numpy arrays and frozen dataclasses.

The model follows Chatbot Arena [Chi24]_: a Bradley-Terry model [BT52]_ fitted by maximum
likelihood, a tie counted as half a win for each side, ratings reported on the Elo scale
(``init_rating + scale * log_base(strength)``, 1000 + 400 log10 by default) and 95%
intervals from a bootstrap over battles. The maximum likelihood estimate exists exactly
when the directed "beats or ties" graph is strongly connected [Ford57]_ [Hun04]_; when it
is not, :func:`fit_bradley_terry` says which models are to blame instead of returning
numbers that only reflect where an optimiser stopped.

Outcomes use Chatbot Arena's spelling: :data:`A_WINS`, :data:`B_WINS`, :data:`TIE`,
:data:`BOTH_BAD`. A both-bad vote counts as a tie in every fit; it is kept apart in
:class:`BattleCounts` only to report how often both outputs were judged bad.

References
----------
.. [BT52] R. A. Bradley and M. E. Terry, "Rank analysis of incomplete block designs: I.
   The method of paired comparisons", Biometrika 39(3/4), 324-345, 1952.
.. [Ford57] L. R. Ford Jr., "Solution of a ranking problem from binary comparisons",
   The American Mathematical Monthly 64(8), 28-33, 1957.
.. [Hun04] D. R. Hunter, "MM algorithms for generalized Bradley-Terry models",
   The Annals of Statistics 32(1), 384-406, 2004.
.. [Chi24] W.-L. Chiang et al., "Chatbot Arena: An open platform for evaluating LLMs by
   human preference", ICML 2024 (arXiv:2403.04132).
.. [LMS24] T. Li, A. Angelopoulos, W.-L. Chiang, "Does style matter? Disentangling style
   and substance in Chatbot Arena", LMSYS blog, August 2024.
.. [Dub24] Y. Dubois, B. Galambosi, P. Liang, T. B. Hashimoto, "Length-controlled
   AlpacaEval: a simple way to debias automatic evaluators", arXiv:2404.04475, 2024.
.. [Wil27] E. B. Wilson, "Probable inference, the law of succession, and statistical
   inference", Journal of the American Statistical Association 22, 209-212, 1927.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import expit, log_expit

from . import outcomes

__all__ = [
    "A_WINS",
    "B_WINS",
    "TIE",
    "BOTH_BAD",
    "OUTCOMES",
    "RatingError",
    "BattleCounts",
    "count_battles",
    "counts_from_cells",
    "fit_bradley_terry",
    "bootstrap_ratings",
    "rank_by_intervals",
    "ModelRating",
    "Leaderboard",
    "leaderboard",
    "predicted_win_matrix",
    "observed_win_matrix",
    "online_elo",
    "ContextualFit",
    "normalized_length_difference",
    "fit_contextual_bradley_terry",
    "Proportion",
    "wilson_interval",
    "position_bias",
    "LengthBin",
    "LengthBias",
    "length_bias",
]

OUTCOMES = outcomes.ARENA  # Chatbot Arena's spelling, codes 0..3 (arena/outcomes.py)
A_WINS, B_WINS, TIE, BOTH_BAD = OUTCOMES
_OUTCOME_CODE = {outcome: code for code, outcome in enumerate(OUTCOMES)}

_Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
# Bootstrap rounds are solved in batches; this bounds one (rounds, n, n) Hessian stack.
_BATCH_BYTES = 32_000_000


class RatingError(ValueError):
    """The data cannot give the requested ratings; the message says which data and why."""


# ---------------------------------------------------------------------------
# Counts
# ---------------------------------------------------------------------------


def _frozen_matrix(value: np.ndarray, name: str, n: int, whole: bool = True) -> np.ndarray:
    array = np.array(value, dtype=np.float64, copy=True)
    if array.shape != (n, n):
        raise RatingError(f"{name} must have shape ({n}, {n}), got {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise RatingError(f"{name} must hold finite, non-negative counts")
    if whole and np.any(array != np.round(array)):
        raise RatingError(f"{name} must hold whole numbers of battles")
    if np.any(np.diag(array) != 0):
        raise RatingError(f"{name} has a non-zero diagonal: a model cannot battle itself")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class BattleCounts:
    """Aggregated outcomes of pairwise battles.

    Parameters
    ----------
    models : tuple of str
        Model names, sorted, without duplicates. Row and column ``i`` of every matrix
        belong to ``models[i]``.
    wins : numpy.ndarray, shape (n, n)
        ``wins[i, j]`` is the number of battles model ``i`` won against model ``j``,
        whichever side (A or B) each was shown on.
    ties : numpy.ndarray, shape (n, n)
        Symmetric; ``ties[i, j]`` is the number of tied battles between ``i`` and ``j``,
        both-bad votes included.
    both_bad : numpy.ndarray, shape (n, n)
        Symmetric; the part of ``ties`` voted "both bad".

    Notes
    -----
    Counts must be whole numbers (the bootstrap resamples battles) unless ``fractional``:
    weighted battles (e.g. each annotator's votes weighed by their competence), whose
    bootstrap draws round(total weight) battles from the weighted cells. The arrays are
    copied and made read-only, so an instance can be shared safely.
    Instances compare by identity (numpy arrays have no single truth value).
    """

    models: tuple[str, ...]
    wins: np.ndarray
    ties: np.ndarray
    both_bad: np.ndarray
    fractional: bool = False

    def __post_init__(self) -> None:
        models = tuple(str(m) for m in self.models)
        if list(models) != sorted(set(models)):
            raise RatingError("models must be sorted and without duplicates")
        n = len(models)
        whole = not self.fractional
        wins = _frozen_matrix(self.wins, "wins", n, whole)
        ties = _frozen_matrix(self.ties, "ties", n, whole)
        both_bad = _frozen_matrix(self.both_bad, "both_bad", n, whole)
        if not np.array_equal(ties, ties.T):
            raise RatingError("ties must be symmetric")
        if not np.array_equal(both_bad, both_bad.T):
            raise RatingError("both_bad must be symmetric")
        if np.any(both_bad > ties):
            raise RatingError("both_bad counts are part of ties and cannot exceed them")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "wins", wins)
        object.__setattr__(self, "ties", ties)
        object.__setattr__(self, "both_bad", both_bad)

    @property
    def n_models(self) -> int:
        """Number of models."""
        return len(self.models)

    @property
    def pair_battles(self) -> np.ndarray:
        """Symmetric matrix of battles between each pair, ties included."""
        return self.wins + self.wins.T + self.ties

    @property
    def effective_wins(self) -> np.ndarray:
        """``wins + ties / 2``: the win counts the Bradley-Terry fit sees [Chi24]_."""
        return self.wins + 0.5 * self.ties

    @property
    def battles(self) -> np.ndarray:
        """Number of battles each model took part in."""
        return self.pair_battles.sum(axis=1)

    @property
    def wins_total(self) -> np.ndarray:
        """Battles each model won."""
        return self.wins.sum(axis=1)

    @property
    def losses_total(self) -> np.ndarray:
        """Battles each model lost."""
        return self.wins.sum(axis=0)

    @property
    def ties_total(self) -> np.ndarray:
        """Tied battles per model, both-bad votes included."""
        return self.ties.sum(axis=1)

    @property
    def both_bad_total(self) -> np.ndarray:
        """Battles of each model voted "both bad"."""
        return self.both_bad.sum(axis=1)

    @property
    def n_battles(self) -> int:
        """Total number of battles."""
        return int(self.wins.sum() + self.ties.sum() / 2)

    def index(self, model: str) -> int:
        """Position of ``model`` in :attr:`models`; :class:`RatingError` if absent."""
        position = bisect.bisect_left(self.models, model)
        if position < len(self.models) and self.models[position] == model:
            return position
        raise RatingError(f"unknown model {model!r}; known models: {_names(self.models)}")


def _names(models: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(m) for m in list(models)[:limit])
    more = len(models) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _assemble(
    models: tuple[str, ...],
    a: np.ndarray,
    b: np.ndarray,
    code: np.ndarray,
    weight: np.ndarray | None,
    fractional: bool = False,
) -> BattleCounts:
    """Build counts from integer model indices and outcome codes (one bincount)."""
    n = len(models)
    cells = np.bincount((a * n + b) * 4 + code, weights=weight, minlength=n * n * 4)
    cells = cells.reshape(n, n, 4).astype(np.float64)
    wins = cells[:, :, 0] + cells[:, :, 1].T
    tied = cells[:, :, 2] + cells[:, :, 3]
    bad = cells[:, :, 3]
    return BattleCounts(models=models, wins=wins, ties=tied + tied.T, both_bad=bad + bad.T, fractional=fractional)


def _outcome_codes(outcome: Sequence, label: str = "outcome") -> np.ndarray:
    try:
        return np.fromiter(map(_OUTCOME_CODE.__getitem__, outcome), dtype=np.intp, count=len(outcome))
    except (KeyError, TypeError):
        for position, value in enumerate(outcome):
            if not isinstance(value, str) or value not in _OUTCOME_CODE:
                raise RatingError(
                    f"{label}[{position}] = {value!r} is not one of {', '.join(map(repr, OUTCOMES))}"
                ) from None
        raise


def _codes_or_names(raw: np.ndarray, label: str) -> np.ndarray:
    """Outcome codes 0..3 from an integer array, or from outcome names."""
    if raw.dtype.kind in "iu":
        code = raw.astype(np.intp)
        bad = np.flatnonzero((code < 0) | (code > 3))
        if bad.size:
            k = int(bad[0])
            raise RatingError(f"{label}[{k}] = {int(code[k])} is not in 0..3")
        return code
    return _outcome_codes(list(raw), label)


def count_battles(
    model_a: Sequence[str],
    model_b: Sequence[str],
    outcome: Sequence[str],
    *,
    models: Sequence[str] | None = None,
) -> BattleCounts:
    """Count battles given one row per vote.

    Parameters
    ----------
    model_a, model_b : sequence of str
        The models shown as A and B in each battle.
    outcome : sequence of str
        One of :data:`A_WINS`, :data:`B_WINS`, :data:`TIE`, :data:`BOTH_BAD` per battle.
    models : sequence of str, optional
        Models to include even if they have no battles (every candidate of a study).
        When given, a battle naming a model outside it is an error.

    Returns
    -------
    BattleCounts

    Raises
    ------
    RatingError
        If the sequences differ in length, an outcome is unknown (the message gives its
        index and value), a model battles itself, or a model is not in ``models``.

    Notes
    -----
    Names are mapped to indices with a dictionary rather than ``np.unique``: sorting a
    million strings in numpy takes over a second, the dictionary about a tenth of that.
    The counting itself is a single ``np.bincount``.
    """
    size = len(model_a)
    if len(model_b) != size or len(outcome) != size:
        raise RatingError(
            f"model_a, model_b and outcome differ in length: {size}, {len(model_b)}, {len(outcome)}"
        )
    if models is None:
        names = set(model_a)
        names.update(model_b)
    else:
        names = set(models)
        if len(names) != len(models):
            raise RatingError("models contains duplicates")
    ordered = tuple(sorted(str(name) for name in names))
    position = {name: k for k, name in enumerate(ordered)}
    try:
        a = np.fromiter(map(position.__getitem__, model_a), dtype=np.intp, count=size)
        b = np.fromiter(map(position.__getitem__, model_b), dtype=np.intp, count=size)
    except KeyError as error:
        raise RatingError(f"battle names model {error.args[0]!r}, which is not in models") from None
    code = _outcome_codes(outcome)
    same = np.flatnonzero(a == b)
    if same.size:
        k = int(same[0])
        raise RatingError(f"battle {k} pits {model_a[k]!r} against itself")
    return _assemble(ordered, a, b, code, None)


def counts_from_cells(
    models: Sequence[str],
    i_idx: Sequence[int],
    j_idx: Sequence[int],
    outcome_code: Sequence[int] | Sequence[str],
    count: Sequence[int],
    fractional: bool = False,
) -> BattleCounts:
    """Build counts from pre-aggregated rows, e.g. a SQL ``GROUP BY model_a, model_b, outcome``.

    Parameters
    ----------
    models : sequence of str
        Model names, in any order, without duplicates. Models without rows are kept.
    i_idx, j_idx : sequence of int
        Positions in ``models`` of the A and B model of each cell.
    outcome_code : sequence of int or str
        Per cell, the outcome as a string from :data:`OUTCOMES` or as its position in it
        (0 A wins, 1 B wins, 2 tie, 3 both bad).
    count : sequence of int
        Number of battles in each cell (non-negative whole numbers). Repeated cells add up.
    fractional : bool
        Accept non-negative weights instead of whole numbers (weighted battles; see
        :class:`BattleCounts`).

    Returns
    -------
    BattleCounts
    """
    names = [str(m) for m in models]
    if len(set(names)) != len(names):
        raise RatingError("models contains duplicates")
    n = len(names)
    i = np.asarray(i_idx, dtype=np.intp).ravel()
    j = np.asarray(j_idx, dtype=np.intp).ravel()
    number = np.asarray(count, dtype=np.float64).ravel()
    raw_code = np.asarray(outcome_code).ravel()
    if not (i.size == j.size == number.size == raw_code.size):
        raise RatingError(
            f"i_idx, j_idx, outcome_code and count differ in length: "
            f"{i.size}, {j.size}, {raw_code.size}, {number.size}"
        )
    code = _codes_or_names(raw_code, "outcome_code")
    for label, index in (("i_idx", i), ("j_idx", j)):
        bad = np.flatnonzero((index < 0) | (index >= n))
        if bad.size:
            k = int(bad[0])
            raise RatingError(f"{label}[{k}] = {int(index[k])} is outside 0..{n - 1}")
    same = np.flatnonzero(i == j)
    if same.size:
        k = int(same[0])
        raise RatingError(f"cell {k} pits {names[i[k]]!r} against itself")
    bad = np.flatnonzero(~np.isfinite(number) | (number < 0) | (~fractional & (number != np.round(number))))
    if bad.size:
        k = int(bad[0])
        kind = "number" if fractional else "whole number"
        raise RatingError(f"count[{k}] = {number[k]!r} is not a non-negative {kind}")
    order = np.argsort(names, kind="stable")
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)
    ordered = tuple(names[k] for k in order)
    return _assemble(ordered, rank[i], rank[j], code, number, fractional)


# ---------------------------------------------------------------------------
# Bradley-Terry maximum likelihood
# ---------------------------------------------------------------------------


def _components_text(models: tuple[str, ...], labels: np.ndarray, chosen: Sequence[int]) -> str:
    return "; ".join("{" + _names([models[k] for k in np.flatnonzero(labels == c)]) + "}" for c in chosen)


def _mle_problem(effective: np.ndarray, models: tuple[str, ...]) -> str | None:
    """Say why no finite maximum likelihood estimate exists, or return None if one does.

    The Bradley-Terry MLE exists if and only if, for every split of the models into two
    groups, some model in each group beat or tied some model in the other, i.e. the
    directed graph with an edge i -> j whenever i beat or tied j is strongly connected
    ([Ford57]_; Assumption 1 of [Hun04]_).
    """
    n = len(models)
    if n <= 1:
        return None
    played = (effective + effective.T).sum(axis=1)
    idle = [models[k] for k in np.flatnonzero(played == 0)]
    if idle:
        return f"model(s) with no battles: {_names(idle)}"
    beats = effective > 0
    count, labels = connected_components(csr_matrix(beats | beats.T), directed=False)
    if count > 1:
        return (
            f"the comparison graph is disconnected into {count} components, which were "
            f"never compared with each other: {_components_text(models, labels, range(count))}"
        )
    count, labels = connected_components(csr_matrix(beats), directed=True, connection="strong")
    if count == 1:
        return None
    between = np.zeros((count, count), dtype=bool)
    rows, cols = np.nonzero(beats)
    between[labels[rows], labels[cols]] = True
    np.fill_diagonal(between, False)
    never_lost = np.flatnonzero(~between.any(axis=0))  # no outsider ever beat or tied them
    never_won = np.flatnonzero(~between.any(axis=1))
    return (
        "no finite maximum likelihood estimate exists: "
        f"{_components_text(models, labels, never_lost)} won all their battles against the other "
        f"models, and {_components_text(models, labels, never_won)} lost all theirs (every group "
        "of models must have beaten or tied, and been beaten or tied by, some model outside it)"
    )


@dataclass(frozen=True, eq=False)
class _Pairs:
    """The unordered pairs i < j of n models, in ``np.triu_indices`` order."""

    n: int
    i: np.ndarray
    j: np.ndarray
    incidence: csr_matrix  # (pairs, n): +1 in column i, -1 in column j
    touches: csr_matrix  # (pairs, n): +1 in columns i and j

    @classmethod
    def of(cls, n: int) -> _Pairs:
        i, j = np.triu_indices(n, 1)
        rows = np.repeat(np.arange(i.size), 2)
        cols = np.column_stack([i, j]).ravel()
        signs = np.tile([1.0, -1.0], i.size)
        incidence = csr_matrix((signs, (rows, cols)), shape=(i.size, n))
        touches = csr_matrix((np.abs(signs), (rows, cols)), shape=(i.size, n))
        return cls(n, i, j, incidence, touches)

    def index(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pair number of models ``a`` and ``b`` (in either order)."""
        low, high = np.minimum(a, b), np.maximum(a, b)
        return low * self.n - low * (low + 1) // 2 + high - low - 1

    def differences(self, theta: np.ndarray) -> np.ndarray:
        """(B, n) strengths -> (B, pairs) differences theta_i - theta_j."""
        return np.asarray(self.incidence @ theta.T).T

    def to_models(self, values: np.ndarray, matrix: csr_matrix | None = None) -> np.ndarray:
        """(B, pairs) values -> (B, n): +value to model i, -value to model j."""
        return np.asarray((self.incidence if matrix is None else matrix).T @ values.T).T

    def split(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, n) effective wins -> (i's effective wins over j, battles) per pair."""
        return matrix[self.i, self.j], matrix[self.i, self.j] + matrix[self.j, self.i]


def _strongly_connected(pairs: _Pairs, forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """For a batch of graphs on n models, whether each is strongly connected.

    ``forward[b, p]`` is an edge ``i -> j`` and ``backward[b, p]`` an edge ``j -> i`` for
    pair ``p = (i, j)``. Breadth-first search from model 0 along the edges and against
    them, all graphs at once: strongly connected iff both searches reach every model.
    """
    batch, n = forward.shape[0], pairs.n
    adjacency = np.zeros((batch, n, n), dtype=np.float32)
    adjacency[:, pairs.i, pairs.j] = forward
    adjacency[:, pairs.j, pairs.i] = backward
    result = np.ones(batch, dtype=bool)
    for matrix in (adjacency, adjacency.transpose(0, 2, 1)):
        reached = np.zeros((batch, 1, n), dtype=np.float32)
        reached[:, 0, 0] = 1.0
        for _ in range(n):
            grown = np.minimum(reached + reached @ matrix, 1.0)
            if np.array_equal(grown, reached):
                break
            reached = grown
        result &= reached.min(axis=(1, 2)) > 0
    return result


def _log_likelihood(
    pairs: _Pairs, won: np.ndarray, played: np.ndarray, theta: np.ndarray, lam: np.ndarray
) -> np.ndarray:
    # sum over pairs of w_ij log s(d) + w_ji log s(-d) = w_ij d + n_ij log s(-d), d = theta_i - theta_j.
    diff = pairs.differences(theta)
    fit = np.einsum("bp,bp->b", won, diff) + np.einsum("bp,bp->b", played, log_expit(-diff))
    return fit - 0.5 * lam * np.einsum("bi,bi->b", theta, theta)


def _gradient(
    pairs: _Pairs, won: np.ndarray, played: np.ndarray, theta: np.ndarray, lam: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    prob = expit(pairs.differences(theta))
    return pairs.to_models(won - played * prob) - lam[:, None] * theta, prob


def _negated_hessian(pairs: _Pairs, played: np.ndarray, prob: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Minus the Hessian, a graph Laplacian with weights n_ij p_ij (1 - p_ij) plus lam I,
    with ``mu 11^T`` added to fix the gauge (see :func:`_solve_bt`)."""
    n = pairs.n
    weight = played * prob * (1.0 - prob)
    hessian = np.zeros((weight.shape[0], n, n))
    hessian[:, pairs.i, pairs.j] = -weight
    hessian[:, pairs.j, pairs.i] = -weight
    degree = pairs.to_models(weight, pairs.touches)
    hessian.reshape(weight.shape[0], n * n)[:, :: n + 1] += degree + lam[:, None]
    hessian += ((degree.mean(axis=1) + 1.0) / n)[:, None, None]
    return hessian


# Chord iterations (see _solve_bt) must shrink each step at least this much.
_CHORD_CONTRACTION = 0.5
_CHORD_MAX_ITER = 12


def _solve_bt(
    pairs: _Pairs,
    won: np.ndarray,
    played: np.ndarray,
    theta: np.ndarray,
    lam: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    chord: tuple[np.ndarray, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maximise the (penalised) Bradley-Terry log-likelihood for a batch of data sets.

    Parameters
    ----------
    pairs : _Pairs
    won : (B, pairs) effective wins (wins plus half the ties) of ``pairs.i`` over ``pairs.j``.
    played : (B, pairs) battles per pair.
    theta : (B, n) starting natural-log strengths, each row summing to zero.
    lam : (B,) L2 penalty per data set (0 for plain maximum likelihood).
    chord : (inverse, lam0), optional
        The inverse of a fixed negated Hessian (as built by ``_negated_hessian``) computed
        at the start point of data close to every row's, valid for rows with ``lam == lam0``.

    Returns
    -------
    theta : (B, n) maximisers, rows summing to zero.
    converged : (B,) bool.

    Notes
    -----
    Newton's method on ``sum_ij w_ij log sigma(theta_i - theta_j) - lam/2 |theta|^2``.
    The Hessian is minus a weighted graph Laplacian (minus lam I); the gauge direction
    (adding a constant to every strength) is fixed by solving with ``H - mu 11^T``: the
    gradient is orthogonal to the ones vector whenever theta sums to zero, so the step
    is too and every iterate stays centred. A step whose largest pairwise change is at
    most 0.5 is taken whole, because the logistic curvature then changes by at most a
    factor e^0.5 < 2 along it, which guarantees ascent; longer steps are halved until
    the Armijo condition holds.

    With ``chord``, rows first take chord steps (Newton steps with the fixed Hessian, one
    matrix product each instead of a factorisation). A bootstrap resample's Hessian is
    close to the full data's, so these converge linearly at a fast rate; a row whose step
    does not shrink by half each time, or grows beyond the safe length, leaves for Newton
    from where it is.
    """
    batch, n = theta.shape
    theta = theta.copy()
    converged = np.zeros(batch, dtype=bool)
    active = np.arange(batch)
    if chord is not None:
        inverse, chord_lam = chord
        alive = np.flatnonzero(lam == chord_lam)
        previous = np.full(batch, np.inf)
        for _ in range(_CHORD_MAX_ITER):
            if alive.size == 0:
                break
            th = theta[alive]
            grad, _prob = _gradient(pairs, won[alive], played[alive], th, lam[alive])
            step = grad @ inverse
            size = np.abs(step).max(axis=1)
            spread = step.max(axis=1) - step.min(axis=1)
            good = (size <= _CHORD_CONTRACTION * previous[alive]) & (spread <= 0.5)
            th = th[good] + step[good]
            theta[alive[good]] = th - th.mean(axis=1, keepdims=True)
            previous[alive[good]] = size[good]
            done = good & (size <= tol)
            converged[alive[done]] = True
            alive = alive[good & ~done]
        active = np.flatnonzero(~converged)
    for _ in range(max_iter):
        if active.size == 0:
            break
        th, wa, pa, la = theta[active], won[active], played[active], lam[active]
        grad, prob = _gradient(pairs, wa, pa, th, la)
        hessian = _negated_hessian(pairs, pa, prob, la)
        try:
            step = np.linalg.solve(hessian, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            raise RatingError("the Bradley-Terry Newton system is singular") from None
        if not np.all(np.isfinite(step)):
            raise RatingError("the Bradley-Terry Newton step is not finite")
        spread = step.max(axis=1) - step.min(axis=1)
        size = np.abs(step).max(axis=1)
        scale = np.ones(active.size)
        long = np.flatnonzero(spread > 0.5)
        if long.size:
            base = _log_likelihood(pairs, wa[long], pa[long], th[long], la[long])
            slope = np.einsum("bi,bi->b", grad[long], step[long])
            slack = 1e-12 * (1.0 + np.abs(base))
            pending = np.arange(long.size)
            for _halving in range(60):
                rows = long[pending]
                trial = th[rows] + scale[rows, None] * step[rows]
                value = _log_likelihood(pairs, wa[rows], pa[rows], trial, la[rows])
                ok = value >= base[pending] + 1e-4 * scale[rows] * slope[pending] - slack[pending]
                pending = pending[~ok]
                if pending.size == 0:
                    break
                scale[long[pending]] *= 0.5
        th = th + scale[:, None] * step
        th -= th.mean(axis=1, keepdims=True)
        theta[active] = th
        done = size <= tol
        converged[active[done]] = True
        active = active[~done]
    return theta, converged


def _check_fit_options(scale: float, base: float, regularization: float, tol: float, max_iter: int) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise RatingError(f"scale must be positive, got {scale!r}")
    if not (math.isfinite(base) and base > 1):
        raise RatingError(f"base must be greater than 1, got {base!r}")
    if not (math.isfinite(regularization) and regularization >= 0):
        raise RatingError(f"regularization must be a finite number >= 0, got {regularization!r}")
    if not (tol > 0):
        raise RatingError(f"tol must be positive, got {tol!r}")
    if max_iter < 1:
        raise RatingError(f"max_iter must be at least 1, got {max_iter!r}")


def _to_elo(
    theta: np.ndarray,
    models: tuple[str, ...],
    *,
    scale: float,
    base: float,
    init_rating: float,
    anchor: tuple[str, float] | None,
) -> np.ndarray:
    factor = scale / math.log(base)
    if anchor is None:
        return init_rating + factor * (theta - theta.mean(axis=-1, keepdims=True))
    name, value = anchor
    if name not in models:
        raise RatingError(f"anchor model {name!r} is not among the rated models: {_names(models)}")
    k = models.index(name)
    return float(value) + factor * (theta - theta[..., k : k + 1])


def _fit_theta(
    counts: BattleCounts, *, regularization: float, tol: float, max_iter: int
) -> np.ndarray:
    n = counts.n_models
    if n == 0:
        raise RatingError("there are no models to rate")
    effective = counts.effective_wins
    if regularization == 0:
        problem = _mle_problem(effective, counts.models)
        if problem is not None:
            raise RatingError(problem + "; collect more battles or pass regularization > 0")
    if n == 1:
        return np.zeros(1)
    pairs = _Pairs.of(n)
    won, played = pairs.split(effective)
    lam = np.array([float(regularization)])
    start = np.zeros((1, n))
    theta, converged = _solve_bt(pairs, won[None], played[None], start, lam, tol=tol, max_iter=max_iter)
    if not converged[0]:
        raise RatingError(f"Bradley-Terry fit did not converge in {max_iter} Newton iterations")
    return theta[0]


def fit_bradley_terry(
    counts: BattleCounts,
    *,
    scale: float = 400.0,
    base: float = 10.0,
    init_rating: float = 1000.0,
    anchor: tuple[str, float] | None = None,
    regularization: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> np.ndarray:
    """Fit Bradley-Terry ratings by maximum likelihood and put them on the Elo scale.

    Model ``i`` beats model ``j`` with probability ``1 / (1 + base ** ((r_j - r_i) / scale))``
    [BT52]_. A tie (both-bad votes included) counts as half a win for each side, as in
    Chatbot Arena [Chi24]_, so the likelihood is
    ``sum_ij (wins_ij + ties_ij / 2) log sigma(theta_i - theta_j)`` in natural-log
    strengths ``theta``, with ``r = init_rating + scale / ln(base) * (theta - mean(theta))``.

    Parameters
    ----------
    counts : BattleCounts
    scale, base : float
        Elo scale: ``scale`` points of rating difference multiply the odds by ``base``.
    init_rating : float
        Mean of the returned ratings (when ``anchor`` is None).
    anchor : (str, float), optional
        Pin this model to this rating instead of centring the mean.
    regularization : float
        ``lambda >= 0``. When positive, maximise the log-likelihood minus
        ``lambda * sum(theta ** 2) / 2`` on the natural-log strengths: the posterior mode
        under independent Gaussian priors ``theta_i ~ N(0, 1 / lambda)``. Ratings then
        shrink towards the mean and always exist, even for a model that never lost. The
        penalty is absolute, so it matters less as battles accumulate (lambda = 1 weighs
        about as much as four battles against an equal opponent).
    tol : float
        Stop when the largest Newton step on ``theta`` is below ``tol`` (natural-log units;
        1e-10 is about 2e-8 Elo points, and the iteration converges quadratically).
    max_iter : int

    Returns
    -------
    numpy.ndarray, shape (n,)
        Ratings in the order of ``counts.models``.

    Raises
    ------
    RatingError
        With ``regularization == 0`` when no finite MLE exists (the message names the
        disconnected components or the models that never lost or never won); on bad
        options; when the fit does not converge.

    Notes
    -----
    Solved with Newton's method on the concave log-likelihood with a gauge fix and a
    backtracking line search; see ``_solve_bt``. Hunter's MM algorithm [Hun04]_ gives
    the same estimate but converges linearly.
    """
    _check_fit_options(scale, base, regularization, tol, max_iter)
    theta = _fit_theta(counts, regularization=regularization, tol=tol, max_iter=max_iter)
    return _to_elo(theta, counts.models, scale=scale, base=base, init_rating=init_rating, anchor=anchor)


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _BootstrapRun:
    theta_hat: np.ndarray  # (n,) full-data fit
    samples: np.ndarray  # (rounds, n) Elo ratings
    fallback_rounds: int  # rounds refitted with fallback_regularization


def _bootstrap(
    counts: BattleCounts,
    *,
    rounds: int,
    rng: np.random.Generator,
    fallback_regularization: float,
    scale: float = 400.0,
    base: float = 10.0,
    init_rating: float = 1000.0,
    anchor: tuple[str, float] | None = None,
    regularization: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> _BootstrapRun:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if rounds < 1:
        raise RatingError(f"rounds must be at least 1, got {rounds!r}")
    if not (math.isfinite(fallback_regularization) and fallback_regularization > 0):
        raise RatingError(f"fallback_regularization must be positive, got {fallback_regularization!r}")
    _check_fit_options(scale, base, regularization, tol, max_iter)
    theta_hat = _fit_theta(counts, regularization=regularization, tol=tol, max_iter=max_iter)
    n = counts.n_models
    to_elo = dict(scale=scale, base=base, init_rating=init_rating, anchor=anchor)
    if n == 1 or counts.n_battles == 0:
        samples = np.repeat(_to_elo(theta_hat, counts.models, **to_elo)[None], rounds, axis=0)
        return _BootstrapRun(theta_hat, samples, 0)

    # One multinomial cell per ordered win cell and per unordered tie cell; a sparse
    # matrix maps cell draws to (effective wins of i over j, battles) per pair i < j.
    pairs = _Pairs.of(n)
    win_i, win_j = np.nonzero(counts.wins)
    tie_i, tie_j = np.nonzero(np.triu(counts.ties))
    cells = np.concatenate([counts.wins[win_i, win_j], counts.ties[tie_i, tie_j]])
    # weighted battles (fractional counts): as many draws as the total weight, at least one
    total = max(1, int(round(float(cells.sum()))))
    probs = cells / total
    cell_pair = pairs.index(np.concatenate([win_i, tie_i]), np.concatenate([win_j, tie_j]))
    cell_won = np.concatenate([(win_i < win_j).astype(np.float64), np.full(tie_i.size, 0.5)])
    shape = (cells.size, pairs.i.size)
    to_won = csr_matrix((cell_won, (np.arange(cells.size), cell_pair)), shape=shape).T.tocsr()
    to_played = csr_matrix((np.ones(cells.size), (np.arange(cells.size), cell_pair)), shape=shape).T.tocsr()
    won0, played0 = pairs.split(counts.effective_wins)
    beats0, beaten0 = won0 > 0, played0 - won0 > 0

    lam0 = float(regularization)
    _grad, prob0 = _gradient(pairs, won0[None], played0[None], theta_hat[None], np.array([lam0]))
    chord = (np.linalg.inv(_negated_hessian(pairs, played0[None], prob0, np.array([lam0]))[0]), lam0)

    batch = max(1, min(rounds, _BATCH_BYTES // (8 * n * n)))
    samples = np.empty((rounds, n))
    fallback_rounds = 0
    for first in range(0, rounds, batch):
        size = min(batch, rounds - first)
        draws = rng.multinomial(total, probs, size=size).astype(np.float64)
        won = np.asarray(to_won @ draws.T).T
        played = np.asarray(to_played @ draws.T).T
        lam = np.full(size, lam0)
        if lam0 == 0:
            # A resample keeps the full data's (strongly connected) graph unless a pair
            # lost all its wins in one direction; only then can the MLE fail to exist.
            lost = played - won
            changed = np.flatnonzero(((won > 0) != beats0).any(axis=1) | ((lost > 0) != beaten0).any(axis=1))
            if changed.size:
                ok = _strongly_connected(pairs, won[changed] > 0, lost[changed] > 0)
                lam[changed[~ok]] = fallback_regularization
            fallback_rounds += int(np.count_nonzero(lam > 0))
        theta, converged = _solve_bt(
            pairs,
            won,
            played,
            np.repeat(theta_hat[None], size, axis=0),
            lam,
            tol=tol,
            max_iter=max_iter,
            chord=chord,
        )
        if not converged.all():
            bad = first + int(np.flatnonzero(~converged)[0])
            raise RatingError(f"bootstrap round {bad} did not converge in {max_iter} Newton iterations")
        samples[first : first + size] = _to_elo(theta, counts.models, **to_elo)
    return _BootstrapRun(theta_hat, samples, fallback_rounds)


def bootstrap_ratings(
    counts: BattleCounts,
    *,
    rounds: int = 1000,
    rng: np.random.Generator,
    fallback_regularization: float = 0.01,
    **fit_kwargs,
) -> np.ndarray:
    """Bootstrap distribution of Bradley-Terry ratings.

    Each round resamples all ``N`` battles with replacement, as Chatbot Arena does
    [Chi24]_, but on the counts: the ``(winner, loser)`` and ``(pair, tie)`` cells get
    ``rng.multinomial(N, cell / N)`` battles, which has exactly the distribution of
    resampling individual battles. Each round is refitted by Newton's method started from
    the full-data estimate, many rounds at once in batched linear solves.

    Parameters
    ----------
    counts : BattleCounts
    rounds : int
    rng : numpy.random.Generator
        The only source of randomness.
    fallback_regularization : float
        A resample can leave a model undefeated (or winless) although the full data has a
        finite MLE. Such rounds, and only those, are refitted with this L2 penalty (see
        ``regularization`` in :func:`fit_bradley_terry`); the count of such rounds is
        reported by :func:`leaderboard`. The default, 0.01, is a N(0, 10^2) prior on
        natural-log strengths: the affected model gets a very high but finite rating, so
        the upper interval bound becomes large rather than undefined. Ignored when
        ``regularization`` > 0, which applies to every round.
    **fit_kwargs
        ``scale``, ``base``, ``init_rating``, ``anchor``, ``regularization``, ``tol``,
        ``max_iter`` as in :func:`fit_bradley_terry`; every round is expressed the same way
        (mean ``init_rating`` or the anchor pinned).

    Returns
    -------
    numpy.ndarray, shape (rounds, n)
        Ratings per round, columns in the order of ``counts.models``.

    Raises
    ------
    RatingError
        If the full-data fit fails (see :func:`fit_bradley_terry`), the counts are not
        whole numbers, or a round does not converge.
    """
    return _bootstrap(
        counts, rounds=rounds, rng=rng, fallback_regularization=fallback_regularization, **fit_kwargs
    ).samples


# ---------------------------------------------------------------------------
# Leaderboard
# ---------------------------------------------------------------------------


def rank_by_intervals(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Chatbot Arena's rank: 1 + the number of models statistically better than this one.

    Model ``j`` counts as better than model ``i`` when its interval lies entirely above,
    ``lower[j] > upper[i]`` [Chi24]_. Several models can share a rank.
    """
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if lower.shape != upper.shape or lower.ndim != 1:
        raise RatingError("lower and upper must be 1-D arrays of the same length")
    return 1 + (lower[None, :] > upper[:, None]).sum(axis=1)


@dataclass(frozen=True)
class ModelRating:
    """One leaderboard row. Ratings are on the Elo scale; ``lower``/``upper`` bound the
    95% bootstrap interval; ``win_rate`` counts ties as half; rates are NaN without battles."""

    model: str
    rating: float
    lower: float
    upper: float
    median: float
    rank: int
    battles: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float
    both_bad_rate: float


@dataclass(frozen=True)
class Leaderboard:
    """A leaderboard and how it was computed.

    Iterating, indexing and ``len`` go through :attr:`ratings`, so it can be used where a
    list of :class:`ModelRating` is expected.

    Attributes
    ----------
    ratings : tuple of ModelRating
        Best first (by the full-data rating, then by name).
    n_battles : int
    rounds : int
        Bootstrap rounds behind the intervals.
    regularization : float
        The L2 penalty of the fit itself (0 = plain maximum likelihood).
    fallback_rounds : int
        Bootstrap rounds whose resample had no finite MLE and were refitted with
        :attr:`fallback_regularization` (always 0 when ``regularization`` > 0).
    fallback_regularization : float
    anchor : (str, float) or None
    scale, base : float
    covariance : numpy.ndarray, shape (n, n)
        Covariance of the bootstrap ratings (Elo units), rows and columns in the order of
        ``counts.models``; what adaptive pair sampling (:mod:`arena.sampling`) needs.
    """

    ratings: tuple[ModelRating, ...]
    n_battles: int
    rounds: int
    regularization: float
    fallback_rounds: int
    fallback_regularization: float
    anchor: tuple[str, float] | None = None
    scale: float = 400.0
    base: float = 10.0
    covariance: np.ndarray | None = None

    @property
    def regularized(self) -> bool:
        """Whether any number shown was shrunk by a prior: say so on the page."""
        return self.regularization > 0 or self.fallback_rounds > 0

    def __iter__(self) -> Iterator[ModelRating]:
        return iter(self.ratings)

    def __len__(self) -> int:
        return len(self.ratings)

    def __getitem__(self, index):
        return self.ratings[index]


def leaderboard(
    counts: BattleCounts,
    *,
    rounds: int = 1000,
    rng: np.random.Generator,
    anchor: tuple[str, float] | None = None,
    regularization: float = 0.0,
    fallback_regularization: float = 0.01,
    scale: float = 400.0,
    base: float = 10.0,
    init_rating: float = 1000.0,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> Leaderboard:
    """Ratings, 95% bootstrap intervals and ranks, best first [Chi24]_.

    ``rating`` is the full-data estimate of :func:`fit_bradley_terry`; ``lower``,
    ``median`` and ``upper`` are the 2.5th, 50th and 97.5th percentiles of
    :func:`bootstrap_ratings`; ``rank`` follows :func:`rank_by_intervals`.

    Raises
    ------
    RatingError
        As :func:`fit_bradley_terry` (e.g. no finite MLE with ``regularization == 0``).
    """
    run = _bootstrap(
        counts,
        rounds=rounds,
        rng=rng,
        fallback_regularization=fallback_regularization,
        scale=scale,
        base=base,
        init_rating=init_rating,
        anchor=anchor,
        regularization=regularization,
        tol=tol,
        max_iter=max_iter,
    )
    rating = _to_elo(
        run.theta_hat, counts.models, scale=scale, base=base, init_rating=init_rating, anchor=anchor
    )
    lower, median, upper = np.percentile(run.samples, [2.5, 50.0, 97.5], axis=0)
    rank = rank_by_intervals(lower, upper)
    battles = counts.battles
    wins, losses = counts.wins_total, counts.losses_total
    ties, bad = counts.ties_total, counts.both_bad_total
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = np.where(battles > 0, (wins + 0.5 * ties) / battles, np.nan)
        bad_rate = np.where(battles > 0, bad / battles, np.nan)
    rows = [
        ModelRating(
            model=model,
            rating=float(rating[k]),
            lower=float(lower[k]),
            upper=float(upper[k]),
            median=float(median[k]),
            rank=int(rank[k]),
            battles=int(battles[k]),
            wins=int(wins[k]),
            losses=int(losses[k]),
            ties=int(ties[k]),
            both_bad=int(bad[k]),
            win_rate=float(win_rate[k]),
            both_bad_rate=float(bad_rate[k]),
        )
        for k, model in enumerate(counts.models)
    ]
    rows.sort(key=lambda row: (-row.rating, row.model))
    return Leaderboard(
        ratings=tuple(rows),
        n_battles=counts.n_battles,
        rounds=rounds,
        regularization=float(regularization),
        fallback_rounds=run.fallback_rounds,
        fallback_regularization=float(fallback_regularization),
        anchor=anchor,
        scale=scale,
        base=base,
        covariance=np.cov(run.samples, rowvar=False).reshape(counts.n_models, counts.n_models),
    )


# ---------------------------------------------------------------------------
# Win matrices and online Elo
# ---------------------------------------------------------------------------


def predicted_win_matrix(ratings: np.ndarray, scale: float = 400.0, base: float = 10.0) -> np.ndarray:
    """``P[i, j] = 1 / (1 + base ** ((r_j - r_i) / scale))``, the modelled chance that i beats j.

    ``P + P.T == 1`` and the diagonal is 0.5.
    """
    r = np.asarray(ratings, dtype=np.float64)
    if r.ndim != 1:
        raise RatingError("ratings must be a 1-D array")
    return expit((r[:, None] - r[None, :]) * (math.log(base) / scale))


def observed_win_matrix(counts: BattleCounts) -> np.ndarray:
    """Observed share of battles i won against j, ties counted as half; NaN where they never met."""
    total = counts.pair_battles
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts.effective_wins / total, np.nan)


def online_elo(
    model_a: Sequence[str],
    model_b: Sequence[str],
    outcome: Sequence[str],
    *,
    k: float = 4.0,
    scale: float = 400.0,
    base: float = 10.0,
    init_rating: float = 1000.0,
    initial: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Sequential Elo over battles in the given order, as Chatbot Arena first reported [Chi24]_.

    After each battle both ratings move by ``k * (score - expected)``, a tie scoring 0.5.
    The result depends on the order of the battles and has no uncertainty attached, so
    it is a live preview only; the leaderboard uses :func:`fit_bradley_terry`.
    ``initial`` continues from earlier ratings (models it lacks start at ``init_rating``),
    so a preview can be updated with only the battles since the last update.

    Returns
    -------
    dict
        Rating per model, keys sorted by name.
    """
    size = len(model_a)
    if len(model_b) != size or len(outcome) != size:
        raise RatingError(
            f"model_a, model_b and outcome differ in length: {size}, {len(model_b)}, {len(outcome)}"
        )
    code = _outcome_codes(outcome)
    score_of = (1.0, 0.0, 0.5, 0.5)
    rating: dict[str, float] = dict(initial or {})
    for position, (a, b, c) in enumerate(zip(model_a, model_b, code.tolist())):
        if a == b:
            raise RatingError(f"battle {position} pits {a!r} against itself")
        ra = rating.get(a, init_rating)
        rb = rating.get(b, init_rating)
        expected_a = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        expected_b = 1.0 / (1.0 + base ** ((ra - rb) / scale))
        score = score_of[c]
        rating[a] = ra + k * (score - expected_a)
        rating[b] = rb + k * (1.0 - score - expected_b)
    return dict(sorted(rating.items()))


# ---------------------------------------------------------------------------
# Style control and bias diagnostics
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ContextualFit:
    """Bradley-Terry ratings with covariates (style control).

    Attributes
    ----------
    models : tuple of str
    ratings : numpy.ndarray
        Elo-scale ratings with the covariates held at zero (e.g. equal lengths).
    coefficients : numpy.ndarray
        Per covariate, the change in the log-odds that A wins per unit of the covariate.
    feature_names : tuple of str
    scale, base : float
    """

    models: tuple[str, ...]
    ratings: np.ndarray
    coefficients: np.ndarray
    feature_names: tuple[str, ...]
    scale: float = 400.0
    base: float = 10.0

    @property
    def elo_coefficients(self) -> np.ndarray:
        """Coefficients in Elo points: the rating gap one unit of the covariate is worth."""
        return self.coefficients * (self.scale / math.log(self.base))


def normalized_length_difference(len_a: Sequence[float], len_b: Sequence[float]) -> np.ndarray:
    """``(len_a - len_b) / (len_a + len_b)``, in [-1, 1]; 0 when both are empty.

    The length feature of Chatbot Arena's style control [LMS24]_.
    """
    a = np.asarray(len_a, dtype=np.float64)
    b = np.asarray(len_b, dtype=np.float64)
    if a.shape != b.shape:
        raise RatingError(f"len_a and len_b differ in shape: {a.shape}, {b.shape}")
    if np.any(a < 0) or np.any(b < 0) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise RatingError("lengths must be finite and non-negative")
    total = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (a - b) / total, 0.0)


def fit_contextual_bradley_terry(
    i_idx: Sequence[int],
    j_idx: Sequence[int],
    y: Sequence[float],
    features: np.ndarray,
    *,
    models: Sequence[str],
    feature_names: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    scale: float = 400.0,
    base: float = 10.0,
    init_rating: float = 1000.0,
    anchor: tuple[str, float] | None = None,
    regularization: float = 0.0,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> ContextualFit:
    """Bradley-Terry with covariates: style control in the manner of Chatbot Arena [LMS24]_.

    Fits ``P(A beats B) = sigma(theta_a - theta_b + features @ beta)`` by maximum
    likelihood, a logistic regression without intercept whose design has +1 for the A
    model and -1 for the B model [LMS24]_. With ``features`` the normalised length
    difference (:func:`normalized_length_difference`), the ratings are what each model
    would score against an opponent of equal length, the idea behind length-controlled
    AlpacaEval [Dub24]_. Chatbot Arena also standardises each feature; do that beforehand
    if coefficients on several features should be comparable.

    Parameters
    ----------
    i_idx, j_idx : sequence of int
        Positions in ``models`` of the A and B model of each battle (or cell).
    y : sequence of float
        1 if A won, 0 if B won, 0.5 for a tie (half a win each, as [Chi24]_).
    features : array, shape (m, k)
        Covariates of each battle, oriented A minus B (so swapping sides negates them).
    models : sequence of str
    feature_names : sequence of str, optional
    weights : sequence of float, optional
        Battles per row, for aggregated data.
    regularization : float
        L2 penalty ``lambda * (|theta|^2 + |beta|^2) / 2``, as in :func:`fit_bradley_terry`.
    scale, base, init_rating, anchor, tol, max_iter
        As in :func:`fit_bradley_terry`.

    Raises
    ------
    RatingError
        On malformed input; with ``regularization == 0`` when the models alone have no
        finite MLE (see :func:`fit_bradley_terry`) or the covariates are collinear with the
        model effects; on non-convergence (e.g. a covariate separating the outcomes).
    """
    _check_fit_options(scale, base, regularization, tol, max_iter)
    names = tuple(str(m) for m in models)
    if len(set(names)) != len(names):
        raise RatingError("models contains duplicates")
    n = len(names)
    i = np.asarray(i_idx, dtype=np.intp).ravel()
    j = np.asarray(j_idx, dtype=np.intp).ravel()
    target = np.asarray(y, dtype=np.float64).ravel()
    design = np.asarray(features, dtype=np.float64)
    if design.ndim == 1:
        design = design[:, None]
    m = i.size
    weight = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if not (j.size == target.size == weight.size == design.shape[0] == m) or design.ndim != 2:
        raise RatingError("i_idx, j_idx, y, weights and features rows differ in length")
    k = design.shape[1]
    labels = tuple(feature_names) if feature_names is not None else tuple(f"x{c}" for c in range(k))
    if len(labels) != k:
        raise RatingError(f"{len(labels)} feature names for {k} features")
    if m == 0 or n == 0:
        raise RatingError("there are no battles to fit")
    if np.any((i < 0) | (i >= n) | (j < 0) | (j >= n)):
        raise RatingError(f"model indices must lie in 0..{n - 1}")
    if np.any(i == j):
        raise RatingError(f"battle {int(np.flatnonzero(i == j)[0])} pits a model against itself")
    if np.any((target < 0) | (target > 1)) or not np.all(np.isfinite(target)):
        raise RatingError("y must lie in [0, 1] (1 A wins, 0 B wins, 0.5 tie)")
    if not np.all(np.isfinite(design)):
        raise RatingError("features must be finite")
    if np.any(weight < 0) or not np.all(np.isfinite(weight)):
        raise RatingError("weights must be finite and non-negative")

    if regularization == 0:
        effective = np.bincount(i * n + j, weight * target, n * n).reshape(n, n)
        effective += np.bincount(j * n + i, weight * (1.0 - target), n * n).reshape(n, n)
        problem = _mle_problem(effective, names)
        if problem is not None:
            raise RatingError(problem + "; collect more battles or pass regularization > 0")

    def objective(theta: np.ndarray, beta: np.ndarray) -> float:
        eta = theta[i] - theta[j] + design @ beta
        return float(weight @ (target * eta + log_expit(-eta))) - 0.5 * regularization * (
            theta @ theta + beta @ beta
        )

    theta = np.zeros(n)
    beta = np.zeros(k)
    dim = n + k
    for iteration in range(max_iter):
        eta = theta[i] - theta[j] + design @ beta
        prob = expit(eta)
        resid = weight * (target - prob)
        grad = np.concatenate(
            [
                np.bincount(i, resid, n) - np.bincount(j, resid, n) - regularization * theta,
                design.T @ resid - regularization * beta,
            ]
        )
        curv = weight * prob * (1.0 - prob)
        pair = np.bincount(i * n + j, curv, n * n).reshape(n, n)
        pair = pair + pair.T
        hessian = np.zeros((dim, dim))
        hessian[:n, :n] = np.diag(pair.sum(axis=1)) - pair
        weighted = design * curv[:, None]
        cross = np.zeros((n, k))
        for c in range(k):
            cross[:, c] = np.bincount(i, weighted[:, c], n) - np.bincount(j, weighted[:, c], n)
        hessian[:n, n:] = cross
        hessian[n:, :n] = cross.T
        hessian[n:, n:] = design.T @ weighted
        hessian[np.diag_indices(dim)] += regularization
        hessian[:n, :n] += (np.trace(hessian[:n, :n]) / n + 1.0) / n  # gauge fix, as _solve_bt
        if iteration == 0 and np.linalg.cond(hessian) > 1e12:
            raise RatingError("the features are collinear with each other or with the model effects")
        try:
            step = np.linalg.solve(hessian, grad)
        except np.linalg.LinAlgError:
            raise RatingError("the contextual Bradley-Terry Newton system is singular") from None
        d_theta, d_beta = step[:n], step[n:]
        change = np.abs(d_theta[i] - d_theta[j] + design @ d_beta).max()
        t = 1.0
        if change > 0.5:  # same safeguard as _solve_bt: short steps are safe whole
            current = objective(theta, beta)
            slope = grad @ step
            slack = 1e-12 * (1.0 + abs(current))
            while t > 1e-12:
                trial = objective(theta + t * d_theta, beta + t * d_beta)
                if trial >= current + 1e-4 * t * slope - slack:
                    break
                t *= 0.5
        theta = theta + t * d_theta
        beta = beta + t * d_beta
        theta -= theta.mean()
        if np.abs(step).max() <= tol:
            break
    else:
        raise RatingError(f"contextual Bradley-Terry fit did not converge in {max_iter} Newton iterations")
    ratings = _to_elo(theta, names, scale=scale, base=base, init_rating=init_rating, anchor=anchor)
    ratings.setflags(write=False)
    beta.setflags(write=False)
    return ContextualFit(names, ratings, beta, labels, scale, base)


@dataclass(frozen=True)
class Proportion:
    """A share with its Wilson 95% interval [Wil27]_; NaN share and [0, 1] without trials."""

    successes: float
    trials: float
    share: float
    lower: float
    upper: float


def wilson_interval(successes: float, trials: float, z: float = _Z95) -> Proportion:
    """Wilson score interval for a binomial proportion [Wil27]_ (fractional counts allowed)."""
    if trials < 0 or successes < 0 or successes > trials:
        raise RatingError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Proportion(successes, trials, math.nan, 0.0, 1.0)
    share = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (share + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials * trials)) / denominator
    return Proportion(successes, trials, share, max(0.0, centre - half), min(1.0, centre + half))


def position_bias(left_won: Sequence[bool | None]) -> Proportion:
    """Share of decisive votes won by the output shown on the left, with a Wilson 95% interval.

    Parameters
    ----------
    left_won : sequence of bool or None
        Per vote, True if the left output won, False if the right one did, None for a tie
        or both-bad vote (left out). Without position bias the share is near 0.5.
    """
    left = right = 0
    for position, value in enumerate(left_won):
        if value is None:
            continue
        if value is True or value is np.True_:
            left += 1
        elif value is False or value is np.False_:
            right += 1
        else:
            raise RatingError(f"left_won[{position}] = {value!r} is not True, False or None")
    return wilson_interval(left, left + right)


@dataclass(frozen=True)
class LengthBin:
    """Battles whose normalised length difference A minus B lies in ``[low, high)``.

    ``a_win`` is the share won by A (ties half) with its Wilson 95% interval.
    """

    low: float
    high: float
    a_win: Proportion


@dataclass(frozen=True)
class LengthBias:
    """Win rate against length difference, and how often the longer output wins.

    ``longer_wins`` counts decisive battles between outputs of different lengths.
    """

    bins: tuple[LengthBin, ...]
    longer_wins: Proportion


_DEFAULT_LENGTH_EDGES = (-1.0, -0.5, -0.25, -0.1, -0.02, 0.02, 0.1, 0.25, 0.5, 1.0)


def length_bias(
    len_a: Sequence[float],
    len_b: Sequence[float],
    outcome: Sequence[str] | Sequence[int],
    *,
    edges: Sequence[float] = _DEFAULT_LENGTH_EDGES,
    weights: Sequence[float] | None = None,
) -> LengthBias:
    """Binned win rate of A against the normalised length difference ``(a - b) / (a + b)``.

    A rising curve means longer outputs win more often, the bias that style control
    [LMS24]_ and length-controlled AlpacaEval [Dub24]_ correct for. Lengths may be in
    characters, tokens or words. The last bin includes its upper edge. ``outcome`` holds
    outcome names or codes 0-3 (as :func:`counts_from_cells`); ``weights`` gives the number
    of battles per row, for aggregated input.
    """
    diff = normalized_length_difference(len_a, len_b)
    code = _codes_or_names(np.asarray(outcome).ravel(), "outcome")
    if code.size != diff.size:
        raise RatingError(f"{diff.size} length pairs but {code.size} outcomes")
    weight = np.ones(diff.size) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if weight.size != diff.size or np.any(weight < 0) or not np.all(np.isfinite(weight)):
        raise RatingError("weights must be one finite, non-negative number per battle")
    cut = np.asarray(edges, dtype=np.float64)
    if cut.ndim != 1 or cut.size < 2 or np.any(np.diff(cut) <= 0):
        raise RatingError("edges must be at least two increasing numbers")
    score = np.array(outcomes.SCORE)[code]
    where = np.searchsorted(cut, diff, side="right") - 1
    where[diff == cut[-1]] = cut.size - 2
    inside = (where >= 0) & (where < cut.size - 1)
    total = np.bincount(where[inside], weight[inside], minlength=cut.size - 1)
    won = np.bincount(where[inside], (score * weight)[inside], minlength=cut.size - 1)
    bins = tuple(
        LengthBin(float(cut[b]), float(cut[b + 1]), wilson_interval(float(won[b]), float(total[b])))
        for b in range(cut.size - 1)
    )
    decisive = (code <= 1) & (diff != 0)
    longer_won = ((code == 0) & (diff > 0)) | ((code == 1) & (diff < 0))
    longer = wilson_interval(float(weight[longer_won & decisive].sum()), float(weight[decisive].sum()))
    return LengthBias(bins, longer)
