"""Running minict as nobody from a clone nobody cannot read (a 0700 home such as /root)."""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

import minict
from tests.support import nobody

pytestmark = pytest.mark.root
CHECKOUT = Path(minict.__file__).parent


@pytest.fixture
def home():
    """A directory under /tmp that everyone can enter, holding `home`, a 0700 one like /root."""
    top = nobody.world_readable_tmp()
    (top / "home").mkdir(mode=0o700)
    yield top
    shutil.rmtree(top)


def test_the_reason_names_the_closed_directory(home):
    venv = home / "home" / "clone" / ".venv"
    venv.mkdir(parents=True)
    assert nobody.unreadable_by_nobody(venv) == (
        f"nobody cannot read {venv}: {home / 'home'} is mode 0700, owner uid 0")
    (home / "home").chmod(0o755)
    assert nobody.unreadable_by_nobody(venv) is None


def test_minict_runs_as_nobody_from_a_clone_in_a_closed_home(home):
    clone = home / "home" / "clone"
    shutil.copytree(CHECKOUT, clone / "minict", ignore=shutil.ignore_patterns("__pycache__"))
    pythonpath = f"{clone}:{sysconfig.get_path('purelib')}"
    python, readable = nobody.python_for_nobody(pythonpath, home / "site")
    # The clone itself is out of nobody's reach: what runs is the copy.
    assert readable == str(home / "site")
    assert not nobody._imports_as_nobody(python, pythonpath)
    done = subprocess.run([python, "-m", "minict", "--version"], capture_output=True, text=True,
                          check=False, cwd="/", env={"PYTHONPATH": readable,
                                                     "PYTHONDONTWRITEBYTECODE": "1"},
                          **nobody.NOBODY)
    assert (done.returncode, done.stdout) == (0, f"minict version {minict.__version__}\n")


def test_when_no_copy_helps_the_error_says_which_directory_is_closed(home):
    clone = home / "home" / "clone"
    shutil.copytree(CHECKOUT, clone / "minict", ignore=shutil.ignore_patterns("__pycache__"))
    closed = home / "home"
    with pytest.raises(RuntimeError) as raised:
        nobody.python_for_nobody(f"{clone}:{sysconfig.get_path('purelib')}", closed / "site")
    assert f"nobody cannot read {closed / 'site'}: {closed} is mode 0700" in str(raised.value)
