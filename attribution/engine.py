"""The attribution models as pure functions: no Django, no database.

A *path* is one opportunity's touchpoints in time order (oldest first), each a
:class:`Touch`. A model turns a path into *weights* (non-negative, summing to
1); :func:`allocate` turns weights into Decimal credits that sum exactly to the
opportunity's amount. The data-driven models (Markov, Shapley) first learn a
value per channel from all journeys (converting and not), then weight a path's
touches by the values of the channels on it.

Formulas (n = number of touches on the path):

- ``first``: 100% to the first touch.
- ``last``: 100% to the last touch.
- ``last_non_direct``: 100% to the last touch whose channel is not ``direct``;
  if every touch is direct, to the last touch.
- ``linear``: 1/n to each touch.
- ``time_decay``: touch i weighs 2^(-age_i / half_life), age_i in days measured
  back from the *reference time*: the close of a closed opportunity, the
  creation of an open one. A touch after the reference time has age 0 (it
  counts fully rather than more than fully). Weights are normalized.
- Position-based models give a share to *roles* (first touch, lead-creation
  touch, opportunity-creation touch, closed-won-nearest touch, last touch) and
  spread a share evenly over the *other* touches (those holding no role of the
  model). A touch holding several roles gets the sum of their shares. A share
  with no touch to receive it (no lead-creation touch marked on the path, no
  other touches) is dropped and the rest renormalized. This one rule gives
  the standard edge cases:
  - ``u_shaped``: first 40, last 40, others 20. One touch: 100%. Two
    touches: 50/50.
  - ``w_shaped``: first 30, lead creation 30, opportunity creation 30, others
    10.
  - ``full_path`` (Z-shaped): first, lead creation, opportunity creation and
    closed-won-nearest (the last touch at or before the close of a won
    opportunity; none for an open or lost one) 22.5 each, others 10.
  - ``custom``: any weights per role, edited in the admin.
- Markov chain (Anderl et al. 2016), two variants sharing one chain: a
  first-order chain over journeys (start -> channels -> conversion | null),
  consecutive repeats of one channel collapsed (a self-loop does not change
  an absorbing chain's absorption probabilities, so this only keeps the
  system small). The conversion probability from start is solved exactly
  (rational arithmetic): with Q the transient-to-transient transition
  matrix and r the transient-to-conversion vector, x = (I - Q)^-1 r,
  P = x[start]. Removal effect of channel c: RE(c) = 1 - P(without c) / P,
  where removing c sends every transition into c to null.

  - ``markov`` (per path): a path's weight per channel is RE(c) over the sum
    of RE of the channels on that path, split evenly over that channel's
    touches. Channel totals are *not* the global shares below.
  - ``markov_global`` (global removal-effect shares, what ChannelAttribution's
    ``markov_model`` reports): channel c's share of all conversions is
    RE(c) / sum of RE over every channel. To credit deals with it, each
    channel gets a value m(c) (start: RE(c)) and a path's weight per
    channel is m(c) over the sum of m on the path, as above; m is fitted
    (multiplicative updates m(c) *= target(c) / credited(c), iterative
    proportional fitting, at most 2,000 rounds, until every channel is
    within 1e-9 of its target) so that the conversions credited to each
    channel over the converting journeys equal its global share of them.
    Only channels seen on a converting journey can receive credit: the
    shares are taken over those. When no allocation restricted to the
    channels on each path can meet the shares (a channel with a large
    removal effect that only ever appears next to others), the fit stops
    at the closest it reached; ``markov_global_fit`` reports the largest
    remaining gap.
- ``shapley``: the simplified Shapley value of Zhao et al. (2018, "Shapley
  Value Methods for Attribution Modeling in Online Advertising"). Players
  are channels; the characteristic function, defined for every subset S of
  channels, is v(S) = the number of converting journeys whose set of
  channels is a subset of S (v of the empty set is 0); non-converting
  journeys do not enter it. Then
  phi(c) = sum over S not containing c of |S|!(N-|S|-1)!/N! (v(S+c) - v(S)),
  which for this v equals the sum, over converting journeys whose channels
  include c, of 1 / (number of distinct channels of the journey): each
  conversion is split evenly over its channels. phi is never negative and
  the values sum to the number of conversions. Stability: one more journey
  moves a channel's share phi(c) / sum(phi) by at most 1 / (C + 1), C the
  conversions before it (a non-converting journey moves nothing). A path's
  weight per channel is phi(c) over the sum on the path, split evenly over
  that channel's touches. If no channel on a path has a positive value,
  the path falls back to linear so its amount is still fully credited.

Rounding: each touch's credit is amount * weight rounded half-even to the
cent; the remainder (positive or negative, a few cents at most) goes to the
touch with the largest weight, the earliest of those on a tie. The position
models and linear compute their weights exactly (rational numbers), so a
credit that falls on an exact half cent rounds to the even cent; the
weights stored on the credit rows are those fractions as floats. Time decay
and the data-driven models weigh in floating point (their weights are not
rational numbers with a small denominator to begin with).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from math import gcd
from typing import Callable, Iterable, Iterator, Mapping, Sequence

DIRECT = "direct"
CENT = Decimal("0.01")
SECONDS_PER_DAY = 86400.0

ROLES = ("first", "lead_creation", "opportunity_creation", "closed_won", "last", "other")


@dataclass(frozen=True, slots=True)
class Touch:
    channel: str
    at: float  # POSIX seconds
    is_lead_creation: bool = False
    is_opportunity_creation: bool = False


@dataclass(frozen=True, slots=True)
class PathContext:
    """What a model may need besides the touches: the time the path is
    measured back from (close, or creation for open pipeline), and the close
    of a won opportunity (None otherwise)."""

    reference_at: float
    won_at: float | None = None


POSITION_WEIGHTS: dict[str, dict[str, float]] = {
    "u_shaped": {"first": 40, "last": 40, "other": 20},
    "w_shaped": {"first": 30, "lead_creation": 30, "opportunity_creation": 30, "other": 10},
    "full_path": {"first": 22.5, "lead_creation": 22.5, "opportunity_creation": 22.5, "closed_won": 22.5, "other": 10},
}


class ExactWeights(list):
    """Float weights (what the credit rows store) that also carry their exact
    value as integer numerators over one denominator, so allocate rounds the
    true product, not the float's: 1/6 as a float is a hair under 1/6, which
    would round an exact half cent down where half-even rounds it up. Shared
    through caches: never mutated."""

    __slots__ = ("numerators", "denominator")

    def __init__(self, fractions: Sequence[Fraction]) -> None:
        den = 1
        for f in fractions:
            den = den * f.denominator // gcd(den, f.denominator)
        super().__init__(float(f) for f in fractions)
        self.numerators = tuple(int(f * den) for f in fractions)
        self.denominator = den


def _one_hot(n: int, index: int) -> list[float]:
    weights = [0.0] * n
    weights[index] = 1.0
    return weights


def first_touch(path: Sequence[Touch], ctx: PathContext | None = None) -> list[float]:
    return _one_hot(len(path), 0)


def last_touch(path: Sequence[Touch], ctx: PathContext | None = None) -> list[float]:
    return _one_hot(len(path), len(path) - 1)


def last_non_direct(path: Sequence[Touch], ctx: PathContext | None = None) -> list[float]:
    for i in range(len(path) - 1, -1, -1):
        if path[i].channel != DIRECT:
            return _one_hot(len(path), i)
    return _one_hot(len(path), len(path) - 1)


_linear_weights: dict[int, ExactWeights] = {}


def linear(path: Sequence[Touch], ctx: PathContext | None = None) -> list[float]:
    n = len(path)
    weights = _linear_weights.get(n)
    if weights is None:
        weights = _linear_weights[n] = ExactWeights([Fraction(1, n)] * n)
    return weights


def time_decay(path: Sequence[Touch], ctx: PathContext, *, half_life_days: float = 7.0) -> list[float]:
    if half_life_days <= 0:
        raise ValueError("half_life_days must be positive")
    raw = [2.0 ** (-max(0.0, ctx.reference_at - t.at) / SECONDS_PER_DAY / half_life_days) for t in path]
    total = sum(raw)
    return [w / total for w in raw]


def role_indices(path: Sequence[Touch], ctx: PathContext | None) -> dict[str, int | None]:
    """Which touch holds each role. The lead- and opportunity-creation roles go
    to the last marked touch (a re-marked touch supersedes an earlier one)."""
    n = len(path)
    lead_creation = opp_creation = closed_won = None
    for i, t in enumerate(path):
        if t.is_lead_creation:
            lead_creation = i
        if t.is_opportunity_creation:
            opp_creation = i
        if ctx is not None and ctx.won_at is not None and t.at <= ctx.won_at:
            closed_won = i
    return {
        "first": 0,
        "last": n - 1,
        "lead_creation": lead_creation,
        "opportunity_creation": opp_creation,
        "closed_won": closed_won,
    }


def _check_position_weights(weights: Mapping[str, float]) -> None:
    unknown = set(weights) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown position roles: {sorted(unknown)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError("position weights must not be negative")


def position_based(
    path: Sequence[Touch], ctx: PathContext | None, *, weights: Mapping[str, float],
    holders: Mapping[str, int | None] | None = None,
) -> list[float]:
    """``holders`` is role_indices(path, ctx) when the caller already has it:
    several position models over one path share it (see path_weights)."""
    _check_position_weights(weights)
    return _position_weights(path, weights, role_indices(path, ctx) if holders is None else holders)


def _position_weights(path: Sequence[Touch], weights: Mapping[str, float], holders: Mapping[str, int | None]) -> list[float]:
    """Exact: the shares as given (floats of a few decimals, e.g. 22.5) are
    read as the decimals they were written as, and every sum and split is
    done in rational numbers."""
    return _exact_position_weights(len(path), {r: Fraction(repr(float(w))) for r, w in weights.items()}, holders)


def _exact_position_weights(n: int, weights: Mapping[str, Fraction], holders: Mapping[str, int | None]) -> list[float]:
    raw = [Fraction(0)] * n
    role_held = [False] * n
    for role, share in weights.items():
        if role == "other" or not share:
            continue
        i = holders[role]
        if i is not None:
            raw[i] += share
            role_held[i] = True
    others = [i for i in range(n) if not role_held[i]]
    other_share = weights.get("other", 0)
    if others and other_share:
        each = other_share / len(others)
        for i in others:
            raw[i] += each
    total = sum(raw)
    if total <= 0:
        # Every share was dropped (e.g. custom weights only on a missing
        # role): fall back to linear rather than leave revenue uncredited.
        return linear([None] * n)
    return ExactWeights([w / total for w in raw])


def channel_weighted(path: Sequence[Touch], values: Mapping[str, float]) -> list[float]:
    """Weights for a path from per-channel values: each channel on the path
    gets value / sum of values on the path, split evenly over its touches."""
    per_channel = Counter(t.channel for t in path)
    positive = {c: max(values.get(c, 0.0), 0.0) for c in per_channel}
    total = sum(positive.values())
    if total <= 0:
        return linear(path)
    return [positive[t.channel] / total / per_channel[t.channel] for t in path]


# ---------------------------------------------------------------- allocation


# Decimal(repr(w)) of the weights seen lately. Most weights recur from path
# to path (0, 1, 1/n, the position shares); time-decay weights do not, so
# the cache is emptied when it grows past _WEIGHT_CACHE_MAX.
_weight_decimals: dict[float, Decimal] = {}
_WEIGHT_CACHE_MAX = 50_000


def _weight_decimal(w: float) -> Decimal:
    d = _weight_decimals.get(w)
    if d is None:
        if len(_weight_decimals) >= _WEIGHT_CACHE_MAX:
            _weight_decimals.clear()
        d = _weight_decimals[w] = Decimal(repr(w))
    return d


def allocate(amount: Decimal, weights: Sequence[float]) -> list[Decimal]:
    """Split ``amount`` (2 decimal places) over ``weights``; the credits sum
    exactly to ``amount``. See the module docstring for the remainder rule."""
    if not weights:
        raise ValueError("cannot allocate over an empty path")
    amount = Decimal(amount).quantize(CENT)
    if isinstance(weights, ExactWeights):
        return _allocate_exact(amount, weights)
    zero = amount * 0  # 0.00 (with the amount's sign, as amount * 0.0 rounded would be)
    credits = [
        zero if w == 0.0 else amount if w == 1.0 else (amount * _weight_decimal(w)).quantize(CENT, rounding=ROUND_HALF_EVEN)
        for w in weights
    ]
    remainder = amount - sum(credits)
    if remainder:
        top = max(range(len(weights)), key=lambda i: (weights[i], -i))
        credits[top] += remainder
    return credits


def _allocate_exact(amount: Decimal, weights: ExactWeights) -> list[Decimal]:
    """allocate for exact weights: cents * numerator / denominator rounded
    half-even in integers, then the same remainder rule."""
    cents = int(amount.scaleb(2))
    den = weights.denominator
    out = []
    for num in weights.numerators:
        q, r = divmod(cents * num, den)
        if 2 * r > den or (2 * r == den and q % 2):
            q += 1
        out.append(q)
    remainder = cents - sum(out)
    if remainder:
        nums = weights.numerators
        out[max(range(len(nums)), key=lambda i: (nums[i], -i))] += remainder
    return [Decimal(c).scaleb(-2) for c in out]


# ---------------------------------------------------------------- journeys

Journey = tuple[tuple[str, ...], bool]  # channels in order, converted?


def collapse_repeats(channels: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for c in channels:
        if not out or out[-1] != c:
            out.append(c)
    return tuple(out)


def _solve(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Gauss-Jordan elimination in rational arithmetic (exact)."""
    n = len(rhs)
    a = [row[:] + [rhs[i]] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r][col] != 0), None)
        if pivot is None:
            raise ValueError("singular transition system")
        a[col], a[pivot] = a[pivot], a[col]
        p = a[col][col]
        a[col] = [v / p for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0:
                f = a[r][col]
                a[r] = [rv - f * cv for rv, cv in zip(a[r], a[col])]
    return [a[i][n] for i in range(n)]


def markov_transitions(journeys: Mapping[Journey, int]) -> dict[str, Counter]:
    """Transition counts between states ``(start)``, channels, ``(conversion)``
    and ``(null)``. Consecutive repeats of a channel are collapsed: a
    self-loop changes no absorption probability (from a state with
    self-loop p, the chain leaves for target t with probability
    q_t / (1 - p) whatever p is), so removal effects are the same either
    way, and the system to solve stays smaller."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for (channels, converted), weight in journeys.items():
        if not channels or weight <= 0:
            continue
        seq = collapse_repeats(channels)
        states = ("(start)", *seq, "(conversion)" if converted else "(null)")
        for a, b in zip(states, states[1:]):
            counts[a][b] += weight
    return counts


def _conversion_probability(counts: Mapping[str, Counter], removed: str | None) -> Fraction:
    transient = ["(start)"] + sorted(s for s in counts if s != "(start)" and s != removed)
    index = {s: i for i, s in enumerate(transient)}
    n = len(transient)
    q = [[Fraction(0)] * n for _ in range(n)]
    r = [Fraction(0)] * n
    for s in transient:
        row = counts.get(s)
        total = sum(row.values()) if row else 0
        if not total:
            continue
        i = index[s]
        for target, c in row.items():
            p = Fraction(c, total)
            if target == "(conversion)":
                r[i] += p
            elif target in index:
                q[i][index[target]] += p
            # "(null)" and the removed channel absorb without converting.
    system = [[(Fraction(1) if i == j else Fraction(0)) - q[i][j] for j in range(n)] for i in range(n)]
    return _solve(system, r)[0]


def markov_removal_effects(journeys: Mapping[Journey, int]) -> dict[str, float]:
    """Removal effect per channel, exactly from the absorbing chain.
    ``journeys`` maps (channel path, converted) to how many journeys took it."""
    counts = markov_transitions(journeys)
    channels = sorted(s for s in counts if not s.startswith("("))
    if not counts:
        return {}
    base = _conversion_probability(counts, None)
    if base == 0:
        return {c: 0.0 for c in channels}
    return {c: float(1 - _conversion_probability(counts, c) / base) for c in channels}


def markov_conversion_probability(journeys: Mapping[Journey, int]) -> float:
    counts = markov_transitions(journeys)
    return float(_conversion_probability(counts, None)) if counts else 0.0


def markov_global_shares(journeys: Mapping[Journey, int]) -> dict[str, float]:
    """Each channel's global share of the conversions: RE(c) / sum of RE
    (ChannelAttribution's total_conversions over the total)."""
    effects = markov_removal_effects(journeys)
    total = sum(effects.values())
    return {c: (e / total if total > 0 else 0.0) for c, e in effects.items()}


def _converting_sets(journeys: Mapping[Journey, int]) -> dict[frozenset, int]:
    sets: dict[frozenset, int] = defaultdict(int)
    for (channels, converted), weight in journeys.items():
        if converted and channels and weight > 0:
            sets[frozenset(channels)] += weight
    return sets


def credited_conversions(sets: Mapping[frozenset, int], values: Mapping[str, float]) -> dict[str, float]:
    """The conversions each channel is credited over converting journeys
    (channel set -> count) when a path weighs its channels by ``values``
    (channel_weighted: value over the path's sum, linear when that is 0)."""
    out: dict[str, float] = defaultdict(float)
    for channels, count in sets.items():
        total = sum(max(values.get(c, 0.0), 0.0) for c in channels)
        for c in channels:
            out[c] += count * (max(values.get(c, 0.0), 0.0) / total if total > 0 else 1 / len(channels))
    return dict(out)


MARKOV_GLOBAL_ROUNDS = 2000
MARKOV_GLOBAL_TOLERANCE = 1e-9


def markov_global_fit(journeys: Mapping[Journey, int]) -> tuple[dict[str, float], float]:
    """The per-channel values m of ``markov_global`` (see the module
    docstring) and the largest gap left between a channel's credited
    conversions and its target, as a fraction of all conversions (0 when
    the shares were met)."""
    shares = markov_global_shares(journeys)
    sets = _converting_sets(journeys)
    conversions = sum(sets.values())
    eligible = {c for s in sets for c in s if shares.get(c, 0.0) > 0}
    if not conversions or not eligible:
        return {c: 0.0 for c in shares}, 0.0
    share_total = sum(shares[c] for c in eligible)
    target = {c: shares[c] / share_total * conversions for c in eligible}
    values = {c: (shares[c] if c in eligible else 0.0) for c in shares}
    gap = 0.0
    for _round in range(MARKOV_GLOBAL_ROUNDS):
        credited = credited_conversions(sets, values)
        gap = max(abs(credited.get(c, 0.0) - target[c]) for c in eligible) / conversions
        if gap <= MARKOV_GLOBAL_TOLERANCE:
            break
        for c in eligible:
            if credited.get(c):
                values[c] *= target[c] / credited[c]
        # Values only matter relative to each other on a path: keep them near 1.
        scale = max(values.values())
        values = {c: v / scale for c, v in values.items()}
    return values, gap


def markov_global_values(journeys: Mapping[Journey, int]) -> dict[str, float]:
    return markov_global_fit(journeys)[0]


def shapley_values(journeys: Mapping[Journey, int]) -> dict[str, float]:
    """Simplified Shapley value per channel (see the module docstring): each
    converting journey's conversion split evenly over its distinct channels,
    which is the Shapley value of v(S) = conversions of the journeys whose
    channel set is a subset of S. Linear in the journeys, for any number of
    channels; a channel only on non-converting journeys gets 0."""
    players = {c for (channels, _), weight in journeys.items() if weight > 0 for c in channels}
    result: dict[str, Fraction] = {c: Fraction(0) for c in players}
    for channels, count in _converting_sets(journeys).items():
        each = Fraction(count, len(channels))
        for c in channels:
            result[c] += each
    return {c: float(v) for c, v in sorted(result.items())}


# ---------------------------------------------------------------- dispatch

MODELS = (
    "first_touch", "last_touch", "last_non_direct", "linear", "time_decay",
    "u_shaped", "w_shaped", "full_path", "custom", "markov", "markov_global", "shapley",
)
DATA_DRIVEN = frozenset({"markov", "markov_global", "shapley"})


def channel_values(model: str, journeys: Mapping[Journey, int]) -> dict[str, float]:
    """What a data-driven model learns from the journeys."""
    if model == "markov":
        return markov_removal_effects(journeys)
    if model == "markov_global":
        return markov_global_values(journeys)
    if model == "shapley":
        return shapley_values(journeys)
    raise ValueError(f"{model!r} is not a data-driven model")


class PositionWeigher:
    """A position-based model with its role shares bound (checked once, here).
    Called as weigh(path, ctx) like every weigher; path_weights passes the
    role holders it computed once for all the position models of a path."""

    __slots__ = ("weights", "_exact", "_cache")

    # Paths of one length with their roles on the same touches get the same
    # weights; there are far fewer such shapes than paths, and the exact
    # (rational) weights cost some microseconds each to build.
    CACHE_MAX = 100_000

    def __init__(self, weights: Mapping[str, float]) -> None:
        _check_position_weights(weights)
        self.weights = dict(weights)
        self._exact = {r: Fraction(repr(float(w))) for r, w in self.weights.items()}
        self._cache: dict[tuple, list[float]] = {}

    def __call__(self, path: Sequence[Touch], ctx: PathContext | None, holders: Mapping[str, int | None] | None = None) -> list[float]:
        holders = role_indices(path, ctx) if holders is None else holders
        n = len(path)
        key = (n, holders["lead_creation"], holders["opportunity_creation"], holders["closed_won"])
        weights = self._cache.get(key)
        if weights is None:
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            weights = self._cache[key] = _exact_position_weights(n, self._exact, holders)
        return weights


def path_weights(weighers: Mapping[str, Callable], path: Sequence[Touch], ctx: PathContext) -> Iterator[tuple[str, list[float]]]:
    """(model, weights) for every weigher over one path, in one pass over
    the path's roles: the position models share one role_indices."""
    holders = None
    for model, weigh in weighers.items():
        if isinstance(weigh, PositionWeigher):
            if holders is None:
                holders = role_indices(path, ctx)
            yield model, weigh(path, ctx, holders)
        else:
            yield model, weigh(path, ctx)


def weigher(
    model: str,
    *,
    half_life_days: float = 7.0,
    custom_weights: Mapping[str, float] | None = None,
    channel_values: Mapping[str, float] | None = None,
) -> Callable[[Sequence[Touch], PathContext], list[float]]:
    """The weight function of ``model`` with its parameters bound."""
    if model == "first_touch":
        return first_touch
    if model == "last_touch":
        return last_touch
    if model == "last_non_direct":
        return last_non_direct
    if model == "linear":
        return linear
    if model == "time_decay":
        return lambda p, c: time_decay(p, c, half_life_days=half_life_days)
    if model in POSITION_WEIGHTS:
        return PositionWeigher(POSITION_WEIGHTS[model])
    if model == "custom":
        if not custom_weights:
            raise ValueError("custom model needs position weights")
        return PositionWeigher(custom_weights)
    if model in DATA_DRIVEN:
        if channel_values is None:
            raise ValueError(f"{model} needs channel values learned from the journeys")
        values = dict(channel_values)
        return lambda p, c: channel_weighted(p, values)
    raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
