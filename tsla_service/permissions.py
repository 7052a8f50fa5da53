"""Files the service creates (database, checkpoints, logs, broker messages, tokens) are readable by
their owner only: every service process calls `owner_only_files()` before it creates any."""

from __future__ import annotations

import os

# The umask that takes group and other permissions off new files and folders (600 / 700).
OWNER_ONLY_UMASK = 0o077


def owner_only_files() -> None:
    os.umask(OWNER_ONLY_UMASK)
