"""What every ``cmgan`` command shows: a quiet terminal, the full log in a file, stage lines.

``start()`` runs in ``pipeline.cli.main`` before any TensorFlow import: from then on everything
libraries write (TensorFlow's C++ log on file descriptor 2, absl/TFX/Beam/TF Python logging,
known third-party warnings) goes to a log file only, while the terminal gets the project's own
lines, project warnings, errors from anywhere and every Python warning not known as noise.
Until a command calls ``log_to(directory, name)`` the log is spooled to a temporary file; then
it moves to ``<directory>/logs/<name>-<time>.log`` and its path is printed. ``-v`` shows the
whole log on the terminal as well (fd 2 goes through ``tee``).

A command (``benchmark`` included) uses it as::

    log_path = console.log_to(output_dir, "benchmark")   # prints "log: <path>"
    with console.stage("train", 1, 3) as counts:            # "[1/3] train ..." when it starts
        result = train_cmgan(...)                          # progress bar (models/progress.py)
        counts["best epoch"] = result.best_epoch           # "[1/3] train done in 41s: ..."

``pipeline_stages(describe)`` prints the same lines for the components of a LocalDagRunner run,
from TFX's own "Component %s is running/finished." log records.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

from models.progress import format_duration

PROJECT_PACKAGES = frozenset({"models", "components", "pipeline", "serving", "benchmarks",
                              "__main__"})
# Python warnings that tell a user of this project nothing they can act on (deprecations of
# Python/grpc/storage versions inside Google client libraries TFX imports). Log file only.
KNOWN_NOISE_WARNINGS = (
    re.compile(r"google[/\\](api_core|auth|cloud[/\\]aiplatform)[/\\].*: FutureWarning:"),
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ENV_DEFAULTS = {
    # 0: every C++ line goes to the log file (fd 2); the terminal never sees fd 2 without -v.
    "TF_CPP_MIN_LOG_LEVEL": "0",
    "GRPC_VERBOSITY": "ERROR",
}


class _TerminalFilter(logging.Filter):
    """Without -v: project warnings, errors from anywhere, Python warnings that are not noise."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.name == "py.warnings":
            message = record.getMessage()
            return not any(pattern.search(message) for pattern in KNOWN_NOISE_WARNINGS)
        if record.levelno >= logging.ERROR:
            return True
        return (record.name.split(".", 1)[0] in PROJECT_PACKAGES
                and record.levelno >= _asked_level(record.name))


def _asked_level(name: str) -> int:
    """The level a command set on a project logger or its package (``cmgan serve`` asks for
    serving's INFO: model loads), else WARNING."""
    logger: Optional[logging.Logger] = logging.getLogger(name)
    while logger is not None and logger is not logging.root:
        if logger.level:
            return logger.level
        logger = logger.parent
    return logging.WARNING


class _Session:
    """The process-wide redirection of fd 2 and the logging handlers; undone by stop()."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.terminal_fd = os.dup(2)  # the real stderr, for the terminal handler and sys.stderr
        self.saved_stderr = sys.stderr
        # Only a sys.stderr that writes to fd 2 is moved onto the terminal's copy; one that a
        # caller replaced (pytest's capsys, an embedding program) is left where it writes.
        try:
            self.replace_stderr = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            self.replace_stderr = False
        if self.replace_stderr:
            sys.stderr = open(os.dup(self.terminal_fd), "w", buffering=1,  # noqa: SIM115
                              errors="backslashreplace")
        fd, self.path = tempfile.mkstemp(prefix="cmgan-", suffix=".log")
        os.close(fd)
        self.claimed = False
        self.tee: Optional[subprocess.Popen] = None
        self._point_fd2(self.path)
        root = logging.getLogger()
        self.saved_level = root.level
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        self.file_handler = self._file_handler(self.path)
        self.terminal_handler = logging.StreamHandler(sys.stderr)
        self.terminal_handler.setFormatter(logging.Formatter(
            LOG_FORMAT if verbose else "%(levelname)s %(name)s: %(message)s"))
        self.terminal_handler.addFilter(_TerminalFilter(verbose))
        root.addHandler(self.file_handler)
        root.addHandler(self.terminal_handler)
        self.saved_show_warning = warnings.showwarning
        logging.captureWarnings(True)
        from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

        self.saved_absl_verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.DEBUG if verbose else absl_logging.INFO)

    @staticmethod
    def _file_handler(path: str) -> logging.Handler:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        return handler

    def _point_fd2(self, path: str) -> None:
        """C++ and anything else writing to fd 2 appends to ``path`` (and, with -v, the
        terminal, through a ``tee`` process so no Python thread has to drain a pipe)."""
        old_tee = self.tee
        if self.verbose and shutil.which("tee"):
            self.tee = subprocess.Popen(["tee", "-a", path], stdin=subprocess.PIPE,
                                        stdout=self.terminal_fd, stderr=subprocess.DEVNULL)
            os.dup2(self.tee.stdin.fileno(), 2)
        else:
            self.tee = None
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 2)
            os.close(fd)
        if old_tee is not None:
            old_tee.stdin.close()
            old_tee.wait(timeout=10)

    def move(self, path: str) -> None:
        """The spooled log continues in ``path``."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        root = logging.getLogger()
        root.removeHandler(self.file_handler)
        self.file_handler.close()
        with open(self.path, "rb") as spool, open(path, "ab") as target:
            shutil.copyfileobj(spool, target)
        self._point_fd2(path)
        if not self.claimed:
            os.unlink(self.path)
        self.path, self.claimed = path, True
        self.file_handler = self._file_handler(path)
        root.addHandler(self.file_handler)

    def stop(self) -> None:
        from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

        absl_logging.set_verbosity(self.saved_absl_verbosity)
        logging.captureWarnings(False)
        warnings.showwarning = self.saved_show_warning
        root = logging.getLogger()
        for handler in (self.file_handler, self.terminal_handler):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(self.saved_level)
        sys.stderr.flush()
        os.dup2(self.terminal_fd, 2)
        if self.tee is not None:
            self.tee.stdin.close()
            self.tee.wait(timeout=10)
        if self.replace_stderr:
            stream, sys.stderr = sys.stderr, self.saved_stderr
            stream.close()
        os.close(self.terminal_fd)
        if not self.claimed:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


_session: Optional[_Session] = None


def quiet_libraries() -> None:
    """Environment for TensorFlow and gRPC's C++ logging; only effective before they load."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def wants_verbose(argv: Optional[Sequence[str]]) -> bool:
    """-v/--verbose given anywhere before the subcommand's own arguments are parsed."""
    argv = sys.argv[1:] if argv is None else argv
    return any(arg in ("-v", "--verbose") for arg in argv)


def start(argv: Optional[Sequence[str]] = None, verbose: Optional[bool] = None) -> None:
    """Call before TensorFlow is imported (``cmgan`` does it first thing)."""
    global _session
    stop()
    quiet_libraries()
    _session = _Session(wants_verbose(argv) if verbose is None else verbose)


def stop() -> None:
    """Undoes start(): fd 2, sys.stderr and the logging handlers as they were."""
    global _session
    if _session is not None:
        session, _session = _session, None
        session.stop()


def log_to(directory: str, name: str) -> Optional[str]:
    """Moves the log to ``<directory>/logs/<name>-<time>.log``, prints and returns its path.

    Without start() (a library caller) nothing is redirected and None is returned."""
    if _session is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.abspath(os.path.join(directory, "logs", f"{name}-{stamp}.log"))
    _session.move(path)
    say(f"log: {path}")
    return path


def log_path() -> Optional[str]:
    return _session.path if _session is not None and _session.claimed else None


def say(text: str) -> None:
    """One line of the project's own output (stdout, flushed: it is the progress)."""
    print(text, flush=True)


def format_counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" if value not in (None, "") else str(key)
                     for key, value in counts.items())


@contextlib.contextmanager
def stage(name: str, index: Optional[int] = None, total: Optional[int] = None
          ) -> Iterator[dict[str, Any]]:
    """Prints ``name ...`` now and ``name done in <time>: <counts>`` at the end (``failed``
    on an exception); fill the yielded dict with the counts to show."""
    prefix = f"[{index}/{total}] " if index is not None and total else ""
    say(f"{prefix}{name} ...")
    counts: dict[str, Any] = {}
    started = time.time()
    try:
        yield counts
    except BaseException:
        say(f"{prefix}{name} failed after {format_duration(time.time() - started)}")
        raise
    summary = format_counts(counts)
    say(f"{prefix}{name} done in {format_duration(time.time() - started)}"
        + (f": {summary}" if summary else ""))


class _ComponentLines(logging.Handler):
    """Stage lines from LocalDagRunner's own log records (it has no callback API)."""

    RUNNING, FINISHED = "Component %s is running.", "Component %s is finished."
    CACHED = "A cached execution %d is used."

    def __init__(self, nodes: Sequence[str], describe: Callable[[str], dict[str, Any]]):
        super().__init__(logging.INFO)
        self.nodes, self.describe = list(nodes), describe
        self.current: Optional[tuple[str, float]] = None
        self.cached = False

    def prefix(self, node: str) -> str:
        index = self.nodes.index(node) + 1 if node in self.nodes else None
        return f"[{index}/{len(self.nodes)}] " if index else ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == self.RUNNING and record.args:
            node = str(record.args[0])
            self.current, self.cached = (node, time.time()), False
            say(f"{self.prefix(node)}{node} ...")
        elif record.msg == self.CACHED:
            self.cached = True
        elif record.msg == self.FINISHED and record.args and self.current:
            node, started = self.current
            self.current = None
            try:
                counts = self.describe(node)
            except Exception:  # pylint: disable=broad-except
                logging.getLogger(__name__).debug("no counts for %s", node, exc_info=True)
                counts = {}
            if self.cached:
                counts = {"cached": None, **counts}
            summary = format_counts(counts)
            say(f"{self.prefix(node)}{node} done in {format_duration(time.time() - started)}"
                + (f": {summary}" if summary else ""))


@contextlib.contextmanager
def pipeline_stages(nodes: Sequence[str], describe: Callable[[str], dict[str, Any]]
                    ) -> Iterator[None]:
    """While a LocalDagRunner runs: one line when each component starts and one when it ends,
    with ``describe(node_id)``'s counts."""
    handler = _ComponentLines(nodes, describe)
    absl_logger = logging.getLogger("absl")  # TFX logs through absl; INFO is on after start()
    absl_logger.addHandler(handler)
    try:
        yield
    finally:
        absl_logger.removeHandler(handler)
        if handler.current:
            node, started = handler.current
            say(f"{handler.prefix(node)}{node} failed after "
                f"{format_duration(time.time() - started)}")
