"""POST /webhooks/stripe (webhook function): provider events, no merchant auth."""

from __future__ import annotations

from payments import services
from payments.config import get_settings
from payments.http import ApiRequest, JsonResponse, Router, respond
from payments.logic import webhooks

router = Router()


@router.route("POST", "/webhooks/stripe")
def stripe_webhook(request: ApiRequest) -> JsonResponse:
    settings = get_settings()
    event = webhooks.verify(
        request.body,
        request.header("stripe-signature"),
        settings.stripe_webhook_secrets,
        settings.webhook_tolerance_seconds,
    )
    result = webhooks.handle(
        event, events=services.webhook_events(), reconciler=services.reconciler()
    )
    return respond(200, {"received": True, "result": result})
