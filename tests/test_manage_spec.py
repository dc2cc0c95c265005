"""run's options as overrides of the image config (spec.override): docker run's rules."""

import pytest

from minict.bundle import spec

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app\n"
IMAGE = {"config": {"Entrypoint": ["/entry"], "Cmd": ["serve", "--port", "80"],
                    "Env": ["A=image", "B=image"], "WorkingDir": "/srv", "User": "app"}}


def make(**options):
    return spec.generate(IMAGE, "box", PASSWD, GROUP, spec.Overrides(**options))


@pytest.mark.parametrize("options, args", [
    ({}, ["/entry", "serve", "--port", "80"]),
    ({"cmd": ("sh", "-c", "echo hi")}, ["/entry", "sh", "-c", "echo hi"]),
    ({"entrypoint": "/bin/echo"}, ["/bin/echo"]),
    ({"entrypoint": "/bin/echo", "cmd": ("x",)}, ["/bin/echo", "x"]),
    ({"entrypoint": ""}, ["serve", "--port", "80"]),
    ({"entrypoint": "", "cmd": ("id",)}, ["id"]),
])
def test_entrypoint_and_command_follow_docker(options, args):
    assert make(**options)["process"]["args"] == args


def test_env_overrides_and_extends_the_image_env():
    env = make(env=("B=run", "C=run"))["process"]["env"]
    assert "A=image" in env and "B=run" in env and "C=run" in env
    assert "B=image" not in env


def test_workdir_hostname_and_user():
    config = make(workdir="/tmp/new", hostname="web", user="root")
    assert config["process"]["cwd"] == "/tmp/new"
    assert config["hostname"] == "web"
    assert config["process"]["user"] == {"uid": 0, "gid": 0}
    assert make()["hostname"] == "box"


@pytest.mark.parametrize("user, expected", [
    ("1234", {"uid": 1234, "gid": 0}),
    ("1234:77", {"uid": 1234, "gid": 77}),
    ("app", {"uid": 1000, "gid": 1000, "additionalGids": [50]}),
    ("app:staff", {"uid": 1000, "gid": 50}),
])
def test_user_resolves_through_the_rootfs_databases(user, expected):
    assert make(user=user)["process"]["user"] == expected


@pytest.mark.parametrize("options, message", [
    ({"workdir": "relative"}, "absolute path"),
    ({"user": "nobody"}, "cannot find user 'nobody'"),
    ({"user": "app:wheel"}, "cannot find group 'wheel'"),
    ({"hostname": "h" * 65}, "longer than 64"),
    ({"env": ("=x",)}, "NAME=value"),
])
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(spec.SpecError, match=message):
        make(**options)


def test_the_image_config_is_not_changed():
    before = repr(IMAGE)
    make(entrypoint="x", cmd=("y",), env=("A=1",), workdir="/w", user="root")
    assert repr(IMAGE) == before
