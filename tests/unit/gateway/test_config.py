"""gateway.yaml: validated with file:line errors, keys by hash, provider keys from the env."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streams.gateway.config import MissingProviderKey, key_hash, load_gateway
from streams.policy_files import PolicyError, load_bundle

REPO = Path(__file__).resolve().parents[3]
GOOD = f"""version: 1
upstreams:
  main:
    api: openai
    base_url: "http://127.0.0.1:9/v1"
    key_env: MAIN_KEY
  claude:
    api: anthropic
    base_url: "http://127.0.0.1:9"
    key_env: ""
routes:
  - models: ["gpt-*"]
    upstream: main
  - models: ["claude-*", "gpt-*"]
    upstream: claude
keys:
  - sha256: "{key_hash("k-acme")}"
    tenant: acme
    agent: bot
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_keys_are_matched_by_hash_and_routes_by_model_and_api(tmp_path: Path) -> None:
    config = load_gateway(write(tmp_path, GOOD), {"MAIN_KEY": "sk-1"})
    assert config.identify("k-acme") is not None
    assert config.identify("k-acme ") is None
    assert config.identify(None) is None
    assert key_hash("k-acme") not in GOOD.replace(key_hash("k-acme"), "")  # only the hash
    main = config.route("gpt-4o", "openai")
    assert main is not None
    assert (main.name, main.key) == ("main", "sk-1")
    claude = config.route("gpt-4o", "anthropic")  # the first route that speaks the API
    assert claude is not None
    assert claude.name == "claude"
    assert config.route("llama", "openai") is None


def test_a_provider_key_missing_from_the_environment_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingProviderKey, match=r"\$MAIN_KEY.*export MAIN_KEY"):
        load_gateway(write(tmp_path, GOOD), {})


@pytest.mark.parametrize(
    ("change", "line", "says"),
    [
        (("upstream: claude", "upstream: nobody"), 1, "unknown upstream 'nobody'"),
        (('"http://127.0.0.1:9/v1"', '"http://127.0.0.1:9/v1/"'), 3, "trailing"),
        (("api: openai", "api: gemini"), 4, "upstreams.main.api"),
        (("tenant: acme", "tenant: acme\n    secret: x"), 19, "keys.0.secret"),
        ((f'"{key_hash("k-acme")}"', '"k-acme"'), 17, "keys.0.sha256"),
    ],
)
def test_mistakes_name_file_line_and_field(
    tmp_path: Path, change: tuple[str, str], line: int, says: str
) -> None:
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(PolicyError) as refused:
        load_gateway(path, {"MAIN_KEY": "x"})
    assert refused.value.problems[0].startswith(f"{path}:{line}: ")
    assert says in refused.value.problems[0]


def test_policy_check_validates_gateway_yaml_with_the_bundle(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(REPO / "policies", folder)
    bundle = load_bundle(folder)
    assert "gateway.yaml" in bundle.files
    assert all(p.id for p in bundle.policies.policies)  # not taken for a policy file
    (folder / "gateway.yaml").write_text(GOOD.replace("routes:", "roads:"))
    with pytest.raises(PolicyError) as refused:
        load_bundle(folder)
    assert any("gateway.yaml" in p and "roads" in p for p in refused.value.problems)


def test_the_shipped_gateway_yaml_is_valid() -> None:
    config = load_gateway(
        REPO / "policies" / "gateway.yaml", {"OPENAI_API_KEY": "a", "ANTHROPIC_API_KEY": "b"}
    )
    assert config.route("gpt-4o-mini", "openai") is not None
    assert config.route("claude-sonnet-4", "anthropic") is not None
