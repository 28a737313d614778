"""URL converters every app's routes use: `<key:...>` for a board key, `<n:...>` for a number.

Registered by `flux.urls` before any app's URLconf is included.
"""

from django.urls import register_converter


class BoardKey:
    regex = "[A-Za-z][A-Za-z0-9]{1,9}"

    def to_python(self, value: str) -> str:
        return value.upper()

    def to_url(self, value: str) -> str:
        return value


class Number:
    """Card numbers and column ids, short enough for any integer column."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


def converters_register() -> None:
    register_converter(BoardKey, "key")
    register_converter(Number, "n")
