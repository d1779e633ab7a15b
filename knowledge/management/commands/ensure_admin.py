"""Make sure the ``admin`` account exists (used by ``make run``)."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the 'admin' superuser if missing; password from DJANGO_SUPERUSER_PASSWORD or generated once."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        User = get_user_model()
        password_file = settings.VAR_DIR / "admin_password"
        password = settings.DJANGO_SUPERUSER_PASSWORD
        user = User.objects.filter(username=username).first()
        # The password is printed only on the run that generates it: one set by the operator
        # (DJANGO_SUPERUSER_PASSWORD) would otherwise land in logs (docker-compose keeps them).
        generated = False
        if password:
            source = "DJANGO_SUPERUSER_PASSWORD"
        elif password_file.exists():
            password = password_file.read_text().strip()
            source = str(password_file)
        else:
            password = secrets.token_urlsafe(12)
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
            source = str(password_file)
            generated = True

        if user is None:
            User.objects.create_superuser(username=username, email="", password=password)
            if generated:
                self.stdout.write(
                    f"Created the admin account '{username}' with password: {password}  (kept in {source})"
                )
            else:
                self.stdout.write(f"Created the admin account '{username}'; password from {source}")
        elif settings.DJANGO_SUPERUSER_PASSWORD and not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
            self.stdout.write(f"Admin account '{username}': password set from DJANGO_SUPERUSER_PASSWORD")
        elif source != "DJANGO_SUPERUSER_PASSWORD" and user.check_password(password):
            self.stdout.write(f"Admin account '{username}' exists; its password is in {source}")
        else:
            self.stdout.write(f"Admin account '{username}' exists.")
