"""The clinic web app behind ``lumbardx serve``: accounts, sessions, studies, corrections,
PACS and teaching over a small REST API (docs/api.md) and a plain-JavaScript page.

>>> from lumbardx.app import AppSettings, create_app
>>> app = create_app(AppSettings(data_dir=Path("/srv/lumbardx")))  # doctest: +SKIP
"""

from lumbardx.app.audit import AuditLog, verify_audit
from lumbardx.app.server import create_app
from lumbardx.app.settings import AppSettings

__all__ = ["AppSettings", "AuditLog", "create_app", "verify_audit"]
