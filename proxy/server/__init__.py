"""The HTTP edge: everything between the client's socket and the upstream's.

First on the data path. ``app.create_app`` wires the application and its error
middleware; a request passes ``routes`` (what is it?), ``auth`` (who is it, may
they touch this interaction?), then ``forward`` (relay the bytes on the one
upstream session, tap the usage) and leaves a record with ``metering.recorder``;
``batches`` is what ``forward`` calls for the Batch API (owners, results).
``metrics`` is the per-app Prometheus registry, ``typedefs`` every app key,
``keys`` the pure key hashing that ``storage`` shares.

Nothing is imported here: ``storage`` imports ``server.keys``, and the server's
modules import ``storage``, so an eager ``create_app`` here would be a cycle.
"""
