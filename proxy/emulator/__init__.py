"""The local Gemini stand-in behind ``gemini-meter emulate`` and ``demo``.

It speaks the wire format of the Interactions API and generateContent as
Google's documentation transcripts and recorded responses show it, with
deterministic usage, so tests, the demo and benchmarks need no network.
"""
