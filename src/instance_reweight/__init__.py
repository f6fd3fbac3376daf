"""Instance-reweighted adversarial training for PyTorch: GAIRAT (geometry value κ) and MAIL
(probabilistic margin) as a drop-in plugin.

>>> import instance_reweight as ir
>>> sorted(ir.schemes.SCHEMES)[:3]
['gairat', 'gairat-linear', 'gairat-sigmoid']
"""

from . import evaluation, losses, methods, sampler, schemes
from .attack import AttackOutput, GeometryAwareAttack
from .awp import AdversarialWeightPerturbation
from .loss import InstanceReweightedLoss
from .margin import ProbabilisticMargin, probabilistic_margin, probabilistic_margin_dif
from .normalize import Normalized
from .sampler import IndexedDataset, InstanceReweightedSampler
from .scheduler import BurnInScheduler, EpsilonScheduler
from .weighting import InstanceWeighting, instance_reweighted_loss, instance_weights

__version__ = "0.1.0"

__all__ = [
    "AdversarialWeightPerturbation",
    "AttackOutput",
    "BurnInScheduler",
    "EpsilonScheduler",
    "GeometryAwareAttack",
    "IndexedDataset",
    "InstanceReweightedLoss",
    "InstanceReweightedSampler",
    "InstanceWeighting",
    "Normalized",
    "ProbabilisticMargin",
    "evaluation",
    "instance_reweighted_loss",
    "instance_weights",
    "losses",
    "methods",
    "probabilistic_margin",
    "probabilistic_margin_dif",
    "sampler",
    "schemes",
]
