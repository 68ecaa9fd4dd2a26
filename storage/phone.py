"""Phone numbers as wafleet stores them: E.164 digits, country code first, no '+'.

WhatsApp identifies phone-number users by these digits (`<digits>@s.whatsapp.net`, SPEC §5.1).
Input may carry a leading '+' and spaces, dashes, dots or parentheses as separators; anything
else, a leading 0 (no country code), or a length outside 8..15 digits is refused with a precise
`InvalidValue`.
"""

from __future__ import annotations

import re

from storage.errors import InvalidValue

MIN_DIGITS = 8  # shortest E.164 numbers in use (e.g. some Pacific islands) plus country code
MAX_DIGITS = 15  # ITU-T E.164 maximum
_SEPARATORS = re.compile(r"[\s().\-]")


def parse_phone(text: str, field: str = "phone_number") -> str:
    """Normalise `text` to E.164 digits or raise InvalidValue naming what is wrong."""
    raw = text.strip()
    body = _SEPARATORS.sub("", raw.removeprefix("+"))
    if not body:
        raise InvalidValue("phone number is empty", field=field)
    if not body.isascii() or not body.isdigit():
        raise InvalidValue(
            "phone number must contain only digits (E.164, country code first)",
            field=field,
            value=raw,
        )
    if body[0] == "0":
        raise InvalidValue(
            "phone number must start with the country code, not 0", field=field, value=raw
        )
    if not MIN_DIGITS <= len(body) <= MAX_DIGITS:
        raise InvalidValue(
            f"phone number must have {MIN_DIGITS} to {MAX_DIGITS} digits, got {len(body)}",
            field=field,
            value=raw,
        )
    return body
