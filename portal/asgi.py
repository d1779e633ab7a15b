from __future__ import annotations

import os

import django
from django.core.asgi import get_asgi_application

from knowledge.observability import startup
from knowledge.services import warmup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
django.setup(set_prefix=False)
# Metrics files and tracing, before the handler builds its middleware (tracing adds one).
startup.web_started(role="web")
application = get_asgi_application()
# Models loaded and each answer path run once in the background; /readyz says 503 until done.
warmup.start_in_background()
