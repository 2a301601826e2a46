"""Copy a finished training run's weights into the package as shipped weights.

    python scripts/package_weights.py runs/release-agileir-s_x2 agileir-s_x2

Takes the run's exported weights (``model.safetensors``: the EMA when the run kept one), resets
options that only mattered for training (the attention kernel goes back to ``auto``, so inference
picks the device's fastest path; no checkpointing), records where the weights came from in the
safetensors metadata, and writes ``src/agileir/assets/weights/<name>.safetensors`` atomically.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

import agileir
from agileir.models.zoo import WEIGHTS_DIR


def provenance(run: Path) -> dict[str, str]:
    """What to remember about the run: its configuration and how far it went."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    last = rows[-1] if rows else {}
    return {
        "agileir.training.config": yaml.safe_dump(config, sort_keys=False),
        "agileir.training.iterations": str(last.get("iteration", "")),
        "agileir.training.run": run.name,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="training run folder (with model.safetensors)")
    ap.add_argument("name", help="shipped name, <preset>_x<scale>")
    args = ap.parse_args()
    model = agileir.load_model(args.run / "model.safetensors", attention_impl="auto", use_checkpoint=False)
    out = agileir.save_model(model, WEIGHTS_DIR / f"{args.name}.safetensors", extra_metadata=provenance(args.run))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
