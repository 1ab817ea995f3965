"""The merchant API contract (`openapi.yaml` at the repository root) as the local stack
serves it: `GET /openapi.json`, with the stack's own address as the first server.

The route belongs to the local stack, not to the merchant API: it is not in
`template.yaml`, needs no signature, and is answered before route matching.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

# The WSGI types of local.aws, spelled out: importing it would load moto (seconds) for
# every user of this module.
Environ = dict[str, Any]
StartResponse = Callable[..., Any]

OPENAPI_PATH = "/openapi.json"
DOCUMENT = Path(__file__).resolve().parents[1] / "openapi.yaml"


@lru_cache(maxsize=1)
def _load(path: Path, mtime_ns: int) -> dict[str, Any]:
    """Parsed once per file version, so an edited openapi.yaml shows up without a restart."""
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def load_document(path: Path = DOCUMENT) -> dict[str, Any]:
    return _load(path, path.stat().st_mtime_ns)


def served_document(origin: str, path: Path = DOCUMENT) -> dict[str, Any]:
    """The document with `origin` (e.g. http://127.0.0.1:3000) as its first server."""
    document = load_document(path)
    servers = [s for s in document.get("servers", []) if s.get("url") != origin]
    return {**document, "servers": [{"url": origin, "description": "This stack"}, *servers]}


def serve_openapi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """WSGI answer to GET /openapi.json."""
    host = environ.get("HTTP_HOST") or f"127.0.0.1:{environ.get('SERVER_PORT', '')}"
    data = json.dumps(served_document(f"http://{host}"), indent=2).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-cache"),
        ],
    )
    return [data]
