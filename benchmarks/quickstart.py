"""The README's quick start as a user sees it: ``cmgan run`` on the embedded demo, in a fresh
temporary folder (nothing cached), with stdout and stderr read line by line as they arrive.

Prints one JSON line: wall_s (whole command), first_progress_s (until the first stage line),
noise_lines (terminal lines from library logging: TensorFlow C++, absl/TFX/Beam/TF Python
logging, third-party warnings, not the project's), test_mean (CM-GAN test mean MAP@all), plus
cpu_s (user + system CPU of the command: wall time is only comparable on an idle machine).

    .venv/bin/python benchmarks/quickstart.py [--keep] [-- extra cmgan run flags]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

STAGE_LINE = re.compile(r"^\[\d+/\d+\] ")
PROJECT_LOG = re.compile(r"^(WARNING|ERROR|CRITICAL) (models|components|pipeline|serving)\b")
LIBRARY_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.,]\d+[: ]"  # TF C++ log / Python logging with time
    r"|^[IWEF]\d{4} \d\d:\d\d:\d\d"  # absl / glog format
    r"|^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+:"  # Python logging, the project's excluded
    r"|site-packages|warnings\.warn\(|^To enable the following instructions")


def cmgan_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "cmgan")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "pipeline"]


def is_noise(line: str, stream: str) -> bool:
    """A line that came from library logging rather than from the project."""
    if not line.strip() or PROJECT_LOG.match(line) or line.startswith("cmgan"):
        return False
    return stream == "stderr" or bool(LIBRARY_LINE.search(line))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("extra", nargs="*", help="more `cmgan run` flags (after --)")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="cmgan-quickstart-")
    metrics = os.path.join(workdir, "metrics.json")
    command = [*cmgan_command(), "run", "--metrics-out", metrics, *args.extra]
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    started = time.time()
    first_progress = None
    lines: list[tuple[str, str]] = []
    process = subprocess.Popen(command, cwd=workdir, env=env, text=True, bufsize=1,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def read(stream, name):
        nonlocal first_progress
        for line in stream:
            if first_progress is None and STAGE_LINE.match(line):
                first_progress = time.time() - started
            lines.append((name, line.rstrip("\n")))
            print(line, end="", file=sys.stderr, flush=True)  # watch it live

    readers = [threading.Thread(target=read, args=(process.stdout, "stdout")),
               threading.Thread(target=read, args=(process.stderr, "stderr"))]
    for reader in readers:
        reader.start()
    code = process.wait()
    for reader in readers:
        reader.join()
    wall = time.time() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    test_mean = None
    if code == 0 and os.path.exists(metrics):
        with open(metrics) as f:
            test_mean = json.load(f)["methods"]["cmgan"]["mean"]
    print(json.dumps({"wall_s": round(wall, 1),
                      "first_progress_s": None if first_progress is None
                      else round(first_progress, 1),
                      "noise_lines": sum(is_noise(line, name) for name, line in lines),
                      "test_mean": None if test_mean is None else round(test_mean, 4),
                      "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                      "exit_code": code}), flush=True)
    if args.keep:
        print(f"kept {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
