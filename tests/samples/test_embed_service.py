"""Run samples/embed_service.py for real on MiniLM and call /embed, /healthz and /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def service(minilm_bundle: Path):  # type: ignore[no-untyped-def]
    p = subprocess.Popen([sys.executable, str(ROOT / "samples" / "embed_service.py"), "--store", str(minilm_bundle),
                          "--port", "0", "--canary-every", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), (line, p.stderr.read() if p.poll() else "")
        yield line.split()[2]
    finally:
        p.terminate()
        p.wait(30)


def _post(url: str, body: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_embed_healthz_metrics(service: str) -> None:
    code, out = _post(service + "/embed", {"texts": ["A cat sits on the mat", "A kitten is sitting on a rug", "The stock market fell sharply today"]})
    assert code == 200 and out["dim"] == 384 and out["version"] == 1
    e = np.array(out["embeddings"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2]  # related sentences are closer
    for _ in range(3):
        _post(service + "/embed", {"texts": ["x"]})
    assert _post(service + "/embed", {"texts": []})[0] == 400
    assert _post(service + "/embed", {"nope": 1})[0] == 400
    with urllib.request.urlopen(service + "/healthz", timeout=30) as r:
        health = json.loads(r.read())
    assert r.status == 200 and health["status"] == "ok" and health["version"] == 1
    with urllib.request.urlopen(service + "/metrics", timeout=30) as r:
        text = r.read().decode()
    assert 'edgeq_requests_total{kind="embed",model="minilm-l6"} 4.0' in text
    assert "edgeq_canary_runs_total" in text and "edgeq_request_latency_seconds_bucket" in text
