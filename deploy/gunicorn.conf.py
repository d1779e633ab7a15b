"""gunicorn's settings for the portal: ``gunicorn -c deploy/gunicorn.conf.py portal.wsgi:application``.

gunicorn's own lines (start-up, workers, one access line per request) are written as the portal's
are (``LOGGING``): one JSON object a line with ``LOG_FORMAT=json``, readable lines with ``plain``.
Bind address, workers, threads and timeout stay on the command line.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.conf import settings

from knowledge.observability.logging import GUNICORN_ACCESS_FORMAT, gunicorn_logconfig

logconfig_dict = gunicorn_logconfig(settings.LOGGING)
access_log_format = GUNICORN_ACCESS_FORMAT
