from __future__ import annotations

from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    name = "knowledge"
    verbose_name = "Knowledge"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django.core import checks
        from django.core.signals import setting_changed

        from knowledge import tasks  # noqa: F401  (registers the Celery tasks, which services send by name)
        from knowledge.checks import check_migration_history
        from knowledge.search.checks import check_search_store
        from knowledge.services import audit, engine_config, engines

        # the engines' settings are checked once, at start: a bad value stops the process before it serves
        engine_config.read_all()
        # a changed engine setting (override_settings in tests) gives new engines
        setting_changed.connect(engines.on_setting_changed, dispatch_uid="knowledge-engines-reset")

        # sign-ins enter the audit log however they happen (portal, admin, another backend)
        user_logged_in.connect(audit.on_user_logged_in, dispatch_uid="knowledge-audit-sign-in")
        user_login_failed.connect(audit.on_user_login_failed, dispatch_uid="knowledge-audit-sign-in-failed")

        # with the database tag: run by `migrate` and `check --database default`, never at import
        checks.register(check_search_store, checks.Tags.database)
        checks.register(check_migration_history, checks.Tags.database)
