from __future__ import annotations

from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "knowledge.observability"
    label = "observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from knowledge.models import UsageRecord
        from knowledge.observability import instrumentation

        # Every spend of tokens is a UsageRecord (API, async tasks, the chat pages): count them there.
        post_save.connect(instrumentation.usage_recorded, sender=UsageRecord, dispatch_uid="observability-usage-tokens")
