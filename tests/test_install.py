"""The installed tool: a wheel built from this checkout, in a clean venv, far from the repository.

The wheel is built from a copy of the checkout (the files git tracks, and new ones not yet
added), with a gettext catalog added the way a later change will (the compiled .mo
git-ignored), so the test shows what a release's wheel carries. Dependencies come from the
package index once per run, into a wheelhouse every install here then reads with
`--no-index` (PIP_NO_INDEX, PIP_FIND_LINKS), so that the install commands stay exactly as
the Dockerfile and the README write them.

Two slow tests follow it end to end: the Dockerfile's install steps and commands, as the
image's user (an unprivileged uid, when the test runs as root) would run them; and README's
"Using it" block, typed line by line into a fresh bash with no venv, no PYTHONPATH and
nothing of the repository's on its PATH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from newsletter import config
from newsletter.delivery.sink import ServerThread
from tests.processes import Running
from tests.smtpd import RecordingHandler
from tests.test_cli import free_port

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534  # the image's user stands in as this uid when the test may switch to it
# The image's `python` is the base image's own; here the system's, which any user may run
# (a venv keeps a link to its interpreter, and the test runner's may sit in root's home).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
SECRET = "install-test-secret-0123456789"


@dataclass(frozen=True)
class Built:
    checkout: Path  # the copy of the repository the wheel was built from
    wheel: Path
    wheelhouse: Path  # the wheel's dependencies and the build backend, from the index

    def pip_env(self) -> dict[str, str]:
        return {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(self.wheelhouse),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }


def copy_checkout(target: Path) -> None:
    """The repository's files as a fresh clone plus uncommitted work would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Once a session (a worker): the slow tests run first, apart from the quick ones of this module.
@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("built")
    checkout = root / "checkout"
    copy_checkout(checkout)
    pip("wheel", "--no-deps", "--wheel-dir", str(root / "dist"), str(checkout))
    (wheel,) = (root / "dist").glob("newsletter-*.whl")
    wheelhouse = root / "wheelhouse"
    pip("wheel", "--wheel-dir", str(wheelhouse), str(wheel), "hatchling>=1.25")
    return Built(checkout, wheel, wheelhouse)


def test_the_wheel_carries_what_a_site_needs(built: Built) -> None:
    names = set(zipfile.ZipFile(built.wheel).namelist())
    migrations = REPO / "newsletter" / "storage" / "migrations"
    for path in [*migrations.rglob("*.py"), migrations / "script.py.mako"]:
        if "__pycache__" not in path.parts:
            assert path.relative_to(REPO).as_posix() in names
    for template in (REPO / "templates").rglob("*"):
        if template.is_file():
            assert f"newsletter/_site/{template.relative_to(REPO).as_posix()}" in names
    assert "newsletter/_site/templates/static/favicon.ico" in names
    assert "newsletter/skeleton/config.toml" in names
    # The catalogs, read from their .po files at run time (newsletter/i18n.py).
    assert "newsletter/locale/zh_Hans/LC_MESSAGES/messages.po" in names
    assert not any("__pycache__" in n or n.startswith(("tests/", "bench/")) for n in names)


# --- the Dockerfile, read ----------------------------------------------------------------


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]]  # (INSTRUCTION, its arguments), continuations joined

    def all(self, name: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"the Dockerfile's final stage has no {name}"
        return found[-1]


def dockerfile_stages() -> list[Stage]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    stages: list[Stage] = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append(Stage(args.split()[0], []))
        elif stages:
            stages[-1].instructions.append((instruction.upper(), args.strip()))
    return stages


def run_steps(stage: Stage) -> list[list[str]]:
    """The final stage's RUN commands, one argv each (`--mount` flags dropped)."""
    commands: list[list[str]] = []
    for run in stage.all("RUN"):
        words = [w for w in shlex.split(run) if not w.startswith("--mount=")]
        command: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def exec_form(args: str) -> list[str]:
    """A CMD or HEALTHCHECK's command in exec form (a JSON array)."""
    found: list[str] = json.loads(args[args.index("[") :])
    return found


def test_the_dockerfile_builds_from_the_wheel_on_a_slim_base_as_a_user_of_its_own() -> None:
    wheel_stage, final = dockerfile_stages()
    assert re.fullmatch(r"python:\$\{PYTHON\}-slim", final.base)
    assert "pip wheel" in " ".join(wheel_stage.all("RUN"))
    steps = run_steps(final)
    assert [s[:4] for s in steps[:2]] == [
        ["python", "-m", "venv", "--without-pip"],
        ["python", "-m", "pip", "--python"],
    ]
    assert steps[1][-1] == "/wheels/newsletter-*.whl"
    user = final.last("USER")
    assert user not in ("root", "0")
    assert any(s[0] == "useradd" and user in s for s in steps)
    health = final.last("HEALTHCHECK")
    assert "CMD" in health
    assert exec_form(health)[0] == "python"
    assert exec_form(final.last("CMD"))[:2] == ["newsletter", "serve"]


# --- the wheel, installed as the Dockerfile does, run as the image's user -----------------


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A folder the image's user can reach (pytest's own are the test runner's alone)."""
    root = Path(tempfile.mkdtemp(prefix="newsletter-image-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def as_user(argv: list[str]) -> list[str]:
    """The command as the image's user runs it: an unprivileged uid when we may switch."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return argv
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def install_as_the_dockerfile_does(built: Built, venv: Path) -> None:
    final = dockerfile_stages()[-1]
    for step in run_steps(final):
        if step[0] != "python":
            continue  # useradd, install -d: the test's user and folders stand in for them
        argv = [SYSTEM_PYTHON, *step[1:]]
        argv = [a.replace("/opt/newsletter", str(venv)) for a in argv]
        argv = [str(built.wheel) if a == "/wheels/newsletter-*.whl" else a for a in argv]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, **built.pip_env()},
        )
        assert done.returncode == 0, f"{shlex.join(step)}:\n{done.stdout}{done.stderr}"


def image_env(venv: Path, home: Path) -> dict[str, str]:
    """What the image's processes see: its ENV lines, and no trace of this repository."""
    return {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "COLUMNS": "200",
        "NEWSLETTER_SECRET_KEY": SECRET,
    }


def chown_tree(path: Path) -> None:
    if os.geteuid() == 0:
        for p in [path, *path.rglob("*")]:
            os.chown(p, NOBODY, NOBODY)


@pytest.mark.slow
def test_the_wheel_in_a_clean_venv_runs_a_site_outside_the_repository(
    built: Built, image_root: Path
) -> None:
    venv, site = image_root / "venv", image_root / "site"
    install_as_the_dockerfile_does(built, venv)
    site.mkdir()
    chown_tree(site)
    env = image_env(venv, site)

    def newsletter(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            as_user(["newsletter", *args]),
            cwd=site,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"newsletter {shlex.join(args)}:\n{done.stdout}{done.stderr}"
        return done

    where = subprocess.run(
        as_user(["python", "-c", "import newsletter; print(newsletter.__file__)"]),
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv / "lib"), where
    assert "site-packages" in Path(where).parts

    handler = RecordingHandler()
    with ServerThread(handler) as relay:
        web_port = free_port()
        newsletter(
            "init",
            ".",
            "--name",
            "Harbour Notes",
            "--from",
            "news@harbour.example",
            "--url",
            f"http://127.0.0.1:{web_port}",
            "--relay",
            f"127.0.0.1:{relay.port}",
        )
        assert "created the database" in newsletter("db", "upgrade").stdout
        (site / "subscribers" / "members.csv").write_text("email,name\nada@harbour.example,Ada\n")
        (site / "posts").mkdir()
        (site / "posts" / "tide.md").write_text(
            "---\ntitle: The tide tables\n---\nSee [the tables](https://harbour.example/t).\n"
        )
        chown_tree(site)
        newsletter("subscribers", "import", "subscribers/members.csv")
        newsletter("items", "import", "posts")
        sent = newsletter("send")
        assert "issue #1: 1 delivered" in sent.stdout
    (message,) = handler.messages
    assert message.rcpt_to == "ada@harbour.example"
    parsed = message.parse()
    assert parsed["Subject"] == "Harbour Notes: The tide tables"
    body = parsed.get_body(("plain",))
    assert body is not None
    # The item's link, as its words then the URL; the URL goes through the site's click
    # redirect (/r/), which leads to https://harbour.example/t.
    assert re.search(rf"the tables \(http://127\.0\.0\.1:{web_port}/r/[\w-]+\)", body.get_content())

    # The image's command, on this machine's loopback and a free port.
    final = dockerfile_stages()[-1]
    port = str(free_port())
    cmd = [{"0.0.0.0": "127.0.0.1", "8000": port}.get(a, a) for a in exec_form(final.last("CMD"))]
    with Running(as_user(cmd), cwd=site, env=env) as serving:
        serving.wait_for(rf"serving Harbour Notes on http://127\.0\.0\.1:{port} ")
        serving.wait_for(r"Application startup complete")
        home = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert home.status == 200
        assert "<h1>Harbour Notes</h1>" in home.read().decode()
        feed = urllib.request.urlopen(f"http://127.0.0.1:{port}/archive.atom", timeout=10)
        assert b"The tide tables" in feed.read()
        health = [a.replace("8000", port) for a in exec_form(final.last("HEALTHCHECK"))]
        checked = subprocess.run(as_user(health), cwd=site, env=env, timeout=30)
        assert checked.returncode == 0
        assert serving.stop() == -15  # SIGTERM: a clean stop, as docker stop sends it
    assert "Finished server process" in serving.output
    assert not (venv / "var").exists()  # nothing written beside the package


# --- README's "Using it", typed into a fresh shell --------------------------------------


def readme_block() -> list[str]:
    """The command lines of the first code block of README's "Using it" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Using it") :]
    body = section.split("```", 2)[1]
    return [line for line in body.splitlines()[1:] if line.strip()]


@pytest.mark.slow
def test_readme_using_it_works_line_by_line_in_a_fresh_shell(built: Built, tmp_path: Path) -> None:
    lines = readme_block()
    assert lines[0].startswith("python3 -m venv ")
    assert any(line.startswith("cd ~") for line in lines)
    assert lines[-1].startswith("newsletter serve")
    web, smtp = free_port(), free_port()
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "COLUMNS": "200",
        **built.pip_env(),
    }
    with Running(
        ["bash", "--norc", "--noprofile"], cwd=built.checkout, env=env, stdin=True
    ) as shell:
        for n, line in enumerate(lines, 1):
            typed = line.replace("8000", str(web)).replace("8025", str(smtp))
            shell.write(typed + "\n")
            if typed.startswith("newsletter serve"):
                shell.wait_for(rf"serving Harbour Notes on http://127\.0\.0\.1:{web} ")
                shell.wait_for(r"Application startup complete")
                break
            shell.write(f'echo "step {n} exit $?"\n')
            status = shell.wait_for(rf"^step {n} exit (\d+)$", timeout=600)
            assert status.group(1) == "0", f"line {n}: {line}\n{shell.output}"
            if typed.rstrip().endswith("&"):
                shell.wait_for(rf"SMTP sink on 127\.0\.0\.1:{smtp}")
        page = urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=10).read().decode()
        assert "<h1>Harbour Notes</h1>" in page
        archive = urllib.request.urlopen(f"http://127.0.0.1:{web}/archive", timeout=10).read()
        assert b"Harbour Notes: Hello" in archive
        shell.stop()
    output = shell.output
    assert "newsletter 0.1.0" in output  # newsletter --version, from the venv
    assert re.search(r"issue #1: 1 delivered", output), output
    (eml,) = (home / "mysite" / "var" / "outbox").glob("*.eml")
    assert "ada@example.org" in eml.read_text(encoding="utf-8")


def test_compose_describes_postgresql_serve_and_a_worker_from_the_image() -> None:
    text = (REPO / "compose.yaml").read_text(encoding="utf-8")
    services = yaml.safe_load(text)["services"]
    assert set(services) == {"db", "web", "worker"}
    assert services["db"]["image"].startswith("postgres:")
    assert "pg_isready" in services["db"]["healthcheck"]["test"]
    cmd = exec_form((dockerfile_stages()[-1]).last("CMD"))
    for name in ("web", "worker"):
        service = services[name]
        assert service["build"] == "."
        assert service["depends_on"] == {"db": {"condition": "service_healthy"}}
        assert service["volumes"] == ["./site:/srv/newsletter/site"]
        env = service["environment"]
        assert env["NEWSLETTER_SECRET_KEY"].startswith("${NEWSLETTER_SECRET_KEY:?")
        url = re.sub(r"\$\{(\w+):\?[^}]*\}", r"\1", env["NEWSLETTER_DATABASE_URL"])
        assert config.url_problem(url) is None, url
    assert "command" not in services["web"]  # the image's CMD: serve
    assert cmd[:2] == ["newsletter", "serve"]
    assert services["worker"]["command"] == ["newsletter", "worker"]
    # The bounce receiver: present, commented out (it needs the relay pointed at it).
    assert re.search(
        r'^  # bounces:\n(  #.*\n)*  #   command: \["newsletter", "bounces", "serve"', text, re.M
    )
