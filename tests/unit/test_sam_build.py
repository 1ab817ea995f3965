"""`sam build` succeeds: the layer and every function build for python3.12 on arm64, every
module compiled to an unchecked-hash .pyc (Lambda's file system is read-only: without them
each cold start compiles the layer from source)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sam_build(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent  # the venv: has sam and python3.12
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "SAM_CLI_TELEMETRY": "0",
        "__SAM_CLI_APP_DIR": str(tmp_path / "samcli"),
    }
    build_dir = tmp_path / "build"
    result = subprocess.run(
        [
            str(bin_dir / "sam"),
            "build",
            "--build-dir",
            str(build_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--template-file",
            str(ROOT / "template.yaml"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    layer = build_dir / "CommonLayer" / "python"
    assert (layer / "payments" / "__init__.py").is_file()
    assert any(layer.glob("pydantic_core/*aarch64*.so")), "layer must carry arm64 wheels"
    for fn in (
        "CreatePaymentFunction",
        "RefundFunction",
        "RiskCheckFunction",
        "OrderFunction",
        "ChannelFunction",
        "WebhookFunction",
        "ReconcilerFunction",
    ):
        assert (build_dir / fn / "app.py").is_file()
        assert_unchecked_pyc(build_dir / fn / "app.py")
    for source in [*(layer / "payments").rglob("*.py"), layer / "pydantic" / "main.py"]:
        assert_unchecked_pyc(source)


def assert_unchecked_pyc(source: Path) -> None:
    """A .pyc for `source`, for this interpreter's magic, hash-based without source check."""
    cached = Path(importlib.util.cache_from_source(str(source)))
    assert cached.is_file(), f"no .pyc for {source}"
    header = cached.read_bytes()[:16]
    assert header[:4] == importlib.util.MAGIC_NUMBER, cached
    flags = int.from_bytes(header[4:8], "little")
    assert flags == 0b01, f"{cached}: flags {flags:#b} (want hash-based, unchecked)"
