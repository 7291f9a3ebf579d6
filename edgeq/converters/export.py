"""Export a Hugging Face model to ONNX with optimum's exporter and validate it against PyTorch.

Causal LMs export with KV cache (optimum's names: ``past_key_values.N.key/value`` in, ``present.N.*``
out) and dynamic batch/sequence/past axes; encoders export for feature extraction. Every export is
checked against the PyTorch model on fixed inputs (see ``validate``) and the report is written as
``validation.json`` next to ``model.onnx``. The output directory appears only when all of it is done.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_output_dir
from edgeq.converters.sources import LoadedModel, ModelSpec, load_model, TEXT_GENERATION
from edgeq.converters.validate import ValidationReport, validate_export
from edgeq.errors import ExportError, ValidationError
from edgeq.sdk.bundle.model_info import MODEL_INFO_NAME as MODEL_INFO  # the file the runtime reads

log = logging.getLogger(__name__)

#: optimum task names per edgeq task
_OPTIMUM_TASK = {TEXT_GENERATION: "text-generation-with-past", "feature-extraction": "feature-extraction"}
DEFAULT_OPSET = 21  # INT4 block-wise DequantizeLinear and FP8 need opset 21


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    onnx_path: Path
    report: ValidationReport
    loaded: LoadedModel


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    """What the runtime needs to know of the model beyond the ONNX itself."""
    cfg = loaded.model.config
    info: dict[str, Any] = {
        "name": loaded.name,
        "model_id": loaded.model_id,
        "revision": loaded.revision,
        "task": loaded.task,
        "model_type": cfg.model_type,
    }
    if loaded.task == TEXT_GENERATION:
        n_heads = cfg.num_attention_heads
        info.update(
            num_layers=cfg.num_hidden_layers,
            num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
            vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_position_embeddings,
            eos_token_id=cfg.eos_token_id,
            bos_token_id=cfg.bos_token_id,
        )
    else:
        # max_position_embeddings: the context the runtime checks requests against (512 for BERT)
        info.update(pooling=loaded.pooling, normalize=loaded.normalize, hidden_size=cfg.hidden_size,
                    max_position_embeddings=getattr(cfg, "max_position_embeddings", None))
    return info


def save_side_files(loaded: LoadedModel, out: Path) -> None:
    """Tokenizer, config and model info that travel with every ONNX edgeq writes."""
    loaded.tokenizer.save_pretrained(out)
    loaded.model.config.save_pretrained(out)
    gen = getattr(loaded.model, "generation_config", None)
    if gen is not None and loaded.task == TEXT_GENERATION:
        gen.save_pretrained(out)
    (out / MODEL_INFO).write_text(json.dumps(model_info(loaded), indent=2) + "\n")


def export_onnx(
    model: str | ModelSpec | LoadedModel,
    out_dir: str | Path,
    *,
    task: str | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    validate: bool = True,
) -> ExportResult:
    """Export ``model`` to ``out_dir/model.onnx`` and validate it against PyTorch.

    Args:
        model: a ``--model`` string, a ModelSpec, or an already loaded model.
        out_dir: the directory to create (must not exist unless ``overwrite``).
        task: override the task inferred from the architecture.
        opset: ONNX opset (21 by default, which the QDQ quantizers need).
        overwrite: replace an existing ``out_dir`` once the new export is complete.
        validate: compare to PyTorch; a failed comparison raises ValidationError and writes nothing.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model if isinstance(model, ModelSpec) else ModelSpec(model, task)
    )
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        _run_optimum(loaded, tmp, opset)
        save_side_files(loaded, tmp)
        report = validate_export(loaded, tmp / "model.onnx") if validate else ValidationReport.skipped(loaded.task)
        report.write(tmp / "validation.json")
        if report.skipped_reason is None and not report.passed:
            raise ValidationError(
                f"exported ONNX disagrees with PyTorch: {report.summary()}",
                hint="set EDGEQ_DEBUG=1 and report the model; the export was not written",
            )
    return ExportResult(out_dir=out_dir, onnx_path=out_dir / "model.onnx", report=report, loaded=loaded)


def _run_optimum(loaded: LoadedModel, out: Path, opset: int) -> None:
    import warnings

    from optimum.exporters.onnx import onnx_export_from_model
    from rich.console import Console

    from edgeq.converters.moe import dense_moe  # MoE blocks as static-shape graphs TensorRT builds; else a no-op

    with Console(stderr=True).status(f"exporting {loaded.name} to ONNX (opset {opset}) …"), warnings.catch_warnings(), \
            dense_moe(loaded.model):
        warnings.simplefilter("ignore")
        try:
            onnx_export_from_model(
                loaded.model, out, opset=opset, task=_OPTIMUM_TASK[loaded.task], do_validation=False,
            )
        except Exception as exc:  # optimum raises many types; all are an export failure to the user
            os_err = _os_error_in_chain(exc)
            if os_err is not None:  # disk full / not writable: let atomic_output_dir map and clean up
                raise os_err from exc
            raise ExportError(f"ONNX export of {loaded.name} failed: {type(exc).__name__}: {exc}") from exc
    # optimum writes its own copies of tokenizer/config files only sometimes; ours are written after.
    onnx_files = sorted(p.name for p in out.glob("*.onnx"))
    if onnx_files != ["model.onnx"]:
        raise ExportError(f"unexpected exporter output {onnx_files}; expected a single model.onnx")


def _os_error_in_chain(exc: BaseException) -> OSError | None:
    """The OSError with an errno behind a wrapped exporter error (torch.onnx wraps write failures)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None
