"""The ``postgres`` search store: pgvector and BM25 term statistics in the portal's own PostgreSQL database.

It lives in ``knowledge/`` (not in ``ingestion/``) because it writes through Django's database connection, in
the caller's transaction: a document's chunks, vectors and lexical entries commit together with its status.
``schema`` holds the tables and the SQL that keeps the term statistics, ``postgres`` the store itself and
``checks`` what refuses a configuration that cannot hold it.
"""
