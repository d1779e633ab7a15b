"""Observability: Prometheus metrics, JSON logs with request and trace ids, OpenTelemetry traces.

The domain calls :mod:`knowledge.observability.instrumentation` (a few decorators and one-line
hooks); the entry points (``portal/wsgi.py``, ``asgi.py``, ``celery.py``, ``manage.py``) call
:mod:`knowledge.observability.startup`. Importing this package loads nothing heavy.
"""
