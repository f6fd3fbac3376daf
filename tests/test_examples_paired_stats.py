"""paired_stats.py against oracles written here from the definitions: the t interval by hand with
scipy's t quantile, McNemar as a pure-Python binomial sum over the outcomes no likelier than the one
seen, the bootstrap against an enumeration of every resample of a few images and against a naive
per-resample loop; the claims table on a hand-made record set; claim_plot.py's figure."""

from __future__ import annotations

import doctest
import itertools
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import paired_stats as ps  # noqa: E402

stats = pytest.importorskip("scipy.stats")

T_975_2 = 4.302652729749462  # t_{0.975, 2}: the textbook 4.303

bools = st.lists(st.booleans(), max_size=80)
pairs = st.integers(1, 60).flatmap(
    lambda n: st.tuples(*(st.lists(st.booleans(), min_size=n, max_size=n) for _ in range(2)))
)


def flags(text: str) -> np.ndarray:
    """'1011' -> [True, False, True, True]."""
    return np.array([c == "1" for c in text], dtype=bool)


def test_doctests():
    assert doctest.testmod(ps).failed == 0


# --- pack_flags / unpack_flags -------------------------------------------------------------------


@given(bools)
def test_pack_round_trip_is_exact_for_every_count(values):
    packed = ps.pack_flags(np.array(values, dtype=bool))
    assert len(packed) == 4 * math.ceil(math.ceil(len(values) / 8) / 3)  # base64 of ⌈n/8⌉ bytes
    unpacked = ps.unpack_flags(packed, len(values))
    assert unpacked.dtype == np.bool_ and unpacked.tolist() == values


def test_pack_is_little_endian_bits_in_base64():
    # images 0 and 2 set -> bits 0 and 2 -> byte 0b101 = 5; image 8 -> the second byte's bit 0
    assert ps.pack_flags(flags("101000001")) == "BQE="
    assert ps.pack_flags(np.zeros(0, dtype=bool)) == ""
    assert ps.unpack_flags("", 0).shape == (0,)


@pytest.mark.parametrize(
    "value, error, words",
    [
        (np.array([1, 0, 1]), TypeError, "dtype int"),
        ([0.0, 1.0], TypeError, "np.asarray(x) == 1"),
        (np.ones((2, 3), dtype=bool), ValueError, "shape (2, 3)"),
    ],
)
def test_pack_rejects_what_is_not_a_1d_bool_array(value, error, words):
    with pytest.raises(error, match="Expected `flags`") as info:
        ps.pack_flags(value)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "text, n, error, words",
    [
        (b"BQ==", 3, TypeError, "base64 str"),
        ("BQ==", 3.0, TypeError, "int count"),
        ("BQ==", -1, ValueError, "n` >= 0"),
        ("B!==", 3, ValueError, "does not decode"),
        ("BQ==", 9, ValueError, "Expected 2 packed bytes"),
        ("BQ==", 2, ValueError, "unused bits after image 2"),  # image 2 is set
    ],
)
def test_unpack_says_what_is_wrong(text, n, error, words):
    with pytest.raises(error, match="Expected") as info:
        ps.unpack_flags(text, n)
    assert words in str(info.value)


# --- seed_interval ---------------------------------------------------------------------------------


def test_seed_interval_with_three_seeds_uses_the_textbook_t():
    # d = 1, 2, 3: mean 2, s = 1, half-width 4.303 / √3
    interval = ps.seed_interval([1.0, 2.0, 3.0])
    assert interval.n == 3 and interval.mean == 2.0
    assert interval.lo == pytest.approx(2 - 4.303 / math.sqrt(3), abs=1e-3)
    assert interval.hi == pytest.approx(2 + T_975_2 / math.sqrt(3), rel=1e-12)


@given(
    st.lists(st.floats(-50, 50), min_size=2, max_size=6),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_seed_interval_is_mean_plus_minus_t_s_over_root_n(diffs, level):
    n = len(diffs)
    mean = sum(diffs) / n
    s = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf((1 + level) / 2, n - 1) * s / math.sqrt(n)
    interval = ps.seed_interval(diffs, level=level)
    assert interval.n == n
    assert interval.mean == pytest.approx(mean, abs=1e-9)
    assert interval.lo == pytest.approx(mean - half, abs=1e-9)
    assert interval.hi == pytest.approx(mean + half, abs=1e-9)


def test_one_seed_has_no_interval_and_says_why():
    interval = ps.seed_interval([1.5])
    assert (interval.mean, interval.lo, interval.hi, interval.n) == (1.5, None, None, 1)
    assert "one seed" in interval.reason


@pytest.mark.parametrize(
    "diffs, level, error",
    [([], 0.95, ValueError), ([1.0, math.nan], 0.95, ValueError), ([1.0, 2.0], 1.0, ValueError),
     ([1.0, 2.0], "0.95", TypeError), ([1.0, 2.0], True, TypeError)],
)  # fmt: skip
def test_seed_interval_rejects_bad_input(diffs, level, error):
    with pytest.raises(error, match="Expected"):
        ps.seed_interval(diffs, level=level)


# --- mcnemar_exact ---------------------------------------------------------------------------------


def mcnemar_oracle(b01: int, b10: int) -> float:
    """Exact two-sided p: the Binomial(m, 1/2) probability of every count no likelier than b10."""
    m = b01 + b10
    prob = [Fraction(math.comb(m, i), 2**m) for i in range(m + 1)]
    return float(sum(p for p in prob if p <= prob[b10]))


def outcomes(b01: int, b10: int, both: int = 3, neither: int = 2):
    a = [False] * b01 + [True] * b10 + [True] * both + [False] * neither
    b = [True] * b01 + [False] * b10 + [True] * both + [False] * neither
    return np.array(a), np.array(b)


@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_matches_a_brute_force_binomial_sum(b01, b10):
    a, b = outcomes(b01, b10)
    result = ps.mcnemar_exact(a, b)
    assert (result.b01, result.b10) == (b01, b10)
    assert result.p == pytest.approx(mcnemar_oracle(b01, b10), rel=1e-9)
    assert ps.mcnemar_exact(b, a) == (result.p, b10, b01)


def test_mcnemar_known_values():
    assert ps.mcnemar_exact(*outcomes(1, 6)).p == pytest.approx(2 * 8 / 128)  # 2·(1 + 7)/2⁷
    assert ps.mcnemar_exact(*outcomes(0, 0)).p == 1.0
    assert ps.mcnemar_exact(*outcomes(400, 520)).p == pytest.approx(mcnemar_oracle(400, 520))


def test_mcnemar_rejects_unpaired_outcomes():
    with pytest.raises(ValueError, match="same images"):
        ps.mcnemar_exact(flags("101"), flags("10"))


# --- paired_bootstrap ------------------------------------------------------------------------------


def enumerated_bootstrap(a: np.ndarray, b: np.ndarray):
    """The exact 95 % percentile interval of mean(a*) − mean(b*) over every one of the nⁿ equally
    likely resamples of image indices."""
    n = a.size
    d = a.astype(int) - b.astype(int)
    counts: dict = {}
    for idx in itertools.product(range(n), repeat=n):
        value = Fraction(sum(d[i] for i in idx), n)
        counts[value] = counts.get(value, 0) + 1
    values = sorted(counts)
    cdf = list(itertools.accumulate(Fraction(counts[v], n**n) for v in values))
    # No cumulative probability within 0.008 (five standard errors of an empirical CDF from 10,000
    # resamples) of a tail's 0.025 or 0.975: so the resampled quantiles land on the exact atoms.
    assert all(abs(c - q) > 0.008 for c in cdf for q in (0.025, 0.975))
    lo = next(v for v, c in zip(values, cdf) if c >= 0.025)
    hi = next(v for v, c in zip(values, cdf) if c >= 0.975)
    return float(lo), float(hi)


@pytest.mark.parametrize("a, b", [("0111", "1000"), ("00011", "01100"), ("0100", "0000")])
def test_bootstrap_quantiles_match_an_enumeration_of_every_resample(a, b):
    a, b = flags(a), flags(b)
    interval = ps.paired_bootstrap(a, b)
    assert (interval.lo, interval.hi) == enumerated_bootstrap(a, b)
    assert interval.mean == (a.sum() - b.sum()) / a.size and interval.n == a.size


def test_bootstrap_agrees_with_a_naive_loop_over_resampled_images():
    rng = np.random.default_rng(7)
    a, b = rng.random(200) < 0.8, rng.random(200) < 0.7
    draws = np.random.default_rng(1)
    naive = []
    for _ in range(2000):
        idx = draws.integers(0, 200, size=200)
        naive.append(a[idx].mean() - b[idx].mean())
    lo, hi = np.quantile(naive, [0.025, 0.975])
    interval = ps.paired_bootstrap(a, b)
    # Monte-Carlo error of a 2.5 % quantile from 2,000 resamples: about 0.002 here
    assert interval.lo == pytest.approx(lo, abs=0.012)
    assert interval.hi == pytest.approx(hi, abs=0.012)


@given(pairs)
def test_bootstrap_properties(pair):
    a, b = (np.array(x) for x in pair)
    n = a.size
    interval = ps.paired_bootstrap(a, b, resamples=2000)
    assert interval.mean == pytest.approx(a.mean() - b.mean())
    assert -1 <= interval.lo <= interval.mean <= interval.hi <= 1
    assert ps.paired_bootstrap(a, a) == ps.Interval(0.0, 0.0, 0.0, n)
    assert ps.paired_bootstrap(a, b, resamples=2000) == interval  # seeded
    if not a.all():
        shifted = a.copy()
        shifted[np.flatnonzero(~a)[0]] = True
        moved = ps.paired_bootstrap(shifted, b, resamples=2000).mean
        assert moved - interval.mean == pytest.approx(1 / n)


def test_bootstrap_of_a_sure_gain_is_a_point():
    interval = ps.paired_bootstrap(np.ones(50, dtype=bool), np.zeros(50, dtype=bool))
    assert (interval.mean, interval.lo, interval.hi) == (1.0, 1.0, 1.0)


def test_bootstrap_level_widens_the_interval():
    a, b = outcomes(30, 45, both=400, neither=25)
    narrow = ps.paired_bootstrap(a, b, level=0.5)
    wide = ps.paired_bootstrap(a, b, level=0.99)
    assert wide.lo < narrow.lo < narrow.hi < wide.hi


@pytest.mark.parametrize(
    "a, b, kwargs, error",
    [("10", "1", {}, ValueError), ("", "", {}, ValueError), ("10", "01", {"resamples": 0}, ValueError),
     ("10", "01", {"resamples": 1e4}, TypeError), ("10", "01", {"level": 95}, ValueError)],
)  # fmt: skip
def test_bootstrap_rejects_bad_input(a, b, kwargs, error):
    with pytest.raises(error, match="Expected"):
        ps.paired_bootstrap(flags(a), flags(b), **kwargs)


# --- verdict ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lo, hi, direction, expected",
    [(0.5, 2.0, 1, "shown"), (0.5, 2.0, -1, "contradicted"), (-2.0, -0.5, -1, "shown"),
     (-2.0, -0.5, 1, "contradicted"), (-1.0, 1.0, 1, "not shown"), (-1.0, 1.0, -1, "not shown"),
     (0.0, 1.0, 1, "not shown"), (-1.0, 0.0, -1, "not shown"), (0.0, 0.0, 1, "not shown")],
)  # fmt: skip
def test_verdict(lo, hi, direction, expected):
    assert ps.verdict(ps.Interval((lo + hi) / 2, lo, hi, 3), direction) == expected


@pytest.mark.parametrize(
    "interval, direction, error, words",
    [(ps.Interval(1.0, 0.5, 2.0, 3), 0, ValueError, "+1 (claimed gain)"),
     (ps.Interval(1.0, 0.5, 2.0, 3), True, ValueError, "+1 (claimed gain)"),
     (ps.seed_interval([1.0]), 1, ValueError, "paired_bootstrap"),
     ((0.5, 2.0), 1, TypeError, "Interval")],
)  # fmt: skip
def test_verdict_rejects_bad_input(interval, direction, error, words):
    with pytest.raises(error, match="Expected") as info:
        ps.verdict(interval, direction)
    assert words in str(info.value)


# --- claims_table and rows_table -------------------------------------------------------------------

# Four images per seed. GAIRAT − AT: d = 25, 25, 50 points under pgd40; under aa seed 2 is missing.
# AWP has seed 0 only; FAT shares no seed with AT.
RECORDS = {
    "AT": {0: {"pgd40": flags("1000"), "aa": flags("1000")},
           1: {"pgd40": flags("1100"), "aa": flags("1100")},
           2: {"pgd40": flags("0000")}},
    "GAIRAT": {"0": {"pgd40": flags("1100"), "aa": flags("0000")},
               "1": {"pgd40": flags("1110"), "aa": flags("0100")},
               "2": {"pgd40": flags("1100"), "aa": flags("0000")},
               "3": {"pgd40": flags("1111"), "aa": flags("1111")}},
    "AWP": {0: {"pgd40": flags("0100"), "aa": flags("1100")}},
    "FAT": {5: {"pgd40": flags("1111"), "aa": flags("1111")}},
}  # fmt: skip
CLAIMS = [
    ps.Claim("C1", "GAIRAT", "AT", {"pgd40": 1, "aa": 1}),
    ps.Claim("C2", "GAIRAT", "AT", {"aa": -1}),
    ps.Claim("C6", "AWP", "AT", {"pgd40": 1, "aa": 1}),
    ps.Claim("C9", "FAT", "AT", {"pgd40": 1}),
]


@pytest.fixture(scope="module")
def table():
    return ps.claims_table(RECORDS, CLAIMS, ["pgd40", "aa"])


def test_claims_table_seed_level(table):
    c1 = table["C1"]["pgd40"]
    # d = 25, 25, 50: mean 100/3, s = 25/√3, half-width t · s/√3 = 25 t / 3
    assert c1["mean"] == round(100 / 3, 2)
    assert c1["ci95"] == [
        round(100 / 3 - 25 * T_975_2 / 3, 2),
        round(100 / 3 + 25 * T_975_2 / 3, 2),
    ]
    assert (c1["interval"], c1["n_seeds"], c1["single_seed"]) == ("seeds", 3, False)
    assert (c1["verdict"], c1["direction"]) == ("not shown", 1)
    assert [c1["seeds"][k]["diff"] for k in ("0", "1", "2")] == [25.0, 25.0, 50.0]
    # seed 0: one image only GAIRAT gets right: p = 2 · P(X ≤ 0 | m = 1) = 1; seed 2: two, p = 1/2
    assert [c1["seeds"][k]["mcnemar_p"] for k in ("0", "2")] == [1.0, 0.5]
    assert (c1["seeds"]["2"]["b01"], c1["seeds"]["2"]["b10"], c1["seeds"]["2"]["images"]) == (
        0,
        2,
        4,
    )
    # seed 0's d over resampled images is (count of image 1)/4, count ~ Binomial(4, 1/4):
    # P(≤ 2) = 0.949 < 0.975 <= P(≤ 3), so the interval is [0, 75]
    assert c1["seeds"]["0"]["ci95"] == [0.0, 75.0]
    assert c1["skipped_seeds"] == {"3": "no 'pgd40' for 'AT' seed 3"}


def test_claims_table_skips_missing_seeds_and_judges_each_claimed_direction(table):
    aa1, aa2 = table["C1"]["aa"], table["C2"]["aa"]
    assert aa1["skipped_seeds"] == {"2": "no 'aa' for 'AT' seed 2", "3": "no 'aa' for 'AT' seed 3"}
    # d = −25, −25: mean −25 with s = 0, so the interval is the point −25
    assert (aa1["mean"], aa1["ci95"], aa1["n_seeds"]) == (-25.0, [-25.0, -25.0], 2)
    assert (aa1["verdict"], aa2["verdict"]) == ("contradicted", "shown")
    assert table["C2"]["pgd40"]["verdict"] is None and table["C2"]["pgd40"]["direction"] is None
    assert table["C2"]["pgd40"]["mean"] == table["C1"]["pgd40"]["mean"]


def test_claims_table_single_seed_falls_back_to_images(table):
    c6 = table["C6"]["pgd40"]
    # AWP 0100 vs AT 1000: d over resampled images is (count of image 1 − count of image 0)/4
    lo, hi = enumerated_bootstrap(flags("0100"), flags("1000"))
    assert (c6["interval"], c6["single_seed"], c6["n_seeds"]) == ("images", True, 1)
    assert (c6["mean"], c6["ci95"]) == (0.0, [100 * lo, 100 * hi])
    assert c6["verdict"] == "not shown"
    assert (table["C6"]["aa"]["mean"], table["C6"]["aa"]["verdict"]) == (25.0, "not shown")


def test_claims_table_without_a_paired_seed_judges_nothing(table):
    c9 = table["C9"]["pgd40"]
    assert (c9["n_seeds"], c9["mean"], c9["ci95"], c9["verdict"]) == (0, None, None, None)
    assert set(c9["skipped_seeds"]) == {"0", "1", "2", "5"}
    assert "'FAT' seed 0" in c9["skipped_seeds"]["0"]


def test_claims_table_is_plain_json(table):
    assert json.loads(json.dumps(table)) == table
    floats = ps.claims_table(RECORDS, [ps.Claim("C", "GAIRAT", "AT", {"aa": -1.0})], ["aa"])
    assert floats["C"]["aa"]["direction"] == -1 and type(floats["C"]["aa"]["direction"]) is int


@pytest.mark.parametrize(
    "claims, records, words",
    [([CLAIMS[0], CLAIMS[0]], RECORDS, "distinct claim ids"),
     ([ps.Claim("C", "GAIRAT", "AT", {"cw": 1})], RECORDS, "add them to `metrics`"),
     ([ps.Claim("C", "GAIRAT", "AT", {"aa": 2})], RECORDS, "C's direction for 'aa'"),
     (CLAIMS[:1], {**RECORDS, "AT": {0: {"pgd40": flags("10"), "aa": flags("10")}}}, "same images")],
)  # fmt: skip
def test_claims_table_rejects_bad_input(claims, records, words):
    with pytest.raises(ValueError, match="Expected") as info:
        ps.claims_table(records, claims, ["pgd40", "aa"])
    assert words in str(info.value)


def test_rows_table_in_percent_with_seeds_in_numeric_order():
    rows = ps.rows_table(
        {"AT": {10: {"nat": flags("1")}, "2": {"nat": flags("1110"), "aa": flags("1000")}}}
    )
    assert rows == {"AT": {"seeds": {"2": {"nat": 75.0, "aa": 25.0}, "10": {"nat": 100.0}}}}
    assert list(rows["AT"]["seeds"]) == ["2", "10"]


@pytest.mark.parametrize(
    "records, error",
    [({"AT": {0: {"nat": flags("")}}}, ValueError), ({"AT": {-1: {}}}, ValueError),
     ({"AT": {"s0": {}}}, ValueError), ({"AT": {0.0: {}}}, TypeError),
     ({"AT": {0: {"nat": np.array([1, 0])}}}, TypeError)],
)  # fmt: skip
def test_rows_table_rejects_bad_input(records, error):
    with pytest.raises(error, match="Expected"):
        ps.rows_table(records)


# --- claim_plot ------------------------------------------------------------------------------------


@pytest.fixture
def claim_plot(monkeypatch):
    """claim_plot with its figures kept (in ``claim_plot.drawn``) for inspection after saving."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import claim_plot

    drawn = []
    real = claim_plot.save_figure

    def keep(fig, out, **kwargs):
        drawn.append(fig)
        return real(fig, out, **kwargs)

    monkeypatch.setattr(claim_plot, "save_figure", keep)
    monkeypatch.setattr(claim_plot, "drawn", drawn, raising=False)
    return claim_plot


def test_claim_figure_draws_one_interval_per_judged_claim_and_metric(tmp_path, table, claim_plot):
    from matplotlib.image import imread

    out = tmp_path / "figures" / "claims.png"
    assert claim_plot.plot_claims(table, out) == out
    width = imread(out).shape[1]
    assert 900 <= width <= 1000
    (fig,) = claim_plot.drawn
    panels = fig.axes[:2]
    assert [ax.get_title() for ax in panels] == [
        "PGD-40: method − baseline",
        "AutoAttack: method − baseline",
    ]
    for ax in panels:
        # C1, C2 (seed-level: filled dots) and C6 (one seed: hollow squares); C9 pairs no seed
        assert [bar.lines[0].get_marker() for bar in ax.containers] == ["o", "o", "s"]
        # the interval's line: solid (no dash pattern), solid, dashed
        dashes = [bar.lines[2][0].get_linestyle()[0][1] for bar in ax.containers]
        assert [pattern is not None for pattern in dashes] == [False, False, True]
        assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.lines)  # the line at 0
    seed_dots = [line for line in panels[0].lines if line.get_marker() == "."]
    assert sorted(len(line.get_xdata()) for line in seed_dots) == [1, 3, 3]
    labels = [tick.get_text() for tick in panels[0].get_yticklabels()]
    assert labels == [
        "C1: GAIRAT − AT (3 seeds)\nPGD-40 not shown · AutoAttack contradicted",
        "C2: GAIRAT − AT (3 seeds)\nPGD-40 no claim · AutoAttack shown",
        "C6: AWP − AT (1 seed)\nPGD-40 not shown · AutoAttack not shown",
        "C9: FAT − AT (0 seeds)\nPGD-40 no paired seed · AutoAttack no claim",
    ]


def test_claim_figure_needs_a_claim(tmp_path, claim_plot):
    with pytest.raises(ValueError, match="Expected at least one claim"):
        claim_plot.plot_claims({}, tmp_path / "claims.png")
