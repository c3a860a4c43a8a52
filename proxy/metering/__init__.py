"""From response bytes to a priced record: where every token category is computed.

``parsers`` reads usage out of whole responses of either API, ``streams``
out of SSE and JSON-array streams as they pass, ``batches`` out of a Batch API
job's inline results and responses file; all yield the shapes in ``records``.
``recorder`` is the one hand-off point: it prices a finished record, counts it
and queues it for storage, never awaiting I/O.
"""
