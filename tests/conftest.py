"""Test session setup: a persistent Inductor cache in the checkout, and the family fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from families import FAMILIES

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "inductor"))


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param
