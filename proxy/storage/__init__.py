"""Where records end up: the SQL schema, its queries and the batching writer.

``schema`` holds the SQLAlchemy models and the engine factory; ``writes`` turns
records into rows, ``accounts`` resolves users, teams, keys and owners,
``reports`` reads totals back; ``writer`` batches rows off the request path;
``migrate`` runs Alembic from code.
"""
