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
- ``markov``: first-order Markov chain over journeys (start -> channels ->
  conversion | null), consecutive repeats of one channel collapsed by default.
  The conversion probability from start is solved exactly (rational
  arithmetic) from the absorbing chain: with Q the transient-to-transient
  transition matrix and r the transient-to-conversion vector,
  x = (I - Q)^-1 r, P = x[start]. Removal effect of channel c (Anderl et al.
  2016): RE(c) = 1 - P(without c) / P, where removing c sends every
  transition into c to null. A path's weight per channel is RE(c) over the
  sum of RE of the channels on the path, split evenly over that channel's
  touches.
- ``shapley``: players are channels, v(S) = conversion rate of the journeys
  whose channel set is exactly S (0 for a set never seen), and
  phi(c) = sum over S not containing c of |S|!(N-|S|-1)!/N! (v(S+c) - v(S)).
  A path's weight per channel is max(phi(c), 0) over the sum on the path,
  split evenly over that channel's touches (negative values get no credit).
  If no channel on a path has a positive value, the path falls back to
  linear so its amount is still fully credited.

Rounding: each touch's credit is amount * weight rounded half-even to the
cent; the remainder (positive or negative, a few cents at most) goes to the
touch with the largest weight, the earliest of those on a tie.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from math import factorial
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


def linear(path: Sequence[Touch], ctx: PathContext | None = None) -> list[float]:
    return [1.0 / len(path)] * len(path)


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
    n = len(path)
    raw = [0.0] * n
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
        return linear(path)
    return [w / total for w in raw]


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


def markov_transitions(journeys: Mapping[Journey, int], *, collapse: bool = True) -> dict[str, Counter]:
    """Transition counts between states ``(start)``, channels, ``(conversion)``
    and ``(null)``."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for (channels, converted), weight in journeys.items():
        if not channels or weight <= 0:
            continue
        seq = collapse_repeats(channels) if collapse else tuple(channels)
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


def markov_removal_effects(journeys: Mapping[Journey, int], *, collapse: bool = True) -> dict[str, float]:
    """Removal effect per channel, exactly from the absorbing chain.
    ``journeys`` maps (channel path, converted) to how many journeys took it."""
    counts = markov_transitions(journeys, collapse=collapse)
    channels = sorted(s for s in counts if not s.startswith("("))
    if not counts:
        return {}
    base = _conversion_probability(counts, None)
    if base == 0:
        return {c: 0.0 for c in channels}
    return {c: float(1 - _conversion_probability(counts, c) / base) for c in channels}


def markov_conversion_probability(journeys: Mapping[Journey, int], *, collapse: bool = True) -> float:
    counts = markov_transitions(journeys, collapse=collapse)
    return float(_conversion_probability(counts, None)) if counts else 0.0


def shapley_values(journeys: Mapping[Journey, int]) -> dict[str, float]:
    """Shapley value per channel; v(S) = conversion rate of the journeys whose
    channel set is exactly S. Exact (rational) over all 2^N coalitions."""
    seen: dict[frozenset, list[int]] = defaultdict(lambda: [0, 0])
    for (channels, converted), weight in journeys.items():
        if not channels or weight <= 0:
            continue
        cell = seen[frozenset(channels)]
        cell[0] += weight if converted else 0
        cell[1] += weight
    players = sorted({c for s in seen for c in s})
    n = len(players)
    if n > 20:
        raise ValueError(f"Shapley over {n} channels is 2^{n} coalitions; group channels first")
    bit = {c: 1 << i for i, c in enumerate(players)}
    value: dict[int, Fraction] = defaultdict(Fraction)
    for s, (conv, total) in seen.items():
        mask = 0
        for c in s:
            mask |= bit[c]
        value[mask] = Fraction(conv, total)
    coef = [Fraction(factorial(k) * factorial(n - k - 1), factorial(n)) for k in range(n)]
    result: dict[str, float] = {}
    full = (1 << n) - 1
    for c in players:
        b = bit[c]
        phi = Fraction(0)
        rest = full & ~b
        sub = rest
        while True:
            gain = value.get(sub | b, 0) - value.get(sub, 0)
            if gain:
                phi += coef[bin(sub).count("1")] * gain
            if sub == 0:
                break
            sub = (sub - 1) & rest
        result[c] = float(phi)
    return result


# ---------------------------------------------------------------- dispatch

MODELS = (
    "first_touch", "last_touch", "last_non_direct", "linear", "time_decay",
    "u_shaped", "w_shaped", "full_path", "custom", "markov", "shapley",
)
DATA_DRIVEN = frozenset({"markov", "shapley"})


class PositionWeigher:
    """A position-based model with its role shares bound (checked once, here).
    Called as weigh(path, ctx) like every weigher; path_weights passes the
    role holders it computed once for all the position models of a path."""

    __slots__ = ("weights",)

    def __init__(self, weights: Mapping[str, float]) -> None:
        _check_position_weights(weights)
        self.weights = dict(weights)

    def __call__(self, path: Sequence[Touch], ctx: PathContext | None, holders: Mapping[str, int | None] | None = None) -> list[float]:
        return _position_weights(path, self.weights, role_indices(path, ctx) if holders is None else holders)


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
