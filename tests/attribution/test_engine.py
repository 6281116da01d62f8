"""Hand-computed examples for every model in attribution.engine (no database)."""
from decimal import Decimal

import pytest

from attribution import engine as e

DAY = e.SECONDS_PER_DAY


def path(*channels, lc=None, oc=None):
    return [
        e.Touch(channel=c, at=i * DAY, is_lead_creation=(i == lc), is_opportunity_creation=(i == oc))
        for i, c in enumerate(channels)
    ]


CTX = e.PathContext(reference_at=10 * DAY)


def test_first_last_linear():
    p = path("email", "paid_search", "direct")
    assert e.first_touch(p) == [1, 0, 0]
    assert e.last_touch(p) == [0, 0, 1]
    assert e.linear(p) == pytest.approx([1 / 3] * 3)


def test_last_non_direct_skips_direct_and_falls_back_when_all_direct():
    assert e.last_non_direct(path("email", "paid_search", "direct", "direct")) == [0, 1, 0, 0]
    assert e.last_non_direct(path("direct", "direct")) == [0, 1]


def test_time_decay_half_life():
    # touches 7 and 0 days before the reference with a 7-day half-life: 0.5 : 1
    p = [e.Touch("email", 3 * DAY), e.Touch("display", 10 * DAY)]
    assert e.time_decay(p, CTX) == pytest.approx([1 / 3, 2 / 3])
    # a touch after the reference counts fully, not more
    p = [e.Touch("email", 10 * DAY), e.Touch("display", 12 * DAY)]
    assert e.time_decay(p, CTX) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError):
        e.time_decay(p, CTX, half_life_days=0)


@pytest.mark.parametrize(
    "n, expected",
    [(1, [1.0]), (2, [0.5, 0.5]), (3, [0.4, 0.2, 0.4]), (4, [0.4, 0.1, 0.1, 0.4])],
)
def test_u_shaped(n, expected):
    p = path(*["email"] * n)
    assert e.position_based(p, CTX, weights=e.POSITION_WEIGHTS["u_shaped"]) == pytest.approx(expected)


def test_w_shaped_five_touches():
    p = path("a", "b", "c", "d", "e", lc=1, oc=3)
    assert e.position_based(p, CTX, weights=e.POSITION_WEIGHTS["w_shaped"]) == pytest.approx(
        [0.3, 0.3, 0.05, 0.3, 0.05]
    )


def test_w_shaped_first_is_lead_creation_sums_roles():
    # first (30) + lead creation (30) on touch 0, opp creation 30 on touch 2, 10 to touch 1
    p = path("a", "b", "c", lc=0, oc=2)
    assert e.position_based(p, CTX, weights=e.POSITION_WEIGHTS["w_shaped"]) == pytest.approx([0.6, 0.1, 0.3])


def test_w_shaped_three_milestones_only_is_a_third_each():
    p = path("a", "b", "c", lc=1, oc=2)
    assert e.position_based(p, CTX, weights=e.POSITION_WEIGHTS["w_shaped"]) == pytest.approx([1 / 3] * 3)


def test_full_path_won():
    p = path("a", "b", "c", "d", "e", "f", lc=1, oc=2)
    ctx = e.PathContext(reference_at=4 * DAY, won_at=4 * DAY)  # touch 4 is nearest the close; 5 is after it
    assert e.position_based(p, ctx, weights=e.POSITION_WEIGHTS["full_path"]) == pytest.approx(
        [0.225, 0.225, 0.225, 0.05, 0.225, 0.05]
    )


def test_custom_weights_validated():
    with pytest.raises(ValueError, match="unknown position roles"):
        e.position_based(path("a"), CTX, weights={"middle": 1})
    p = path("a", "b", "c")
    assert e.position_based(p, CTX, weights={"first": 1, "last": 3}) == pytest.approx([0.25, 0, 0.75])


def test_allocate_remainder_goes_to_largest_weight_earliest_on_tie():
    credits = e.allocate(Decimal("100.00"), [1 / 3] * 3)
    assert credits == [Decimal("33.34"), Decimal("33.33"), Decimal("33.33")]
    assert sum(credits) == Decimal("100.00")
    credits = e.allocate(Decimal("0.05"), [0.25, 0.5, 0.25])
    assert sum(credits) == Decimal("0.05")
    assert credits[1] >= credits[0]


def test_allocate_negative_remainder():
    # 0.125 rounds half-even to 0.12 on three... construct a case summing above the amount
    credits = e.allocate(Decimal("0.10"), [0.45, 0.45, 0.1])  # 0.045 -> 0.04 each, 0.01: sum 0.09
    assert sum(credits) == Decimal("0.10")
    assert credits == [Decimal("0.05"), Decimal("0.04"), Decimal("0.01")]
    credits = e.allocate(Decimal("1.00"), [0.335, 0.335, 0.33])  # 0.34+0.34+0.33 = 1.01
    assert credits == [Decimal("0.33"), Decimal("0.34"), Decimal("0.33")]


# The classic three-journey example: C1>C2>C3 converts, C1 and C2>C3 do not.
CLASSIC = {(("C1", "C2", "C3"), True): 1, (("C1",), False): 1, (("C2", "C3"), False): 1}


def test_markov_removal_effects_by_hand():
    # P = 2/3 * P(C1) + 1/3 * P(C2), P(C1) = 1/2 * P(C2), P(C2) = P(C3) = 1/2 -> P = 1/3
    assert e.markov_conversion_probability(CLASSIC) == pytest.approx(1 / 3)
    effects = e.markov_removal_effects(CLASSIC)
    # without C1: 1/3 * 1/2 = 1/6 -> 1/2; without C2 or C3 nothing converts -> 1
    assert effects == pytest.approx({"C1": 0.5, "C2": 1.0, "C3": 1.0})
    p = path("C1", "C2", "C3")
    assert e.channel_weighted(p, effects) == pytest.approx([0.2, 0.4, 0.4])


def _raw_counts(journeys):
    """Transition counts with repeats kept (self-loops), built here by hand."""
    from collections import Counter, defaultdict

    counts = defaultdict(Counter)
    for (channels, converted), n in journeys.items():
        states = ("(start)", *channels, "(conversion)" if converted else "(null)")
        for a, b in zip(states, states[1:]):
            counts[a][b] += n
    return counts


def test_markov_loops_and_repeats():
    journeys = {(("A", "A", "B", "A"), True): 1, (("B",), False): 1}
    # collapsed: A>B>A. start->A 1/2, start->B 1/2; A->B 1/2, A->conv 1/2; B->A 1/2, B->null 1/2
    # a = 1/2 + b/2, b = a/2 -> a = 2/3, b = 1/3, P = 1/2
    assert e.markov_conversion_probability(journeys) == pytest.approx(0.5)
    # without A: nothing converts; without B: P = 1/2 * 1/2 = 1/4 -> RE 1/2
    assert e.markov_removal_effects(journeys) == pytest.approx({"A": 1.0, "B": 0.5})
    assert e.markov_transitions(journeys)["A"] == {"B": 1, "(conversion)": 1}


def test_self_loops_change_no_absorption_probability():
    """Why MARTECH_ATTRIBUTION_MARKOV_COLLAPSE_REPEATS went: the chain with
    the repeats kept (self-loops) gives the same P and removal effects."""
    journeys = {(("A", "A", "A", "B"), True): 2, (("B", "B", "C"), False): 3, (("C", "A", "A"), True): 1,
                (("C", "C"), False): 4}
    raw = _raw_counts(journeys)
    collapsed = e.markov_transitions(journeys)
    assert raw["A"]["A"] == 5 and "A" not in collapsed["A"]
    for removed in (None, "A", "B", "C"):
        assert e._conversion_probability(raw, removed) == e._conversion_probability(collapsed, removed)


def test_markov_global_shares_by_hand():
    # CLASSIC: RE = {C1: 1/2, C2: 1, C3: 1}: global shares 1/5, 2/5, 2/5 of the one conversion.
    assert e.markov_global_shares(CLASSIC) == pytest.approx({"C1": 0.2, "C2": 0.4, "C3": 0.4})
    # One converting path holding every channel: the fit keeps the shares, so the path's
    # weights are the shares (per path: 0.2/0.4/0.4 too, as RE / sum on the path).
    values, gap = e.markov_global_fit(CLASSIC)
    assert gap < 1e-9
    assert e.channel_weighted(path("C1", "C2", "C3"), values) == pytest.approx([0.2, 0.4, 0.4])


def test_markov_global_differs_from_per_path_and_meets_the_shares():
    # A>B converts twice, B alone converts once, A>C never converts.
    journeys = {(("A", "B"), True): 2, (("B",), True): 1, (("A", "C"), False): 2}
    # P: start->A 4/5, start->B 1/5; A->B 1/2, A->C 1/2; B->conv 1; C->null 1.  P = 4/5*1/2 + 1/5 = 3/5
    assert e.markov_conversion_probability(journeys) == pytest.approx(0.6)
    # without A: 1/5 -> RE 2/3; without B: 0 -> RE 1; without C: 3/5 -> RE 0
    effects = e.markov_removal_effects(journeys)
    assert effects == pytest.approx({"A": 2 / 3, "B": 1.0, "C": 0.0})
    # global shares of the 3 conversions: A 2/5 * 3 = 1.2, B 3/5 * 3 = 1.8
    assert e.markov_global_shares(journeys) == pytest.approx({"A": 0.4, "B": 0.6, "C": 0.0})
    # per path: A>B gives A (2/3)/(5/3) = 0.4 on each of 2 conversions -> A 0.8, B 2.2
    per_path = e.credited_conversions(e._converting_sets(journeys), effects)
    assert per_path == pytest.approx({"A": 0.8, "B": 2.2})
    # global: B alone must keep its 1, so A>B splits 1.2 / 0.8 per 2 conversions: 0.6 / 0.4 each
    values, gap = e.markov_global_fit(journeys)
    assert gap < 1e-9
    assert e.credited_conversions(e._converting_sets(journeys), values) == pytest.approx({"A": 1.2, "B": 1.8})
    assert e.channel_weighted(path("A", "B"), values) == pytest.approx([0.6, 0.4])
    assert e.channel_weighted(path("A", "B"), effects) == pytest.approx([0.4, 0.6])


def test_markov_global_reports_shares_it_cannot_meet():
    journeys = {(("A", "C", "B"), False): 2, (("C", "B"), True): 1, (("B",), True): 2}
    # start->A 2/5, ->C 1/5, ->B 2/5; A->C; C->B; B->conv 3/5, B->null 2/5. P = 3/5.
    # Without B: 0 (RE 1); without C: 2/5 * 3/5 (RE 3/5); without A: 3/5 * 3/5 (RE 2/5).
    assert e.markov_global_shares(journeys) == pytest.approx({"A": 0.2, "B": 0.5, "C": 0.3})
    # A never converts: shares over B and C are 5/8 and 3/8 of 3 conversions, 15/8 and 9/8;
    # C is on one converting journey, so it can have at most 1: 1/8 of a conversion short.
    values, gap = e.markov_global_fit(journeys)
    assert gap == pytest.approx(1 / 8 / 3, abs=1e-3)
    credited = e.credited_conversions(e._converting_sets(journeys), values)
    assert credited["C"] == pytest.approx(1, abs=1e-3) and sum(credited.values()) == pytest.approx(3)
    assert values["A"] == 0.0


def _shapley_by_definition(journeys):
    """The Shapley formula over every coalition, with v(S) = conversions of
    the journeys whose channel set is a subset of S: an independent check."""
    from fractions import Fraction
    from itertools import combinations
    from math import factorial

    players = sorted({c for (channels, _), n in journeys.items() for c in channels})
    n = len(players)

    def v(coalition):
        return sum(k for (channels, converted), k in journeys.items() if converted and set(channels) <= coalition)

    phi = {}
    for c in players:
        rest = [p for p in players if p != c]
        total = Fraction(0)
        for size in range(len(rest) + 1):
            for s in combinations(rest, size):
                coef = Fraction(factorial(size) * factorial(n - size - 1), factorial(n))
                total += coef * (v(set(s) | {c}) - v(set(s)))
        phi[c] = float(total)
    return phi


def test_shapley_two_channels_by_hand():
    journeys = {(("A",), True): 2, (("A",), False): 8, (("B",), True): 1, (("B",), False): 9,
                (("A", "B"), True): 5, (("B", "A"), False): 5}
    # v(A) = 2, v(B) = 1, v(AB) = 2 + 1 + 5 = 8. phi(A) = (2 + (8 - 1))/2 = 4.5, phi(B) = (1 + (8 - 2))/2 = 3.5
    phi = e.shapley_values(journeys)
    assert phi == pytest.approx({"A": 4.5, "B": 3.5})
    assert phi == pytest.approx(_shapley_by_definition(journeys))
    assert sum(phi.values()) == pytest.approx(8)  # efficiency: v(all) = every conversion
    assert e.channel_weighted(path("A", "B", "B"), phi) == pytest.approx([4.5 / 8, 1.75 / 8, 1.75 / 8])


def test_shapley_three_channels_by_hand():
    journeys = {(("A",), True): 1, (("A",), False): 3, (("B", "C"), True): 3, (("C",), False): 2,
                (("A", "B", "C"), True): 1, (("C", "B", "C"), True): 1}
    # Each conversion split over its distinct channels: A: 1 + 1/3; B: 3/2 + 1/3 + 1/2; C: the same as B
    phi = e.shapley_values(journeys)
    assert phi == pytest.approx({"A": 4 / 3, "B": 7 / 3, "C": 7 / 3})
    assert phi == pytest.approx(_shapley_by_definition(journeys))
    assert sum(phi.values()) == pytest.approx(6)


def test_shapley_defined_without_a_journey_of_every_channel():
    """The old v (exact channel set) made every value 0 once no journey had
    all channels; this v is defined for every subset."""
    journeys = {(("referral", "email"), True): 3, (("paid_search",), True): 2, (("direct",), False): 4}
    phi = e.shapley_values(journeys)
    assert phi == pytest.approx({"direct": 0.0, "email": 1.5, "paid_search": 2.0, "referral": 1.5})
    assert phi == pytest.approx(_shapley_by_definition(journeys))
    # One more won direct journey: referral keeps its 1.5 (its share moves from 1.5/5 to 1.5/6).
    journeys[(("direct",), True)] = 1
    assert e.shapley_values(journeys)["referral"] == pytest.approx(1.5)


def test_shapley_stability_bound_one_added_journey():
    """Stated bound (module docstring): one more journey moves no channel's
    share phi(c) / sum(phi) by more than 1 / (C + 1), C the conversions
    before it. Checked over many random data sets and added journeys, up to
    twelve channels."""
    import random

    rnd = random.Random(19)
    channels = [f"c{i}" for i in range(12)]
    for _ in range(300):
        journeys = {}
        for _ in range(rnd.randint(1, 40)):
            key = (tuple(rnd.choice(channels) for _ in range(rnd.randint(1, 6))), rnd.random() < 0.4)
            journeys[key] = journeys.get(key, 0) + rnd.randint(1, 5)
        before = e.shapley_values(journeys)
        conversions = sum(n for (_, converted), n in journeys.items() if converted)
        added = (tuple(rnd.choice(channels) for _ in range(rnd.randint(1, 6))), rnd.random() < 0.5)
        after = e.shapley_values({**journeys, added: journeys.get(added, 0) + 1})
        if not conversions:
            continue
        bound = 1 / (conversions + 1)
        total_after = sum(after.values())
        for c in set(before) | set(after):
            share_before = before.get(c, 0.0) / conversions
            share_after = after.get(c, 0.0) / total_after
            assert abs(share_after - share_before) <= bound + 1e-12


def test_shapley_many_channels_no_coalition_limit():
    journeys = {(tuple(f"c{i}" for i in range(k, k + 5)), True): 1 for k in range(30)}
    phi = e.shapley_values(journeys)
    assert len(phi) == 34 and sum(phi.values()) == pytest.approx(30)


def test_w_shaped_exact_half_cents_round_half_even():
    # Five touches, roles on 0 (first and lead creation), 2 (opportunity creation): others 10/3 % each.
    p = path("a", "b", "c", "d", "e", lc=0, oc=2)
    weights = e.weigher("w_shaped")(p, CTX)
    assert weights == pytest.approx([0.6, 1 / 30, 0.3, 1 / 30, 1 / 30])
    # 100.05 / 30 = 3.335 exactly: half-even gives 3.34 (3.33 with the float 1/30, a hair under).
    # 100.05 * 0.3 = 30.015 -> 30.02; 100.05 * 0.6 = 60.03; sum 100.07: -0.02 to the largest weight.
    assert e.allocate(Decimal("100.05"), weights) == [Decimal("60.01"), Decimal("3.34"), Decimal("30.02"),
                                                      Decimal("3.34"), Decimal("3.34")]
    # 0.45 / 30 = 0.015 -> 0.02 (even); 0.45 * 0.3 = 0.135 -> 0.14; 0.27; sum 0.47: -0.02 to the first
    assert e.allocate(Decimal("0.45"), weights) == [Decimal("0.25"), Decimal("0.02"), Decimal("0.14"),
                                                    Decimal("0.02"), Decimal("0.02")]


@pytest.mark.parametrize("model", ["u_shaped", "w_shaped", "full_path", "custom"])
def test_every_position_model_allocates_exactly(model):
    """Each position model's credits are its exact rational weights times the
    amount, rounded half-even, the remainder by the documented rule."""
    import random
    from fractions import Fraction

    weigh = e.weigher(model, custom_weights={"first": 25, "lead_creation": 25, "opportunity_creation": 25,
                                             "closed_won": 12.5, "last": 15, "other": 10})
    rnd = random.Random(5)
    for _ in range(400):
        n = rnd.randint(1, 9)
        p = path(*["x"] * n, lc=rnd.randrange(n), oc=rnd.randrange(n))
        ctx = e.PathContext(reference_at=n * DAY, won_at=rnd.choice([None, rnd.randrange(n) * DAY]))
        weights = weigh(p, ctx)
        exact = [Fraction(num, weights.denominator) for num in weights.numerators]
        assert sum(exact) == 1 and [float(f) for f in exact] == list(weights)
        amount = Decimal(rnd.randint(0, 2_000_000)) / 100
        # round() of a Fraction rounds half to even.
        want = []
        for f in exact:
            cents = Fraction(int(amount * 100)) * f
            want.append(Decimal(round(cents)) / 100)
        rest = amount - sum(want)
        top = min(range(n), key=lambda i: (-exact[i], i))
        want[top] += rest
        got = e.allocate(amount, weights)
        assert got == want and sum(got) == amount


def test_channel_weighted_falls_back_to_linear():
    assert e.channel_weighted(path("X", "Y"), {"X": -0.1, "Y": 0}) == [0.5, 0.5]


def test_weigher_rejects_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        e.weigher("nope")
    with pytest.raises(ValueError):
        e.weigher("markov")


def _allocate_reference(amount, weights):
    """The documented rounding rule, written plainly: each credit is
    amount * weight rounded half-even to the cent, the remainder to the
    largest weight (earliest on a tie)."""
    from decimal import ROUND_HALF_EVEN

    if isinstance(weights, e.ExactWeights):  # linear: 1/n exactly, not the float
        from fractions import Fraction

        credits = [Decimal(round(Fraction(int(amount * 100)) * n / weights.denominator)) / 100 for n in weights.numerators]
    else:
        credits = [(amount * Decimal(repr(w))).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN) for w in weights]
    rest = amount - sum(credits)
    top = min(range(len(weights)), key=lambda i: (-weights[i], i))
    credits[top] += rest
    return credits


def test_allocate_matches_the_plain_rule_on_many_paths():
    import random

    rnd = random.Random(7)
    for _ in range(3000):
        n = rnd.randint(1, 12)
        kind = rnd.random()
        if kind < 0.3:
            weights = e.first_touch([None] * n) if rnd.random() < 0.5 else e.linear([None] * n)
        else:
            raw = [rnd.random() for _ in range(n)]
            weights = [w / sum(raw) for w in raw]
        amount = Decimal(rnd.randint(-500, 10_000_000)) / 100
        got = e.allocate(amount, weights)
        assert got == _allocate_reference(amount, weights)
        assert sum(got) == amount


def test_path_weights_equal_each_model_alone():
    weighers = {m: e.weigher(m, custom_weights={"first": 25, "lead_creation": 25, "opportunity_creation": 25, "last": 15, "other": 10})
                for m in e.MODELS if m not in e.DATA_DRIVEN}
    ctx = e.PathContext(reference_at=9 * DAY, won_at=6.5 * DAY)
    for p in (path("email"), path("email", "direct"), path("a", "b", "c", "direct", "e", "f", "g", "h", lc=2, oc=5),
              path("a", "b", "c", lc=0, oc=0)):
        together = dict(e.path_weights(weighers, p, ctx))
        assert list(together) == list(weighers)
        for model, weigh in weighers.items():
            assert together[model] == weigh(p, ctx)
        assert together["w_shaped"] == e.position_based(p, ctx, weights=e.POSITION_WEIGHTS["w_shaped"])


def test_position_weigher_checks_its_weights_once_built():
    with pytest.raises(ValueError, match="unknown position roles"):
        e.weigher("custom", custom_weights={"middle": 1})
    with pytest.raises(ValueError, match="must not be negative"):
        e.weigher("custom", custom_weights={"first": -1, "last": 2})
