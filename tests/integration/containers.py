"""A real Docker engine, images and a compose project for tests/integration/test_compose.py.

The engine: the running one, else a dockerd started here (and stopped afterwards) on address ranges chosen here.
The images: the official ones where present or pullable, else stand-ins built from Debian's packages
(tests/standin_images/, on a debootstrap of bookworm from the apt source this machine is configured with), and
the service's own three from the Dockerfile (scripts/build-images.sh), built as soon as BASE_IMAGE is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "tests" / "standin_images"
# The machine's CA bundle: pip inside a build reaches PyPI only through a proxy that this bundle's CA signs for.
MACHINE_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Container networks on ranges of our own choosing, clear of the machine's: the default bridge, then compose's.
DAEMON_CONFIG = {"bip": "10.213.0.1/24", "default-address-pools": [{"base": "10.214.0.0/16", "size": 24}]}
# The stand-ins' Debian: the release the official images are built on. Cached between runs on one machine.
DEBIAN_SUITE = "bookworm"
DEBIAN_IMAGE = f"imgcls-standin/debian:{DEBIAN_SUITE}"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgcls"
# Like debian:bookworm-slim: no documentation, manual pages or translations (a third of a minimal system).
DPKG_SLIM = "\n".join(f"path-exclude /usr/share/{p}/*" for p in ("doc", "man", "info", "locale", "lintian")) + "\n"
# As Debian's official images do (/etc/dpkg/dpkg.cfg.d/docker-apt-speedup): a container's file system is thrown
# away on a crash anyway, so dpkg need not sync every file it writes.
DPKG_SPEEDUP = "force-unsafe-io\n"


def run(*command: str, timeout: float = 600, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, raising with its output when it fails (check)."""
    done = subprocess.run(command, capture_output=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n"
                             f"{done.stdout.decode(errors='replace')[-3000:]}{done.stderr.decode(errors='replace')[-3000:]}")
    return done


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@contextlib.contextmanager
def docker_engine(workdir: Path) -> Iterator[None]:
    """The running Docker engine, else one dockerd started for the block and stopped after it."""
    if engine_answers():
        yield
        return
    config = workdir / "daemon.json"
    config.write_text(json.dumps(DAEMON_CONFIG))
    with open(workdir / "dockerd.log", "wb") as log:
        daemon = subprocess.Popen(["dockerd", "--config-file", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        give_up_at = time.monotonic() + 60
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > give_up_at:
                raise AssertionError(f"dockerd did not start:\n{(workdir / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        daemon.terminate()  # dockerd stops its containers and the containerd it started
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def image_present(name: str) -> bool:
    return run("docker", "image", "inspect", name, check=False).returncode == 0


def official_images() -> dict[str, str]:
    """Setting -> the official image it defaults to, as docker-compose.yml spells them (BASE_IMAGE included)."""
    return dict(re.findall(r"\$\{(\w+_IMAGE):-([^}]+)\}", (ROOT / "docker-compose.yml").read_text()))


# The base images docker-compose.yml names, each with the stand-in that replaces it (tests/standin_images/<name>).
STANDIN_OF = {"BASE_IMAGE": "python", "REDIS_IMAGE": "redis", "NGINX_IMAGE": "nginx"}


def images() -> dict[str, str]:
    """Every image the compose file runs, by its setting: each base image official where present or pullable, else a
    stand-in, and the service's own, built on BASE_IMAGE while Redis's and nginx's are being made beside them."""
    with ThreadPoolExecutor(max_workers=len(STANDIN_OF)) as pool:
        chosen = {setting: pool.submit(base_image, setting) for setting in STANDIN_OF}
        build_service_images({"BASE_IMAGE": chosen["BASE_IMAGE"].result()})
        return {setting: future.result() for setting, future in chosen.items()}


def base_image(setting: str) -> str:
    """The official image `setting` defaults to (docker-compose.yml) where present or pullable, else its stand-in."""
    official = official_images()[setting]
    pulled = image_present(official) or run("docker", "pull", official, check=False).returncode == 0
    return official if pulled else standin(STANDIN_OF[setting])


def standin(name: str) -> str:
    """tests/standin_images/<name> built on Debian; its tag is its recipe's hash, so an edit rebuilds it."""
    recipe = STANDINS / name
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(recipe.iterdir()))).hexdigest()[:12]
    tag = f"imgcls-standin/{name}:{digest}"
    if not image_present(tag):
        debian_image()
        # The classic builder, which every engine and client has: these recipes need nothing of BuildKit.
        run("docker", "build", "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}", "-t", tag, str(recipe),
            env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag


_debian_made = threading.Lock()  # stand-ins are made in parallel (images()), on one Debian image


def debian_image() -> None:
    """A minimal Debian as a local image: imported from a cached debootstrap, made once per machine."""
    with _debian_made:
        if image_present(DEBIAN_IMAGE):
            return
        tarball = CACHE / f"debian-{DEBIAN_SUITE}-minbase.tar"
        if not tarball.exists():
            debootstrap_to(tarball)
        run("docker", "import", str(tarball), DEBIAN_IMAGE)


def debootstrap_to(tarball: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as workdir:
        root = Path(workdir) / "root"
        # In two stages, so that dpkg installs the base system as it will install the stand-ins' packages: without
        # an fsync per file (DPKG_SPEEDUP), which a virtual disk makes the bulk of a debootstrap.
        run("debootstrap", "--foreign", "--variant=minbase", DEBIAN_SUITE, str(root), debian_mirror(), timeout=1200)
        (root / "etc/dpkg/dpkg.cfg.d/docker-apt-speedup").write_text(DPKG_SPEEDUP)
        run("chroot", str(root), "/debootstrap/debootstrap", "--second-stage", timeout=1200)
        (root / "etc/dpkg/dpkg.cfg.d/slim").write_text(DPKG_SLIM)
        for folder in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists",
                       "var/cache/apt"):
            shutil.rmtree(root / folder, ignore_errors=True)
            (root / folder).mkdir(parents=True)
        # As in Debian's official images: packages installed in a build start no services.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        run("tar", "-C", str(root), "-cf", str(partial), ".")
        partial.rename(tarball)


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The first Debian archive this machine's apt is configured with for DEBIAN_SUITE (one-line or deb822)."""
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        text = path.read_text() if path.is_file() else ""
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if DEBIAN_SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if words[:1] == ["deb"] and len(words) >= 3 and words[2] == DEBIAN_SUITE:
                    return words[1]
    raise AssertionError(f"no apt source for Debian {DEBIAN_SUITE} in {sources}: the stand-in images need one")


def build_service_images(settings: dict[str, str]) -> None:
    """The API's and the workers' images (scripts/build-images.sh) from settings' BASE_IMAGE, pip trusting the
    machine's CA."""
    pip_ca = {"PIP_CA": str(MACHINE_CA)} if MACHINE_CA.exists() else {}
    run(str(ROOT / "scripts" / "build-images.sh"), env={**os.environ, **settings, **pip_ca}, timeout=1800)


class ComposeProject:
    """docker-compose.yml under a project name of its own, with the given settings in its environment."""

    def __init__(self, name: str, settings: dict[str, str]):
        self.name = name
        self.env = {**os.environ, **settings}
        has_v2 = run("docker", "compose", "version", check=False).returncode == 0
        self.command = ["docker", "compose"] if has_v2 else ["docker-compose"]  # v1 is Debian's

    @property
    def url(self) -> str:
        """The proxy, published on 127.0.0.1 at PROXY_PORT."""
        return f"http://127.0.0.1:{self.env.get('PROXY_PORT', '5000')}"

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.command, "-p", self.name, "-f", str(ROOT / "docker-compose.yml"), *args,
                   env=self.env, timeout=timeout, check=check)

    def containers(self, service: str) -> list[str]:
        """Ids of the service's running containers."""
        return self("ps", "-q", service).stdout.decode().split()

    def exec(self, service: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return self("exec", "-T", service, *command, check=check)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of the project that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        listed = {"containers": run("docker", "ps", "-aq", "--filter", label),
                  "networks": run("docker", "network", "ls", "-q", "--filter", label),
                  "volumes": run("docker", "volume", "ls", "-q", "--filter", label)}
        return {kind: done.stdout.decode().split() for kind, done in listed.items() if done.stdout.strip()}
