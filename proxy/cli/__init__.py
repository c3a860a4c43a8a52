"""The ``gemini-meter`` command: beside the data path, never on it.

The operator's side of the proxy: ``serve`` starts the server package, the other
commands read and write the same database (``storage``) and catalog (``pricing``)
the server uses. ``main`` assembles the parser and runs one command; each command
group is a module (``serve``, ``db``, ``keys``, ``usage``, ``prices``, ``emulate``
with the ``demo``), ``common`` holds what they share and ``format`` renders rows.
Heavy imports (the server, the emulator, repricing) wait until their command runs.
"""
