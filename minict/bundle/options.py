"""`run`'s and `exec`'s options, as docker spells them, turned into spec.Overrides.

The command line only parses; what `-e NAME`, `--cap-add`, `--device` or
`--security-opt seccomp=FILE` mean is decided here, so config.json gets the
same whatever front end asks.
"""

import os

from minict.bundle import capabilities, devices, spec
from minict.errors import MinictError


def overrides(*, entrypoint, cmd, env, workdir, user, hostname, cap_add, cap_drop, privileged,
              userns, security_opts, device_options, no_new_keyring) -> spec.Overrides:
    """Return spec.Overrides for `run`'s options (click's values: tuples, None when unset)."""
    return spec.Overrides(
        entrypoint=entrypoint, cmd=tuple(cmd) if cmd else None,
        env=env_options(env), workdir=workdir, user=user, hostname=hostname,
        cap_add=capabilities.normalize(cap_add), cap_drop=capabilities.normalize(cap_drop),
        privileged=privileged, userns=userns,
        devices=devices.from_options(device_options, privileged),
        no_new_keyring=no_new_keyring, **security_options(security_opts))


def env_options(items) -> tuple[str, ...]:
    """Return -e options as NAME=value; a bare NAME takes minict's own value, as docker does."""
    result = []
    for item in items:
        name, sep, _ = item.partition("=")
        if not name:
            raise MinictError(f"invalid environment variable {item!r}: use KEY=VALUE or KEY")
        if sep:
            result.append(item)
        elif name in os.environ:
            result.append(f"{name}={os.environ[name]}")
    return tuple(result)


def security_options(items) -> dict:
    """Return --security-opt values as spec.Overrides fields (docker's spellings, = or :)."""
    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            key, sep, value = item.partition(":")
        if key == "no-new-privileges" and value in ("", "true", "false"):
            fields["no_new_privileges"] = value != "false"
        elif key == "seccomp" and value == "unconfined":
            fields.update(seccomp_unconfined=True, seccomp_profile=None)
        elif key == "seccomp" and value:
            from minict.bundle import seccomp

            fields.update(seccomp_unconfined=False, seccomp_profile=seccomp.read_profile(value))
        else:
            raise MinictError(f"invalid --security-opt {item!r}: use seccomp=unconfined, "
                              "seccomp=PROFILE.json or no-new-privileges[=true|false]")
    return fields
