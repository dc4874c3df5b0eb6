"""Kubernetes resource quantities for the Kubeflow compile (pipeline/config.py KubeflowConfig).

CPU: ``"2"``, ``"0.5"``, ``"500m"`` (or a number of cores); memory: ``"4Gi"``, ``"512Mi"``,
``"4G"``, ``"1500M"``, or a whole number of bytes. ``cpu``/``memory`` validate a value and
return it as the quantity written to the spec's ``resource_*`` fields; ``cpu_cores`` and
``memory_gb`` give the numbers of the older numeric fields (cores, and GB = 10^9 bytes), as the
KFP SDK compiler writes them.
"""
from __future__ import annotations

import re
from typing import Any

from models.config_errors import ConfigError

_CPU = re.compile(r"(\d+(?:\.\d+)?)(m?)")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?")
_MEMORY_UNITS = {None: 1, "k": 10 ** 3, "K": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9,
                 "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18, "Ki": 2 ** 10, "Mi": 2 ** 20,
                 "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
MIN_MEMORY_BYTES = 2 ** 20  # a plain 4 is 4 bytes: below this it is a missing unit


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError
    return value.strip() if isinstance(value, str) else repr(value)


def cpu(key: str, value: Any) -> str:
    """A CPU quantity: whole cores as ``"N"``, else millicores ``"Nm"`` (at least 1m)."""
    try:
        match = _CPU.fullmatch(_text(value))
    except TypeError:
        match = None
    if match is None:
        raise ConfigError(key, f"must be a CPU quantity such as 2, 0.5 or 500m, got {value!r}")
    millicores = float(match.group(1)) * (1 if match.group(2) else 1000)
    if millicores < 1 or not float(millicores).is_integer():
        raise ConfigError(key, f"must be a whole number of millicores, at least 1m, got "
                               f"{value!r}")
    millicores = int(millicores)
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def memory(key: str, value: Any) -> str:
    """A memory quantity, at least 1Mi; ``K`` (KFP's spelling) is written as Kubernetes' ``k``."""
    try:
        match = _MEMORY.fullmatch(_text(value))
    except TypeError:
        match = None
    if match is None:
        raise ConfigError(key, f"must be a memory quantity such as 4Gi, 512Mi or 4G, got "
                               f"{value!r}")
    if memory_bytes(match.group(0)) < MIN_MEMORY_BYTES:
        raise ConfigError(key, f"must be at least 1Mi (a plain number is bytes: write 4Gi or "
                               f"4G), got {value!r}")
    return match.group(1) + {"K": "k"}.get(match.group(2), match.group(2) or "")


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> float:
    match = _MEMORY.fullmatch(quantity)
    return float(match.group(1)) * _MEMORY_UNITS[match.group(2)]


def memory_gb(quantity: str) -> float:
    return memory_bytes(quantity) / 10 ** 9
