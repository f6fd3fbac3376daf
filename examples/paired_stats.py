"""Paired statistics for the MNIST benchmark's claims: method − baseline on the same images.

Every evaluated model keeps one outcome per test image and attack (``True``: classified correctly
under that attack), so two rows evaluated on the same images can be compared image by image. This
module holds the pre-registered statistics of ``docs/results/mnist-benchmark.md``:

- :func:`pack_flags` / :func:`unpack_flags`: the per-image outcomes as a short base64 string in JSON.
- :func:`seed_interval`: the seed-level Student-t interval of the per-seed differences d_k (primary).
- :func:`paired_bootstrap` and :func:`mcnemar_exact`: the image-level interval and exact test
  within one seed.
- :func:`verdict`: "shown", "contradicted" or "not shown" from an interval and the claimed direction.
- :func:`claims_table` and :func:`rows_table`: the benchmark JSON's ``"claims"`` and ``"rows"``, in
  percent.

Accuracies and differences are fractions in the functions on flags and percent in the two tables.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

Seed = Union[int, str]
Records = Mapping[str, Mapping[Seed, Mapping[str, Any]]]


def _flags(value: object, name: str) -> np.ndarray:
    """A 1-D boolean array of per-image outcomes."""
    array = np.asarray(value)
    if array.dtype != np.bool_:
        raise TypeError(
            f"Expected `{name}` as a 1-D bool array of per-image outcomes, got dtype {array.dtype}; "
            "convert 0/1 values with `np.asarray(x) == 1`."
        )
    if array.ndim != 1:
        raise ValueError(
            f"Expected `{name}` as a 1-D bool array of per-image outcomes, got shape {array.shape}; "
            "keep one attack's outcomes per array."
        )
    return array


def _level(level: object) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        raise TypeError(
            f"Expected `level` as a float in (0, 1), got {type(level).__name__} {level!r}."
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"Expected `level` in (0, 1), e.g. 0.95 for a 95 % interval, got {level}.")
    return float(level)


def _direction(direction: object, name: str = "direction") -> int:
    if isinstance(direction, bool) or direction not in (1, -1):
        raise ValueError(
            f"Expected `{name}` as +1 (claimed gain) or -1 (claimed loss), got {direction!r}."
        )
    return 1 if direction == 1 else -1


def pack_flags(flags: object) -> str:
    """Per-image outcomes as base64 text: ``np.packbits(flags, bitorder="little")``, 8 images a byte.

    10,000 outcomes take 1,668 characters. The count is not stored: keep it beside the text and
    pass it to :func:`unpack_flags`.

    Args:
        flags: 1-D bool array, one outcome per image.

    Returns:
        ASCII base64 text (empty for no images).

    Raises:
        TypeError: ``flags`` is not boolean.
        ValueError: ``flags`` is not 1-D.

    Example:
        >>> pack_flags(np.array([True, False, True]))
        'BQ=='
    """
    packed = np.packbits(_flags(flags, "flags"), bitorder="little")
    return base64.b64encode(packed.tobytes()).decode("ascii")


def unpack_flags(text: object, n: object) -> np.ndarray:
    """The ``n`` per-image outcomes that :func:`pack_flags` turned into ``text``.

    Args:
        text: base64 text from :func:`pack_flags`.
        n: the number of images packed.

    Returns:
        A bool array of shape ``(n,)``.

    Raises:
        TypeError: ``text`` is not a string or ``n`` not an int.
        ValueError: ``text`` is not base64, holds a byte count other than ⌈n/8⌉, or sets bits past
            the ``n``-th (a wrong ``n``).

    Example:
        >>> unpack_flags("BQ==", 3)
        array([ True, False,  True])
    """
    if not isinstance(text, str):
        raise TypeError(
            f"Expected `text` as the base64 str of pack_flags, got {type(text).__name__}."
        )
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(
            f"Expected `n` as the int count of packed images, got {type(n).__name__} {n!r}."
        )
    if n < 0:
        raise ValueError(f"Expected `n` >= 0 (the count of packed images), got {n}.")
    try:
        packed = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError) as err:
        raise ValueError(
            f"Expected `text` as base64 from pack_flags, got text that does not decode ({err})."
        ) from None
    if packed.size != -(-n // 8):
        raise ValueError(
            f"Expected {-(-n // 8)} packed bytes for n = {n} images, got {packed.size} (room for "
            f"{8 * packed.size - 7}..{8 * packed.size} images); pass the count stored with the text."
        )
    flags = np.unpackbits(packed, bitorder="little").astype(bool)
    if flags[n:].any():
        raise ValueError(
            f"Expected unused bits after image {n} to be 0, got some set; the text holds more than "
            f"n = {n} images — pass the count stored with the text."
        )
    return flags[:n]


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval: ``mean`` and the bounds ``[lo, hi]`` from ``n`` samples (seeds
    or images); the bounds are ``None`` when ``n`` cannot give one, and ``reason`` says why."""

    mean: float
    lo: Optional[float]
    hi: Optional[float]
    n: int
    reason: str = ""


def seed_interval(diffs: Sequence[float], level: float = 0.95) -> Interval:
    """The Student-t interval of the mean of the per-seed differences d_1, …, d_n.

    .. math::
        \\bar d \\pm t_{(1+\\text{level})/2,\\, n-1} \\cdot s / \\sqrt{n}, \\qquad
        s^2 = \\frac{1}{n-1} \\sum_k (d_k - \\bar d)^2

    With n = 3 seeds and level 0.95, t_{0.975, 2} = 4.303. One seed has no spread to estimate:
    its bounds are ``None``, and ``reason`` says so.

    Args:
        diffs: d_k = metric(method, seed k) − metric(baseline, seed k), in any one unit.
        level: coverage of the interval.

    Returns:
        :class:`Interval` over ``n`` seeds, in the unit of ``diffs``.

    Raises:
        ValueError: no difference, a non-finite one, or ``level`` outside (0, 1).

    Example:
        >>> i = seed_interval([1.0, 2.0, 3.0])  # 2 ± 4.303 · 1 / √3
        >>> i.mean, round(i.lo, 3), round(i.hi, 3), i.n
        (2.0, -0.484, 4.484, 3)
    """
    from scipy import stats

    level = _level(level)
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(
            f"Expected `diffs` as a non-empty 1-D sequence of finite numbers, got {diffs!r}."
        )
    mean = float(d.mean())
    if d.size == 1:
        return Interval(mean, None, None, 1, "one seed: no seed-to-seed spread to estimate")
    half = float(stats.t.ppf((1 + level) / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return Interval(mean, mean - half, mean + half, int(d.size))


def _pair(a: object, b: object) -> Tuple[np.ndarray, np.ndarray]:
    a, b = _flags(a, "a"), _flags(b, "b")
    if a.size != b.size:
        raise ValueError(
            f"Expected the outcomes of method and baseline on the same images, got {a.size} and "
            f"{b.size} outcomes; evaluate both on the same test images."
        )
    return a, b


def paired_bootstrap(
    a: object, b: object, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> Interval:
    """The percentile bootstrap interval of mean(a) − mean(b), resampling images with their pair.

    Each resample draws n images with replacement and takes mean(a*) − mean(b*); the interval is the
    (1 − level)/2 and (1 + level)/2 quantiles of the ``resamples`` values. The difference depends on
    a resample only through how many discordant images of each kind it holds, (a, b) = (1, 0) and
    (0, 1), and those counts are multinomial(n; b10/n, b01/n, rest) — exactly as if image indices
    were drawn — so each resample is one multinomial draw of three counts (vectorised, no loop):

    .. math::
        d^* = (c_{10}^* - c_{01}^*) / n, \\qquad
        (c_{10}^*, c_{01}^*, c^*) \\sim \\text{Multinomial}(n;\\ b_{10}/n,\\ b_{01}/n,\\
        1 - (b_{10} + b_{01})/n)

    Args:
        a: 1-D bool, the method's outcome per image.
        b: 1-D bool, the baseline's outcome on the same images.
        resamples: number of bootstrap resamples.
        seed: seed of the ``numpy.random.Generator`` that draws them.
        level: coverage of the interval.

    Returns:
        :class:`Interval` over ``n`` images: the observed mean(a) − mean(b) and its bounds, fractions.

    Raises:
        TypeError: ``a`` or ``b`` not boolean.
        ValueError: different lengths, no images, ``resamples`` < 1 or ``level`` outside (0, 1).

    Example:
        >>> a = np.array([True] * 60 + [False] * 40)
        >>> paired_bootstrap(a, np.roll(a, 10)).mean  # same accuracy, different images
        0.0
    """
    a, b = _pair(a, b)
    level = _level(level)
    if isinstance(resamples, bool) or not isinstance(resamples, int):
        raise TypeError(
            f"Expected `resamples` as an int, got {type(resamples).__name__} {resamples!r}."
        )
    if resamples < 1:
        raise ValueError(f"Expected `resamples` >= 1, e.g. 10_000, got {resamples}.")
    n = a.size
    if n == 0:
        raise ValueError("Expected outcomes on at least one image, got none.")
    b10, b01 = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [b10 / n, b01 / n, (n - b10 - b01) / n], size=resamples)
    d = (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return Interval((b10 - b01) / n, float(lo), float(hi), n)


class McNemar(NamedTuple):
    """The exact McNemar test's p-value and discordant counts: ``b10`` images only the method gets
    right, ``b01`` images only the baseline gets right."""

    p: float
    b01: int
    b10: int


def mcnemar_exact(a: object, b: object) -> McNemar:
    """The exact two-sided McNemar test of equal accuracy on paired outcomes.

    Under the null hypothesis each of the m = b01 + b10 discordant images is equally likely to favour
    either side, so b10 ~ Binomial(m, 1/2) and

    .. math::
        p = \\min\\Bigl(1,\\ 2 \\sum_{i=0}^{\\min(b_{01}, b_{10})} \\binom{m}{i} 2^{-m}\\Bigr)

    (p = 1 with no discordant image). Concordant images carry no information and do not enter.

    Args:
        a: 1-D bool, the method's outcome per image.
        b: 1-D bool, the baseline's outcome on the same images.

    Returns:
        :class:`McNemar` ``(p, b01, b10)``.

    Raises:
        TypeError: ``a`` or ``b`` not boolean.
        ValueError: different lengths.

    Example:
        >>> mcnemar_exact(np.array([True] * 6 + [False]), np.array([False] * 6 + [True]))
        McNemar(p=0.125, b01=1, b10=6)
    """
    from scipy import stats

    a, b = _pair(a, b)
    b10, b01 = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    p = min(1.0, 2.0 * float(stats.binom.cdf(min(b01, b10), b01 + b10, 0.5)))
    return McNemar(p, b01, b10)


def verdict(interval: Interval, direction: int) -> str:
    """A claim's verdict from the interval of method − baseline and the claimed direction.

    "shown" if the interval excludes 0 on the claimed side (lo > 0 for a claimed gain,
    ``direction=+1``; hi < 0 for a claimed loss, ``direction=-1``), "contradicted" if it excludes 0
    on the other side, "not shown" if it holds 0 (a bound at exactly 0 included).

    Raises:
        TypeError: ``interval`` is not an :class:`Interval`.
        ValueError: ``direction`` is not ±1, or the interval has no bounds (one seed).

    Example:
        >>> verdict(Interval(1.0, 0.2, 1.8, 3), -1)
        'contradicted'
    """
    if not isinstance(interval, Interval):
        raise TypeError(f"Expected `interval` as an Interval, got {type(interval).__name__}.")
    direction = _direction(direction)
    if interval.lo is None or interval.hi is None:
        raise ValueError(
            f"Expected an interval with bounds, got none ({interval.reason}); judge one seed by "
            "its paired_bootstrap interval."
        )
    if interval.lo > 0 or interval.hi < 0:
        return "shown" if (interval.lo > 0) == (direction > 0) else "contradicted"
    return "not shown"


class Claim(NamedTuple):
    """A claim under test: ``method`` − ``baseline`` (row names of the records) and, per metric the
    claim is about, its direction (+1 a gain, −1 a loss); e.g.
    ``Claim("C2", "GAIRAT", "AT", {"aa": -1})``."""

    id: str
    method: str
    baseline: str
    directions: Mapping[str, int]


def _seed(seed: object) -> int:
    """A seed key as an int: records read from JSON key seeds by strings ("0")."""
    if isinstance(seed, bool) or not isinstance(seed, (int, str)):
        raise TypeError(
            f"Expected seed keys as ints or digit strings ('0'), got {type(seed).__name__} {seed!r}."
        )
    if isinstance(seed, str) and seed.isdigit():
        return int(seed)
    if isinstance(seed, str) or seed < 0:
        raise ValueError(f"Expected seed keys as ints >= 0 or their digits ('0'), got {seed!r}.")
    return seed


def _pct(fraction: float) -> float:
    """Percent, rounded to 0.01 points (one image in 10,000)."""
    return round(100.0 * fraction, 2)


def _ci95(interval: Interval) -> List[float]:
    """The bounds in percent, of an interval that has them (two seeds or more, or images)."""
    return [_pct(interval.lo), _pct(interval.hi)]  # type: ignore[arg-type]


def _seeds(records: Records, row: str) -> Dict[int, Mapping[str, Any]]:
    return {_seed(k): v for k, v in records.get(row, {}).items()}


def _comparison(
    method: Mapping[int, Mapping[str, Any]],
    baseline: Mapping[int, Mapping[str, Any]],
    claim: Claim,
    metric: str,
    resamples: int,
    bootstrap_seed: int,
) -> Dict[str, Any]:
    """One claim's statistics under one metric (see :func:`claims_table`)."""
    per_seed: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}
    boots = []
    for k in sorted(set(method) | set(baseline)):
        missing = [
            f"no {metric!r} for {row!r} seed {k}"
            for row, seeds in ((claim.method, method), (claim.baseline, baseline))
            if metric not in seeds.get(k, {})
        ]
        if missing:
            skipped[str(k)] = "; ".join(missing)
            continue
        a, b = method[k][metric], baseline[k][metric]
        boot = paired_bootstrap(a, b, resamples=resamples, seed=bootstrap_seed)
        test = mcnemar_exact(a, b)
        boots.append(boot)
        per_seed[str(k)] = {
            "diff": _pct(boot.mean),
            "ci95": _ci95(boot),
            "mcnemar_p": float(f"{test.p:.3g}"),
            "b01": test.b01,
            "b10": test.b10,
            "images": boot.n,
        }
    claimed = claim.directions.get(metric)
    direction = None if claimed is None else _direction(claimed)
    result: Dict[str, Any] = {
        "method": claim.method,
        "baseline": claim.baseline,
        "direction": direction,
        "n_seeds": len(boots),
        "single_seed": len(boots) == 1,
        "mean": None,
        "ci95": None,
        "interval": None,
        "verdict": None,
        "seeds": per_seed,
        "skipped_seeds": skipped,
    }
    if not boots:
        return result
    if len(boots) == 1:
        primary, result["interval"] = boots[0], "images"
    else:
        primary, result["interval"] = seed_interval([b.mean for b in boots]), "seeds"
    result["mean"] = _pct(primary.mean)
    lo, hi = result["ci95"] = _ci95(primary)
    if direction is not None:  # judged as reported, so the JSON's bounds and verdict agree
        result["verdict"] = verdict(Interval(result["mean"], lo, hi, primary.n), direction)
    return result


def claims_table(
    records: Records,
    claims: Sequence[Claim],
    metrics: Sequence[str],
    *,
    resamples: int = 10_000,
    bootstrap_seed: int = 0,
) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Every claim's paired difference, method − baseline in percent, under each metric.

    Seeds pair by number: seed k of the method with seed k of its baseline (the reweighted rows
    branch from their base's seed-k run), d_k = 100 · (acc(method, k) − acc(baseline, k)). A seed
    that either side lacks, or lacks the metric for, is skipped and named in ``skipped_seeds``.
    With two or more paired seeds the primary interval is :func:`seed_interval` over the d_k
    (``"interval": "seeds"``); with one, that seed's :func:`paired_bootstrap` interval over images
    (``"interval": "images"``, ``"single_seed": true``: it ignores seed-to-seed variation). The
    verdict (:func:`verdict` of the primary interval as reported, rounded to 0.01 points) is given
    for the metrics the claim states a direction for, ``None`` for the others and when no seed
    pairs.

    Args:
        records: ``records[row][seed][metric]``: 1-D bool outcome per image; seeds as ints or digit
            strings.
        claims: the claims under test.
        metrics: the metrics reported for every claim, e.g. ``("pgd40", "aa")``.
        resamples: bootstrap resamples per seed.
        bootstrap_seed: seed of the bootstrap's generator.

    Returns:
        ``{claim id: {metric: {"method", "baseline", "direction", "n_seeds", "single_seed",
        "mean", "ci95": [lo, hi], "interval", "verdict", "seeds": {k: {"diff", "ci95",
        "mcnemar_p", "b01", "b10", "images"}}, "skipped_seeds": {k: reason}}}}``, percent rounded
        to 0.01, p-values to 3 significant digits; plain JSON types.

    Raises:
        ValueError: a duplicate claim id, a direction for a metric not in ``metrics`` or not ±1,
            or paired outcomes of different lengths.

    Example:
        >>> t, f = np.array([True, True]), np.array([True, False])
        >>> records = {"AT": {0: {"aa": f}}, "GAIRAT": {0: {"aa": t}}}
        >>> table = claims_table(records, [Claim("C1", "GAIRAT", "AT", {"aa": 1})], ["aa"])
        >>> table["C1"]["aa"]["mean"], table["C1"]["aa"]["ci95"], table["C1"]["aa"]["verdict"]
        (50.0, [0.0, 100.0], 'not shown')
    """
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Expected distinct claim ids, got {ids}.")
    for claim in claims:
        unknown = sorted(set(claim.directions) - set(metrics))
        if unknown:
            raise ValueError(
                f"Expected claim {claim.id}'s directions for metrics in {list(metrics)}, got "
                f"{unknown}; add them to `metrics`."
            )
        for metric, direction in claim.directions.items():
            _direction(direction, f"{claim.id}'s direction for {metric!r}")
    return {
        claim.id: {
            metric: _comparison(
                _seeds(records, claim.method),
                _seeds(records, claim.baseline),
                claim,
                metric,
                resamples,
                bootstrap_seed,
            )
            for metric in metrics
        }
        for claim in claims
    }


def _accuracy(flags: object, name: str) -> float:
    """Percent of images with a ``True`` outcome."""
    outcomes = _flags(flags, name)
    if outcomes.size == 0:
        raise ValueError(f"Expected `{name}` to hold outcomes on at least one image, got none.")
    return _pct(float(outcomes.mean()))


def rows_table(records: Records) -> Dict[str, Dict[str, Dict[str, Dict[str, float]]]]:
    """Every row's accuracy in percent per seed and metric: the benchmark JSON's ``"rows"``.

    Example:
        >>> rows_table({"AT": {"0": {"nat": np.array([True, True, False, True])}}})
        {'AT': {'seeds': {'0': {'nat': 75.0}}}}
    """
    return {
        row: {
            "seeds": {
                str(k): {
                    metric: _accuracy(flags, f"{row} seed {k} {metric}")
                    for metric, flags in outcomes.items()
                }
                for k, outcomes in sorted(_seeds(records, row).items())
            }
        }
        for row in records
    }
