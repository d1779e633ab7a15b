from __future__ import annotations

from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    name = "knowledge"
    verbose_name = "Knowledge"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from knowledge import tasks  # noqa: F401  (registers the Celery tasks, which services send by name)
        from knowledge.search.checks import check_search_store

        # with the database tag: run by `migrate` and `check --database default`, never at import
        checks.register(check_search_store, checks.Tags.database)
