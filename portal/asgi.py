from __future__ import annotations

import os

import django
from django.core.asgi import get_asgi_application

from knowledge.observability import startup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
django.setup(set_prefix=False)
# Metrics files and tracing, before the handler builds its middleware (tracing adds one).
startup.web_started(role="web")
application = get_asgi_application()
