"""Training progress on the terminal: a live one-line bar when stdout is a terminal, one plain
line per validation otherwise (logs, CI, pipes).

Not keras.utils.Progbar: Keras 3 treats every POSIX stdout as a terminal ("posix" in
sys.modules), so redirected output fills with carriage returns, and it has no place for the
last validation MAP between validations.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Mapping, Optional, TextIO

BAR_WIDTH = 20


def format_duration(seconds: float) -> str:
    """3s, 2m05s, 1h02m: short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class TrainingProgress:
    """Epoch i/N, generator and discriminator losses, the last validation MAP, elapsed, ETA."""

    def __init__(self, total_epochs: int, initial_epoch: Optional[int] = None,
                 stream: Optional[TextIO] = None, live: Optional[bool] = None):
        self.stream = stream or sys.stdout
        self.live = (self.stream.isatty() if live is None and hasattr(self.stream, "isatty")
                     else bool(live))
        # None: the epoch before the first update (a resumed run starts past 0).
        self.total, self.initial_epoch = total_epochs, initial_epoch
        self.started = time.time()
        # The first epoch carries tracing (and XLA compilation): the ETA uses the later ones.
        self.first_epoch_done: Optional[tuple[int, float]] = None
        self.last_val: Optional[float] = None
        self.width = 0

    def eta(self, epoch: int, now: float) -> Optional[float]:
        if self.first_epoch_done is None or epoch <= self.first_epoch_done[0]:
            done = epoch - self.initial_epoch
            return (now - self.started) / done * (self.total - epoch) if done > 0 else None
        first, at = self.first_epoch_done
        return (now - at) / (epoch - first) * (self.total - epoch)

    def line(self, epoch: int, logs: Mapping[str, Any], best: Optional[tuple[float, int]],
             now: float, final: bool) -> str:
        def loss(key: str) -> str:
            value = logs.get(key)
            return "-" if value is None or not math.isfinite(float(value)) else f"{value:.3f}"

        parts = [f"epoch {epoch}/{self.total}",
                 f"d {loss('d_inter_image_loss')}/{loss('d_inter_text_loss')}",
                 f"g {loss('g_image_loss')}/{loss('g_text_loss')}"]
        if self.last_val is not None:
            parts.append(f"val MAP {self.last_val:.4f}")
        if best is not None and best[1] > 0:
            parts.append(f"best {best[0]:.4f}@{best[1]}")
        parts.append(format_duration(now - self.started))
        eta = None if final else self.eta(epoch, now)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        text = "  ".join(parts)
        if self.live:
            filled = round(BAR_WIDTH * epoch / max(self.total, 1))
            text = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"
        return text

    def update(self, epoch: int, logs: Mapping[str, Any],
               best: Optional[tuple[float, int]] = None, final: bool = False) -> None:
        """After each epoch; ``logs`` with ``val_mean`` marks a validation epoch."""
        now = time.time()
        if self.first_epoch_done is None:
            self.first_epoch_done = (epoch, now)
            if self.initial_epoch is None:
                self.initial_epoch = epoch - 1
        validated = logs.get("val_mean") is not None
        if validated:
            self.last_val = float(logs["val_mean"])
        final = final or epoch >= self.total
        if not self.live and not (validated or final):
            return
        text = self.line(epoch, logs, best, now, final)
        if self.live:
            padding = " " * max(0, self.width - len(text))
            self.width = len(text)
            self.stream.write(f"\r{text}{padding}" + ("\n" if final else ""))
        else:
            self.stream.write(f"  {text}\n")
        self.stream.flush()
