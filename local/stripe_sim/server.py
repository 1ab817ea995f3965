"""Building and serving the simulator: make_app, serve, SimServer, the CLI."""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Mapping

from werkzeug.serving import BaseWSGIServer, make_server

from local.stripe_sim.app import DEFAULT_SEARCH_DELAY_SECONDS, StripeSimulator
from local.stripe_sim.faults import fault_from_env
from local.stripe_sim.webhooks import DEFAULT_SECRET, WebhookEndpoint


def webhook_from(
    url: str | None, secret: str | None, environ: Mapping[str, str]
) -> WebhookEndpoint | None:
    """The webhook target from arguments, else STRIPE_SIM_WEBHOOK_URL / _SECRET."""
    url = url or environ.get("STRIPE_SIM_WEBHOOK_URL") or None
    if url is None:
        return None
    secret = secret or environ.get("STRIPE_SIM_WEBHOOK_SECRET") or DEFAULT_SECRET
    # A comma-separated secret list signs with each, as Stripe does while a secret rolls.
    return WebhookEndpoint(url=url, secrets=tuple(s.strip() for s in secret.split(",") if s))


def make_app(
    api_key: str | None = None,
    *,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    webhook: WebhookEndpoint | None = None,
    search_delay_seconds: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> StripeSimulator:
    """A fresh simulator. Faults start from STRIPE_SIM_FAULT; the webhook target from the
    arguments (`webhook` for full control) or STRIPE_SIM_WEBHOOK_URL; search freshness from
    the argument or STRIPE_SIM_SEARCH_DELAY_SECONDS (default 2 s)."""
    env = os.environ if environ is None else environ
    if search_delay_seconds is None:
        raw = env.get("STRIPE_SIM_SEARCH_DELAY_SECONDS", str(DEFAULT_SEARCH_DELAY_SECONDS))
        search_delay_seconds = float(raw)
    return StripeSimulator(
        api_key=api_key,
        fault=fault_from_env(env),
        webhook=webhook or webhook_from(webhook_url, webhook_secret, env),
        search_delay_seconds=search_delay_seconds,
    )


class SimServer:
    """A simulator served over real HTTP on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: StripeSimulator, server: BaseWSGIServer) -> None:
        self.app = app
        self._server = server
        # A short poll interval: stop() (shutdown) waits up to one interval.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-sim",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop serving and stop the webhook delivery worker."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.app.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 12111,
    *,
    app: StripeSimulator | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> SimServer:
    """Start serving (port 0 = ephemeral) and return the handle. Loopback only."""
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError("the simulator only listens on the loopback interface")
    if app is None:
        sim = make_app(
            os.environ.get("STRIPE_API_KEY"), webhook_url=webhook_url, webhook_secret=webhook_secret
        )
    else:
        sim = app
        if webhook_url is not None:
            sim.configure_webhooks(webhook_from(webhook_url, webhook_secret, {}))
    return SimServer(sim, make_server("127.0.0.1", port, sim, threaded=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stripe-compatible simulator (subset)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STRIPE_SIM_PORT", "12111")))
    parser.add_argument(
        "--webhook-url",
        default=None,
        help="deliver signed events here (secret: STRIPE_SIM_WEBHOOK_SECRET)",
    )
    args = parser.parse_args(argv)
    handle = serve(port=args.port, webhook_url=args.webhook_url)
    print(f"stripe simulator listening on {handle.url}", flush=True)
    endpoint = handle.app.webhooks.endpoint
    if endpoint is not None:
        print(f"  webhooks to {endpoint.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        handle.stop()
