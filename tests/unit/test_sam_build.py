"""`sam build` succeeds: the layer and every function build for python3.12 on arm64."""

from __future__ import annotations

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
    ):
        assert (build_dir / fn / "app.py").is_file()
