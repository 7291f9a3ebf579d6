"""Per-layer sensitivity: quantize one linear at a time and measure the output change on calibration data
(KL of logits for LMs, 1 - cosine of embeddings for encoders). Written as JSON + a PNG bar chart — the
table to read when accuracy drops and you need the culprit layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.converters.quantize.simulate import divergence, forward_outputs, simulated
from edgeq.converters.sources import TEXT_GENERATION, LoadedModel

SENSITIVITY_JSON = "sensitivity.json"
SENSITIVITY_PNG = "sensitivity.png"


def layer_sensitivity(loaded: LoadedModel, plans: dict[str, LinearPlan], ids: torch.Tensor) -> list[dict[str, Any]]:
    """One row per planned linear, most sensitive first: {layer, score, metric, scheme}."""
    metric = "kl" if loaded.task == TEXT_GENERATION else "1-cosine"
    ref = forward_outputs(loaded, ids)
    rows = []
    for name, plan in plans.items():
        with simulated(loaded.model, {name: plan}):
            score = divergence(loaded, ref, forward_outputs(loaded, ids))
        rows.append({"layer": name, "score": score, "metric": metric, "scheme": plan.summary()["scheme"]})
    rows.sort(key=lambda r: r["score"], reverse=True)
    return rows


def write_sensitivity(rows: list[dict[str, Any]], out_dir: Path, title: str = "") -> dict[str, str]:
    """Write ``sensitivity.json`` and ``sensitivity.png`` (horizontal bars, top 40) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SENSITIVITY_JSON).write_text(json.dumps({"title": title, "layers": rows}, indent=2) + "\n")
    top = rows[:40][::-1]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.22 * len(top) + 1)))
    ax.barh([r["layer"] for r in top], [r["score"] for r in top], color="tab:red")
    ax.set_xlabel(rows[0]["metric"] if rows else "score")
    ax.set_title(title or "per-layer quantization sensitivity")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / SENSITIVITY_PNG, dpi=110)
    plt.close(fig)
    return {"json": str(out_dir / SENSITIVITY_JSON), "png": str(out_dir / SENSITIVITY_PNG)}
