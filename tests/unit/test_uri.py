"""Tests of secretgrants.uri: the canonical secret URI grammar."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from secretgrants.errors import InvalidSecretURI
from secretgrants.reasons import Purpose
from secretgrants.uri import (
    MAX_PATH_SEGMENTS,
    MAX_SEGMENT_LENGTH,
    MAX_URI_LENGTH,
    PROVIDERS,
    SecretURI,
    parse_mount_ref,
    parse_secret_uri,
)

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# ---------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("vault+kv2://secret/payments/db#password", "vault+kv2://secret/payments/db#password"),
        ("openbao+kv2://kv/app/api", "openbao+kv2://kv/app/api"),
        ("yaml://dev/app#token", "yaml://dev/app#token"),
        ("vault://secret/a", "vault+kv2://secret/a"),
        ("openbao://kv/a/b/c", "openbao+kv2://kv/a/b/c"),
        ("VAULT://secret/a", "vault+kv2://secret/a"),
        ("Vault+KV2://secret/a", "vault+kv2://secret/a"),
        ("YAML://dev/app", "yaml://dev/app"),
        ("vault://Secret/Payments/DB#Password", "vault+kv2://Secret/Payments/DB#Password"),
        ("vault://my-mount_1.x/a.b/c_d-e", "vault+kv2://my-mount_1.x/a.b/c_d-e"),
        ("vault://secret/user@example.com/k=v+w,x", "vault+kv2://secret/user@example.com/k=v+w,x"),
        ("vault://secret/.hidden/...#.key", "vault+kv2://secret/.hidden/...#.key"),
        ("vault://secret/a#k=v+w,x@y", "vault+kv2://secret/a#k=v+w,x@y"),
    ],
)
def test_valid_uris_normalise(raw: str, normal: str) -> None:
    uri = parse_secret_uri(raw)
    assert uri.format() == normal
    assert str(uri) == normal
    assert SecretURI.parse(normal) == uri


def test_fields_and_properties() -> None:
    uri = SecretURI.parse("vault://secret/payments/db#password")
    assert uri.provider == "vault"
    assert uri.engine == "kv2"
    assert uri.mount == "secret"
    assert uri.path == "payments/db"
    assert uri.fragment == "password"
    assert uri.scheme == "vault+kv2"
    assert uri.segments == ("payments", "db")
    assert uri.mount_ref == "vault+kv2://secret"
    assert uri.without_fragment().format() == "vault+kv2://secret/payments/db"
    assert uri.without_fragment().fragment is None

    yaml_uri = SecretURI.parse("yaml://dev/app")
    assert yaml_uri.engine is None
    assert yaml_uri.scheme == "yaml"
    assert yaml_uri.mount_ref == "yaml://dev"
    assert yaml_uri.fragment is None
    assert yaml_uri.without_fragment() == yaml_uri


def test_model_is_frozen_hashable_and_parse_accepts_itself() -> None:
    uri = parse_secret_uri("vault://secret/a#k")
    assert hash(uri) == hash(parse_secret_uri("vault+kv2://secret/a#k"))
    assert SecretURI.parse(uri) is uri
    with pytest.raises(ValidationError, match="frozen"):
        uri.mount = "other"


def test_direct_construction_is_checked() -> None:
    assert SecretURI(provider="yaml", engine=None, mount="dev", path="a").format() == "yaml://dev/a"
    with pytest.raises(InvalidSecretURI, match="unknown provider"):
        SecretURI(provider="VAULT", engine="kv2", mount="a", path="b")
    with pytest.raises(InvalidSecretURI, match="needs an engine"):
        SecretURI(provider="vault", engine=None, mount="a", path="b")
    with pytest.raises(InvalidSecretURI, match="dot segment"):
        SecretURI(provider="vault", engine="kv2", mount="a", path="b/..")
    with pytest.raises(InvalidSecretURI, match="takes no engine"):
        SecretURI(provider="yaml", engine="kv2", mount="a", path="b")


def test_providers_table() -> None:
    assert dict(PROVIDERS) == {
        "vault": frozenset({"kv2"}),
        "openbao": frozenset({"kv2"}),
        "yaml": frozenset(),
    }


# ---------------------------------------------------------------- rejections

LONG = "a" * (MAX_SEGMENT_LENGTH + 1)

REJECTED: list[tuple[object, str]] = [
    # scheme
    ("foo://secret/a", "unknown provider 'foo'"),
    ("http://secret/a", "unknown provider 'http'"),
    ("vault+kv1://secret/a", "unknown engine 'kv1' for provider 'vault'"),
    ("openbao+kv://secret/a", "unknown engine 'kv' for provider 'openbao'"),
    ("yaml+x://dev/a", "provider 'yaml' takes no engine"),
    ("yaml+kv2://dev/a", "provider 'yaml' takes no engine"),
    ("vault+://secret/a", "empty engine after '+'"),
    ("://secret/a", "no provider before '://'"),
    ("secret/a", "has no '://'"),
    ("vault:/secret/a", "has no '://'"),
    ("vault:secret/a", "has no '://'"),
    # mount
    ("vault:///a", "mount is empty"),
    ("vault://", "mount is empty"),
    ("vault://./a", "mount is a dot segment ('.')"),
    ("vault://../a", "mount is a dot segment ('..')"),
    ("vault://user@secret/a", "userinfo ('@') is not allowed in the mount"),
    ("vault://user:pw@secret/a", "userinfo ('@') is not allowed in the mount"),
    ("vault://secret:8200/a", "a port (':') is not allowed in the mount"),
    ("vault://se+cret/a", "mount 'se+cret' contains '+'"),
    ("vault://" + LONG + "/a", "mount is 256 characters long"),
    # path
    ("vault://secret", "no path after the mount"),
    ("vault://secret/", "no path after the mount"),
    ("vault://secret//a", "path segment 1 is empty"),
    ("vault://secret/a//b", "path segment 2 is empty"),
    ("vault://secret/a/", "path segment 2 is empty"),
    ("vault://secret/a/./b", "path segment 2 is a dot segment ('.')"),
    ("vault://secret/a/../b", "path segment 2 is a dot segment ('..')"),
    ("vault://secret/..", "path segment 1 is a dot segment ('..')"),
    ("vault://secret/a:b", "path segment 1 'a:b' contains ':'"),
    ("vault://secret/a/" + LONG, "path segment 2 is 256 characters long"),
    (
        "vault://secret/" + "/".join(["a"] * (MAX_PATH_SEGMENTS + 1)),
        "path has 33 segments; the limit is 32",
    ),
    # fragment
    ("vault://secret/a#", "fragment after '#' is empty"),
    ("vault://secret/a#..", "fragment is a dot segment"),
    ("vault://secret/a#b/c", "fragment 'b/c' contains '/'"),
    ("vault://secret/a#b#c", "fragment 'b#c' contains '#'"),
    ("vault://secret/a#" + LONG, "fragment is 256 characters long"),
    # characters that are never allowed
    ("vault://secret/a%2Fb", "path character 2 is '%' (percent-encoding"),
    ("vault://secret/%2e%2e/b", "path character 1 is '%'"),
    ("vault://sec%72et/a", "mount character 4 is '%'"),
    ("vault://secret/a#k%00", "fragment character 2 is '%'"),
    ("vault://secret/a\\b", "path character 2 is a backslash"),
    ("vault://secret\\..\\x/a", "mount character 7 is a backslash"),
    ("vault://secret/a\x00", "path character 2 is a NUL character"),
    ("vault://secret/a\x07b", "path character 2 is a control character (U+0007)"),
    ("vault://secret/a\x7f", "is a control character (U+007F)"),
    ("vault://secret/a\x85", "is whitespace (U+0085)"),
    ("vault://secret/a b", "path character 2 is whitespace (U+0020)"),
    ("vault://secret/a\tb", "is whitespace (U+0009)"),
    ("vault://secret/a\nb", "is whitespace (U+000A)"),
    ("vault://secret/a\u00a0b", "is whitespace (U+00A0)"),
    ("vault://secret/a\u2028b", "is whitespace (U+2028)"),
    ("vault://secret/a\u3000b", "is whitespace (U+3000)"),
    ("vault://secret/a\u200bb", "is an invisible formatting character (U+200B)"),
    ("\ufeffvault://secret/a", "scheme character 1 is an invisible formatting character (U+FEFF)"),
    ("vault://secret/a\u202eb", "invisible formatting character (U+202E)"),
    ("vault://secret/caf\u00e9", "path character 4 is a non-ASCII character (U+00E9)"),
    ("vault://secret/\uff0e\uff0e/a", "a non-ASCII character (U+FF0E)"),
    ("vault://secret/\u2215a", "a non-ASCII character (U+2215)"),
    ("vault://secret/a?version=1", "path character 2 is '?' (query strings"),
    ("vault://secret/a#k?x", "fragment character 2 is '?'"),
    ("vault://secret a", "mount character 7 is whitespace"),
    ("vault secret/a", "secret URI character 6 is whitespace"),
    # size
    (
        "vault://secret/" + "a" * MAX_URI_LENGTH,
        "secret URI is 1039 characters long; the limit is 1024",
    ),
    (
        # 1024 characters as typed, 1028 once the engine is written out
        "vault://s/" + "/".join(["a" * 200] * 5) + "/" + "b" * 9,
        "1028 characters long in normal form",
    ),
    # not text at all
    ("", "secret URI is empty"),
    (None, "must be a string, not 'NoneType'"),
    (42, "must be a string, not 'int'"),
    (b"vault://secret/a", "must be a string, not 'bytes'"),
    (["vault://secret/a"], "must be a string, not 'list'"),
]


@pytest.mark.parametrize(("raw", "needle"), REJECTED, ids=[str(i) for i in range(len(REJECTED))])
def test_rejected(raw: object, needle: str) -> None:
    with pytest.raises(InvalidSecretURI) as caught:
        parse_secret_uri(raw)
    assert needle in caught.value.message
    assert str(caught.value) == caught.value.message


def test_messages_never_echo_more_than_a_short_excerpt() -> None:
    secretish = "x" * 500
    for raw in (
        f"{secretish}://secret/a",
        f"vault://{secretish}/a",
        f"vault://secret/{secretish}:",
        f"vault://secret/a#{secretish}/",
        f"vault+{secretish}://secret/a",
    ):
        with pytest.raises(InvalidSecretURI) as caught:
            parse_secret_uri(raw)
        assert "x" * 41 not in caught.value.message, caught.value.message
        assert len(caught.value.message) < 200


def test_messages_never_carry_unsafe_characters() -> None:
    for raw in ("vault://secret/a\x00b", "vault://s\u202eecret/a", "v\u00e4ult://secret/a"):
        with pytest.raises(InvalidSecretURI) as caught:
            parse_secret_uri(raw)
        message = caught.value.message
        assert message.isascii() and message.isprintable(), message


def test_longest_accepted_uri() -> None:
    raw = "vault+kv2://s/" + "/".join(["a" * 200] * 5)
    raw += "/" + "b" * (MAX_URI_LENGTH - len(raw) - 1)
    assert len(raw) == MAX_URI_LENGTH
    assert parse_secret_uri(raw).format() == raw
    with pytest.raises(InvalidSecretURI, match="limit is 1024"):
        parse_secret_uri(raw + "b")


# ---------------------------------------------------------------- purposes


def test_check_purpose() -> None:
    whole = parse_secret_uri("vault://secret/a")
    keyed = parse_secret_uri("vault://secret/a#k")
    for purpose in Purpose:
        whole.check_purpose(purpose)
        whole.check_purpose(purpose.value)
        if purpose in (Purpose.READ, Purpose.WRITE):
            keyed.check_purpose(purpose)
        else:
            with pytest.raises(InvalidSecretURI, match=f"not '{purpose.value}'"):
                keyed.check_purpose(purpose)
    with pytest.raises(InvalidSecretURI, match="unknown purpose 'steal'"):
        whole.check_purpose("steal")
    with pytest.raises(InvalidSecretURI, match="unknown purpose"):
        whole.check_purpose("READ")
    with pytest.raises(InvalidSecretURI, match=r"unknown purpose \(not printable text\)"):
        whole.check_purpose("re\x00ad")
    with pytest.raises(InvalidSecretURI, match="unknown purpose"):
        whole.check_purpose(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- mount references


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("secret", (None, "secret")),
        ("my-mount_1.x", (None, "my-mount_1.x")),
        ("vault+kv2://secret", ("vault+kv2", "secret")),
        ("vault://secret", ("vault+kv2", "secret")),
        ("OpenBao://kv", ("openbao+kv2", "kv")),
        ("yaml://dev", ("yaml", "dev")),
    ],
)
def test_mount_refs(raw: str, expected: tuple[str | None, str]) -> None:
    assert parse_mount_ref(raw) == expected


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("", "mount reference is empty"),
        (7, "mount reference must be a string"),
        ("..", "mount is a dot segment"),
        ("sec ret", "mount character 4 is whitespace"),
        ("sec%72et", "mount character 4 is '%'"),
        ("user@secret", "userinfo"),
        ("secret:8200", "port"),
        ("secret/a", "mount 'secret/a' contains '/'"),
        ("vault+kv2://", "mount is empty"),
        ("vault://secret/", "names only a mount"),
        ("vault://secret/a", "names only a mount"),
        ("vault://secret#k", "names only a mount"),
        ("foo://secret", "unknown provider 'foo'"),
        ("yaml+kv2://dev", "takes no engine"),
        ("vault+kv1://secret", "unknown engine 'kv1'"),
        ("x" * (MAX_URI_LENGTH + 1), "limit is 1024"),
    ],
)
def test_rejected_mount_refs(raw: object, needle: str) -> None:
    with pytest.raises(InvalidSecretURI) as caught:
        parse_mount_ref(raw)
    assert needle in caught.value.message


def test_mount_ref_matches_uri_mount_ref() -> None:
    uri = parse_secret_uri("VAULT://secret/a/b#k")
    scheme, mount = parse_mount_ref(uri.mount_ref)
    assert f"{scheme}://{mount}" == uri.mount_ref
    assert mount == uri.mount


# ---------------------------------------------------------------- properties

MOUNT_ALPHABET = string.ascii_letters + string.digits + "._-"
SEGMENT_ALPHABET = MOUNT_ALPHABET + "@=+,"

mounts = st.text(MOUNT_ALPHABET, min_size=1, max_size=20).filter(lambda s: s not in {".", ".."})
segments = st.text(SEGMENT_ALPHABET, min_size=1, max_size=20).filter(lambda s: s not in {".", ".."})
paths = st.lists(segments, min_size=1, max_size=MAX_PATH_SEGMENTS).map("/".join)
fragments = st.none() | segments
canonical_schemes = st.sampled_from(
    sorted(
        f"{provider}+{engine}" if engine else provider
        for provider, engines in PROVIDERS.items()
        for engine in (engines or {""})
    )
)


@st.composite
def canonical_uris(draw: st.DrawFn) -> str:
    """URIs already in normal form, built from the allowed charset."""
    fragment = draw(fragments)
    text = f"{draw(canonical_schemes)}://{draw(mounts)}/{draw(paths)}"
    return text if fragment is None else f"{text}#{fragment}"


def _random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def accepted_spellings(draw: st.DrawFn) -> str:
    """Valid URIs in any accepted spelling: any case of scheme, engine left out or not."""
    provider = draw(st.sampled_from(sorted(PROVIDERS)))
    engines = sorted(PROVIDERS[provider])
    scheme = provider
    with_engine = draw(st.booleans())
    if engines and with_engine:
        scheme = f"{provider}+{draw(st.sampled_from(engines))}"
    text = f"{_random_case(draw, scheme)}://{draw(mounts)}/{draw(paths)}"
    fragment = draw(fragments)
    return text if fragment is None else f"{text}#{fragment}"


NASTY = "/.#%?@:+\\ \x00\t\u00a0\u2028\u200b\ufeff\u00e9\uff0e\u2215"
PIECES = ["..", ".", "/", "//", "/../", "%2e", "%2F", "#", "://", ":8200", "a", "secret"]
uri_like_text = st.builds(
    "".join,
    st.lists(
        st.sampled_from(["vault://", "yaml://", "openbao+kv2://", "VAULT+KV2://", "://", ""])
        | st.text(SEGMENT_ALPHABET + NASTY, max_size=12)
        | st.sampled_from(PIECES),
        max_size=8,
    ),
)


@st.composite
def mutated_uris(draw: st.DrawFn) -> str:
    """An accepted spelling with one piece spliced in: sometimes still valid, often not."""
    text = draw(accepted_spellings())
    at = draw(st.integers(min_value=0, max_value=len(text)))
    piece = draw(st.sampled_from(PIECES) | st.text(SEGMENT_ALPHABET + NASTY, max_size=3))
    return text[:at] + piece + text[at:]


def _parses(raw: object) -> SecretURI | None:
    try:
        return parse_secret_uri(raw)
    except InvalidSecretURI:
        return None


def _assert_confined(uri: SecretURI) -> None:
    parts = [uri.mount, *uri.segments]
    if uri.fragment is not None:
        parts.append(uri.fragment)
    for part in parts:
        assert part not in {"", ".", ".."}
        assert not set(part) & set("/\\%?#: \x00")
        assert part.isascii() and part.isprintable()
    assert uri.path == "/".join(uri.segments)
    assert len(uri.segments) <= MAX_PATH_SEGMENTS


@PROPERTY_SETTINGS
@given(accepted_spellings() | mutated_uris() | uri_like_text)
def test_property_normal_form_is_a_fixed_point(raw: str) -> None:
    uri = _parses(raw)
    if uri is None:
        return
    normal = uri.format()
    again = parse_secret_uri(normal)
    assert again == uri
    assert again.format() == normal
    assert parse_secret_uri(again.format()).format() == normal
    assert len(normal) <= MAX_URI_LENGTH


@PROPERTY_SETTINGS
@given(accepted_spellings() | mutated_uris() | uri_like_text | st.text())
def test_property_accepted_uris_never_escape_their_mount(raw: str) -> None:
    uri = _parses(raw)
    if uri is not None:
        _assert_confined(uri)
        assert uri.format().startswith(uri.mount_ref + "/")


@PROPERTY_SETTINGS
@given(
    st.text()
    | mutated_uris()
    | uri_like_text
    | st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.binary()
    | st.lists(st.text(), max_size=3)
    | st.dictionaries(st.text(), st.text(), max_size=3)
    | st.builds(object)
)
def test_property_only_invalid_secret_uri_escapes(raw: object) -> None:
    try:
        parse_secret_uri(raw)
    except InvalidSecretURI as error:
        assert error.message
        assert error.message.isascii() and error.message.isprintable()
    try:
        parse_mount_ref(raw)
    except InvalidSecretURI as error:
        assert error.message.isascii() and error.message.isprintable()


@PROPERTY_SETTINGS
@given(canonical_uris())
def test_property_canonical_uris_round_trip_exactly(raw: str) -> None:
    uri = parse_secret_uri(raw)
    assert uri.format() == raw
    assert str(uri) == raw
    assert uri.mount_ref == raw.split("/", 3)[0] + "//" + uri.mount
    scheme, mount = parse_mount_ref(uri.mount_ref)
    assert (scheme, mount) == (uri.scheme, uri.mount)
    _assert_confined(uri)


@PROPERTY_SETTINGS
@given(accepted_spellings())
def test_property_accepted_spellings_are_accepted(raw: str) -> None:
    uri = parse_secret_uri(raw)
    assert uri.provider == uri.provider.lower()
    assert uri.provider in PROVIDERS
    assert (uri.engine is None) == (not PROVIDERS[uri.provider])
    assert uri.format().split("://", 1)[1] == raw.split("://", 1)[1]
