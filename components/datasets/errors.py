"""The one error type the dataset readers raise, so callers can point at the exact bad input."""
from __future__ import annotations

import os
from pathlib import Path


class DatasetError(ValueError):
    """Bad dataset input, located as precisely as possible.

    The message reads ``<path>: field '<field>' row <row>: <problem>``; ``field`` and ``row`` are
    left out (and are None) for file-level problems such as a missing file. Rows count from 0.
    """

    def __init__(self, path: str | os.PathLike, field: str | None, problem: str,
                 row: int | None = None):
        self.path = str(path)
        self.field = field
        self.row = row
        self.problem = problem
        parts = [self.path]
        if field is not None:
            parts.append(f"field '{field}'" + (f" row {row}" if row is not None else ""))
        elif row is not None:
            parts.append(f"row {row}")
        super().__init__(": ".join(parts + [problem]))


def require_path(path: str | os.PathLike, *, directory: bool = False) -> Path:
    """Fail early, naming the missing file or folder, instead of deep inside a loader."""
    path = Path(path)
    ok = path.is_dir() if directory else path.is_file()
    if not ok:
        raise DatasetError(path, None, f"missing {'directory' if directory else 'file'}")
    return path
