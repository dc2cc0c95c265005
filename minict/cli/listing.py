"""Readable listings: the `--format table` of list-images and list-containers, and inspect.

The JSON arrays stay the default (commands.py prints them, as the original did);
the tables are for people and import rich, so only this code path pays for it.
Cells quote images (a Cmd, a `created` date): minict.text escapes them, and
hands them to rich as Text, which is never parsed as markup.  inspect's JSON
needs nothing more: json.dumps escapes every control character.
"""

import os
import shlex

from minict import fsutil, store, text
from minict.errors import ContainerError, MinictError
from minict.image import layout as layouts
from minict.image import mediatypes
from minict.runtime import container
from minict.runtime import state as states


def image_rows() -> list[dict]:
    """Return one row per stored image: name, tag, digest, size (bytes), created."""
    rows = []
    for repository, path in store.list_image_dirs():
        layout = layouts.Layout(path)
        for ref_name, descriptor in sorted(layout.refs(), key=lambda r: r[0]):
            row = {"name": repository, "tag": ref_name, "digest": descriptor.get("digest", ""),
                   "size": None, "created": ""}
            try:
                manifest = _manifest(layout, descriptor)
                blobs = [manifest.get("config") or {}, *(manifest.get("layers") or [])]
                row["size"] = sum(b.get("size", 0) for b in blobs if isinstance(b, dict))
                config = layout.read_json_blob(manifest["config"]["digest"])
                row["created"] = str(config.get("created") or "")
            except (MinictError, KeyError, TypeError):
                pass  # a damaged image still gets its row, with what is known
            rows.append(row)
    return rows


def _manifest(layout: layouts.Layout, descriptor: dict) -> dict:
    """Return the image manifest `descriptor` names (this host's one, for an index)."""
    manifest = layout.read_json_blob(descriptor["digest"])
    if mediatypes.is_index(descriptor.get("mediaType"), manifest):
        from minict.bundle import create as bundle

        manifest = layout.read_json_blob(bundle.pick_platform(manifest)["digest"])
    return manifest


def container_rows() -> list[dict]:
    """Return one row per container: name, image, status, exitStatus, created, command."""
    rows = []
    for name in container.list_names():
        path = store.container_dir(name)
        mark = fsutil.read_json(store.bundle_file(path, store.COMPLETE_MARK), {})
        config = fsutil.read_json(store.bundle_file(path, store.CONFIG_NAME), {})
        state = states.read_state(path)
        status = state.get("status") or "created"
        if status == "running" and states.running_pid(path) is None:
            status = "exited"  # its minict died (and took the container along)
        rows.append({
            "name": name, "image": mark.get("image", ""), "status": status,
            "exitStatus": state.get("exitStatus"), "created": mark.get("created", ""),
            "command": shlex.join((config.get("process") or {}).get("args") or []),
        })
    return rows


def inspect(name: str) -> dict:
    """Return container `name`'s state and config.json; raise ContainerError if it does not exist."""
    path = store.container_dir(name)
    if not states.is_complete(path):
        raise ContainerError(f"Container with name {name} does not exist.")
    mark = fsutil.read_json(store.bundle_file(path, store.COMPLETE_MARK), {})
    state = states.read_state(path)
    return {
        "Name": name,
        "Path": str(path),
        "Image": mark.get("image", ""),
        "ImageManifest": mark.get("manifest", ""),
        "Created": mark.get("created", ""),
        "State": {**state, "running": states.running_pid(path) is not None},
        "Config": fsutil.read_json(store.bundle_file(path, store.CONFIG_NAME), {}),
    }


def print_images() -> None:
    """Print the images as a table: name, tag, digest prefix, size, created."""
    table = _table("NAME", "TAG", "DIGEST", "SIZE", "CREATED", short=("DIGEST", "SIZE"))
    for row in image_rows():
        _add_row(table, row["name"], row["tag"], row["digest"].removeprefix("sha256:")[:12],
                 _size(row["size"]), row["created"][:19].replace("T", " "))
    _print(table)


def print_containers() -> None:
    """Print the containers as a table: name, image, status with exit code, created, command."""
    table = _table("NAME", "IMAGE", "STATUS", "CREATED", "COMMAND", short=("STATUS",))
    for row in container_rows():
        status = row["status"]
        if status == "exited":
            code = row["exitStatus"]
            status += f" ({code})" if code is not None else " (failed to start)"
        # Escaped before it is cut, so the cut never splits an escape's meaning.
        command = text.cut(text.printable(row["command"]), 40)
        _add_row(table, row["name"], row["image"], status,
                 row["created"][:19].replace("T", " "), command)
    _print(table)


def _add_row(table, *values) -> None:
    # Every cell may hold an image's text (Cmd, created): shown escaped, never as markup.
    table.add_row(*(text.cell(value) for value in values))


def _table(*columns, short=()):
    """Return a rich Table; the `short` columns never wrap, the others fold when narrow.

    A terminal of 80 columns cannot hold a 128-character name beside an
    image reference and a command: rather than drop or cut a column (rich's
    way with unbreakable cells), long cells fold onto more lines, whole.
    """
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column in short, overflow="fold")
    return table


def _print(table) -> None:
    from rich.console import Console

    # Not a terminal (a pipe, a file): wide enough that no row wraps.
    Console(width=None if os.isatty(1) else 250, soft_wrap=False).print(table)


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""
