"""Card order within a column.

A card's rank is a fractional-index string (base 62): a move computes a key between its new
neighbours and writes only the moved card. Keys compare byte-wise, so on PostgreSQL the column
uses the "C" collation (SQLite compares bytes already). When repeated inserts into one gap make
a key long, the column is re-spread evenly (many rows, rarely).
"""

from django.db import models
from fractional_indexing import generate_key_between, generate_n_keys_between

MAX_RANK_LENGTH = 255
# Past this length a new key triggers a rebalance of its column.
REBALANCE_AT = 48


class RankField(models.CharField):
    """A CharField that sorts byte-wise on every engine."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_length", MAX_RANK_LENGTH)
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        if kwargs.get("max_length") == MAX_RANK_LENGTH:
            del kwargs["max_length"]
        return name, path, args, kwargs

    def db_parameters(self, connection):
        params = super().db_parameters(connection)
        if connection.vendor == "postgresql":
            params["collation"] = "C"
        return params


def rank_between(*, before: str | None, after: str | None) -> str:
    """A key strictly between `before` and `after` (None meaning the start or the end)."""
    return generate_key_between(before, after)


def ranks_spread(*, count: int) -> list[str]:
    """`count` short, evenly spaced, increasing keys."""
    return generate_n_keys_between(None, None, count)


def rank_needs_rebalance(rank: str) -> bool:
    return len(rank) > REBALANCE_AT
