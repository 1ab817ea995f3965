"""`python -m local.invoke [--no-seed] <function> <event file>` (`make invoke FN= EVENT=`).

Runs one function in-process on one event against a fresh AWS emulator and Stripe
simulator, like `sam local invoke` without Docker. <function> is the code directory
(create_payment) or the logical id (CreatePaymentFunction). First it seeds what the event
names (local/seed.py: the payment of GET payment/order and refund events, the order of
MarkOrderPaid/CancelOrder) unless --no-seed. Function output (logs, EMF) and seeding
notes go to stderr; only the result JSON goes to stdout (`make invoke ... | jq` works).
Exit 0 on success, 1 when the function raised, 2 on bad usage (unknown function, missing
or malformed event file) or when seeding failed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from local.aws import start_emulator
from local.seed import SeedError, seed
from local.stack import function_env, start_stripe_sim
from local.template import load_template

STALE_AFTER_S = 300  # the gateway rejects timestamps further than this from now


def _resigner() -> Callable[..., dict[str, Any]] | None:
    """events/sign.py's resign_event, if that file exists (it is not a package)."""
    path = Path("events/sign.py")
    spec = importlib.util.spec_from_file_location("local_events_sign", path)
    if not path.exists() or spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[..., dict[str, Any]] | None = getattr(module, "resign_event", None)
    return fn


def refresh_signature(event: dict[str, Any], key: str, secret: str) -> dict[str, Any]:
    """Re-sign an API event for the demo merchant when its x-timestamp is stale."""
    headers = event.get("headers") if isinstance(event.get("headers"), dict) else None
    if not headers or headers.get("x-api-key") != key:
        return event
    try:
        stale = abs(time.time() - int(headers.get("x-timestamp", "0"))) > STALE_AFTER_S
    except ValueError:
        stale = True
    resign = _resigner() if stale else None
    return resign(event, secret) if resign else event


def refresh_webhook_signature(event: dict[str, Any], secret: str) -> dict[str, Any]:
    """Re-sign a provider webhook event (its signature expires after 300 s) as Stripe would."""
    headers = event.get("headers") if isinstance(event.get("headers"), dict) else None
    if not headers or "stripe-signature" not in headers or not isinstance(event.get("body"), str):
        return event
    import hashlib
    import hmac

    timestamp = int(time.time())
    signed = f"{timestamp}.{event['body']}".encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return {**event, "headers": {**headers, "stripe-signature": f"t={timestamp},v1={digest}"}}


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def load_event(path: str) -> dict[str, Any]:
    """The event JSON object; ValueError with a one-line reason otherwise."""
    try:
        event = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"event file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"event file {path} is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ValueError(f"event file {path} must hold a JSON object")
    return event


def main(argv: Sequence[str] | None = None, template_path: str = "template.yaml") -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    seeding = "--no-seed" not in args
    args = [a for a in args if a != "--no-seed"]
    if len(args) != 2:
        return _fail("usage: python -m local.invoke [--no-seed] <function> <event file>")
    name, event_path = args
    template = load_template(template_path)
    fn = template.find_function(name)
    if fn is None:
        known = ", ".join(sorted(f.code_dir.name for f in template.functions.values()))
        return _fail(f"unknown function {name!r} (known: {known})")
    try:
        event = load_event(event_path)
    except ValueError as exc:
        return _fail(str(exc))
    sim = start_stripe_sim(0)
    emulator = start_emulator(template_path, 0, function_env(getattr(sim, "url", None), os.environ))
    try:
        event = refresh_signature(event, emulator.merchant_key, emulator.merchant_secret)
        secrets = emulator.env.get("STRIPE_WEBHOOK_SECRETS") or fn.environment.get(
            "STRIPE_WEBHOOK_SECRETS", ""
        )
        if secrets:
            event = refresh_webhook_signature(event, secrets.split(",")[0])
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the result only
            if seeding:
                for line in seed(
                    event,
                    emulator.runtime.invoke,
                    key=emulator.merchant_key,
                    secret=emulator.merchant_secret,
                ):
                    print(line)
            result, error = emulator.runtime.invoke(fn.logical_id, event)
    except SeedError as exc:
        return _fail(str(exc))
    finally:
        emulator.stop()
        if sim is not None:
            sim.stop()
    print(json.dumps(error if error is not None else result, indent=2))
    return 1 if error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
