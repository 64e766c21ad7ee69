"""Fixtures for the framework adapters: a Governor whose signed policy set denies a tool."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streams.client import Governor
from streams.control import SigningKey
from streams.settings import Settings
from tests.integration.client.conftest import GovernorFactory
from tests.integration.client.test_checks import REPO, publish

#: the set the adapters' tests enforce: ``drop_*`` tools are denied (kill)
DENY_DROPS = """version: 7
policies:
  - id: no-drops
    kind: tools
    deny: ["drop_*"]
    action: kill
"""


@pytest.fixture
def denying(
    topics: Settings, governor: GovernorFactory, signing_key: SigningKey, tmp_path: Path
) -> Governor:
    """A Governor with client checks on and the DENY_DROPS set from gov.policies in force."""
    folder = tmp_path / "accepted"
    folder.mkdir()
    shutil.copy(REPO / "policies" / "prices.yaml", folder / "prices.yaml")
    (folder / "governor.yaml").write_text(DENY_DROPS)
    publish(topics, signing_key, folder)
    gov = governor(checks=True, obey=False)
    assert (gov.policy_set.source, gov.policy_set.version) == ("gov.policies", 7)
    return gov
