"""Risk rules (SPEC §3): deterministic, configurable, capped at 100."""

from __future__ import annotations

from collections.abc import Callable

from payments.config import Settings
from payments.records import RiskAssessment, RiskDecision
from payments.tasks import TaskPayment

REJECT_AT = 80
REVIEW_AT = 50


def assess(
    payment: TaskPayment,
    settings: Settings,
    count_recent: Callable[[str], int],
) -> RiskAssessment:
    """Score a payment. `count_recent(customer_id)` records this attempt and returns the
    attempts within the velocity window, this one included."""
    score = 0
    reasons: list[str] = []
    customer = payment.customer
    if customer is not None and customer.country in settings.risk_blocked_countries:
        score += 100
        reasons.append("blocked_country")
    if payment.amount >= settings.risk_review_amount_minor:
        score += 60
        reasons.append("high_amount")
    customer_id = customer.id if customer is not None else None
    if customer_id and count_recent(customer_id) > settings.risk_velocity_limit:
        score += 50
        reasons.append("velocity")
    score = min(score, 100)
    if score >= REJECT_AT:
        decision = RiskDecision.REJECT
    elif score >= REVIEW_AT:
        decision = RiskDecision.REVIEW
    else:
        decision = RiskDecision.APPROVE
    return RiskAssessment(decision=decision, score=score, reasons=reasons)
