"""The HTTP edge: everything between the client's socket and the upstream's.

``app.create_app`` wires the application; a request passes ``routes`` (what is
it?), ``auth`` (who is it, may they touch this interaction?), then ``forward``
(relay the bytes, tap the usage) and leaves a record with ``metering.recorder``.
``metrics`` is the per-app Prometheus registry, ``typedefs`` every app key.
"""
