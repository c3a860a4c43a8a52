"""The HTTP edge: everything between the client's socket and the upstream's.

First on the data path. ``front`` reads every connection first: plain API calls run on
its lean lane, anything else goes to aiohttp's connection handler. ``app.create_app``
wires the application and its error middleware; ``forward.proxy_handler`` takes a
request through ``admission`` (what is it, per ``routes``; who is it and may they touch
what it names, per ``auth``; may it spend?), ``upstream`` (over ``client``, the
keep-alive HTTP/1.1 client) and back through its relays (tap the usage; ``owned`` owns
what a response creates), and leaves a record with ``metering.recorder``; ``batches`` is
what they call for the Batch API (owners, results).
``metrics`` is the per-app Prometheus registry, ``typedefs`` every app key,
``keys`` the pure key hashing that ``storage`` shares. ``run`` serves the app until a
signal (``worker`` is the entry point of each process of ``serve --workers N``).

Nothing is imported here: ``storage`` imports ``server.keys``, and the server's
modules import ``storage``, so an eager ``create_app`` here would be a cycle.
"""
