"""Where records end up: the SQL schema, its queries and the batching writer.

Last on the data path: ``metering.recorder`` hands each priced record to
``writer.UsageWriter.submit``, which queues it and returns; the writer's own
task writes batches of rows. The intended path puts the durable ``journal``
between the two (a record is appended and fsync'd before the writer takes it).

``schema`` holds the SQLAlchemy models and the engine factory; ``writes`` turns
records into rows, ``bulk`` writes the writer's batches straight into the driver,
``accounts`` resolves users, teams, keys and owners,
``reports`` reads totals back; ``migrate`` runs Alembic from code.
"""
