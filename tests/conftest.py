"""Hypothesis profiles: ``default`` draws afresh (``--hypothesis-seed`` picks the draws), ``ci`` is
reproducible (derandomised, and a failure prints the blob that replays it).

CI selects its profile with ``HYPOTHESIS_PROFILE=ci python -m pytest``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def count_syncs(monkeypatch):
    """``count_syncs(fn)``: how many tensor → Python conversions ``fn()`` makes (each a host
    synchronisation on a GPU): ``.item()``, ``.tolist()``, ``bool``, ``int``, ``float``, ``.numpy()``."""
    calls = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def count(fn):
        calls["n"] = 0
        fn()
        return calls["n"]

    return count
