"""The papers' training recipes (SPEC §4) as named presets for ``train.py`` and ``reproduce.py``.

A preset fixes the data set, the network, the optimiser, the learning-rate schedule and the
hyper-parameters the methods share in that paper's experiments (ε, step, burn-in, λ, β); the method
itself is chosen separately (``--method``), so one preset serves every row of a table. Each preset
says which setting it follows and where it deviates; ``train.py`` prints both at start.

Epochs are 0-based everywhere: ``lr_schedule`` entry ``(74, 0.001)`` means the learning rate is
0.001 from the 75th epoch on, and ``burn_in_epochs=74`` means reweighting starts at that same epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Recipe:
    """One paper setting.

    Attributes:
        name: the preset's name.
        follows: the paper setting it follows, with its source.
        deviations: where it differs from that source (or where the source is silent), and how to
            match the official code instead.
        data: data set name (``examples/data.py``).
        model: network name (``examples/models.py``).
        epochs: number of epochs.
        batch_size: global batch size (split over the processes under ``torchrun``).
        lr: initial learning rate.
        lr_schedule: ``(epoch, lr)`` pairs: the learning rate from that 0-based epoch on.
        momentum: SGD momentum (0 with Adam).
        weight_decay: the optimiser's weight decay.
        method_overrides: hyper-parameters for ``ir.methods.get``: ``"*"`` applies to every method
            that has the parameter (e.g. ``burn_in_epochs`` only to reweighting methods), a method's
            name to that method only.
        best_window: ``(first, last)`` 0-based epochs among which ``best.pt`` is chosen on the
            monitored test PGD accuracy (GAIRAT's "best checkpoint"), or ``None``.
        train_size: a fixed class-balanced training subset of this many examples, or ``None``.
        monitor_size: examples of the per-epoch natural/PGD-20 check, or ``None`` for the default.
        optimizer: ``"sgd"`` or ``"adam"`` (default betas).
    """

    name: str
    follows: str
    deviations: Tuple[str, ...]
    data: str
    model: str
    epochs: int
    batch_size: int
    lr: float
    lr_schedule: Tuple[Tuple[int, float], ...]
    momentum: float
    weight_decay: float
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    best_window: Optional[Tuple[int, int]] = None
    train_size: Optional[int] = None
    monitor_size: Optional[int] = None
    optimizer: str = "sgd"

    def overrides_for(self, method: str, accepted: Any) -> Dict[str, Any]:
        """The preset's hyper-parameters for ``method``, keeping the keys in ``accepted`` only."""
        merged = {**self.method_overrides.get("*", {}), **self.method_overrides.get(method, {})}
        return {k: v for k, v in merged.items() if k in accepted}


_MAIL_EPS = (
    "ε = 8/255 and PGD step 2/255 as MAIL §4.1 states; the official MAIL code uses 0.031 and 0.007 "
    "(add --set eps=0.031 --set step_size=0.007 to match it)."
)
_MAIL_EPOCHS = (
    "100 epochs: MAIL gives no total; its 2021 official release trained 100 (the current code trains 120 "
    "with a third drop at epoch 100)."
)
_MAIL_GAIRAT = (
    "GAIRAT and GAIR-* rows keep the method defaults (tanh weights, λ = 0 for GAIRAT, −1 for GAIR-TRADES "
    "and GAIR-MART): MAIL only says 'the suggested setup'; their burn-in is MAIL's 74 epochs."
)
_GAIRAT_EPOCH = (
    "Learning-rate drops and the start of reweighting at the 0-based epochs the paper's numbers give; "
    "the official GAIRAT code starts both one epoch earlier (1-based counting)."
)
_BEST = (
    "best.pt is chosen on a PGD-20 (step 2/255) of the first --monitor-size test images, not on the "
    "full test set."
)

PRESETS: Dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="mail-resnet18",
            follows=(
                "MAIL §4.1, ResNet-18 (Tables 1, 2, 4): SGD momentum 0.9, lr 0.01 divided by 10 at the "
                "75th and 90th epoch, weight decay 3.5e-3, batch 128, PGD-10, the initial 74 epochs burn in."
            ),
            deviations=(_MAIL_EPOCHS, _MAIL_EPS, _MAIL_GAIRAT),
            data="cifar10",
            model="resnet18",
            epochs=100,
            batch_size=128,
            lr=0.01,
            lr_schedule=((74, 0.001), (89, 0.0001)),
            momentum=0.9,
            weight_decay=3.5e-3,
            method_overrides={"*": {"burn_in_epochs": 74}},
        ),
        Recipe(
            name="mail-wrn32",
            follows=(
                "MAIL §4.1, WRN-32-10 (Table 3; the TRADES WRN-34-10): as mail-resnet18 with lr 0.1 and "
                "weight decay 7e-4; MART's β = 6 for WRN."
            ),
            deviations=(_MAIL_EPOCHS, _MAIL_EPS, _MAIL_GAIRAT),
            data="cifar10",
            model="wrn-34-10",
            epochs=100,
            batch_size=128,
            lr=0.1,
            lr_schedule=((74, 0.01), (89, 0.001)),
            momentum=0.9,
            weight_decay=7e-4,
            method_overrides={"*": {"burn_in_epochs": 74}, "mart": {"beta": 6.0}},
        ),
        Recipe(
            name="gairat-wrn32",
            follows=(
                "GAIRAT Appendix C.8, WRN-32-10 (Table 1; the TRADES WRN-34-10): 120 epochs, SGD momentum "
                "0.9, lr 0.1 -> 0.01 -> 0.001 -> 0.0005 at epochs 60, 90, 110, weight decay 2e-4, batch "
                "128, ε = 0.031, PGD-10 step 0.007, burn-in 60, λ = 0, FAT's τ 0 -> 3 -> 6 at 40, 70; best "
                "checkpoint among epochs 59-100."
            ),
            deviations=(_GAIRAT_EPOCH, _BEST),
            data="cifar10",
            model="wrn-34-10",
            epochs=120,
            batch_size=128,
            lr=0.1,
            lr_schedule=((60, 0.01), (90, 0.001), (110, 0.0005)),
            momentum=0.9,
            weight_decay=2e-4,
            method_overrides={
                "*": {"eps": 0.031, "step_size": 0.007, "burn_in_epochs": 60, "lam": 0.0}
            },
            best_window=(58, 99),
        ),
        Recipe(
            name="gairat-resnet18",
            follows=(
                "GAIRAT §4.1 and Appendix C.1/C.3, ResNet-18 (Figure 4): 100 epochs, SGD momentum 0.9, lr "
                "0.1 divided by 10 at epochs 30 and 60, weight decay 5e-4, batch 128, ε = 8/255, PGD-10 "
                "step 2/255, burn-in 30 (reweighting from epoch 31 on)."
            ),
            deviations=(
                "λ = −1 (Appendix C.2); Figure 13 sweeps λ from −3 to 3 (pass --set lam=...).",
                _GAIRAT_EPOCH,
            ),
            data="cifar10",
            model="resnet18",
            epochs=100,
            batch_size=128,
            lr=0.1,
            lr_schedule=((30, 0.01), (60, 0.001)),
            momentum=0.9,
            weight_decay=5e-4,
            method_overrides={"*": {"burn_in_epochs": 30, "lam": -1.0}},
        ),
        Recipe(
            name="gair-trades-wrn34",
            follows=(
                "GAIRAT Appendix C.9, WRN-34-10 (Table 2): 100 epochs, SGD momentum 0.9, lr 0.1 divided "
                "by 10 at epochs 75 and 90, weight decay 2e-4, batch 128, ε = 0.031, PGD-10 step 0.007, "
                "β = 6, burn-in 75, λ = −1; best checkpoint among epochs 75-100."
            ),
            deviations=(
                "The paper prints 'reduced to 0.01 and 0.01 at epoch 75 and 90'; the second drop is "
                "read as 0.001.",
                _GAIRAT_EPOCH,
                _BEST,
            ),
            data="cifar10",
            model="wrn-34-10",
            epochs=100,
            batch_size=128,
            lr=0.1,
            lr_schedule=((75, 0.01), (90, 0.001)),
            momentum=0.9,
            weight_decay=2e-4,
            method_overrides={
                "*": {
                    "eps": 0.031,
                    "step_size": 0.007,
                    "burn_in_epochs": 75,
                    "lam": -1.0,
                    "beta": 6.0,
                }
            },
            best_window=(74, 99),
        ),
        Recipe(
            name="awp-preact-resnet18-l2",
            follows=(
                "AWP (Wu, Xia and Wang, NeurIPS 2020) CIFAR-10 ℓ2, PreAct ResNet-18 (its AT_AWP code): "
                "ε = 128/255 in the ℓ2 ball, PGD-10 with step 15/255, 200 epochs, SGD momentum 0.9, lr "
                "0.1 divided by 10 at epochs 100 and 150, weight decay 5e-4, batch 128; `at-awp` with "
                "γ = 0.01 (the code's default), no warm-up."
            ),
            deviations=(
                _BEST,
                "No input normalisation: AWP's code normalises with CIFAR-10's mean and std inside the "
                "forward; the example models take [0, 1] inputs, as both papers' code does (ε and steps "
                "are in pixel units either way).",
                "AWP's official logs report PGD-20 best/last AT 69.15/65.26 and AT-AWP 72.69/71.59; "
                "evaluate with --protocol robustbench-l2 (ε = 0.5) or --eps 0.502 --norm l2 for AWP's ball.",
            ),
            data="cifar10",
            model="preact-resnet18",
            epochs=200,
            batch_size=128,
            lr=0.1,
            lr_schedule=((100, 0.01), (150, 0.001)),
            momentum=0.9,
            weight_decay=5e-4,
            method_overrides={
                "*": {"norm": "l2", "eps": 128 / 255, "step_size": 15 / 255, "steps": 10},
                "at-awp": {"awp_gamma": 0.01},
            },
            best_window=(0, 199),
        ),
        Recipe(
            name="mnist-study",
            follows=(
                "TRADES' and GAIRAT's MNIST setting (SmallCNN, SGD momentum 0.9, lr 0.01, batch 128, "
                "ℓ∞ ε = 0.3, no augmentation), shrunk to run every method of both papers on a 2-core CPU "
                "in under 100 minutes (docs/results/mnist-study.md)."
            ),
            deviations=(
                "8,000 training images (a fixed class-balanced subset) and 10 epochs instead of 60,000 "
                "and 100: the budget of a 2-core CPU. Batch 64 instead of 128: at 128 (235 steps) AT "
                "had not left the chance plateau by the end of its burn-in.",
                "PGD-10 with step ε/4 = 0.075 in training instead of PGD-40 with step 0.01: ten steps "
                "keep κ's resolution (K = 10) and step ε/4 is both papers' CIFAR-10 ratio (2/255 for 8/255).",
                "Burn-in 5 epochs (half the run, as GAIRAT's 60 of 120); lr divided by 10 at epoch 8 "
                "(about 75 % of the run, as MAIL's and GAIR-TRADES' drop at 75).",
                "Every method keeps its paper defaults (λ = 0, MAIL-AT γ = 10 and β = −0.5, MAIL-TRADES "
                "γ = 2, β = 0 and β_trades = 5, TRADES β = 6, MART β = 5); FAT's τ is 3 throughout.",
            ),
            data="mnist",
            model="smallcnn",
            epochs=10,
            batch_size=64,
            lr=0.01,
            lr_schedule=((8, 0.001),),
            momentum=0.9,
            weight_decay=0.0,
            method_overrides={
                "*": {"eps": 0.3, "step_size": 0.075, "steps": 10, "burn_in_epochs": 5},
                "fat": {"tau": 3},
            },
            train_size=8_000,
            monitor_size=200,
        ),
        Recipe(
            name="mnist-benchmark",
            follows=(
                "The pre-registered MNIST benchmark (docs/results/mnist-benchmark.md): Wong, Rice and "
                "Kolter's small MNIST net, all 60,000 images, ℓ∞ ε = 0.3, 20 epochs, batch 128, Adam lr "
                "1e-3 divided by 10 from epoch 16, no weight decay; ε and the step ramped linearly per "
                "batch from 0 over the first 2 epochs; PGD-10 step 0.04; reweighting branches off its "
                "base after epoch 10; AWP γ = 5e-3 from epoch 2."
            ),
            deviations=(
                "Neither GAIRAT nor MAIL reports MNIST: the recipe follows published MNIST practice "
                "(Adam at 1e-3 as Wong et al. and Madry et al.; the late lr drop of their step "
                "schedules; the ε ramp of Gowal et al. 2019 against MNIST's chance plateau).",
                "Burn-in 10 of 20 epochs for every reweighting method (GAIRAT's 60 of 120; MAIL's 74 "
                "of 120 would be 12): one branch point keeps every pair's shared prefix identical.",
                "FAT's τ schedule of GAIRAT Table 1 (0 -> 3 -> 6 at 40/120 and 70/120) scaled to 20 "
                "epochs: 0 for epochs 0-6, 3 for 7-11, 6 from 12.",
                "AWP's warm-up: applied from epoch 2, after the ε ramp (AWP's SVHN recipe warms up "
                "too); method hyper-parameters otherwise each paper's defaults.",
            ),
            data="mnist",
            model="wong-mnist",
            epochs=20,
            batch_size=128,
            lr=1e-3,
            lr_schedule=((16, 1e-4),),
            momentum=0.0,
            weight_decay=0.0,
            optimizer="adam",
            method_overrides={
                "*": {
                    "eps": 0.3,
                    "step_size": 0.04,
                    "steps": 10,
                    "eps_ramp_epochs": 2,
                    "burn_in_epochs": 10,
                    "awp_gamma": 5e-3,
                    "awp_warmup": 2,
                },
                "fat": {"tau": [[0, 0], [7, 3], [12, 6]]},
            },
        ),
    )
}


def get_preset(name: str) -> Recipe:
    """A preset by name.

    Raises:
        ValueError: on an unknown name; the message lists the valid ones.

    Example:
        >>> get_preset("mail-resnet18").lr_schedule
        ((74, 0.001), (89, 0.0001))
    """
    if name not in PRESETS:
        raise ValueError(
            f"Expected --preset to be one of {', '.join(PRESETS)}, got {name!r}. "
            "Run 'python examples/train.py --list-presets' to see what each follows."
        )
    return PRESETS[name]
