"""The registry of studies: name -> study; the one place an unknown study is refused."""

from __future__ import annotations

from ..errors import SoftpromptError
from .base import Study
from .ensemble import EnsembleStudy
from .init import InitStudy
from .length import LengthStudy
from .methods import MethodsStudy
from .neighbors import NeighborsStudy
from .objective import ObjectiveStudy
from .scale import ScaleStudy
from .transfer import TransferStudy

STUDIES: dict[str, Study] = {study.name: study for study in (LengthStudy(), InitStudy(), EnsembleStudy(), NeighborsStudy(), TransferStudy(), ObjectiveStudy(), ScaleStudy(), MethodsStudy())}


def get_study(name: str) -> Study:
    """The study called `name`; raises SoftpromptError listing the available ones."""
    if name not in STUDIES:
        raise SoftpromptError(f"unknown study {name!r}; available studies: {', '.join(STUDIES)}")
    return STUDIES[name]
