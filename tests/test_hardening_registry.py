"""`minict pull` against a hostile registry: bounded in time, in parsing and on disk.

A registry (tests.support.hostile_registry) that trickles its answers one
byte at a time, nests JSON 100,000 levels deep, sends endless tokens and
bodies, lies about sizes and answers with huge errors.  Every pull must end
within a bound, with one `fatal` line and no traceback, and leave the store
as it found it.  The deadlines are shrunk by the environment variables
users have (MINICT_REGISTRY_DEADLINE, MINICT_SPEED_TIME) so the tests take
seconds.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from minict import boundedjson
from minict.errors import InvalidReference, MinictError
from minict.image import timeouts
from minict.image.reference import REFERENCE_MAX, parse
from tests.support import ci
from tests.support.hostile_registry import HostileRegistry
from tests.support.images import File, Image, Layer, sha256

DEADLINE = 2.0
FAST = {"MINICT_REGISTRY_DEADLINE": str(DEADLINE), "MINICT_SPEED_TIME": "1"}
PULL_FATAL = "fatal Failed to pull image. Error received: "
LINE_MAX = 1500  # a fatal line quoting a registry stays this short
NESTED = b"[" * 100_000 + b"]" * 100_000


def small_image(text=b"hello", **kw) -> Image:
    return Image([[File("etc/hello", text)]], config={"Cmd": ["sh"]}, **kw)


@pytest.fixture
def hostile():
    with HostileRegistry() as reg:
        reg.add_image("test/app", "latest", small_image())
        yield reg


@pytest.fixture
def store(minict_dir):
    """MINICT_DIR with the directories every command creates, so a snapshot compares."""
    (minict_dir / "images").mkdir()
    (minict_dir / "containers").mkdir()
    return minict_dir


def snapshot(root) -> dict:
    """Return {path: size (files) or None (directories)} of everything under `root`."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = os.lstat(path).st_size
    return found


def one_fatal_line(done, *words, prefix=PULL_FATAL) -> str:
    """Assert exit 1 with one short `fatal` line, last, holding `words`; return it."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert sum(" fatal " in line for line in lines) == 1, done.stderr[-3000:]
    assert prefix in lines[-1], lines[-1][:3000]
    assert len(lines[-1]) < LINE_MAX, f"a fatal line of {len(lines[-1])} characters"
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


def pull(minict, reg, ref="test/app", env=None, timeout=90):
    """Run `minict pull`; return (CompletedProcess, seconds it took)."""
    started = time.monotonic()
    done = minict("pull", "--image", f"{reg.host}/{ref}", env={**FAST, **(env or {})},
                  timeout=timeout)
    return done, time.monotonic() - started


def assert_fails_fast(minict, reg, store, *words, bound=15.0, ref="test/app", env=None,
                      unchanged=True):
    """Assert the pull fails within `bound` seconds in one line holding `words`; return it.

    Before any blob is fetched, the store must not change at all (`unchanged`);
    after, blobs may have landed, but only verified ones, and nothing is listed.
    """
    before = snapshot(store)
    done, took = pull(minict, reg, ref, env)
    line = one_fatal_line(done, *words)
    assert took < bound, f"the pull took {took:.1f} s: {line}"
    if unchanged:
        assert snapshot(store) == before
    else:
        assert_only_verified_blobs(store)
    return line


def assert_only_verified_blobs(store):
    """Nothing listed, every stored blob matches its name, no partial file holds bytes."""
    for path, size in snapshot(store).items():
        if "/blobs/sha256/" in path:
            assert sha256((store / path).read_bytes()) == "sha256:" + path.rsplit("/", 1)[1]
        elif "/.partial/" in path:
            assert size == 0, path
    for index in store.glob("images/**/index.json"):
        assert json.loads(index.read_bytes())["manifests"] == []


# -- slow peers: a deadline for small answers, a speed limit for blobs ---------

def test_trickled_ping_headers_end_at_the_deadline(hostile, minict, store):
    hostile.on("ping", lambda r: r.trickle(*r.honest(), headers_too=True))
    assert_fails_fast(minict, hostile, store, "did not finish answering within 2 s",
                      "MINICT_REGISTRY_DEADLINE", bound=DEADLINE + 8)
    assert hostile.count("ping") == 1  # not retried, and no second scheme tried after it


@pytest.mark.parametrize("how", ["headers", "body", "chunked body"])
def test_trickled_manifest_ends_at_the_deadline(hostile, minict, store, how):
    hostile.on("manifest", lambda r: r.trickle(*r.honest(), headers_too=how == "headers",
                                               chunked=how == "chunked body"))
    assert_fails_fast(minict, hostile, store, "reading manifest latest",
                      "did not finish answering within 2 s")
    assert hostile.count("manifest") == 1


def test_trickled_token_ends_at_the_deadline(hostile, minict, store):
    hostile.token_answer = {"token": "a.b.c", "expires_in": 300}
    hostile.on("token", lambda r: r.trickle(*r.honest()))
    assert_fails_fast(minict, hostile, store, "getting a token",
                      "did not finish answering within 2 s")


def test_trickled_blob_headers_end_at_the_deadline(hostile, minict, store):
    hostile.on("blob", lambda r: r.trickle(*r.honest(), headers_too=True))
    line = assert_fails_fast(minict, hostile, store, "fetching blob",
                             "did not finish answering within 2 s", unchanged=False)
    assert "sha256:" in line


@pytest.mark.parametrize("every", [0.3, 600], ids=["trickle", "stall"])
def test_slow_blob_body_falls_below_the_speed_limit(hostile, minict, minict_dir, every):
    # A stalled body is caught by the same check, long before the 60 s idle timeout.
    image = small_image(os.urandom(20_000))
    hostile.add_image("test/big", "latest", image)
    layer = image.layers[0].digest
    hostile.on("blob", lambda r: r.trickle(*r.honest(), every=every) if r.ref == layer
               else r.send(*r.honest()))
    done, took = pull(minict, hostile, "test/big")
    one_fatal_line(done, f"fetching blob {layer}", "less than 1024 bytes/s for 1 s",
                   "MINICT_SPEED_LIMIT")
    # Five slow attempts of ~1 s each, with backoff between them: bounded, not endless.
    assert took < 40
    assert sum(layer in r["path"] for r in hostile.requests) == 5
    partial = minict_dir / "images" / hostile.host / "test/big" / ".partial" / layer[7:]
    assert not partial.exists() or partial.stat().st_size < 20_000
    assert json.loads(minict("list-images").stdout) == []


def test_a_fast_blob_passes_the_speed_limit(hostile, minict, minict_dir):
    # The limit checks an average over a window: a blob that takes longer than a
    # window, but at a good rate, arrives.
    image = small_image(os.urandom(300_000), compression=None)
    hostile.add_image("test/steady", "latest", image)
    layer = image.layers[0].digest

    # 100 kB/s for 3 s, in windows of 1 s.
    hostile.on("blob", lambda r: r.trickle(*r.honest(), piece=20_000, every=0.2)
               if r.ref == layer else r.send(*r.honest()))
    done, _ = pull(minict, hostile, "test/steady")
    assert done.returncode == 0, done.stderr
    assert sum(layer in r["path"] for r in hostile.requests) == 1


def test_invalid_timeout_settings_are_one_clear_line(hostile, minict, store):
    for name, value in [("MINICT_REGISTRY_TIMEOUT", "soon"), ("MINICT_REGISTRY_DEADLINE", "0"),
                        ("MINICT_SPEED_LIMIT", "1.5"), ("MINICT_SPEED_TIME", "inf"),
                        ("MINICT_REGISTRY_DEADLINE", "nan")]:
        done, _ = pull(minict, hostile, env={name: value})
        one_fatal_line(done, name, repr(value))
    assert hostile.requests == []


def test_limits_from_the_environment():
    assert timeouts.Limits.from_environment({}) == timeouts.Limits(60.0, 60.0, 1024, 60.0)
    limits = timeouts.Limits.from_environment({
        "MINICT_REGISTRY_TIMEOUT": "5", "MINICT_REGISTRY_DEADLINE": " 0.5 ",
        "MINICT_SPEED_LIMIT": "0", "MINICT_SPEED_TIME": "90"})
    assert limits == timeouts.Limits(5.0, 0.5, 0, 90.0)
    with pytest.raises(MinictError, match="MINICT_SPEED_LIMIT"):
        timeouts.Limits.from_environment({"MINICT_SPEED_LIMIT": "-1"})


def test_clock_deadline_and_speed_window():
    clock = timeouts.Clock(timeouts.Limits(idle=60, deadline=0.2))
    assert 0 < clock.timeout() <= 0.2  # the idle timeout, cut to the deadline
    time.sleep(0.25)
    with pytest.raises(timeouts.DeadlineExceeded):
        clock.timeout()
    clock = timeouts.Clock(timeouts.Limits(idle=60, deadline=0.1, speed_limit=1000,
                                           speed_time=0.2))
    clock.body()  # a blob's body: no deadline any more, the speed window instead
    time.sleep(0.15)
    clock.got(1000)  # 1000 bytes in 0.15 s: fast enough, and it buys time beyond the window
    assert 0.8 < clock.timeout() <= 0.85
    clock = timeouts.Clock(timeouts.Limits(idle=60, speed_limit=1000, speed_time=0.2))
    clock.body()
    time.sleep(0.25)
    with pytest.raises(timeouts.TooSlow):
        clock.got(10)  # 10 bytes in a 0.25 s window


# -- untrusted text: JSON, tokens, references, messages -----------------------

def test_deeply_nested_manifest_is_refused(hostile, minict, store):
    hostile.manifests[("test/app", "latest")] = (NESTED, "application/vnd.oci.image.manifest.v1+json")
    assert_fails_fast(minict, hostile, store, "the manifest is nested deeper than 100 levels")


def test_deeply_nested_config_is_refused(hostile, minict, minict_dir):
    image = Image([[File("a", b"a")]], config={"Cmd": ["sh"]})
    image.config_bytes = NESTED
    image.config_digest = sha256(NESTED)
    image.manifest["config"].update(digest=image.config_digest, size=len(NESTED))
    image.manifest_bytes = json.dumps(image.manifest).encode()
    image.digest = sha256(image.manifest_bytes)
    hostile.add_image("test/nested", "latest", image)
    done, _ = pull(minict, hostile, "test/nested")
    one_fatal_line(done, f"blob {image.config_digest} is nested deeper than 100 levels")
    assert json.loads(minict("list-images").stdout) == []


def test_nested_index_json_in_the_store_is_one_line(hostile, minict, minict_dir):
    done, _ = pull(minict, hostile)
    assert done.returncode == 0, done.stderr
    (minict_dir / "images" / hostile.host / "test/app" / "index.json").write_bytes(NESTED)
    one_fatal_line(minict("list-images"), "index.json is nested deeper than 100 levels",
                   prefix=" fatal ")
    one_fatal_line(pull(minict, hostile)[0], "index.json is nested deeper than 100 levels")


@pytest.mark.parametrize("expires_in", ["Infinity", "1e400", "-Infinity", "NaN", '"soon"',
                                        "true", "99999999999999999999999"])
def test_endless_or_odd_expires_in_is_clamped(hostile, minict, minict_dir, expires_in):
    hostile.token_answer = {}
    body = b'{"token": "a.b.c", "expires_in": ' + expires_in.encode() + b"}"
    hostile.on("token", lambda r: r.send(200, body, {"Content-Type": "application/json"}))
    done, _ = pull(minict, hostile)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(r["headers"].get("Authorization") == "Bearer a.b.c"
               for r in hostile.requests if r["kind"] in ("manifest", "blob"))


def test_token_lifetime_is_finite_and_clamped():
    from minict.image.challenge import TOKEN_DEFAULT_TTL, TOKEN_MAX_TTL, token_lifetime

    assert token_lifetime(float("inf")) == TOKEN_MAX_TTL
    assert token_lifetime(10 ** 400) == TOKEN_MAX_TTL
    assert token_lifetime(float("nan")) == TOKEN_DEFAULT_TTL
    assert token_lifetime(True) == TOKEN_DEFAULT_TTL
    assert token_lifetime(-5) == TOKEN_DEFAULT_TTL
    assert token_lifetime(300.7) == 300


@pytest.mark.parametrize("token", ["a.b\r\nX-Injected: yes", "a b", "tok\u00e9n", "x" * 70_000])
def test_tokens_a_header_cannot_carry_are_refused(hostile, minict, store, token):
    hostile.token_answer = {"token": token, "expires_in": 300}
    line = assert_fails_fast(minict, hostile, store, f"the token from {hostile.host}")
    assert "X-Injected" not in line
    assert all("X-Injected" not in json.dumps(r["headers"]) for r in hostile.requests)
    assert hostile.count("manifest") == 0


def test_huge_registry_error_is_cut_short(hostile, minict, store):
    message = "no such manifest " + "x" * 900_000
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": message}]}).encode()
    hostile.on("manifest", lambda r: r.send(404, body, {"Content-Type": "application/json"}))
    line = assert_fails_fast(minict, hostile, store, "no such manifest xxx", "…")
    assert "MANIFEST_UNKNOWN" in line


def test_ten_megabyte_error_body_is_not_quoted(hostile, minict, store):
    body = b'{"errors":[{"message":"' + b"y" * 10_000_000 + b'"}]}'
    hostile.on("manifest", lambda r: r.send(400, body))
    line = assert_fails_fast(minict, hostile, store, "HTTP 400")
    assert "yyyy" not in line


@pytest.mark.parametrize("location", ["http://127.0.0.1:99999/blob", "http://[::1/x",
                                      "http://a..b/x", "ftp://127.0.0.1/x"])
def test_a_redirect_to_a_bad_url_is_one_line(hostile, minict, store, location):
    hostile.on("manifest", lambda r: r.send(307, b"", {"Location": location}))
    assert_fails_fast(minict, hostile, store, "reading manifest latest")
    assert hostile.count("manifest") == 1  # a bad URL is not retried


@pytest.mark.parametrize("realm, words", [
    ("http://127.0.0.1:99999/token", "getting a token: 127.0.0.1:99999 named a URL that cannot"),
    ("http://[::1/token", "without a usable realm"),
])
def test_a_realm_with_a_bad_host_or_port_is_one_line(hostile, minict, store, realm, words):
    challenge = f'Bearer realm="{realm}",service="x"'
    hostile.on("ping", lambda r: r.send(401, b"{}", {"WWW-Authenticate": challenge}))
    assert_fails_fast(minict, hostile, store, words)


@pytest.mark.parametrize("text, words", [
    ("127.0.0.1:99999/x", "port 99999 of '127.0.0.1:99999' is not between 1 and 65535"),
    ("127.0.0.1:0/x", "port 0 of"),
    ("[::1]:65536/x", "port 65536 of"),
    ("localhost:" + "9" * 3000 + "/x", "is longer than any reference can be"),
    ("a" * 100_000, "is longer than any reference can be (100000 characters"),
    ("example.com/" + "a" * 250, "must not be longer than 255 characters"),
    ("x:" + "t" * 129, "tag 'tttt"),
    ("UPPER/" + "Ab" * 100, "…"),
])
def test_references_out_of_bounds_are_refused(text, words):
    with pytest.raises(InvalidReference) as caught:
        parse(text)
    assert words in str(caught.value)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("text", ["127.0.0.1:1/x", "127.0.0.1:65535/x", "[::1]:443/a/b",
                                  "example.com:08080/a"])
def test_references_at_the_bounds_are_accepted(text):
    assert parse(text).path


def test_the_longest_reference_is_accepted():
    name = "example.com/" + "/".join(["a" * 60] * 4)[:255 - len("example.com/")]
    text = f"{name.rstrip('/')}:{'t' * 128}@sha512:{'0' * 128}"
    assert len(text) <= REFERENCE_MAX
    assert parse(text).tag == "t" * 128


@pytest.mark.parametrize("image, words", [
    ("127.0.0.1:99999/x", "port 99999"),
    ("r" * 100_000, "is longer than any reference can be"),
])
def test_cli_refuses_bad_references_in_one_line(minict, image, words):
    done = minict("pull", "--image", image)
    one_fatal_line(done, words, prefix="fatal Invalid image name: ")


def test_depth_ignores_brackets_in_strings_and_is_linear():
    assert boundedjson.depth(b'{"a": "[[[[\\"[[", "b": [[{}]]}') == 4
    assert boundedjson.depth(b'"unterminated [[[[') == 0
    assert boundedjson.loads(b'{"a": ["]]]"]}') == {"a": ["]]]"]}
    with pytest.raises(boundedjson.UnsafeJSON, match="larger than 10 bytes"):
        boundedjson.loads(b"[" + b"1," * 10 + b"1]", limit=10)
    # Inputs that would make a backtracking scanner quadratic: each is checked in
    # well under a second here; quadratic would take hours.
    for data in [b'"\\"' * 1_300_000, b'"\\' * 2_000_000, b'"' * 4_000_000,
                 b"[" * 4_000_000, b"[]" * 2_000_000]:
        started = time.monotonic()
        with pytest.raises(ValueError):
            boundedjson.loads(data)
        assert time.monotonic() - started < 5


# -- lies about sizes, and a full disk ---------------------------------------

def lying_image(declared: int, repo: str, hostile) -> str:
    """Serve an image whose one layer is declared `declared` bytes and never ends."""
    fake = Layer(b"", None, blob=b"\0" * 16)
    fake.digest = sha256(b"declared " + str(declared).encode())
    image = Image([fake], config={"Cmd": ["sh"]})
    image.manifest["layers"][0]["size"] = declared
    image.manifest_bytes = json.dumps(image.manifest).encode()
    image.digest = sha256(image.manifest_bytes)
    hostile.add_image(repo, "latest", image)
    return fake.digest


def test_a_body_longer_than_declared_is_cut_and_removed(hostile, minict, minict_dir):
    layer = lying_image(100_000, "test/long", hostile)
    hostile.on("blob", lambda r: r.endless() if r.ref == layer else r.send(*r.honest()))
    done, _ = pull(minict, hostile, "test/long")
    one_fatal_line(done, f"blob {layer} is longer than the 100000 bytes its descriptor declares")
    layout = minict_dir / "images" / hostile.host / "test/long"
    assert not (layout / ".partial" / layer[7:]).exists()
    assert not (layout / "blobs/sha256" / layer[7:]).exists()


def test_a_content_length_above_the_declared_size_is_refused(hostile, minict, minict_dir):
    layer = lying_image(1000, "test/long", hostile)
    hostile.on("blob", lambda r: r.send(200, b"\0" * 5000) if r.ref == layer
               else r.send(*r.honest()))
    done, _ = pull(minict, hostile, "test/long")
    one_fatal_line(done, "the registry sends 5000 bytes for the 1000 its descriptor leaves")
    partial = minict_dir / "images" / hostile.host / "test/long" / ".partial" / layer[7:]
    assert not partial.exists() or partial.stat().st_size == 0


def run_on_small_disk(store, size: str, commands: list[str]) -> subprocess.CompletedProcess:
    """Run shell `commands` with MINICT_DIR on a fresh tmpfs of `size`, in a private
    mount namespace that dies with the shell (so nothing stays mounted)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        ci.skip_or_fail("needs root and unshare for a private tmpfs")
    script = "\n".join([f'mount -t tmpfs -o size={size} tmpfs "$MINICT_DIR" || exit 99',
                        'mkdir "$MINICT_DIR/images" "$MINICT_DIR/containers"', *commands])
    env = {**os.environ, **FAST, "MINICT_DIR": str(store)}
    env.pop("MINICT_LOG_LEVEL", None)
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


LIST_FILES = 'echo "== $1"; cd "$MINICT_DIR" && find . -printf "%y %p %s\\n" | grep -v "^d" | sort'


def listing(stdout: str, label: str) -> list[str]:
    block = stdout.split(f"== {label}\n", 1)[1]
    return block.split("== ", 1)[0].splitlines()


@pytest.mark.root  # unshare: a private mount or network namespace
def test_disk_full_removes_the_blob_and_leaves_the_store_as_it_was(hostile, store):
    # test/app:bad names the config test/app:latest has (present after the first
    # pull), and a layer declared 100 MiB whose body never ends: it fills the disk.
    good = small_image()
    bad = Image([Layer(b"", None, blob=b"x")], config={"Cmd": ["sh"]})
    bad.manifest["config"] = good.manifest["config"]
    bad.manifest["layers"][0].update(digest=sha256(b"endless"), size=100 * 1024 * 1024)
    bad.manifest_bytes = json.dumps(bad.manifest).encode()
    hostile.manifests[("test/app", "bad")] = (bad.manifest_bytes, bad.media_type)
    hostile.on("blob", lambda r: r.endless() if r.ref == sha256(b"endless")
               else r.send(*r.honest()))
    python, ref = sys.executable, f"{hostile.host}/test/app"
    done = run_on_small_disk(store, "4m", [
        f"list() {{ ( {LIST_FILES} ) }}",
        f"{python} -m minict pull --image {ref}:latest || exit 98",
        "list before",
        f"{python} -m minict pull --image {ref}:bad 2>&1 | tail -1 >&2",
        "list after", 'echo "== df"; df -k "$MINICT_DIR" | tail -1',
        f'echo "== again"; {python} -m minict pull --image {ref}:latest 2>/dev/null && echo ok',
    ])
    assert done.returncode == 0, done.stderr
    fatal = done.stderr.strip().splitlines()[-1]
    assert PULL_FATAL in fatal and "No space left on device" in fatal, fatal
    assert "removed the" in fatal and "bytes written of it" in fatal
    assert listing(done.stdout, "after") == listing(done.stdout, "before")
    assert not any(".partial/" in line and "f ./" in line for line in listing(done.stdout, "after"))
    (df,) = listing(done.stdout, "df")
    assert int(df.split()[2]) < 1024, done.stdout  # KiB used: the disk has room again
    assert listing(done.stdout, "again") == ["ok"]


def test_a_layer_declared_one_tebibyte_is_refused_before_download(hostile, minict, store):
    layer = lying_image(1 << 40, "test/app", hostile)
    hostile.on("blob", lambda r: r.endless() if r.ref == layer else r.send(*r.honest()))
    assert_fails_fast(minict, hostile, store, "declares 1099511627776 bytes, over the",
                      unchanged=False)
    assert not any(layer in r["path"] for r in hostile.requests)


@pytest.mark.root  # unshare: a private mount or network namespace
def test_disk_full_while_sibling_layers_download_keeps_no_partial(hostile, store):
    # Two endless layers at once on a 3 MiB disk: whichever fills it, no partial stays.
    image = small_image()
    first, second = sha256(b"endless 1"), sha256(b"endless 2")
    doc = dict(image.manifest, layers=[
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 1 << 30}
        for d in (first, second)])
    hostile.manifests[("test/two", "latest")] = (json.dumps(doc).encode(), image.media_type)
    hostile.on("blob", lambda r: r.endless() if r.ref in (first, second)
               else r.send(*r.honest()))
    python = sys.executable
    done = run_on_small_disk(store, "3m", [
        f"{python} -m minict pull --image {hostile.host}/test/two 2>&1 | tail -1 >&2",
        'cd "$MINICT_DIR" && find . -type f -path "*/.partial/*" -size +0 -printf "%p %s\\n"',
    ])
    assert done.returncode == 0, done.stderr
    assert "No space left on device" in done.stderr.strip().splitlines()[-1]
    assert done.stdout.strip() == "", done.stdout
