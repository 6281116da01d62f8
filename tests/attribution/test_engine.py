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


def test_markov_loops_and_repeats():
    journeys = {(("A", "A", "B", "A"), True): 1, (("B",), False): 1}
    # collapsed: A>B>A. start->A 1/2, start->B 1/2; A->B 1/2, A->conv 1/2; B->A 1/2, B->null 1/2
    # a = 1/2 + b/2, b = a/2 -> a = 2/3, b = 1/3, P = 1/2
    assert e.markov_conversion_probability(journeys) == pytest.approx(0.5)
    # without A: nothing converts; without B: P = 1/2 * 1/2 = 1/4 -> RE 1/2
    assert e.markov_removal_effects(journeys) == pytest.approx({"A": 1.0, "B": 0.5})
    # not collapsed: A->A counts as a transition (a self-loop; here P happens to stay 1/2)
    assert e.markov_transitions(journeys, collapse=False)["A"] == {"A": 1, "B": 1, "(conversion)": 1}
    assert e.markov_transitions(journeys)["A"] == {"B": 1, "(conversion)": 1}


def test_shapley_two_channels_by_hand():
    journeys = {(("A",), True): 2, (("A",), False): 8, (("B",), True): 1, (("B",), False): 9,
                (("A", "B"), True): 5, (("B", "A"), False): 5}
    # v(A)=0.2, v(B)=0.1, v(AB)=0.5: phi(A) = (0.2 + 0.4)/2, phi(B) = (0.1 + 0.3)/2
    phi = e.shapley_values(journeys)
    assert phi == pytest.approx({"A": 0.3, "B": 0.2})
    assert sum(phi.values()) == pytest.approx(0.5)
    assert e.channel_weighted(path("A", "B", "B"), phi) == pytest.approx([0.6, 0.2, 0.2])


def test_shapley_three_channels_efficiency():
    journeys = {(("A",), True): 1, (("A",), False): 3, (("B", "C"), True): 3, (("C",), False): 2,
                (("A", "B", "C"), True): 1}
    phi = e.shapley_values(journeys)
    # efficiency: values sum to v(ABC) = 1
    assert sum(phi.values()) == pytest.approx(1.0)
    # v(A)=1/4, v(BC)=1, v(ABC)=1, others 0: phi(A) = 1/3*(1/4-0) + 1/6*0 + 1/6*0 + 1/3*(1-1) = 1/12
    assert phi["A"] == pytest.approx(1 / 12)


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
