"""Stand-alone sensitivity analysis (``edgeq sensitivity``): quantize with a scheme's math in torch, then
score every layer alone; nothing is exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeq.converters.quantize.api import _SENS_SEQS, _resolve
from edgeq.converters.quantize.calibrate import make_calib_data, quantizable_linears
from edgeq.converters.quantize.config import get_config
from edgeq.converters.quantize.registry import QuantContext, handler_for
from edgeq.converters.quantize.sensitivity import layer_sensitivity, write_sensitivity
from edgeq.converters.sources import LoadedModel
from edgeq.errors import ConfigError


def run_sensitivity(model: str | Path | LoadedModel, scheme: str, out_dir: str | Path, *,
                    calib_text: str | None = None, **overrides: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows (most sensitive first) and the written {json, png} paths."""
    cfg = get_config(scheme, **overrides)
    if cfg.scheme == "fp16":
        raise ConfigError("sensitivity needs a quantizing scheme, not fp16")
    loaded = _resolve(model, mutate=cfg.folds_scales)
    linears, _kept = quantizable_linears(loaded, cfg.keep_fp16, cfg.quantize_lm_head)
    calib = make_calib_data(loaded, calib_text, tokens=cfg.calib_tokens, seq_len=cfg.calib_seq_len,
                            holdout=cfg.holdout_tokens)
    plans = handler_for(cfg).quantize(QuantContext(loaded=loaded, cfg=cfg, linears=linears, calib=calib))
    rows = layer_sensitivity(loaded, plans, calib.calib[:_SENS_SEQS])
    return rows, write_sensitivity(rows, Path(out_dir), f"{loaded.name} {cfg.scheme}")
