"""The compat corpus: images the real tools make, run as umoci and a runtime run them.

Every image here is made by a tool that makes real images (debootstrap,
`umoci repack` and `umoci insert`, GNU tar, bsdtar, `skopeo copy`; see
tests.support.corpus), pushed by skopeo to the registry fixture and pulled
by minict.  Its unpack is compared with `umoci unpack`'s of the same image
entry by entry (tests.support.layers.tree_differences, the oracle's
comparison), and a container from it starts and reads what proves the
content, through the image's own symlinks where it has them.
"""

import gzip
import io
import json
import os
import tarfile

import pytest
import requests

from minict.bundle import create as bundle
from minict.image import reference
from tests.support import ci, corpus, tools
from tests.support.layers import tree, tree_differences

pytestmark = pytest.mark.root

TOOLS = ("umoci", "skopeo", "busybox", "tar", "bsdtar")
Features = corpus.Features


@pytest.fixture(scope="module")
def base_layout(tmp_path_factory):
    """The merged-/usr busybox base every corpus layer goes on (built once)."""
    for tool in TOOLS:
        ci.require_tool(tool)
    return corpus.merged_usr_layout(tmp_path_factory.mktemp("corpus-base"))


def pulled_and_unpacked_like_umoci(ref, minict, minict_dir, workdir, monkeypatch,
                                   oracle_ref=None):
    """Pull `ref` with minict, unpack it, compare with umoci's unpack of `oracle_ref`
    (default: `ref`); return minict's rootfs."""
    done = minict("pull", "--image", ref)
    assert done.returncode == 0, done.stderr
    theirs = corpus.umoci_rootfs(oracle_ref or ref, workdir / "umoci")
    monkeypatch.setenv("MINICT_DIR", str(minict_dir))
    made = bundle.create(reference.parse(ref), "unpacked") / "rootfs"
    assert len(tree(theirs)) > 10
    assert tree_differences(made, theirs) == {}
    return made


def runs(minict, ref, script: str) -> str:
    """Start a container of `ref` running `sh -c script` (by /bin/sh: through bin ->
    usr/bin in the corpus images); return its output."""
    done = minict("run", "--image", ref, "--name", "proof", "--rm", "--", "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def members(layer_blob) -> list[tuple[str, bytes, str]]:
    """(name, type, link name) of a gzip layer's members; umoci insert ends its tars
    without the end blocks (umoci issue #436), so a short end is its end."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_blob.read_bytes()))) as archive:
        try:
            for member in archive:
                found.append((member.name, member.type, member.linkname))
        except tarfile.ReadError:
            pass
    return found


def layer_blobs(layout) -> list:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    return [blobs / layer["digest"][7:] for layer in manifest["layers"]]


# -- debootstrap -------------------------------------------------------------------------


def test_debootstrap_merged_usr_image(debian_layout, registry, minict, minict_dir, tmp_path,
                                      monkeypatch):
    from bench import image

    ref = tools.skopeo_push(debian_layout, registry, "corpus/debian", "latest",
                            source_tag=image.TAG)
    made = pulled_and_unpacked_like_umoci(ref, minict, minict_dir, tmp_path, monkeypatch)
    # debootstrap merges /usr: the links are in its layer, not made by anyone after.
    assert {name: os.readlink(made / name) for name in ("bin", "lib", "sbin")} \
        == {"bin": "usr/bin", "lib": "usr/lib", "sbin": "usr/sbin"}
    out = runs(minict, ref, ". /lib/os-release; echo $VERSION_CODENAME;"
                            " test /bin/ls -ef /usr/bin/ls && echo one-ls; bench-hello")
    assert out == "bookworm\none-ls\nhello\n"


@pytest.fixture(scope="module")
def debian_tarball_layout(debian_layout, tmp_path_factory):
    """The debootstrap rootfs as `tar --xattrs -C rootfs -c .` made it (a `docker import`
    input: pax headers, "./" names, the root's own entry), as one layer."""
    from bench import image

    layout = tmp_path_factory.mktemp("debian-tarball") / "layout"
    tools.run("umoci", "init", "--layout", layout)
    tools.run("umoci", "new", "--image", f"{layout}:{corpus.TAG}")
    tools.run("umoci", "config", "--image", f"{layout}:{corpus.TAG}", "--config.cmd", "/bin/sh",
              "--config.env", corpus.PATH)
    tools.run("umoci", "raw", "add-layer", "--image", f"{layout}:{corpus.TAG}",
              image.rootfs_tarball())
    return layout


def test_debootstrap_rootfs_tarred_by_gnu_tar(debian_tarball_layout, registry, minict,
                                              minict_dir, tmp_path, monkeypatch):
    ref = tools.skopeo_push(debian_tarball_layout, registry, "corpus/debian-tar", "latest")
    made = pulled_and_unpacked_like_umoci(ref, minict, minict_dir, tmp_path, monkeypatch)
    assert os.readlink(made / "bin") == "usr/bin"
    out = runs(minict, ref, ". /lib/os-release; echo $VERSION_CODENAME; /bin/dpkg-query -W dash")
    assert out.startswith("bookworm\ndash\t0.5.12")


# -- umoci: changes made through symlinked directories -----------------------------------


@pytest.fixture(scope="module")
def umoci_symlinked(base_layout, tmp_path_factory):
    return corpus.umoci_symlinked_layout(base_layout, tmp_path_factory.mktemp("umoci") / "sym")


def test_umoci_repack_names_real_paths_and_insert_the_symlinked_ones(umoci_symlinked):
    """What umoci writes: its repack diffs the tree on disk, so what was written
    through bin/ is usr/bin/...; its insert names the path it is given."""
    layers = [members(blob) for blob in layer_blobs(umoci_symlinked)]
    # (It lists run/ and usr/bin/ too when their mtimes moved to another second.)
    assert [member for member in layers[1] if member[1] != tarfile.DIRTYPE] == [
        ("run/app.pid", b"0", ""), ("run/opaque/hidden", b"0", ""), ("usr/bin/newtool", b"0", ""),
        ("usr/bin/newtool-hard", b"1", "usr/bin/newtool"), ("usr/bin/.wh.oldtool", b"0", "")]
    assert layers[2:] == [
        [("bin/inserted", b"0", "")], [("var/run/inserted.pid", b"0", "")],
        [(corpus.ABSOLUTE_LINKED, b"0", "")],
        [("bin/hl", b"5", ""), ("bin/hl/a", b"0", ""), ("bin/hl/b", b"1", "bin/hl/a")],
        [("bin/.wh.oldtool2", b"0", "")],
        [("var/run/opaque/.wh..wh..opq", b"0", ""), ("var/run/opaque", b"5", ""),
         ("var/run/opaque/shown", b"0", "")]]


def test_umoci_symlinked_paths_resolve_in_the_rootfs(umoci_symlinked, registry, minict,
                                                    minict_dir, tmp_path, monkeypatch):
    host_path = "/usr/" + corpus.ABSOLUTE_LINKED
    assert not os.path.lexists(host_path)
    ref = tools.skopeo_push(umoci_symlinked, registry, "corpus/umoci-symlinked", "latest")
    try:
        made = pulled_and_unpacked_like_umoci(ref, minict, minict_dir, tmp_path, monkeypatch)
    finally:
        assert not os.path.lexists(host_path), "the layer wrote through lib -> /usr/lib on the host"
    assert os.readlink(made / "bin") == "usr/bin"
    assert sorted(os.listdir(made / "usr/bin/hl")) == ["a", "b"]
    out = runs(minict, ref, "cat /bin/newtool /bin/newtool-hard /var/run/app.pid /bin/inserted"
                            " /var/run/inserted.pid /lib/minict-corpus-abs.so /bin/hl/b;"
                            " test ! -e /bin/oldtool && test ! -e /usr/bin/oldtool2 && echo gone;"
                            " ls /run/opaque")
    assert out == ("new through bin\n" * 2 + "42\ninserted at /bin/inserted\n"
                   "inserted at /var/run/inserted.pid\ninserted at /lib/minict-corpus-abs.so\n"
                   "hardlinked under /bin/hl\ngone\nshown\n")


def test_repeated_and_empty_layers(base_layout, registry, minict, minict_dir, tmp_path,
                                   monkeypatch):
    layout = corpus.repeated_and_empty_layout(base_layout, tmp_path / "image")
    digests = [blob.name for blob in layer_blobs(layout)]
    assert len(digests) == 6 and digests[1] == digests[2] and digests[3] == digests[4]
    ref = tools.skopeo_push(layout, registry, "corpus/repeated", "latest")
    pulled_and_unpacked_like_umoci(ref, minict, minict_dir, tmp_path, monkeypatch)
    assert runs(minict, ref, "cat /same") == "inserted twice\n"


def _host_state(paths) -> dict:
    """What the host has at `paths` (type and content), to show a run left it alone."""
    state = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                state[path] = (os.lstat(path).st_mode, f.read())
        except OSError as err:
            state[path] = err.errno
    return state


def test_etc_files_bound_through_their_symlinks_in_the_rootfs(base_layout, registry, minict,
                                                              minict_dir, tmp_path, monkeypatch):
    """/etc/resolv.conf and /etc/hosts as symlinks: the binds land where they lead in the
    rootfs (made when missing), as runc resolves mount destinations, never on the host."""
    layout = corpus.etc_links_layout(base_layout, tmp_path / "image")
    ref = tools.skopeo_push(layout, registry, "corpus/etc-links", "latest")
    pulled_and_unpacked_like_umoci(ref, minict, minict_dir, tmp_path, monkeypatch)
    host = ["/run/systemd/resolve/stub-resolv.conf", "/run/hosts-file"]
    before = _host_state(host)
    with open("/etc/resolv.conf") as f:
        resolv = f.read()
    out = runs(minict, ref, "readlink /etc/resolv.conf; cat /etc/resolv.conf;"
                            " cat /run/systemd/resolve/stub-resolv.conf")
    assert out == "../run/systemd/resolve/stub-resolv.conf\n" + resolv * 2
    done = minict("run", "--image", ref, "--name", "none", "--rm", "--network", "none", "--",
                  "/bin/sh", "-c", "readlink /etc/hosts; cat /run/hosts-file")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("/run/hosts-file\n127.0.0.1\tlocalhost\n")
    assert _host_state(host) == before


# -- GNU tar and bsdtar layers from a real directory tree --------------------------------

# name: (what the tree holds, archiver, its options)
TAR_CASES = {
    "gnu": (Features(), corpus.gnu_tar_layer, {"tar_format": "gnu"}),
    "oldgnu": (Features(), corpus.gnu_tar_layer, {"tar_format": "oldgnu"}),
    "gnu-dot-slash": (Features(), corpus.gnu_tar_layer, {"tar_format": "gnu", "members": (".",)}),
    "posix-xattrs": (Features(xattrs=True), corpus.gnu_tar_layer,
                     {"tar_format": "posix", "xattrs": True}),
    "gnu-wide-times": (Features(wide_times=True), corpus.gnu_tar_layer, {"tar_format": "gnu"}),
    "posix-wide-times": (Features(wide_times=True), corpus.gnu_tar_layer,
                         {"tar_format": "posix"}),
    "ustar": (Features(long_names=False, big_ids=False), corpus.gnu_tar_layer,
              {"tar_format": "ustar"}),
    "gnu-sparse": (Features(sparse=True), corpus.gnu_tar_layer,
                   {"tar_format": "gnu", "sparse_version": ""}),
    "posix-sparse-0.0": (Features(sparse=True), corpus.gnu_tar_layer,
                         {"tar_format": "posix", "sparse_version": "0.0"}),
    "posix-sparse-0.1": (Features(sparse=True), corpus.gnu_tar_layer,
                         {"tar_format": "posix", "sparse_version": "0.1"}),
    "posix-sparse-1.0": (Features(sparse=True), corpus.gnu_tar_layer,
                         {"tar_format": "posix", "sparse_version": "1.0"}),
    "bsdtar-pax-xattrs": (Features(xattrs=True), corpus.bsdtar_layer, {"tar_format": "pax"}),
    "bsdtar-paxr-xattrs": (Features(xattrs=True), corpus.bsdtar_layer, {"tar_format": "paxr"}),
    "bsdtar-pax-wide-times": (Features(wide_times=True), corpus.bsdtar_layer,
                              {"tar_format": "pax"}),
    "bsdtar-gnutar": (Features(), corpus.bsdtar_layer, {"tar_format": "gnutar"}),
    "bsdtar-ustar": (Features(long_names=False, big_ids=False), corpus.bsdtar_layer,
                     {"tar_format": "ustar"}),
    "bsdtar-pax-sparse": (Features(sparse=True), corpus.bsdtar_layer, {"tar_format": "pax"}),
}


def tree_proof(features: Features) -> tuple[str, str]:
    """A script reading the tree through its links, and what it prints."""
    script = ("cd /corpus && cat rel-link abs-link hard-2 unicodé/ссылка 'unicodé/emoji-🐳'"
              " && stat -c '%u:%g %a' owned dir/sub/exec && test -p fifo -a -c null -a -b loop")
    expected = "plain file\n" * 3 + "こんにちは\nwhale\n1000:1001 644\n0:0 4755\n"
    if features.long_names:
        script += " && cat long-link hard-to-long"
        expected += "long name\n" * 2
    if features.big_ids:
        script += " && stat -c %u:%g big-id"
        expected += "3000000:3000001\n"
    if features.sparse:
        script += " && wc -c < sparse/holes && tail -c 8 sparse/tail && wc -c < sparse/hole-only"
        expected += f"{10 << 20}\nthe end\n{4 << 20}\n"
    return script, expected


@pytest.mark.parametrize("case", TAR_CASES)
def test_tar_layer(case, base_layout, registry, minict, minict_dir, tmp_path, monkeypatch):
    features, archiver, options = TAR_CASES[case]
    tree_root = corpus.source_tree(tmp_path / "tree", features)
    layer = archiver(tree_root, tmp_path / "layer.tar", **options)
    layout = corpus.with_layer(base_layout, tmp_path / "image", layer, case)
    ref = tools.skopeo_push(layout, registry, f"corpus/{case}", "latest")
    oracle_ref = None
    if case == "gnu-sparse":
        # umoci 0.4.7 refuses type 'S' ("unknown typeflag"), as containerd does; Go's
        # archive/tar and GNU tar read it.  Its oracle is the same tree without --sparse.
        plain = archiver(tree_root, tmp_path / "plain.tar", tar_format="gnu")
        plain_layout = corpus.with_layer(base_layout, tmp_path / "plain", plain, case)
        oracle_ref = tools.skopeo_push(plain_layout, registry, "corpus/gnu-plain", "latest")
    pulled_and_unpacked_like_umoci(ref, minict, minict_dir, tmp_path, monkeypatch, oracle_ref)
    script, expected = tree_proof(features)
    assert runs(minict, ref, script) == expected


def test_tar_members_named_through_symlinked_directories(base_layout, registry, minict,
                                                        minict_dir, tmp_path, monkeypatch):
    """`tar -c bin/gnutool` where bin -> usr/bin: the member is bin/gnutool."""
    tree_root, names = corpus.symlinked_tree(tmp_path / "tree")
    layer = corpus.gnu_tar_layer(tree_root, tmp_path / "layer.tar", "posix", members=names)
    with tarfile.open(layer) as archive:
        assert archive.getnames() == list(names)
    layout = corpus.with_layer(base_layout, tmp_path / "image", layer, "tar through links")
    ref = tools.skopeo_push(layout, registry, "corpus/tar-symlinked", "latest")
    made = pulled_and_unpacked_like_umoci(ref, minict, minict_dir, tmp_path, monkeypatch)
    assert os.readlink(made / "var/run") == "../run"
    out = runs(minict, ref, "cat /usr/bin/gnutool /run/gnu.pid")
    assert out == "archived as bin/gnutool\narchived as var/run/gnu.pid\n"


# -- skopeo copy between formats --------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}


@pytest.fixture(scope="module")
def skopeo_source(base_layout, tmp_path_factory):
    """The base with a GNU tar posix layer of the whole tree (xattrs, long names, devices)."""
    work = tmp_path_factory.mktemp("skopeo-source")
    tree_root = corpus.source_tree(work / "tree", Features(xattrs=True))
    layer = corpus.gnu_tar_layer(tree_root, work / "layer.tar", "posix", xattrs=True)
    return corpus.with_layer(base_layout, work / "image", layer, "tar posix")


def _copied(case, source, registry, work) -> str:
    """Make the `case` copy of OCI layout `source` in `registry`; return its reference."""
    oci = f"oci:{source}:{corpus.TAG}"
    target = registry.ref(f"corpus/skopeo-{case}:latest")
    if case == "v2s2":
        corpus.skopeo_copy(oci, f"docker://{target}", "--format", "v2s2")
    elif case == "v2s2-to-oci":
        docker = registry.ref("corpus/skopeo-docker:latest")
        corpus.skopeo_copy(oci, f"docker://{docker}", "--format", "v2s2")
        corpus.skopeo_copy(f"docker://{docker}", f"docker://{target}", "--format", "oci")
    elif case in ("zstd", "zstd-to-gzip"):
        # Through a layout: to a registry that has the gzip blobs, skopeo 1.9 reuses them.
        corpus.skopeo_copy(oci, f"oci:{work}/zstd:{corpus.TAG}", "--dest-compress-format", "zstd")
        zstd_target = target if case == "zstd" else registry.ref("corpus/skopeo-z:latest")
        corpus.skopeo_copy(f"oci:{work}/zstd:{corpus.TAG}", f"docker://{zstd_target}")
        if case == "zstd-to-gzip":
            corpus.skopeo_copy(f"oci:{work}/zstd:{corpus.TAG}", f"oci:{work}/gzip:{corpus.TAG}",
                               "--dest-compress-format", "gzip")
            corpus.skopeo_copy(f"oci:{work}/gzip:{corpus.TAG}", f"docker://{target}")
    elif case == "docker-archive":
        corpus.skopeo_copy(oci, f"docker-archive:{work}/image.tar:corpus/x:latest")
        corpus.skopeo_copy(f"docker-archive:{work}/image.tar", f"docker://{target}")
    elif case == "oci-archive":
        corpus.skopeo_copy(oci, f"oci-archive:{work}/image.tar:{corpus.TAG}")
        corpus.skopeo_copy(f"oci-archive:{work}/image.tar:{corpus.TAG}", f"docker://{target}")
    return target


# name: (the manifest type the registry serves, its layers' compression)
SKOPEO_CASES = {
    "v2s2": (DOCKER_MANIFEST, "gzip"),
    "v2s2-to-oci": (OCI_MANIFEST, "gzip"),
    "zstd": (OCI_MANIFEST, "zstd"),
    "zstd-to-gzip": (OCI_MANIFEST, "gzip"),
    "docker-archive": (DOCKER_MANIFEST, "gzip"),
    "oci-archive": (OCI_MANIFEST, "gzip"),
}


def served(registry, ref) -> tuple[str, list[str], list[bytes]]:
    """The manifest type the registry serves for `ref`, its layer types and their first bytes."""
    repo, _, tag = ref.removeprefix(registry.host + "/").rpartition(":")
    response = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", timeout=30,
                            headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"})
    response.raise_for_status()
    layers = response.json()["layers"]
    heads = [requests.get(f"{registry.url}/v2/{repo}/blobs/{layer['digest']}", timeout=30,
                          headers={"Range": "bytes=0-3"}).content[:4] for layer in layers]
    return response.headers["Content-Type"], [layer["mediaType"] for layer in layers], heads


@pytest.mark.parametrize("case", SKOPEO_CASES)
def test_skopeo_copy(case, skopeo_source, registry, minict, minict_dir, tmp_path, monkeypatch):
    ref = _copied(case, skopeo_source, registry, tmp_path)
    manifest_type, compression = SKOPEO_CASES[case]
    served_type, layer_types, heads = served(registry, ref)
    assert served_type == manifest_type
    suffix = ".gzip" if manifest_type == DOCKER_MANIFEST else f"+{compression}"
    assert all(t.endswith(suffix) for t in layer_types), layer_types
    assert all(head.startswith(MAGIC[compression]) for head in heads), heads
    pulled_and_unpacked_like_umoci(ref, minict, minict_dir, tmp_path, monkeypatch)
    script, expected = tree_proof(Features(xattrs=True))
    assert runs(minict, ref, script) == expected
