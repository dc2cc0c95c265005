"""The command line: each command parses, calls one function, and formats.

The commands, flags and one-line usages are the Go original's (urfave/cli):
pull, run, start, rm, list-containers, list-images, and help (alias h).
Every failure is one `fatal <message>` line on standard error and exit 1;
click's own usage errors keep exit 2.  Heavy modules (rich, the registry client) are
imported inside the commands that need them, so `--help` and `start` stay fast.
"""

import json
import os
import sys

import click

from minict import __version__, log
from minict.cli import outcome
from minict.errors import MinictError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# The original's order (urfave/cli lists commands as declared, not sorted).
ORDER = ["pull", "run", "start", "rm", "list-containers", "list-images", "help",
         "exec", "rmi", "prune", "inspect"]
ALIASES = {"h": "help"}


class StateCommand(click.Command):
    """A command that uses $MINICT_DIR: images/ and containers/ exist once it runs.

    As in the original, whether it then succeeds or not.  invoke() runs only
    after the arguments parsed, so `--help` (and a usage error) creates nothing.
    """

    def invoke(self, ctx):
        from minict import store

        store.ensure_dirs()
        return super().invoke(ctx)


class MinictGroup(click.Group):
    """A group that keeps the original's command order and the `h` alias."""

    command_class = StateCommand

    def list_commands(self, ctx):
        known = [name for name in ORDER if name in self.commands]
        return known + sorted(set(self.commands) - set(known))

    def get_command(self, ctx, name):
        return super().get_command(ctx, ALIASES.get(name, name))

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        return (command.name if command else name), command, rest

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            shown = ", ".join([name] + [a for a, target in ALIASES.items() if target == name])
            rows.append((shown, command.get_short_help_str(limit=80)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=MinictGroup, context_settings=CONTEXT, invoke_without_command=True,
             subcommand_metavar="COMMAND [ARGS]...")
@click.version_option(__version__, "--version", prog_name="minict", message="%(prog)s version %(version)s")
@click.option("--debug", is_flag=True, help="Print debug lines for every request and decision "
              "(also MINICT_LOG_LEVEL=debug).")
@click.pass_context
def group(ctx, debug):
    """A minimal, easy-to-understand container runtime."""
    if debug:
        log.set_debug(True)
    if ctx.invoked_subcommand is None:
        # Like the original (urfave/cli): no command shows the help and succeeds.
        click.echo(ctx.get_help())


def _parse_reference(text):
    from minict.image import reference

    return reference.parse(text)


def _print_json_list(items):
    """Print a JSON array indented by tabs, as Go's json.MarshalIndent(x, "", "\\t")."""
    click.echo(json.dumps(list(items), indent="\t"))


@group.command(short_help="Pull an image from Dockerhub or a different container registry.")
@click.option("--image", required=True, help="The image to pull, e.g. ubuntu:20.04.")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]",
              help="Which platform to pick from a multi-platform image (default: this host's).")
@click.option("--insecure", is_flag=True,
              help="Allow plain HTTP and unverified TLS for this registry.")
@click.option("--jobs", "-j", type=click.IntRange(1, 32), default=outcome.PULL_JOBS,
              show_default=True,
              help="How many blobs to download at once.")
@click.option("--quiet", "-q", is_flag=True, help="Print only errors.")
def pull(image, platform, insecure, jobs, quiet):
    """Pull an image from Dockerhub or a different container registry."""
    outcome.pull(image, platform=platform, insecure=insecure, jobs=jobs, quiet=quiet)


@group.command(short_help="Run a new container.")
@click.option("--image", required=True, help="The image to run, as pulled (see list-images).")
@click.option("--name", required=True, help="The new container's name.")
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@click.option("--env", "-e", multiple=True, metavar="KEY[=VALUE]",
              help="Set an environment variable (KEY alone: minict's own value). Repeatable.")
@click.option("--workdir", "-w", metavar="DIR", help="The working directory (created if missing).")
@click.option("--user", "-u", metavar="USER[:GROUP]",
              help="Run as this user: a name or uid, with an optional group name or gid.")
@click.option("--hostname", help="The container's host name (default: its name).")
@click.option("--entrypoint", metavar="PROGRAM",
              help="Replace the image's Entrypoint (and drop its Cmd); '' clears it.")
@click.option("--pull", "pull_policy", type=click.Choice(["missing", "always", "never"]),
              default="never", show_default=True, help="When to pull the image first.")
@click.option("--network", type=click.Choice(["host", "none", "bridge"]), default="host",
              show_default=True, help="The host's network, only loopback, or an address on "
              "minict's bridge (minict0).")
@click.option("--publish", "-p", multiple=True, metavar="HOSTPORT:PORT[/tcp|udp]",
              help="Publish a container port on the host (--network bridge). Repeatable.")
@click.option("--cap-add", multiple=True, metavar="CAP",
              help="Add a capability to docker's default 14 (CHOWN or CAP_CHOWN; ALL for "
              "every one). Repeatable. SYS_ADMIN lets the container unmount its masked and "
              "read-only paths: as its root is the host's uid 0, that is --privileged.")
@click.option("--cap-drop", multiple=True, metavar="CAP",
              help="Drop a capability (ALL drops all but those added). Repeatable.")
@click.option("--privileged", is_flag=True,
              help="Give the container the host: every capability, every device, no "
              "system-call filter, nothing masked or read-only in /proc (/sys stays read-only "
              "until the container remounts it). Its root is the host's uid 0, so it can "
              "change the host kernel's settings in /proc/sys and run programs as root on "
              "the host (kernel.core_pattern).")
@click.option("--userns", type=click.Choice(["identity", "auto", "host"]), default="identity",
              show_default=True, help="identity: a user namespace mapping every id to itself "
              "(container root is host uid 0 for files); auto: 65536 host ids of minict's "
              "/etc/subuid range no other container uses (container root is an unprivileged "
              "host user); host: the host's user namespace (container root is host root, "
              "limited only by its capabilities).")
@click.option("--security-opt", "security_opts", multiple=True, metavar="OPTION",
              help="seccomp=unconfined (no system-call filter), seccomp=PROFILE.json "
              "(docker's or the OCI format; default: docker's profile), or "
              "no-new-privileges[=true|false] (setuid and file capabilities stop "
              "working). Repeatable.")
@click.option("--device", multiple=True, metavar="/dev/HOSTDEV[:CONTAINERPATH][:rwm]",
              help="Give the container a host device, with these permissions (default rwm). "
              "Repeatable.")
@click.option("--no-new-keyring", is_flag=True,
              help="Keep the container in minict's session keyring instead of a new empty one: "
              "it can then use every key of the caller's session (as runc's flag).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND [ARG]...]")
def run(image, name, auto_remove, env, workdir, user, hostname, entrypoint, pull_policy,
        network, publish, cap_add, cap_drop, privileged, userns, security_opts, device,
        no_new_keyring, command):
    """Run a new container.

    A COMMAND after `--` replaces the image's Cmd.  Whatever is given here
    is kept in the container's config.json, so `start` repeats it.
    """
    from minict import store
    from minict.bundle import options
    from minict.runtime import container
    from minict.runtime.netsettings import parse_publish

    store.check_container_name(name)
    ref = _parse_reference(image)
    ports = [parse_publish(p) for p in publish]
    overrides = options.overrides(
        entrypoint=entrypoint, cmd=command, env=env, workdir=workdir, user=user,
        hostname=hostname, cap_add=cap_add, cap_drop=cap_drop, privileged=privileged,
        userns=userns, security_opts=security_opts, device_options=device,
        no_new_keyring=no_new_keyring)
    status = container.run(ref, name, overrides, auto_remove=auto_remove, pull=pull_policy,
                           network=network, publish=ports)
    outcome.exit_now(status)


@group.command(short_help="Start an existing container that was exited.")
@click.option("--name", required=True, help="The container to start.")
def start(name):
    """Start an existing container that was exited."""
    outcome.start(name)


@group.command(short_help="Remove an existing container.")
@click.option("--name", required=True, help="The container to remove.")
@click.option("--force", "-f", is_flag=True, help="Kill the container first if it is running.")
def rm(name, force):
    """Remove an existing container."""
    from minict import store
    from minict.runtime import container

    store.check_container_name(name)
    container.remove(name, force=force)
    log.info("Container removed successfully.")


_FORMAT = click.option("--format", "output", type=click.Choice(["json", "table"]), default="json",
                       show_default=True, help="The original's JSON array, or a table.")


@group.command("list-containers", short_help="List all current containers.")
@_FORMAT
def list_containers(output):
    """List all current containers."""
    if output == "table":
        from minict.cli import listing

        listing.print_containers()
        return
    from minict import store

    _print_json_list(store.list_container_names())


@group.command("list-images", short_help="List all images.")
@_FORMAT
def list_images(output):
    """List all images."""
    if output == "table":
        from minict.cli import listing

        listing.print_images()
        return
    from minict.image import layout

    _print_json_list(layout.list_images())


@group.command("exec", short_help="Run a command inside a running container.",
               context_settings={"ignore_unknown_options": True})
@click.option("--name", required=True, help="The running container.")
@click.option("--env", "-e", multiple=True, metavar="KEY[=VALUE]",
              help="Set an environment variable (KEY alone: minict's own value). Repeatable.")
@click.option("--workdir", "-w", metavar="DIR", help="The working directory.")
@click.option("--user", "-u", metavar="USER[:GROUP]", help="Run as this user (as run -u).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- COMMAND [ARG]...")
def exec_command(name, env, workdir, user, command):
    """Run a command inside a running container, with its env, cwd, user and capabilities.

    Exits with the command's exit status.
    """
    from minict import store
    from minict.bundle import options
    from minict.runtime import container

    store.check_container_name(name)
    outcome.exit_now(container.exec_in(name, list(command), env=options.env_options(env),
                                       workdir=workdir, user=user))


@group.command(short_help="Remove an image and the blobs only it used.")
@click.option("--image", required=True, help="The image to remove, as list-images shows it.")
def rmi(image):
    """Remove an image's tag, then every blob of its repository no tag references any more."""
    from minict.image import gc as images

    names, deleted = images.remove(_parse_reference(image))
    for name in names:
        click.echo(f"Untagged: {name}")
    for digest in deleted:
        click.echo(f"Deleted: {digest}")


@group.command(short_help="Remove stopped containers, unreferenced blobs and leftovers.")
@click.option("--force", "-f", is_flag=True,
              help="Do not ask for confirmation, and take leftovers however recent.")
def prune(force):
    """Remove every container that is not running, and every blob no image references.

    Also what killed runs and pulls left: half-made bundles and partial
    downloads an hour old, or all of them with --force (never one that a
    run or pull is still writing).
    """
    from minict.image import gc as images
    from minict.runtime import container

    if not force and not _confirm("This removes all stopped containers, all unreferenced "
                                  "image blobs and leftovers of interrupted runs and pulls. "
                                  "Continue?"):
        click.echo("nothing removed")
        return
    for name in container.prune():
        click.echo(f"Deleted container: {name}")
    for name in container.prune_partial_bundles(force):
        click.echo(f"Deleted partial bundle: {name}")
    deleted = images.prune()
    for digest in deleted:
        click.echo(f"Deleted: {digest}")
    for digest in images.prune_partial_downloads(force):
        click.echo(f"Deleted partial download: {digest}")


def _confirm(question: str) -> bool:
    """Ask `question` on standard error; return True only for a yes.

    Declining, or no answer at all (end of input), is no failure.  An answer
    read from a pipe is not echoed, so the prompt's line is ended here.
    """
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.exceptions.Abort:  # end of input
        answer = False
        click.echo(err=True)
    else:
        if not sys.stdin.isatty():
            click.echo(err=True)
    return answer


@group.command(short_help="Show a container's state and config as JSON.")
@click.option("--name", required=True, help="The container.")
def inspect(name):
    """Show a container's state and config as JSON."""
    from minict import store
    from minict.cli import listing

    store.check_container_name(name)
    click.echo(json.dumps(listing.inspect(name), indent="\t"))


@group.command("help", cls=click.Command, short_help="Shows a list of commands or help for one command")
@click.argument("command", required=False)
@click.pass_context
def help_command(ctx, command):
    """Shows a list of commands or help for one command"""
    parent = ctx.parent
    if not command:
        click.echo(parent.get_help())
        return
    target = group.get_command(parent, command)
    if target is None:
        raise MinictError(f"No help topic for '{command}'")
    with click.Context(target, info_name=target.name, parent=parent) as sub:
        click.echo(target.get_help(sub))


def main(argv=None):
    """Run the CLI; turn every failure into one `fatal` line and exit 1 (outcome.guard)."""
    if os.environ.get("MINICT_LOG_LEVEL", "").lower() == "debug":
        log.set_debug(True)

    def invoke():
        try:
            group.main(args=argv, prog_name="minict", standalone_mode=False)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.ClickException as usage:
            usage.show()
            sys.exit(usage.exit_code)
        except click.exceptions.Abort:
            log.fatal("aborted")
            sys.exit(1)

    outcome.guard(invoke)
    sys.exit(0)


if __name__ == "__main__":
    main()
