from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class FastTasksConfig(AppConfig):
    name = "fasttasks"
    label = "fasttasks"
    verbose_name = _("Fast tasks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the database-tagged checks)
