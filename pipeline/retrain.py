"""Retraining on data spans: one idempotent run (``retrain_once``) and the schedule loop.

``retrain_once``: if the newest span on disk was already evaluated by an earlier run (looked up
in ML Metadata, ``pipeline/history.py``) nothing is done; otherwise the pipeline runs on the
window of the latest spans. Its RetrievalEvaluator compares the candidate with the latest
blessed model (TFX's LatestBlessedModelStrategy) and the Pusher pushes a new version only when
the candidate is blessed (threshold and margin of the config).

Runs of one pipeline root never overlap: each holds ``fcntl.flock`` on
``<pipeline_root>/.retrain.lock`` (non-blocking; a second run reports "locked" and does
nothing), whether it comes from ``cmgan retrain``, ``cmgan schedule`` or cron.

``schedule_loop`` runs a function every ``interval`` seconds (start to start; a run longer than
the interval is followed at once by the next), one log line per run, until SIGTERM/SIGINT: a
signal during a run lets that run finish, then the loop exits.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import os
import re
import signal
import sys
import time
from typing import Callable, Iterator, Optional

from pipeline.config import PipelineConfig

LOCK_FILE = ".retrain.lock"
DEFAULT_SPAN_PATTERN = "span-{SPAN}"
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class LockHeld(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class RetrainOutcome:
    status: str  # "noop" | "pushed" | "not_pushed" | "locked" | "failed"
    message: str
    result: object = None  # pipeline.local_runner.RunResult when the pipeline ran

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "failed" else 0


def parse_interval(text: str) -> float:
    """'30s', '10m', '6h', '1d', '90' (seconds), '1.5h' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"interval must be a positive number with an optional unit s|m|h|d "
                         f"(e.g. 30s, 10m, 6h), got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def lock_path(config: PipelineConfig) -> str:
    return os.path.join(config.resolved().pipeline_root, LOCK_FILE)


@contextlib.contextmanager
def retrain_lock(path: str) -> Iterator[None]:
    """Exclusive, non-blocking flock; raises LockHeld if another process holds it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockHeld(f"another retraining run holds {path}") from error
            raise
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def with_span_defaults(config: PipelineConfig) -> PipelineConfig:
    """Retraining works on spans: the default pattern when none is configured."""
    if config.data.span_pattern:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(
        config.data, span_pattern=DEFAULT_SPAN_PATTERN))


def pending_span(config: PipelineConfig) -> tuple[Optional[int], str]:
    """(newest span on disk if it is new, else None; a sentence on the state)."""
    from components.example_gen import spans  # pylint: disable=import-outside-toplevel
    from pipeline.history import last_blessed, last_evaluated, run_history

    config = config.resolved()
    newest = spans.latest_span(config.data.data_dir, config.data.span_pattern)
    if newest is None:
        return None, (f"no span folder matching '{config.data.span_pattern}' under "
                      f"{config.data.data_dir}")
    records = run_history(config.metadata_path, config.pipeline_name)
    evaluated, blessed = last_evaluated(records), last_blessed(records)
    blessed_text = (f"last blessed model {blessed.model_id} on spans {blessed.spans}"
                    f" (pushed version {blessed.pushed_version or '-'})" if blessed else
                    "no blessed model yet")
    if evaluated is not None and evaluated.latest_span is not None \
            and newest <= evaluated.latest_span:
        verdict = "blessed" if evaluated.blessed else "not blessed"
        return None, (f"no new span: the newest span {newest} was already evaluated "
                      f"(model {evaluated.model_id}, {verdict}); {blessed_text}")
    return newest, f"new span {newest}; {blessed_text}"


def retrain_once(config: PipelineConfig, *, force: bool = False,
                 log: Callable[[str], None] = print) -> RetrainOutcome:
    """One idempotent retraining run under the lock (see the module docstring)."""
    from pipeline.local_runner import run_pipeline  # pylint: disable=import-outside-toplevel

    config = with_span_defaults(config).resolved()
    try:
        with retrain_lock(lock_path(config)):
            newest, state = pending_span(config)
            if newest is None and not force:
                return RetrainOutcome("noop", f"nothing to do: {state}")
            log(f"retraining {config.pipeline_name}: {state}")
            try:
                result = run_pipeline(config)
            except Exception as error:  # pylint: disable=broad-except
                return RetrainOutcome("failed", f"pipeline {config.pipeline_name} failed: "
                                                f"{type(error).__name__}: {error}")
    except LockHeld as error:
        return RetrainOutcome("locked", f"skipped: {error}")
    if result.pushed_model:
        return RetrainOutcome("pushed", f"pushed version {os.path.basename(result.pushed_model)}"
                                        f" ({result.reason})", result)
    return RetrainOutcome("not_pushed", f"nothing pushed: {result.reason}", result)


def _timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StopFlag:
    """Set by SIGTERM/SIGINT; the previous handlers come back on restore()."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def install(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts the current run
        self.signal = signum


def schedule_loop(run: Callable[[], RetrainOutcome], interval_s: float, *,
                  max_runs: Optional[int] = None,
                  log: Callable[[str], None] = lambda line: print(line, flush=True),
                  sleep_step_s: float = 0.2) -> int:
    """Calls ``run`` every ``interval_s`` until SIGTERM/SIGINT (or ``max_runs``); returns 0."""
    stop = StopFlag().install()
    try:
        log(f"{_timestamp()} schedule: retraining every {interval_s:g}s "
            f"(pid {os.getpid()}); SIGTERM or Ctrl-C stops")
        number = 0
        while not stop and (max_runs is None or number < max_runs):
            number += 1
            started = time.monotonic()
            try:
                outcome = run()
            except KeyboardInterrupt:
                log(f"{_timestamp()} run {number}: aborted by a second interrupt")
                break
            except Exception as error:  # pylint: disable=broad-except
                outcome = RetrainOutcome("failed", f"{type(error).__name__}: {error}")
            log(f"{_timestamp()} run {number}: {outcome.status} "
                f"({time.monotonic() - started:.1f}s): {outcome.message}")
            if max_runs is not None and number >= max_runs:
                break
            next_start = started + interval_s
            while not stop and time.monotonic() < next_start:
                time.sleep(min(sleep_step_s, max(0.0, next_start - time.monotonic())))
        if stop:
            name = signal.Signals(stop.signal).name
            log(f"{_timestamp()} schedule: stopped by {name} after {number} run(s)")
        return 0
    finally:
        stop.restore()
        sys.stdout.flush()
