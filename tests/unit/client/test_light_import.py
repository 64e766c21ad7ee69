"""The light agent client (`pip install fleet-governor`): importing it, creating a Governor and
running a first step load none of the worker's or the PII detector's packages, and a client
without presidio (the ``[pii]`` extra) says so instead of failing (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streams.cli import missing_extra
from streams.client.pii import PiiGuard, PiiUnavailable
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[3]

#: what the base install does not have, and must not import
HEAVY = ("faust", "mode", "aiokafka", "presidio_analyzer", "presidio_anonymizer", "spacy", "numpy")


def _run(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "GOVERNOR_POLICIES_DIR": str(REPO / "policies")},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


LOADED = f"""
import json, sys
from pathlib import Path
heavy = {HEAVY!r}
def loaded():
    found = [m for m, module in sys.modules.items() if module is not None]  # None: hidden
    return sorted({{m.split(".")[0] for m in found if m.split(".")[0] in heavy}})
"""


def test_importing_the_client_loads_no_worker_or_pii_package() -> None:
    result = _run(LOADED + "import streams.client\nprint(json.dumps({'loaded': loaded()}))")
    assert result["loaded"] == []


#: a Governor on an unreachable broker (events are buffered, never waited for) and its first step
FIRST_STEP = """
import streams.client
from streams.client import Governor, ToolBlocked
from streams.control import KeyRing
from streams.settings import Settings
settings = Settings.from_env(
    {}, bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", policies_dir=POLICIES,
)
gov = Governor("acme", "bot", settings=settings, public_keys=KeyRing({}), obey=False,
               policy_wait_s=0, **KWARGS)
s = gov.session("s-1")
s.llm_call(model="gpt-4o-mini", input_tokens=10, output_tokens=5,
           content=[("USER", "summarise the report for the team")])
try:
    s.tool_call(name="charge_card", args={"card": "4111 1111 1111 1111"}, result={})
    blocked = False
except ToolBlocked:
    blocked = True
stats = gov.stats()
gov.close(timeout_s=0)
print(json.dumps({"loaded": loaded(), "blocked": blocked, "unchecked": stats["pii_unchecked"]}))
"""


def test_a_first_step_without_the_pii_guard_loads_no_worker_or_pii_package() -> None:
    code = FIRST_STEP.replace("POLICIES", f"Path({str(REPO / 'policies')!r})")
    result = _run(LOADED + code.replace("**KWARGS", "pii_guard=False"))
    assert result == {"loaded": [], "blocked": False, "unchecked": 0}


def test_without_presidio_the_client_runs_unguarded_and_counts_what_it_could_not_check() -> None:
    # as in the base install: presidio cannot be imported (None in sys.modules hides it)
    hide = "sys.modules['presidio_analyzer'] = sys.modules['presidio_anonymizer'] = None\n"
    code = FIRST_STEP.replace("POLICIES", f"Path({str(REPO / 'policies')!r})")
    result = _run(LOADED + hide + code.replace("**KWARGS", ""))
    # the card is not refused here (the worker's PII stage still sees it); the text that
    # could hold PII is counted, the plain one is not
    assert result == {"loaded": [], "blocked": False, "unchecked": 1}


def test_without_presidio_an_explicit_guard_or_redaction_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streams.client.pii.presidio_installed", lambda: False)
    settings = Settings.from_env({}, policies_dir=REPO / "policies")
    with pytest.raises(PiiUnavailable, match=r"pip install 'fleet-governor\[pii\]'"):
        PiiGuard.build(settings, enabled=True, redact=False)
    with pytest.raises(PiiUnavailable, match="redact=True"):
        PiiGuard.build(settings, enabled=None, redact=True)


def test_a_text_the_prefilter_rules_out_is_not_scanned() -> None:
    code = """
    from streams.client.pii import PiiGuard
    from streams.settings import Settings
    guard = PiiGuard.build(Settings.from_env({}, policies_dir=POLICIES), None, False)
    plain = guard.found(["summarise the report for the team"])
    before = loaded()
    card = guard.found(["card 4111 1111 1111 1111"])
    print(json.dumps({"plain": plain, "before": before, "card": card, "after": loaded()}))
    """
    code = textwrap.dedent(code).replace("POLICIES", f"Path({str(REPO / 'policies')!r})")
    result = _run(LOADED + code)
    assert result["plain"] == []
    assert result["before"] == []
    assert result["card"] == ["CREDIT_CARD"]
    assert "presidio_analyzer" in result["after"]  # type: ignore[operator]


def test_a_worker_command_on_a_light_install_names_the_extra_to_install() -> None:
    worker = "pip install 'fleet-governor[worker]'"
    assert missing_extra(ModuleNotFoundError(name="faust")) == worker
    assert missing_extra(ModuleNotFoundError(name="presidio_analyzer.nlp_engine")) == (
        "pip install 'fleet-governor[pii]'"
    )
    assert missing_extra(ModuleNotFoundError(name="requests")) is None
