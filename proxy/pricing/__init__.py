"""What a usage costs: the dated price catalog and the exact-decimal cost engine.

``catalog`` loads and validates ``prices.toml`` (and a user file over it);
``price`` turns a ``Usage`` into a ``Cost``; ``reprice`` revisits stored
records after a catalog change.
"""
