"""What a run writes besides checkpoints: CSV logs, TensorBoard scalars, one-line messages."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agileir.errors import ConfigError
from agileir.fileio import atomic_write_text

class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows after the resumed iteration are
    dropped so that the log reads as one uninterrupted run."""

    def __init__(self, path: Path, columns: Sequence[str], resume_iteration: int | None = None) -> None:
        self.path, self.columns = path, list(columns)
        rows: list[dict[str, str]] = []
        if resume_iteration is not None and path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(float(r.get("iteration") or 0)) <= resume_iteration]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())

    def write(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})


def open_tensorboard(setting: Any, log_dir: Path):
    if setting is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if setting is True:
            raise ConfigError("log.tensorboard=true needs the tensorboard package: pip install 'agileir[tensorboard]'")
        return None
    return SummaryWriter(str(log_dir))


def say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


__all__ = ["CsvLog", "open_tensorboard", "say"]
