"""Image references: a table of real-world ones and properties over generated ones."""

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from minict.errors import InvalidReference
from minict.image.reference import Reference, parse

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"

VALID = [
    # text, domain, path, tag, digest, familiar()
    ("ubuntu", "docker.io", "library/ubuntu", "latest", None, "ubuntu:latest"),
    ("ubuntu:20.04", "docker.io", "library/ubuntu", "20.04", None, "ubuntu:20.04"),
    ("library/ubuntu", "docker.io", "library/ubuntu", "latest", None, "ubuntu:latest"),
    ("docker.io/library/ubuntu:20.04", "docker.io", "library/ubuntu", "20.04", None,
     "ubuntu:20.04"),
    ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None, "ubuntu:latest"),
    ("index.docker.io/library/ubuntu", "docker.io", "library/ubuntu", "latest", None,
     "ubuntu:latest"),
    ("user/app", "docker.io", "user/app", "latest", None, "user/app:latest"),
    ("library/a/b", "docker.io", "library/a/b", "latest", None, "library/a/b:latest"),
    ("quay.io/a/b:1", "quay.io", "a/b", "1", None, "quay.io/a/b:1"),
    ("ghcr.io/org/team/app:v1.2.3", "ghcr.io", "org/team/app", "v1.2.3", None,
     "ghcr.io/org/team/app:v1.2.3"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("localhost:5000/team/app:tag", "localhost:5000", "team/app", "tag", None,
     "localhost:5000/team/app:tag"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", None, "127.0.0.1:5000/app:latest"),
    ("[::1]:5000/app:x", "[::1]:5000", "app", "x", None, "[::1]:5000/app:x"),
    (f"registry.example.com:443/a/b@{DIGEST}", "registry.example.com:443", "a/b", None, DIGEST,
     f"registry.example.com:443/a/b@{DIGEST}"),
    (f"name:tag@{DIGEST}", "docker.io", "library/name", "tag", DIGEST, f"name:tag@{DIGEST}"),
    (f"app@{DIGEST}", "docker.io", "library/app", None, DIGEST, f"app@{DIGEST}"),
    # "localhost:5000" alone is the repository localhost with tag 5000, as in Docker.
    ("localhost:5000", "docker.io", "library/localhost", "5000", None, "localhost:5000"),
    # An upper-case first component is a host name (distribution's splitDockerDomain).
    ("Example.com/app", "Example.com", "app", "latest", None, "Example.com/app:latest"),
    ("a__b-c---d/e_f.g:T_1.x-y", "docker.io", "a__b-c---d/e_f.g", "T_1.x-y", None,
     "a__b-c---d/e_f.g:T_1.x-y"),
    ("ubuntu:" + "t" * 128, "docker.io", "library/ubuntu", "t" * 128, None,
     "ubuntu:" + "t" * 128),
    # Docker Hub repositories whose first component looks like a host keep their
    # domain when shortened, or the short form would name another registry.
    ("docker.io/a.b/c", "docker.io", "a.b/c", "latest", None, "docker.io/a.b/c:latest"),
    ("docker.io/localhost/app", "docker.io", "localhost/app", "latest", None,
     "docker.io/localhost/app:latest"),
]

INVALID = [
    "", "FOO", "Ubuntu", "a//b", "/a", "a/", "-a", "a-", "a..b", "a___b", "a:", ":tag", "@" + DIGEST,
    "a@sha256:short", f"a@sha256:{HEX.upper()}", f"a@md5:{HEX}", "a@", "a:b:c", "a:-x", "a:.x",
    HEX, "ubuntu:" + "t" * 129, " ubuntu", "ubuntu ", "ubu ntu", "ubuntu\n", "ubuntu:\t1",
    "a/b:c/d", "example.com:/a", "example.com:port/a", "exa_mple.com/a", "-example.com/a",
    "[::1/a", "a:tag@", "x@sha256:1", "\x00", "ubüntu", "a" * 256,
    "example.com/" + "a" * 244,
]


@pytest.mark.parametrize("text,domain,path,tag,digest,familiar", VALID)
def test_real_world_references(text, domain, path, tag, digest, familiar):
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert ref.familiar() == familiar
    assert parse(ref.familiar()) == ref
    assert parse(str(ref)) == ref


@pytest.mark.parametrize("text", INVALID)
def test_invalid_references_are_refused(text):
    with pytest.raises(InvalidReference, match="^Invalid image name: "):
        parse(text)


def test_upper_case_repository_message():
    with pytest.raises(InvalidReference, match="must be lowercase"):
        parse("FOO")


def test_endpoint_and_ref_name():
    assert parse("ubuntu").endpoint == "registry-1.docker.io"
    assert parse("localhost:5000/a").endpoint == "localhost:5000"
    assert parse("ubuntu:20.04").ref_name == "20.04"
    assert parse(f"ubuntu@{DIGEST}").ref_name == DIGEST


# -- generated references -------------------------------------------------

PATH_COMPONENT = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,5}){0,2}",
                               fullmatch=True)
HOST_LABEL = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
PORT = st.integers(1, 65535).map(lambda p: f":{p}")
DOMAIN = st.one_of(
    st.builds(lambda labels, tld, port: ".".join(labels + [tld]) + port,
              st.lists(HOST_LABEL, min_size=1, max_size=3), HOST_LABEL, st.one_of(st.just(""), PORT)),
    st.builds(lambda port: "localhost" + port, st.one_of(st.just(""), PORT)),
    st.builds(lambda port: "[::1]" + port, st.one_of(st.just(""), PORT)),
    st.builds(lambda label, port: label + port, HOST_LABEL, PORT),
)
TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
DIGESTS = st.from_regex(r"[0-9a-f]{64}", fullmatch=True).map(lambda h: f"sha256:{h}")


@st.composite
def references(draw):
    """Draw (text, domain or None, path, tag, digest) of a valid reference."""
    domain = draw(st.one_of(st.none(), DOMAIN))
    components = draw(st.lists(PATH_COMPONENT, min_size=1, max_size=4))
    if domain is None and len(components) > 1:
        # Without a domain, a first component with "." (or "localhost") would be read as one.
        first = components[0]
        if "." in first or first == "localhost":
            components[0] = first.replace(".", "_").replace("localhost", "lh")
    if domain is None and len(components) == 1 and components[0] == "localhost":
        components[0] = "lh"
    tag = draw(st.one_of(st.none(), TAG))
    digest = draw(st.one_of(st.none(), DIGESTS))
    path = "/".join(components)
    text = (f"{domain}/" if domain else "") + path
    text += f":{tag}" if tag else ""
    text += f"@{digest}" if digest else ""
    return text, domain, path, tag, digest


@given(references())
def test_generated_references_are_accepted(drawn):
    text, domain, path, tag, digest = drawn
    ref = parse(text)
    if domain is None or domain in ("docker.io", "index.docker.io"):
        assert ref.domain == "docker.io"
        assert ref.path in (path, f"library/{path}")
        assert ref.path == (path if "/" in path else f"library/{path}")
    else:
        assert (ref.domain, ref.path) == (domain, path)
    assert ref.digest == digest
    assert ref.tag == (tag if tag or digest else "latest")


@given(references())
def test_str_round_trips(drawn):
    ref = parse(drawn[0])
    assert parse(str(ref)) == ref
    assert str(parse(str(ref))) == str(ref)


@given(st.builds(Reference, st.one_of(st.just("docker.io"), DOMAIN),
                 st.lists(PATH_COMPONENT, min_size=1, max_size=4).map("/".join),
                 st.one_of(st.none(), TAG), st.one_of(st.none(), DIGESTS)))
@example(Reference("docker.io", "a.b/c", "latest", None))
@example(Reference("docker.io", "localhost/x", "latest", None))
@example(Reference("docker.io", "library/library", "latest", None))
def test_familiar_parses_back(ref):
    assume(ref.domain != "index.docker.io")  # parse() names it docker.io
    if ref.tag is None and ref.digest is None:
        ref = Reference(ref.domain, ref.path, "latest", None)
    if ref.domain == "docker.io" and "/" not in ref.path:
        ref = Reference(ref.domain, f"library/{ref.path}", ref.tag, ref.digest)
    assert parse(ref.familiar()) == ref


@given(references(), st.data())
def test_upper_case_repository_is_refused(drawn, data):
    _, domain, path, _, _ = drawn
    components = path.split("/")
    # Upper-case in the last component (or the only one): it cannot be a domain.
    last = components[-1]
    letters = [i for i, c in enumerate(last) if c.isalpha()]
    if not letters:
        last, letters = last + "x", [len(last)]
    i = data.draw(st.sampled_from(letters))
    components[-1] = last[:i] + last[i].upper() + last[i + 1:]
    text = (f"{domain}/" if domain else "") + "/".join(components)
    with pytest.raises(InvalidReference):
        parse(text)


@given(st.text(max_size=80))
@example("a" * 300)
@example("[" * 10 + "/a")
@example("a@sha256:" + "0" * 64 + "@x")
def test_junk_raises_only_invalid_reference(text):
    try:
        ref = parse(text)
    except InvalidReference as err:
        assert str(err).startswith("Invalid image name: ")
        return
    assert isinstance(ref, Reference)
    assert parse(str(ref)) == ref


@given(st.text(alphabet="abcAB09.:/@_-[]", max_size=40))
def test_near_miss_junk_raises_only_invalid_reference(text):
    try:
        ref = parse(text)
    except InvalidReference:
        return
    assert parse(str(ref)) == ref
    assert parse(ref.familiar()) == ref
