"""The ``gemini-meter`` command: serve, keys, usage reports, prices, the emulator, the demo."""
