"""ISO 4217 currencies and exact minor-unit arithmetic.

Stored amounts are always integers in the currency's minor unit. Conversion to major
units exists only for metrics and display, never for storage.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from payments.errors import InvalidAmount, UnsupportedCurrency

# ISO 4217 minor-unit exponents of the supported currencies.
CURRENCY_EXPONENTS: Final[dict[str, int]] = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "CNY": 2,
    "HKD": 2,
    "SGD": 2,
    "INR": 2,
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
    "KWD": 3,
    "BHD": 3,
    "JOD": 3,
    "OMR": 3,
}

MIN_AMOUNT: Final = 1
MAX_AMOUNT: Final = 100_000_000_000


def exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnsupportedCurrency(f"Currency {currency!r} is not supported.") from None


def to_major(amount_minor: int, currency: str) -> Decimal:
    """Exact major-unit value: 1999 USD -> Decimal('19.99'), 1000 JPY -> Decimal('1000')."""
    return Decimal(amount_minor).scaleb(-exponent(currency))


def to_minor(amount_major: Decimal | str, currency: str) -> int:
    """Inverse of `to_major`; refuses values with more precision than the currency has."""
    scaled = Decimal(amount_major).scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(f"{amount_major} has more decimals than {currency} allows.")
    return int(scaled)


def format_amount(amount_minor: int, currency: str) -> str:
    return f"{to_major(amount_minor, currency):f} {currency}"


def validate_amount(value: object, *, minimum: int = MIN_AMOUNT, maximum: int = MAX_AMOUNT) -> int:
    """An amount must be a JSON integer (not bool, float or string) within range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount("amount must be an integer number of minor units.")
    if not minimum <= value <= maximum:
        raise InvalidAmount(f"amount must be between {minimum} and {maximum} minor units.")
    return value
