"""The papers' tables that ``reproduce.py`` reproduces: what to run, and the numbers printed in the papers.

Numbers are test accuracy in percent, as ``(mean or median, std)`` over the papers' 5 runs, copied
from MAIL (Wang et al., NeurIPS 2021) Tables 1-4 and GAIRAT (Zhang et al., ICLR 2021) Tables 1-2.
MAIL's "AWP" row runs ``at-awp`` (AWP's headline method; docs/awp.md says why), on its own from epoch 0.

Column names are the keys of the JSON that ``reproduce.py`` writes: ``nat``, ``pgd20``, ``pgd100``,
``pgd+``, ``cw``, ``apgd`` (APGD-CE), ``aa`` (AutoAttack), ``pgd20-ls`` (logit-scaled PGD-20); GAIRAT's
tables have ``best_*`` and ``last_*`` columns (best and last checkpoint).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

Number = Optional[Tuple[float, Optional[float]]]

# evaluation attack name -> table column (the rest keep their names)
COLUMN_OF_ATTACK = {"natural": "nat", "apgd-ce": "apgd"}
ATTACK_OF_COLUMN = {v: k for k, v in COLUMN_OF_ATTACK.items()}
COLUMN_TITLES = {
    "nat": "NAT",
    "pgd20": "PGD-20",
    "pgd100": "PGD-100",
    "pgd+": "PGD+",
    "cw": "CW∞",
    "apgd": "APGD-CE",
    "aa": "AA",
    "pgd20-ls": "PGD-20-LS",
    "lm-pgd": "LM-PGD",
}

_MAIL_COLUMNS = ("nat", "pgd100", "apgd", "cw", "aa")
_GAIRAT_COLUMNS = tuple(f"{c}_{k}" for c in ("best", "last") for k in ("nat", "pgd20", "pgd+"))


def _rows(columns: Tuple[str, ...], **rows: Tuple[float, ...]) -> Dict[str, Dict[str, Number]]:
    """``AT=(84.86, 0.17, 48.91, 0.14, ...)`` -> ``{"AT": {"nat": (84.86, 0.17), ...}}``."""
    out = {}
    for label, values in rows.items():
        pairs: List[Number] = [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
        out[label.replace("_", "-")] = dict(zip(columns, pairs))
    return out


_MAIL_TABLE2 = _rows(
    _MAIL_COLUMNS,
    AT=(84.86, 0.17, 48.91, 0.14, 47.70, 0.06, 51.61, 0.15, 44.90, 0.53),
    TRADES=(84.00, 0.23, 52.66, 0.16, 52.37, 0.24, 52.30, 0.06, 48.10, 0.26),
    MART=(82.28, 0.14, 53.50, 0.46, 52.73, 0.57, 51.59, 0.16, 48.40, 0.14),
    FAT=(87.97, 0.15, 46.78, 0.12, 46.68, 0.16, 49.92, 0.26, 43.90, 0.82),
    AWP=(85.17, 0.40, 52.63, 0.17, 50.40, 0.26, 51.39, 0.18, 47.00, 0.25),
    GAIRAT=(83.22, 0.06, 54.81, 0.15, 50.95, 0.49, 39.86, 0.08, 33.35, 0.57),
    MAIL_AT=(84.52, 0.46, 55.25, 0.23, 53.20, 0.38, 48.88, 0.11, 44.22, 0.21),
    MAIL_TRADES=(81.84, 0.18, 53.68, 0.14, 52.92, 0.62, 52.89, 0.31, 50.60, 0.22),
)
_MAIL_TABLE3 = _rows(
    _MAIL_COLUMNS,
    AT=(87.80, 0.13, 49.43, 0.29, 49.12, 0.26, 53.38, 0.05, 48.46, 0.46),
    TRADES=(86.36, 0.52, 54.88, 0.39, 55.02, 0.27, 56.18, 0.16, 53.40, 0.37),
    MART=(84.76, 0.34, 55.61, 0.51, 55.40, 0.37, 54.72, 0.20, 51.40, 0.05),
    FAT=(89.70, 0.17, 48.79, 0.18, 48.72, 0.36, 52.39, 0.89, 47.48, 0.30),
    AWP=(57.55, 0.23, 54.17, 0.10, 54.20, 0.16, 55.18, 0.30, 53.08, 0.17),  # NAT 57.55 (sic)
    GAIRAT=(86.30, 0.61, 58.74, 0.46, 55.64, 0.36, 45.57, 0.18, 40.30, 0.16),
    MAIL_AT=(84.83, 0.39, 58.86, 0.25, 55.82, 0.31, 51.26, 0.20, 47.10, 0.22),
    MAIL_TRADES=(84.00, 0.15, 57.40, 0.96, 56.96, 0.19, 56.20, 0.30, 53.90, 0.22),
)
_MAIL_TABLE1 = _rows(
    ("nat", "pgd100", "aa"),
    AT_LPS=(82.26, 0.60, 54.14, 0.15, 36.32, 0.57),
    AT_PM_nat=(82.50, 0.20, 55.00, 0.32, 44.25, 0.45),
    AT_PM_adv=(83.15, 0.46, 55.25, 0.23, 44.10, 0.21),
    MART_LPS=(84.45, 0.17, 53.16, 0.26, 46.00, 0.26),
    MART_PM_nat=(83.75, 0.09, 53.63, 0.21, 46.70, 0.10),
    MART_PM_adv=(84.12, 0.46, 53.65, 0.23, 47.20, 0.21),
    TRADES_LPS=(78.52, 0.20, 51.67, 0.54, 44.40, 0.20),
    TRADES_PM_nat=(82.71, 0.52, 52.37, 0.65, 49.52, 0.11),
    TRADES_PM_adv=(80.49, 0.18, 53.67, 0.14, 50.60, 0.22),
)
_GAIRAT_TABLE1 = _rows(
    _GAIRAT_COLUMNS,
    AT=(86.92, 0.24, 51.96, 0.21, 51.28, 0.23, 86.62, 0.22, 46.73, 0.08, 46.08, 0.07),
    FAT=(89.16, 0.15, 51.24, 0.14, 46.14, 0.19, 88.18, 0.19, 46.79, 0.34, 45.80, 0.16),
    GAIRAT=(85.75, 0.23, 57.81, 0.54, 55.61, 0.61, 85.49, 0.25, 53.76, 0.49, 50.32, 0.48),
    GAIR_FAT=(88.59, 0.12, 56.21, 0.52, 53.50, 0.60, 88.44, 0.10, 50.64, 0.56, 47.51, 0.51),
)
_GAIRAT_TABLE2 = _rows(
    _GAIRAT_COLUMNS,
    TRADES=(84.88, 0.35, 56.43, 0.24, 54.33, 0.38, 85.66, 0.33, 53.31, 0.25, 50.11, 0.25),
    GAIR_TRADES=(86.99, 0.31, 63.32, 0.50, 56.77, 0.87, 86.86, 0.26, 60.65, 1.00, 52.70, 0.93),
)
# MAIL Table 4 gives means only.
_MAIL_TABLE4 = {
    data: {
        label: {"nat": (values[0], None), "pgd100": (values[1], None), "aa": (values[2], None)}
        for label, values in rows.items()
    }
    for data, rows in {
        "svhn": {
            "AT": (93.55, 54.76, 46.58),
            "TRADES": (93.65, 55.12, 45.74),
            "MART": (92.57, 55.45, 43.52),
            "FAT": (93.68, 53.81, 41.68),
            "AWP": (93.34, 57.62, 47.21),
            "GAIRAT": (90.47, 64.67, 37.00),
            "MAIL-AT": (93.68, 65.54, 41.12),
            "MAIL-TRADES": (89.68, 58.40, 49.10),
        },
        "cifar100": {
            "AT": (60.13, 28.69, 24.76),
            "TRADES": (60.73, 29.83, 24.90),
            "MART": (54.08, 29.94, 25.30),
            "FAT": (66.74, 23.25, 20.88),
            "AWP": (55.16, 30.14, 25.16),
            "GAIRAT": (58.43, 25.74, 17.54),
            "MAIL-AT": (60.74, 27.62, 22.44),
            "MAIL-TRADES": (60.13, 30.28, 24.80),
        },
    }.items()
}

# label -> method of ir.methods (None: not available) for the MAIL comparison tables
_MAIL_METHODS = {
    "AT": "at",
    "TRADES": "trades",
    "MART": "mart",
    "FAT": "fat",
    "AWP": "at-awp",
    "GAIRAT": "gairat",
    "MAIL-AT": "mail-at",
    "MAIL-TRADES": "mail-trades",
}


# Rows that branch off a shared 74-epoch burn-in instead of training their own: one prefix per family.
_MAIL_PREFIX = {
    "AT": "at",
    "GAIRAT": "at",
    "MAIL-AT": "at",
    "TRADES": "trades",
    "MAIL-TRADES": "trades",
}
_MAIL_PREFIX_NOTE = (
    "Shared burn-in: GAIRAT and MAIL-AT continue AT's 74 epochs, MAIL-TRADES continues TRADES' 74 "
    "epochs (see each row's lineage). For GAIRAT this is the same computation as its own burn-in; "
    "MAIL-AT's own would start its attack at x + 0.001·N(0, 1) instead of uniformly, and MAIL-TRADES' "
    "own would use β = 5 instead of TRADES' 6. Sharing saves two 74-epoch runs; a custom spec without "
    "`prefix` on those rows trains them separately."
)


_MAIL_AWP_NOTE = (
    "AWP: MAIL does not say which AWP variant its row is; it runs `at-awp` (AT-AWP, γ = 5e-3, no "
    "warm-up), the most likely one (docs/awp.md), on its own: AWP applies from epoch 0, so it shares no "
    "burn-in."
)

_MAIL_CW = '{"cw": {"steps": 20, "step_size": 0.003}}'
_MAIL_CW_NOTE = "CW∞: 20 steps of 0.003 (confidence 50), as MAIL's train.py evaluates it."


def _mail_spec(
    name: str, title: str, preset: str, paper: Dict[str, Any], data: str
) -> Dict[str, Any]:
    rows = [
        {
            "label": label,
            "method": _MAIL_METHODS[label],
            **({"prefix": _MAIL_PREFIX[label]} if label in _MAIL_PREFIX else {}),
        }
        for label in paper
    ]
    return {
        "name": name,
        "title": title,
        "source": "MAIL (Wang et al., NeurIPS 2021)",
        "preset": preset,
        "protocol": "mail",
        "checkpoints": ["last"],
        "columns": list(next(iter(paper.values()))),
        "prefixes": {
            "at": {"method": "at", "epochs": 74},
            "trades": {"method": "trades", "epochs": 74},
        },
        "notes": [_MAIL_PREFIX_NOTE, _MAIL_AWP_NOTE, _MAIL_CW_NOTE],
        # CW∞ as MAIL's train.py evaluates it; the protocol preset keeps the library's 30 steps of ε/4.
        "eval_args": ["--options", _MAIL_CW],
        "train_args": [] if data == "cifar10" else ["--data", data],
        "rows": rows,
        "paper": paper,
    }


def _gairat_spec(
    name: str,
    title: str,
    preset: str,
    paper: Dict[str, Any],
    methods: Dict[str, Tuple[str, str]],
    **extra: Any,
) -> Dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "source": "GAIRAT (Zhang et al., ICLR 2021)",
        "preset": preset,
        "protocol": "gairat",
        "checkpoints": ["best", "last"],
        "columns": list(_GAIRAT_COLUMNS),
        "rows": [
            {"label": label, "method": methods[label][0], "prefix": methods[label][1]}
            for label in paper
        ],
        "paper": paper,
        **extra,
    }


_STUDY_OPTIONS = (
    '{"pgd20": {"steps": 40, "step_size": 0.01}, "cw": {"steps": 40, "step_size": 0.01}, '
    '"aa": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]}}'
)

# The CPU study (docs/results/mnist-study.md): every method of both papers on one budget, no paper
# numbers (neither paper reports MNIST with these methods side by side).
_MNIST_STUDY: Dict[str, Any] = {
    "name": "mnist-study",
    "title": "CPU study: MNIST, SmallCNN, ℓ∞ ε = 0.3, every method on one budget",
    "source": None,
    "preset": "mnist-study",
    "protocol": None,
    "eval_args": [
        "--eps",
        "0.3",
        "--attacks",
        "natural,pgd20,cw,pgd20-ls,aa",
        "--options",
        _STUDY_OPTIONS,
        "--num-examples",
        "1000",
    ],
    "checkpoints": ["last"],
    "columns": ["nat", "pgd", "cw", "lspgd", "aa"],
    "column_of_attack": {"pgd20": "pgd", "pgd20-ls": "lspgd"},
    "column_titles": {"pgd": "PGD-40", "lspgd": "LS-PGD-20", "aa": "AA (APGD-CE+T)"},
    "prefixes": {
        "at": {"method": "at", "epochs": 5},
        "trades": {"method": "trades", "epochs": 5},
        "at-awp": {"method": "at-awp", "epochs": 5},
    },
    "rows": [
        {"label": "AT", "method": "at", "prefix": "at"},
        {"label": "TRADES", "method": "trades", "prefix": "trades"},
        {"label": "MART", "method": "mart"},
        {"label": "FAT", "method": "fat"},
        {"label": "GAIRAT", "method": "gairat", "prefix": "at"},
        {"label": "MAIL-AT", "method": "mail-at", "prefix": "at"},
        {"label": "MAIL-TRADES", "method": "mail-trades", "prefix": "trades"},
        {"label": "AT-AWP", "method": "at-awp", "prefix": "at-awp"},
        {"label": "MAIL-AT-AWP", "method": "mail-at-awp", "prefix": "at-awp"},
    ],
    "notes": [
        "Shared burn-in: GAIRAT and MAIL-AT continue AT's first 5 epochs, MAIL-TRADES continues "
        "TRADES', MAIL-AT-AWP continues AT-AWP's (as the MAIL tables here do); MART and FAT train on "
        "their own for the same 10 epochs.",
        "AA is AutoAttack's APGD-CE and APGD-T (9 target classes, 100 iterations each), the two attacks "
        "of AutoAttack standard that set its number on almost every model; its FAB-T and Square were "
        "left out for time: Square's 5,000 queries alone would take about half an hour per row on "
        "a 2-core CPU (docs/results/mnist-study.md).",
        "PGD-40 and CW∞ (40 steps on the CW margin, confidence 50): step 0.01, uniform start; "
        "LS-PGD-20: PGD-20 (step ε/4) on CE(α·logits), robust only for every α in {1e-4, …, 10}.",
    ],
    "paper": {},
}

# The pre-registered MNIST benchmark (docs/results/mnist-benchmark.md): every row and seed, two
# evaluation passes, and the papers' claims C1-C8 with the direction each claims per metric.
_PGD40_CW40 = '{"pgd20": {"steps": 40, "step_size": 0.01}, "cw": {"steps": 40, "step_size": 0.01}}'
_CLAIM_SEEDS = [0, 1, 2]
_MNIST_BENCHMARK: Dict[str, Any] = {
    "name": "mnist-benchmark",
    "title": "MNIST benchmark: the papers' claims with error bars, Wong et al.'s net, ℓ∞ ε = 0.3",
    "source": None,
    "preset": "mnist-benchmark",
    "protocol": None,
    "evaluations": [
        {
            "name": "full",
            "args": ["--eps", "0.3", "--attacks", "natural,pgd20,cw", "--options", _PGD40_CW40],
        },
        {
            "name": "aa",
            "args": [
                "--eps",
                "0.3",
                "--attacks",
                "aa,apgd-ce,apgd-t,pgd20-ls",
                "--options",
                '{"aa": {"version": "standard", "seed": 0}}',
                "--num-examples",
                "1000",
            ],
        },
    ],
    "columns": ["nat", "pgd40", "cw", "aa", "apgd_ce", "apgd_t", "lspgd"],
    "column_of_attack": {
        "natural": "nat",
        "pgd20": "pgd40",
        "cw": "cw",
        "aa": "aa",
        "apgd-ce": "apgd_ce",
        "apgd-t": "apgd_t",
        "pgd20-ls": "lspgd",
    },
    "column_titles": {
        "pgd40": "PGD-40",
        "apgd_ce": "APGD-CE",
        "apgd_t": "APGD-T",
        "lspgd": "LS-PGD-20",
        "aa": "AA (standard)",
    },
    "prefixes": {
        "at": {"method": "at", "epochs": 10},
        "trades": {"method": "trades", "epochs": 10},
        "at-awp": {"method": "at-awp", "epochs": 10},
    },
    "rows": [
        {"label": "AT", "method": "at", "prefix": "at", "seeds": _CLAIM_SEEDS},
        {"label": "TRADES", "method": "trades", "prefix": "trades", "seeds": _CLAIM_SEEDS},
        {"label": "MART", "method": "mart", "seeds": [0]},
        {"label": "FAT", "method": "fat", "seeds": [0]},
        {"label": "GAIRAT", "method": "gairat", "prefix": "at", "seeds": _CLAIM_SEEDS},
        {"label": "MAIL-AT", "method": "mail-at", "prefix": "at", "seeds": _CLAIM_SEEDS},
        {
            "label": "MAIL-TRADES",
            "method": "mail-trades",
            "prefix": "trades",
            "seeds": _CLAIM_SEEDS,
        },
        {"label": "AT-AWP", "method": "at-awp", "prefix": "at-awp", "seeds": [0]},
        {"label": "MAIL-AT-AWP", "method": "mail-at-awp", "prefix": "at-awp", "seeds": [0]},
        {"label": "GAIR-TRADES", "method": "gair-trades", "prefix": "trades", "seeds": [0]},
    ],
    # direction: +1 the method is claimed above its baseline on that metric, -1 below.
    "claims": [
        {"id": "C1", "method": "GAIRAT", "baseline": "AT", "directions": {"pgd40": 1}},
        {"id": "C2", "method": "GAIRAT", "baseline": "AT", "directions": {"aa": -1}},
        {"id": "C3", "method": "MAIL-AT", "baseline": "AT", "directions": {"pgd40": 1}},
        {"id": "C4", "method": "MAIL-AT", "baseline": "AT", "directions": {"aa": -1}},
        {
            "id": "C5",
            "method": "MAIL-TRADES",
            "baseline": "TRADES",
            "directions": {"aa": 1, "pgd40": 1},
        },
        {"id": "C6", "method": "AT-AWP", "baseline": "AT", "directions": {"pgd40": 1, "aa": 1}},
        {
            "id": "C7",
            "method": "MAIL-AT-AWP",
            "baseline": "AT-AWP",
            "directions": {"pgd40": 1, "aa": 1},
        },
        {"id": "C8", "method": "GAIR-TRADES", "baseline": "TRADES", "directions": {"pgd40": 1}},
    ],
    "notes": [
        "Row AT seed k is the prefix at-seedk continued to 20 epochs; GAIRAT and MAIL-AT seed k branch "
        "from the same prefix after epoch 10 (TRADES, MAIL-TRADES and GAIR-TRADES from trades-seedk; "
        "AT-AWP and MAIL-AT-AWP from at-awp-seedk), so a claim's two rows differ only in their last "
        "10 epochs. MART and FAT train on their own.",
        "C4 encodes MAIL's own Table 2 (MAIL-AT below AT under AA, 44.22 vs 44.90) as direction -1: "
        "MAIL does not claim an AA gain for MAIL-AT, and a result above 0 contradicts its table, not "
        "a claim of gain.",
        "Pass full: natural, PGD-40 (step 0.01, uniform start) and CW∞ (40 steps of 0.01, confidence "
        "50) on all 10,000 test images. Pass aa: AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square; "
        "seed 0), APGD-CE alone, APGD-T alone and LS-PGD-20 on the first 1,000.",
    ],
    "paper": {},
}

# MAIL Table 1 compares the weighting signals on three base losses: nine rows, no prefix.
_MAIL_TABLE1_SPEC: Dict[str, Any] = {
    "name": "mail-table1",
    "title": "MAIL Table 1: the weighting signal, LPS (κ) vs PM_nat vs PM_adv; CIFAR-10, ResNet-18",
    "source": "MAIL (Wang et al., NeurIPS 2021)",
    "preset": "mail-resnet18",
    "protocol": "mail",
    "checkpoints": ["last"],
    "columns": ["nat", "pgd100", "aa"],
    "rows": [
        {"label": f"{base}-{signal}", "method": method, "args": args}
        for base, methods in (
            ("AT", ("gairat", "mail-at")),
            ("MART", ("gair-mart", "mail-mart")),
            ("TRADES", ("gair-trades", "mail-trades")),
        )
        for signal, method, args in (
            ("LPS", methods[0], []),
            ("PM-nat", methods[1], ["--set", "margin=nat"]),
            ("PM-adv", methods[1], []),
        )
    ],
    "paper": _MAIL_TABLE1,
}

SPECS: Dict[str, Dict[str, Any]] = {
    spec["name"]: spec
    for spec in (
        _mail_spec(
            "mail-table2",
            "MAIL Table 2: CIFAR-10, ResNet-18",
            "mail-resnet18",
            _MAIL_TABLE2,
            "cifar10",
        ),
        _mail_spec(
            "mail-table3",
            "MAIL Table 3: CIFAR-10, WRN-32-10",
            "mail-wrn32",
            _MAIL_TABLE3,
            "cifar10",
        ),
        _mail_spec(
            "mail-table4-svhn",
            "MAIL Table 4: SVHN, ResNet-18",
            "mail-resnet18",
            _MAIL_TABLE4["svhn"],
            "svhn",
        ),
        _mail_spec(
            "mail-table4-cifar100",
            "MAIL Table 4: CIFAR-100, ResNet-18",
            "mail-resnet18",
            _MAIL_TABLE4["cifar100"],
            "cifar100",
        ),
        _MAIL_TABLE1_SPEC,
        _gairat_spec(
            "gairat-table1",
            "GAIRAT Table 1: CIFAR-10, WRN-32-10",
            "gairat-wrn32",
            _GAIRAT_TABLE1,
            {
                "AT": ("at", "at"),
                "FAT": ("fat", "fat"),
                "GAIRAT": ("gairat", "at"),
                "GAIR-FAT": ("gair-fat", "fat"),
            },
            prefixes={"at": {"method": "at", "epochs": 60}, "fat": {"method": "fat", "epochs": 60}},
        ),
        _gairat_spec(
            "gairat-table2",
            "GAIRAT Table 2: CIFAR-10, WRN-34-10, TRADES vs GAIR-TRADES",
            "gair-trades-wrn34",
            _GAIRAT_TABLE2,
            {"TRADES": ("trades", "trades"), "GAIR-TRADES": ("gair-trades", "trades")},
            prefixes={"trades": {"method": "trades", "epochs": 75}},
            eval_args=["--options", '{"pgd20": {"step_size": 0.003}}'],
        ),
        _MNIST_STUDY,
        _MNIST_BENCHMARK,
    )
}


# --- rendering: the numbers of a reproduction beside the paper's ------------------------------


def our_numbers(spec: Dict[str, Any], evals: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    """A row's accuracies in percent by table column, from its evaluation records by checkpoint
    kind (``{"last": record}``; columns prefixed ``best_``/``last_`` when there are several)."""
    column_of = {**COLUMN_OF_ATTACK, **spec.get("column_of_attack", {})}
    values: Dict[str, float] = {}
    for kind, record in evals.items():
        prefix = f"{kind}_" if len(evals) > 1 else ""
        for attack, acc in record.get("accuracy", {}).items():
            values[prefix + column_of.get(attack, attack)] = round(100 * acc, 2)
    return values


def markdown(
    spec: Dict[str, Any],
    ours: Dict[str, Dict[str, float]],
    details: Dict[str, Dict[str, Any]],
    setting: Dict[str, Any],
    command: str,
) -> str:
    """The reproduction's page: the table (paper beside ours), the setting, notes and commands.

    Args:
        spec: the table spec (``SPECS``).
        ours: our numbers by row label (:func:`our_numbers`).
        details: by row label, the row's ``status``, ``seconds_per_epoch``, ``train_minutes``,
            ``eval_minutes``, ``lineage``, ``best_epoch`` (0-based) and ``commands``.
        setting: the evaluation ``settings``, ``seeds`` and ``devices``.
        command: the ``reproduce.py`` command.
    """
    paper = spec.get("paper", {})
    source = (
        f"Paper: {spec.get('source', 'see the spec')} — mean (MAIL) or median (GAIRAT) ± std of 5 "
        "runs. Ours: one run."
        if paper
        else "One run per row."
    )
    lines = [f"# {spec.get('title', spec['name'])}", "", f"{source} Test accuracy, %.", ""]
    lines += _table(spec, ours, details)
    lines += ["", *_notes(spec, details, setting)]
    lines += ["", "## Commands", "", "```bash", command]
    for label, info in details.items():
        lines.append(f"# {label}")
        lines += info["commands"]
    lines += [
        "```",
        "",
        "Interrupted training continues with the same train.py command plus `--resume`.",
        "",
    ]
    return "\n".join(lines)


def _table(
    spec: Dict[str, Any], ours: Dict[str, Dict[str, float]], details: Dict[str, Dict[str, Any]]
) -> List[str]:
    """The markdown table: a row per spec row, paper and ours per column, then the run's status."""
    paper = spec.get("paper", {})
    titles = {**COLUMN_TITLES, **spec.get("column_titles", {})}
    # Columns the evaluation gave beyond the spec's, in the order they first appear.
    extra = list(dict.fromkeys(c for v in ours.values() for c in v if c not in spec["columns"]))
    header = ["method"]
    for column in spec["columns"]:
        title = _title(column, titles)
        header += [f"{title} paper", f"{title} ours"] if paper else [title]
    header += [f"{_title(c, titles)} ours" for c in extra]
    header += ["s/epoch", "train min", "eval min", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in spec["rows"]:
        label = row["label"]
        cells = [label]
        for column in spec["columns"]:
            if paper:
                cells.append(_paper_cell(paper.get(label, {}).get(column)))
            cells.append(_cell(ours.get(label, {}).get(column)))
        cells += [_cell(ours.get(label, {}).get(c)) for c in extra]
        cells += _run_cells(row, details.get(label))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _run_cells(row: Dict[str, Any], info: Optional[Dict[str, Any]]) -> List[str]:
    if info is None:
        return ["", "", "", "not in ir.methods" if not row["method"] else "not run"]
    seconds = info["seconds_per_epoch"]
    return [
        "—" if math.isnan(seconds) else f"{seconds:.1f}",
        f"{info['train_minutes']:.1f}",
        f"{info['eval_minutes']:.1f}",
        info["status"],
    ]


def _notes(
    spec: Dict[str, Any], details: Dict[str, Dict[str, Any]], setting: Dict[str, Any]
) -> List[str]:
    """The bullet points under the table: protocol, training, the spec's notes, lineages."""
    seeds = ", ".join(map(str, setting["seeds"])) or "—"
    devices = ", ".join(setting["devices"]) or "—"
    lines = [
        f"- Protocol: `{spec['protocol'] or 'custom'}` — "
        f"{_describe_settings(setting['evaluation'])}. Eval mode, float32.",
        f"- Training: preset `{spec.get('preset')}` (see `python examples/train.py --list-presets`), "
        f"seed {seeds}, device {devices}; s/epoch is training time per epoch (the per-epoch "
        "monitor excluded); train min is the row's whole training with the monitor, a shared "
        "prefix included; eval min is its evaluation.",
    ]
    lines += [f"- {note}" for note in spec.get("notes", [])]
    for label, info in details.items():
        lineage = info["lineage"] or []
        if len(lineage) > 1:
            parts = [f"{seg['method']} from epoch {seg['first_epoch']}" for seg in lineage]
            lines.append(
                f"- {label}: {', then '.join(parts)} (shared prefix, branched with --init-from)."
            )
        if info["best_epoch"] is not None:
            lines.append(f"- {label}: best checkpoint at epoch {info['best_epoch']} (0-based).")
    return lines


def _title(column: str, titles: Dict[str, str]) -> str:
    kind, _, key = column.partition("_")
    if kind in ("best", "last") and key:
        return f"{kind} {titles.get(key, key)}"
    return titles.get(column, column)


def _cell(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


def _paper_cell(value: Any) -> str:
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _describe_settings(settings: Optional[Dict[str, Any]]) -> str:
    if not settings:
        return "not evaluated yet"
    ball = "" if settings.get("norm", "linf") == "linf" else f" ({settings['norm']})"
    parts = [f"ε = {settings['eps']:.4g}{ball}"]
    for name, params in settings["attacks"].items():
        if name == "natural":
            continue
        text = ATTACK_OF_COLUMN.get(name, name)
        if "steps" in params:
            text += f": {params['steps']} steps of {params['step_size']:.4g}"
            if params.get("restarts", 1) > 1:
                text += f" × {params['restarts']} restarts"
            if params.get("loss") and params["loss"] != "ce":
                text += f", {params['loss']} loss"
        elif "version" in params:
            text += f": AutoAttack {params['version']}"
        limit = settings["num_examples"].get(name)
        text += f", first {limit} test images" if limit else ", all test images"
        parts.append(text)
    return "; ".join(parts)
