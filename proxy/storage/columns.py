"""The names a usage report is made of: its groupings and its measures.

Plain constants, apart from ``reports`` so the CLI can build its parser (choices, column
lists) without loading the database layer.
"""

from __future__ import annotations

__all__ = ["COST_COLUMNS", "GROUP_KEYS", "LABEL_PREFIX", "TOKEN_COLUMNS"]

GROUP_KEYS: tuple[str, ...] = ("user", "team", "key", "model", "endpoint", "day")
# ``label:NAME`` groups by the value of the request label NAME (None when absent).
LABEL_PREFIX = "label:"

# The measures of a usage report row, besides ``requests`` and ``unpriced_requests``.
TOKEN_COLUMNS = (
    "input_tokens",
    "cached_tokens",
    "intermediate_tokens",
    "output_tokens",
    "thinking_tokens",
    "total_tokens",
)
COST_COLUMNS = (
    "cost_usd",
    "cost_input_usd",
    "cost_cached_usd",
    "cost_intermediate_usd",
    "cost_output_usd",
    "cost_thinking_usd",
    "cost_grounding_usd",
)
