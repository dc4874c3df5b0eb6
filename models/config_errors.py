"""The error every configuration check raises (hyperparameters, pipeline settings, flags).

The command line prints it as one line, ``cmgan: error: <key> must ...``, and exits 2; the
message always names the key and what values are allowed.
"""
from __future__ import annotations

import math
from typing import Any

BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "on": True,
                 "false": False, "0": False, "no": False, "off": False}


class ConfigError(ValueError):
    """A configuration value that is missing, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str, message: str | None = None):
        self.key = key
        self.problem = problem  # "must be ..., got ..."
        super().__init__(message or f"{key} {problem}")

    @classmethod
    def says(cls, message: str) -> "ConfigError":
        """From a message that starts with the key ("dataset must be one of ...")."""
        key, _, problem = message.partition(" ")
        return cls(key, problem, message)


def as_bool(key: str, value: Any) -> bool:
    """true/false/1/0/yes/no/on/off (any case) or a real bool; anything else ("maybe") fails."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)) and str(value).strip().lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[str(value).strip().lower()]
    raise ConfigError(key, f"must be true or false (or 1/0, yes/no), got {value!r}")


def as_int(key: str, value: Any) -> int:
    """An int, or a string/float holding a whole number; bools and fractions fail."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    try:
        number = float(value) if isinstance(value, (str, float)) else value
        if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be an integer, got {value!r}") from None


def as_float(key: str, value: Any) -> float:
    """A finite number (nan and inf fail)."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    return number


def check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> None:
    """``low <= value <= high`` (or strict at an open end); the message states the interval."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        interval = (f"{left}{'-inf' if low is None else low}, "
                    f"{'inf' if high is None else high}{right}")
        raise ConfigError(key, f"must be in {interval}, got {value!r}")


def check_name(key: str, value: Any) -> str:
    """A name used as one path component: letters, digits, '.', '_', '-'; no separators, no
    '..' (``--model-name ../../etc`` must not push outside the serving root)."""
    import re  # pylint: disable=import-outside-toplevel

    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value) \
            or ".." in value:
        raise ConfigError(key, "must be 1-128 letters, digits, '.', '_' or '-', starting with a "
                               f"letter or digit, without '..' or path separators; got {value!r}")
    return value
