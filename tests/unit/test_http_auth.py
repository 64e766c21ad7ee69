"""The bearer-token check of Governor's HTTP endpoints (streams/http_auth.py), pure."""

from __future__ import annotations

import pytest

from streams.http_auth import (
    ApiTokens,
    TokenConfigError,
    bearer_token,
    check,
    is_mutating,
    parse_tokens,
)
from streams.settings import Settings

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
TOKENS = parse_tokens(f"admin:{ADMIN}, reader:{READER}")


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_the_format_is_role_colon_token_comma_separated() -> None:
    tokens = parse_tokens(f"admin:{ADMIN},reader:{READER},reader:{READER}-2")
    assert tokens.roles == ("admin", "reader")
    assert tokens.role_of(ADMIN) == "admin"
    assert tokens.role_of(READER + "-2") == "reader"
    assert tokens.role_of("nope") is None
    assert not parse_tokens("").configured
    assert not parse_tokens(" , ").configured


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (ADMIN, "entry 1 is not role:token"),
        (f"admin:{ADMIN},root:{READER}", "unknown role 'root'"),
        ("admin:short", "at least 16"),
        ("admin:", "not role:token"),
    ],
)
def test_a_bad_token_list_is_refused_without_showing_a_token(raw: str, says: str) -> None:
    with pytest.raises(TokenConfigError) as raised:
        parse_tokens(raw)
    assert says in str(raised.value)
    for secret in (ADMIN, READER, "short"):
        assert secret not in str(raised.value)


def test_settings_validate_the_tokens_at_load_and_hide_them() -> None:
    with pytest.raises(TokenConfigError, match="GOVERNOR_API_TOKENS"):
        Settings.from_env({"GOVERNOR_API_TOKENS": "boss:0123456789abcdef0123"})
    settings = Settings.from_env(
        {"GOVERNOR_API_TOKENS": f"admin:{ADMIN}", "GOVERNOR_API_TOKEN": ADMIN}
    )
    assert ADMIN not in repr(settings)
    assert ADMIN not in repr(parse_tokens(settings.api_tokens))


def test_mutating_needs_an_admin_token() -> None:
    kw = {"mutating": True, "bound_host": "0.0.0.0"}
    missing = check(None, TOKENS, **kw)  # type: ignore[arg-type]
    assert missing.status == 401
    assert missing.headers == {"WWW-Authenticate": 'Bearer realm="governor"'}
    wrong = check(bearer("not-" + ADMIN), TOKENS, **kw)  # type: ignore[arg-type]
    assert wrong.status == 401
    assert "WWW-Authenticate" in wrong.headers
    assert check(f"Basic {ADMIN}", TOKENS, **kw).status == 401  # type: ignore[arg-type]
    reader = check(bearer(READER), TOKENS, **kw)  # type: ignore[arg-type]
    assert (reader.status, reader.role) == (403, "reader")
    assert reader.headers == {}
    admin = check(bearer(ADMIN), TOKENS, **kw)  # type: ignore[arg-type]
    assert (admin.ok, admin.role) == (True, "admin")
    assert check(f"bearer   {ADMIN} ", TOKENS, **kw).ok  # type: ignore[arg-type]


def test_reads_are_open_unless_configured() -> None:
    assert check(None, TOKENS, mutating=False, bound_host="0.0.0.0").ok
    assert (
        check(None, TOKENS, mutating=False, bound_host="0.0.0.0", reads_need_token=True).status
        == 401
    )
    assert check(bearer(READER), TOKENS, mutating=False, bound_host="0.0.0.0",
                 reads_need_token=True).ok  # fmt: skip
    assert check(bearer(ADMIN), TOKENS, mutating=False, bound_host="0.0.0.0",
                 reads_need_token=True).ok  # fmt: skip


def test_without_tokens_mutating_is_allowed_only_on_loopback() -> None:
    none = ApiTokens()
    for host in ("127.0.0.1", "::1", "localhost"):
        assert check(None, none, mutating=True, bound_host=host).ok
    refused = check(None, none, mutating=True, bound_host="0.0.0.0")
    assert refused.status == 403
    assert "GOVERNOR_API_TOKENS" in refused.error
    assert "127.0.0.1" in refused.error
    assert check(None, none, mutating=False, bound_host="0.0.0.0").ok


def test_no_error_message_carries_a_token() -> None:
    for header in (None, bearer("x" * 20), bearer(READER)):
        answer = check(header, TOKENS, mutating=True, bound_host="0.0.0.0")
        assert READER not in answer.error
        assert ADMIN not in answer.error
        assert "x" * 20 not in answer.error


def test_helpers() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
    assert [is_mutating(m) for m in ("GET", "head", "OPTIONS", "POST", "put", "DELETE")] == [
        False, False, False, True, True, True,
    ]  # fmt: skip
    assert not is_mutating("POST", "/alerts/webhook")
    assert is_mutating("POST", "/policies/rollback")
    assert ApiTokens.single(None) == ApiTokens()
    assert ApiTokens.single("ingest-secret").role_of("ingest-secret") == "admin"
