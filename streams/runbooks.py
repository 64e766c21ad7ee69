"""Where an alert's runbook is: ``ops/runbooks/<alert>.md`` in this repository.

Alerts carry the runbook as a path relative to the repository root by default, so the link
resolves in any clone or fork (and a test checks every one names a file that exists). Set
``GOVERNOR_RUNBOOK_BASE_URL`` to where your team reads them (your fork's web view, a wiki that
mirrors the folder), e.g. ``https://git.example.com/ops/governor/blob/main/ops/runbooks/``,
and the worker's alerts (SLO burn, drift) link there instead. The Prometheus rules in
ops/prometheus/rules/ carry the relative path; a deployment that wants absolute links rewrites
the ``ops/runbooks/`` prefix when it installs them (the README says how).
"""

from __future__ import annotations

import os

#: the runbooks' folder, relative to the repository root
RUNBOOK_DIR = "ops/runbooks/"
#: the setting that replaces RUNBOOK_DIR as the links' prefix
BASE_URL_ENV = "GOVERNOR_RUNBOOK_BASE_URL"


def runbook_url(alert: str, base: str | None = None) -> str:
    """The link to ``alert``'s runbook: ``base`` (else GOVERNOR_RUNBOOK_BASE_URL, else the
    relative folder) followed by ``<alert>.md``."""
    prefix = base if base is not None else os.environ.get(BASE_URL_ENV) or RUNBOOK_DIR
    return f"{prefix.rstrip('/')}/{alert}.md"
