"""The device runtime: ``Runtime.open(store, model)`` then ``generate`` / ``embed`` / ``infer``.

The runtime serves the store's active version through the best backend on this machine and keeps
serving when that version goes bad: the monitor (``edgeq.sdk.health.monitor``) runs canaries against the
unquantized reference; on a breach the runtime marks the version bad, loads the previous usable one,
and swaps it in atomically for new requests while requests already running finish on the old one.
No usable previous version → keep serving the current one and report ``degraded``.

    with Runtime.open("/var/lib/edgeq", "smollm2-135m") as rt:
        for piece in rt.stream([{"role": "user", "content": "Hi"}]):
            print(piece, end="")
        result = rt.generate("The capital of France is", max_new_tokens=8)   # a GenerationResult

The request API (``generate``, ``stream``, their asyncio forms, and its return contract) is in
``edgeq.sdk.runtime.api``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import (
    BundleError,
    ConfigError,
    DegradedError,
    EdgeqError,
    NoBackendError,
    NotInstalledError,
    RuntimeErrorBase,
)
from edgeq.sdk.runtime.backends import BackendOptions
from edgeq.sdk.health.canary import drift, run_canary
from edgeq.sdk.runtime.api import GenerateAPI
from edgeq.sdk.runtime.context import ContextLimits, engine_limits
from edgeq.sdk.runtime.status import RuntimeStatus
from edgeq.sdk.bundle.health import Verdict
from edgeq.sdk.runtime.loader import Handle, load_version
from edgeq.sdk.health.metrics import RuntimeMetrics
from edgeq.sdk.bundle.model_info import FEATURE_EXTRACTION, TEXT_GENERATION
from edgeq.sdk.health.monitor import Monitor, MonitorConfig
from edgeq.sdk.bundle.graph_io import pool
from edgeq.sdk.store.versions import BundleDirCatalog, StoreCatalog, VersionCatalog, now_iso

log = logging.getLogger(__name__)
EventCallback = Callable[[dict[str, Any]], None]
#: What refuses a version at load time (it is marked bad and the previous one is tried).
_LOAD_ERRORS = (BundleError, NoBackendError)


class Runtime(GenerateAPI):
    """Serves one model. Thread-safe: call ``generate``/``embed``/``infer`` from many threads (``generate``,
    ``stream`` and their asyncio forms come from GenerateAPI)."""

    def __init__(self, catalog: VersionCatalog, *, backend: BackendOptions | None = None,
                 monitor: MonitorConfig | None = None, on_event: EventCallback | None = None,
                 metrics_port: int | None = None, metrics_host: str = "127.0.0.1") -> None:
        self.catalog = catalog
        self.model = catalog.model
        self.options = backend or BackendOptions()
        self.monitor_config = monitor or MonitorConfig()
        self._on_event = on_event
        self._lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self.metrics = RuntimeMetrics(self.model)
        self.monitor = Monitor(self.monitor_config, self.model, self._canary, self.metrics.nonfinite)
        self.degraded: str | None = None
        self.fallbacks = 0
        self.last_verdict: Verdict | None = None
        self._closed = False
        self._current: Handle = self._load_first()
        self._bind(self._current)
        self.metrics_host = metrics_host
        self.metrics_port = self.metrics.serve(metrics_port, metrics_host) if metrics_port is not None else None
        self.monitor.start()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def open(cls, store_dir: str | os.PathLike[str], model_name: str | None = None, *,
             trusted_keys: Sequence[Any] | None = None,
             backend: BackendOptions | None = None, monitor: MonitorConfig | None = None,
             on_event: EventCallback | None = None, metrics_port: int | None = None,
             metrics_host: str = "127.0.0.1") -> Runtime:
        """Open ``model_name`` from the store at ``store_dir`` (or serve a bundle directory in place).

        Args:
            store_dir: a device store root, or a bundle directory for development: its files are hash-checked
                against its manifest but its signature is not (install it into a store for that), and no
                fallback is possible.
            model_name: the model to serve (optional for a bundle directory).
            trusted_keys: publisher keys added to the store's trust set (persisted, as `edgeq install --trust`).
            backend: backend choice and threads (default: best available, library default threads).
            monitor: canary schedule and threshold overrides (default: the bundle's thresholds).
            on_event: called with each health event (fallback, refused, degraded, breach).
            metrics_port: serve Prometheus metrics on metrics_host:port (0 = any free port).
            metrics_host: the address the metrics server binds (loopback unless told otherwise).
        """
        root = Path(store_dir)
        if (root / "manifest.json").is_file():
            if trusted_keys is not None:
                raise ConfigError("trusted_keys apply to a device store, not a bundle directory",
                                  hint="install the bundle (`edgeq install`) to have its signature checked")
            catalog: VersionCatalog = BundleDirCatalog(root)
            if model_name is not None and model_name != catalog.model:
                raise ConfigError(f"bundle {root} holds {catalog.model!r}, not {model_name!r}")
        else:
            if model_name is None:
                raise ConfigError("model_name is required when opening a store")
            from edgeq.sdk.store.store import CONFIG_NAME, Store

            # Store() creates a store where there is none; serving must not (a typo, or any directory)
            if not (root / CONFIG_NAME).is_file():
                raise NotInstalledError(f"no device store at {root}", hint="check --store / EDGEQ_STORE; "
                                        "`edgeq install` creates a store")

            catalog = StoreCatalog(Store(root, trusted_keys=trusted_keys), model_name)
        return cls(catalog, backend=backend, monitor=monitor, on_event=on_event, metrics_port=metrics_port,
                   metrics_host=metrics_host)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the monitor and metrics server and release the backend (waits for running requests)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.monitor.stop()
        self.metrics.close()
        with self._switch_lock:  # a fallback in progress finishes (and sees _closed) before this
            with self._lock:
                h = self._current
                h.retired = True
                idle = h.inflight == 0
        if idle:
            h.close()

    def _load(self, files: Any) -> Handle:
        def skipped(name: str, why: str) -> None:
            log.info("%s v%s: backend %s skipped: %s", self.model, files.version, name, why)

        return load_version(files, self.options, self.monitor_config.thresholds, on_skip=skipped)

    def _load_first(self) -> Handle:
        """The active version, or — when it is refused (hash, no backend) — the newest usable previous one."""
        files = self.catalog.active()
        tried: set[int] = set()
        while True:
            tried.add(files.version)
            try:
                return self._load(files)
            except _LOAD_ERRORS as exc:
                self._event("refused", version=files.version, reason=exc.message)
                self._mark_bad(files.version, f"refused at load: {exc.message}")
                prev = self.catalog.previous_usable(exclude=tried)
                if prev is None:
                    raise DegradedError(f"no usable version of {self.model}: v{files.version} refused ({exc.message})",
                                        hint="install a good bundle; `edgeq status` shows the events") from exc
                try:
                    self._activate(prev.version, "fallback_on_load")
                except (EdgeqError, OSError) as act_exc:  # serve it anyway: its files are verified at load
                    log.error("could not record v%s as active in the store: %s", prev.version, act_exc)
                self._event("fallback", reason="refused at load", **{"from": files.version, "to": prev.version})
                self.fallbacks += 1
                self.metrics.fallbacks.inc()
                files = prev

    def _bind(self, h: Handle) -> None:
        """Point the monitor and metrics at the version now serving."""
        self.metrics.active_version.set(h.version)
        spec = h.spec
        key = "entropy" if h.info.task == TEXT_GENERATION else "norm"
        shift = spec.thresholds.online_shift if spec else 0.5
        self.monitor.reset(key, spec.online_baseline if spec else {}, shift)

    # -- handles: in-flight accounting and the atomic switch ----------------------------------------
    def _acquire(self) -> Handle:
        with self._lock:
            if self._closed:
                raise RuntimeErrorBase(f"the runtime of {self.model} is closed")
            h = self._current
            h.inflight += 1
        return h

    def _release(self, h: Handle) -> None:
        with self._lock:
            h.inflight -= 1
            close = h.retired and h.inflight == 0
        if close:
            h.close()

    def _swap(self, new: Handle) -> Handle:
        with self._lock:
            old, self._current = self._current, new
            old.retired = True
            close = old.inflight == 0
        if close:
            old.close()
        self._bind(new)
        return old

    @property
    def version(self) -> int:
        """The version serving new requests."""
        return self._current.version

    @property
    def requests_served(self) -> int:
        """Requests completed so far (every kind)."""
        return sum(log.n + len(log.pending) for log in self.metrics.latency.values())

    @property
    def backend_name(self) -> str:
        return self._current.backend.description

    @property
    def task(self) -> str:
        return self._current.info.task

    @property
    def tokenizer(self) -> Any:
        """The serving version's DeviceTokenizer (None for a bundle without one)."""
        return self._current.tokenizer

    @property
    def context(self) -> ContextLimits:
        """What one request may use on the serving engine (context, prefill and batch maxima)."""
        return self._limits(self._current)

    @staticmethod
    def _limits(h: Handle) -> ContextLimits:
        engine = type(h.backend).match(h.files)
        return engine_limits(h.info, h.files.manifest, engine.flavour if engine is not None else "onnx")

    # -- events --------------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"event": kind, "at": now_iso(), "model": self.model, **fields, "requests_served": self.requests_served}
        try:
            self.catalog.record_event(ev)
        except (OSError, EdgeqError) as exc:  # persistence failing must not stop serving
            log.error("could not persist health event %s: %s", kind, exc)
        log.warning("%s: %s", self.model, {k: v for k, v in ev.items() if k not in ("model",)})
        if self._on_event is not None:
            try:
                self._on_event(dict(ev))
            except Exception:  # an app callback must not break the monitor
                log.exception("on_event callback raised")
        return ev

    def events(self) -> list[dict[str, Any]]:
        return self.catalog.events()

    def _mark_bad(self, version: int, reason: str) -> None:
        try:
            self.catalog.mark_bad(version, reason)
        except (OSError, EdgeqError) as exc:
            log.error("could not mark %s v%s bad: %s", self.model, version, exc)

    def _activate(self, version: int, reason: str) -> None:
        self.catalog.activate(version, reason=reason)

    # -- the canary and the fallback ------------------------------------------------------------------
    def check_health(self, reason: str = "manual") -> Verdict | None:
        """Run one canary on the serving version now (in the calling thread) and act on a breach."""
        return self._canary(reason)

    def _canary(self, reason: str) -> Verdict | None:
        if self._closed:  # a scheduled check racing close(): nothing to check any more
            return None
        h = self._acquire()
        try:
            if h.spec is None or not h.spec.arrays:
                return None
            names = h.output_names

            def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                return dict(zip(names, h.backend.infer(feeds)))

            try:
                res = run_canary(run, h.spec.arrays, h.backend.input_dtypes, h.info)
                d = None if h.fingerprint is None or res.fingerprint is None else drift(res.fingerprint, h.fingerprint)
                verdict = h.spec.judge(res.scores, finite=res.finite, drift=d)
                if verdict.ok and h.fingerprint is None:
                    h.fingerprint = res.fingerprint  # this version's outputs on this device, once healthy
            except Exception as exc:  # a canary that cannot run is a failed canary
                verdict = Verdict(ok=False, scores={}, limits=h.spec.limits(),
                                  breaches=(f"canary raised {type(exc).__name__}: {exc}",))
        finally:
            self._release(h)
        self.last_verdict = verdict
        self.metrics.canary_scores(verdict.scores)
        (self.metrics.canary_ok if verdict.ok else self.metrics.canary_failed).inc()
        if not verdict.ok:
            self._on_breach(h, verdict, reason)
        return verdict

    def _on_breach(self, bad: Handle, verdict: Verdict, trigger: str) -> None:
        with self._switch_lock:
            if self._current is not bad or self._closed:
                return  # already switched away (or shutting down)
            if self.degraded:
                return  # reported once; keep serving
            self._event("breach", version=bad.version, trigger=trigger, breaches=list(verdict.breaches),
                        scores=verdict.scores, limits=verdict.limits, canary=self.monitor.canaries)
            self._mark_bad(bad.version, "; ".join(verdict.breaches))
            tried = {bad.version}
            while (prev := self._previous(tried)) is not None:
                tried.add(prev.version)
                try:
                    new = self._load(prev)
                except _LOAD_ERRORS as exc:
                    self._event("refused", version=prev.version, reason=exc.message)
                    self._mark_bad(prev.version, f"refused at fallback: {exc.message}")
                    continue
                try:
                    self._activate(prev.version, "health_fallback")
                except (EdgeqError, OSError) as exc:  # store locked, disk full, a changed file: not this one
                    new.close()
                    self._event("refused", version=prev.version, reason=str(exc))
                    continue
                if self._closed:  # close() ran while the fallback was loading: nothing left to serve
                    new.close()
                    return
                self._swap(new)
                self.fallbacks += 1
                self.metrics.fallbacks.inc()
                self._event("fallback", reason="; ".join(verdict.breaches), trigger=trigger,
                            **{"from": bad.version, "to": prev.version})
                return
            self.degraded = f"v{bad.version} failed its health check and no previous version is usable"
            self.metrics.degraded.set(1)
            self._event("degraded", version=bad.version, reason=self.degraded)

    def _previous(self, tried: set[int]) -> Any:
        try:
            return self.catalog.previous_usable(exclude=tried)
        except (OSError, EdgeqError) as exc:
            log.error("could not list previous versions: %s", exc)
            return None

    # -- serving ----------------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (input name → array); returns output name → array."""
        h = self._acquire()
        t0 = time.perf_counter()
        try:
            out = h.backend.infer(feeds)
        except Exception:
            self.metrics.errors["infer"].inc()
            raise
        finally:
            self._release(h)
        dt = time.perf_counter() - t0
        self.metrics.latency["infer"].add(dt)
        mon = self.monitor
        mon.on_request(dt)
        if mon.want_stats():
            first = out[0]
            # one float64 pass, no temporaries: NaN/Inf propagate into the sum; float32 cannot overflow it
            mon.on_finite(first.dtype.kind != "f" or bool(np.isfinite(first.sum(dtype=np.float64))))
        return dict(zip(h.output_names, out))

    def embed(self, texts: str | Sequence[str], *, normalize: bool | None = None,
              max_length: int = 512) -> np.ndarray:
        """Sentence embeddings (batch, dim) of ``texts``, pooled as the model's config says.

        ``normalize`` defaults to the model's setting (L2-normalised for sentence-transformers models).
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if not batch:
            raise ConfigError("embed() needs at least one text")
        h = self._acquire()
        t0 = time.perf_counter()
        try:
            if h.info.task != FEATURE_EXTRACTION or h.tokenizer is None:
                raise ConfigError(f"{self.model} is a {h.info.task} model; embed() needs a feature-extraction bundle")
            encs = h.tokenizer.encode_pair_batch(batch, max_length)
            n = max(len(e.ids) for e in encs)
            ids = np.zeros((len(batch), n), np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for r, e in enumerate(encs):
                ids[r, : len(e.ids)], mask[r, : len(e.ids)], types[r, : len(e.ids)] = e.ids, 1, e.type_ids
            all_feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out = h.backend.infer({k: all_feeds[k] for k in h.backend.input_names})
        except Exception:
            self.metrics.errors["embed"].inc()
            raise
        finally:
            self._release(h)
        hidden = out[h.output_names.index("last_hidden_state")] if "last_hidden_state" in h.output_names else out[0]
        raw = pool(hidden, mask, h.info.pooling, normalize=False)
        dt = time.perf_counter() - t0
        self.metrics.latency["embed"].add(dt)
        mon = self.monitor
        mon.on_request(dt)
        norms = np.linalg.norm(raw, axis=-1)
        if mon.want_stats():
            finite = bool(np.isfinite(norms).all())
            mon.on_finite(finite)
            if finite:
                mon.on_online(norms)
        do_norm = h.info.normalize if normalize is None else normalize
        emb = raw / np.maximum(norms[:, None], 1e-12) if do_norm else raw
        return emb[0] if single else emb

    # -- status ------------------------------------------------------------------------------------------
    def status(self) -> RuntimeStatus:
        """What is serving and how healthy it is (``.to_dict()`` for JSON; `edgeq status` shows the store's)."""
        h = self._current
        return RuntimeStatus(
            model=self.model, version=h.version, backend=h.backend.description, task=h.info.task,
            degraded=self.degraded, fallbacks=self.fallbacks, canaries=self.monitor.canaries,
            last_canary=self.last_verdict, health_data=h.spec is not None,
            nonfinite_outputs=self.monitor.nonfinite, latency=self.monitor.latency_percentiles(),
            online=self.monitor.online_summary(), context=self._limits(h))
