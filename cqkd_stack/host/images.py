"""Build the images a DHT stack runs, without any registry.

No image can be pulled on the machines this runs on, and containers do not
trust the CA the host uses to reach PyPI. So the base image is made from
Debian packages with debootstrap, the Python wheels are built on the host, and
the node image only copies them in (``pip install --no-index``). That is also
how an air-gapped user builds.

Both images are checked before anything is built: the base image by name, the
node image by a hash of its build inputs stored as a label, so a second run
does no work and a source change rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import docker
import docker.errors
import requests
from docker.models.images import Image

from .. import DEFAULT_NODE_IMAGE, __version__
from ..core.contract import HASH_LABEL
from ..core.errors import CqkdError
from ..core.process import Say, run, say, tail

BASE_REPOSITORY = "cqkd-base"
# The release of the base image on Debian hosts (see base_release); its image
# is the one benchmarks and older tests name.
BASE_SUITE = "bookworm"
BASE_IMAGE = f"{BASE_REPOSITORY}:{BASE_SUITE}"
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates")

# The tag stacks refer to by default (the renderer's default image).
NODE_IMAGE = DEFAULT_NODE_IMAGE
# What the node needs besides its own package: pure-Python wheels, pinned so
# every build of one project version holds the same code.
NODE_REQUIREMENTS = ("kademlia==2.2.3", "rpcudp==5.0.1", "u-msgpack-python==2.8.0")

VERSION_LABEL = "org.cqkd.version"

# The package folder (this file is cqkd_stack/host/images.py).
_PACKAGE = Path(__file__).resolve().parent.parent
DOCKERFILE = _PACKAGE / "image" / "Dockerfile"

# Tarring, importing and building can each take minutes on a slow disk; the
# SDK's default 60 s read timeout would abort a healthy build.
_API_TIMEOUT = 900


@dataclass
class ImageResult:
    """The images a stack can use now, and what this run did to get them."""

    base_image: str
    base_id: str
    base_size: int
    node_image: str
    node_id: str
    node_size: int
    inputs_hash: str
    # The wheels the node image was built from; None when nothing was built.
    wheelhouse: Path | None = None
    done: list[str] = field(default_factory=list)


def find_image(client: docker.DockerClient, name: str) -> Image | None:
    """The image named so on this engine, or None (the cluster asks its nodes' engines too)."""
    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def _split_tag(name: str) -> tuple[str, str]:
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "latest"
    return repo, tag


# --- base release and mirror ---------------------------------------------------

APT_DIR = Path("/etc/apt")
OS_RELEASE_FALLBACK = Path("/usr/lib/os-release")
# Debian release names a Debian archive mirror carries. A Debian mirror serves
# every release, so a trixie host's mirror is fine for a bookworm base image.
DEBIAN_SUITES = frozenset(
    {
        "buster",
        "bullseye",
        "bookworm",
        "trixie",
        "forky",
        "duke",
        "sid",
        "oldoldstable",
        "oldstable",
        "stable",
        "testing",
        "unstable",
    }
)
# The suites that belong to one release besides the release itself.
# "-security" is not one of them on purpose: a security archive carries only
# the packages that had fixes, so debootstrap cannot build a system from it.
_SUITE_SUFFIXES = ("-proposed-updates", "-backports-sloppy", "-backports", "-updates", "-proposed")
# The files the distribution itself writes its mirror into.
_DISTRIBUTION_FILES = ("sources.list", "debian.sources", "ubuntu.sources")
# Personal package archives look like Ubuntu archives but carry a few packages.
_PPA_HOSTS = ("launchpad.net", "launchpadcontent.net")
# What debootstrap can fetch from (cdrom: and remote mirror lists it cannot).
_FETCHABLE = ("http://", "https://", "ftp://", "file:/")


@dataclass(frozen=True)
class HostRelease:
    """What this host's os-release says: its distribution family and release."""

    family: str  # "debian", "ubuntu", or "" for anything else
    codename: str
    name: str  # PRETTY_NAME, for messages


def host_release(path: Path | None = None) -> HostRelease:
    """Read /etc/os-release (or /usr/lib/os-release, its fallback).

    Ubuntu and its derivatives are told apart from Debian by ID and ID_LIKE;
    their Ubuntu release is UBUNTU_CODENAME (a derivative's own VERSION_CODENAME
    names its own release, which no Ubuntu mirror carries).
    """
    candidates = [path] if path is not None else [Path("/etc/os-release"), OS_RELEASE_FALLBACK]
    fields: dict[str, str] = {}
    for candidate in candidates:
        with suppress(OSError):
            fields = _os_release_fields(candidate.read_text())
            break
    ids = {fields.get("ID", ""), *fields.get("ID_LIKE", "").split()}
    family = "ubuntu" if "ubuntu" in ids else "debian" if "debian" in ids else ""
    codename = fields.get("VERSION_CODENAME", "")
    if family == "ubuntu":
        codename = fields.get("UBUNTU_CODENAME") or codename
    return HostRelease(family, codename, fields.get("PRETTY_NAME", fields.get("ID", "")))


def _os_release_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value.strip("\"'")]
        fields[key] = words[0] if words else ""
    return fields


@dataclass(frozen=True)
class BaseRelease:
    """The release the base image is debootstrapped from."""

    family: str  # "debian" or "ubuntu": which mirror, debootstrap script and components
    suite: str

    @property
    def image(self) -> str:
        """The base image's name: one per release, so switching never reuses a stale one."""
        return f"{BASE_REPOSITORY}:{self.suite}"

    @property
    def components(self) -> tuple[str, ...]:
        # Ubuntu keeps python3-pip in universe; Debian has all of it in main.
        return ("main", "universe") if self.family == "ubuntu" else ("main",)


def base_release(host: HostRelease, suite: str | None = None) -> BaseRelease:
    """The one place that decides which release the base image is made of.

    Debian hosts, whatever their own release, get bookworm, the release the
    node image is built and measured on: any Debian mirror carries it. An
    Ubuntu mirror carries no Debian release, and an Ubuntu host's sources name
    only Ubuntu mirrors, so an Ubuntu host gets its own release from its own
    mirror (its Python and pip work the same way in the node image). Hosts of
    neither family are treated as Debian. ``suite`` overrides the choice; on
    an Ubuntu host a Debian release name then means a Debian mirror.
    """
    if suite:
        debian = host.family != "ubuntu" or suite in DEBIAN_SUITES
        return BaseRelease("debian" if debian else "ubuntu", suite)
    if host.family == "ubuntu":
        if not host.codename:
            raise CqkdError(
                f"this host is Ubuntu-like ({host.name or 'no name'}) but its os-release "
                "names no release (UBUNTU_CODENAME, VERSION_CODENAME): pass "
                "`--suite CODENAME` (and `--mirror URL` if apt has no Ubuntu mirror)"
            )
        return BaseRelease("ubuntu", host.codename)
    return BaseRelease("debian", BASE_SUITE)


def host_base_image() -> str:
    """The base image `setup` builds on this host (tests and benchmarks run on it)."""
    return base_release(host_release()).image


@dataclass(frozen=True)
class SourceEntry:
    """One repository of the host's apt sources: a one-line entry or one URI of a stanza."""

    where: str  # file, then line or stanza number
    types: tuple[str, ...]
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    enabled: bool = True


def host_mirror(
    release: BaseRelease,
    host: HostRelease | None = None,
    apt_dir: Path = APT_DIR,
) -> str:
    """The mirror this host's apt uses that can serve ``release``.

    The base image comes from the same place the host's packages do, so it
    works wherever apt works (a local mirror, a proxy, a snapshot) and no
    host name is baked in here. What is not a full archive of the release's
    distribution is passed over: security archives, source-only entries,
    disabled stanzas, third-party repositories (no release suite with a main
    component). When nothing fits, the error lists every entry looked at and
    why it was passed over.
    """
    host = host or host_release()
    files = _source_files(apt_dir)
    looked: list[str] = []
    usable: list[tuple[tuple[int, int], int, str]] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError as exc:
            looked.append(f"{path}: {exc.strerror or exc}")
            continue
        entries = (
            _deb822_entries(text, path)
            if path.suffix == ".sources"
            else _one_line_entries(text, path)
        )
        for entry in entries:
            uri, problem = _resolve_uri(entry.uri, apt_dir)
            problem = problem or _unusable(entry, uri, release, host)
            if problem:
                looked.append(f"{entry.where}: {entry.uri} {' '.join(entry.suites)}: {problem}")
            else:
                usable.append((_rank(entry, path.name, release, host), len(usable), uri))
    if usable:
        return min(usable)[2]
    raise CqkdError(_no_mirror_message(release, host, apt_dir, files, looked))


def _source_files(apt_dir: Path) -> list[Path]:
    """The files apt reads, in apt's order: sources.list, then the parts directory."""
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    return files


def _no_mirror_message(
    release: BaseRelease, host: HostRelease, apt_dir: Path, files: list[Path], looked: list[str]
) -> str:
    family = "an Ubuntu" if release.family == "ubuntu" else "a Debian"
    example = (
        "http://archive.ubuntu.com/ubuntu"
        if release.family == "ubuntu"
        else "http://deb.debian.org/debian"
    )
    read = [str(f) for f in files if f.is_file()]
    lines = [
        f"cannot find {family} mirror for the base image ({release.family} {release.suite}) "
        f"in this host's apt sources (host: {host.name or 'unknown'}; "
        f"read: {', '.join(read) or f'no sources file under {apt_dir}'})",
        *(f"  {line}" for line in looked),
        f"pass the mirror yourself: `cqkd-stack setup --mirror URL` (e.g. {example}), or set "
        "cqkd.mirror in invoke.yaml; `--suite` picks another release",
    ]
    return "\n".join(lines)


def _resolve_uri(uri: str, apt_dir: Path) -> tuple[str, str]:
    """The URI debootstrap can use for an apt URI; (uri, "") or ("", why not).

    Debian's cloud images point apt at a mirror list (``mirror+file:`` with a
    file in /etc/apt/mirrors); its first entry is the mirror.
    """
    if not uri.startswith("mirror+file:"):
        return uri, ""
    listed = Path(uri.removeprefix("mirror+file:").removeprefix("//"))
    if listed.is_relative_to("/etc/apt"):
        listed = apt_dir / listed.relative_to("/etc/apt")
    try:
        lines = listed.read_text().splitlines()
    except OSError as exc:
        return "", f"cannot read its mirror list {listed}: {exc.strerror or exc}"
    for line in lines:
        words = line.split("#", 1)[0].split()
        if words:
            return words[0], ""
    return "", f"its mirror list {listed} names no mirror"


def _unusable(entry: SourceEntry, uri: str, release: BaseRelease, host: HostRelease) -> str:
    """Why ``entry`` cannot serve ``release`` to debootstrap; "" when it can."""
    if not entry.enabled:
        return "disabled (Enabled: no)"
    if "deb" not in entry.types:
        return "source packages only (deb-src)"
    if not uri.startswith(_FETCHABLE):
        return "debootstrap cannot fetch from this kind of URI"
    if _is_security(entry, uri):
        return "a security archive (it carries fixes only, not a whole release)"
    if (urlsplit(uri).hostname or "").endswith(_PPA_HOSTS):
        return "a PPA (it carries a few packages, not a whole release)"
    if not any(_release_of(s) in _release_names(release, host) for s in entry.suites):
        family = "Ubuntu" if release.family == "ubuntu" else "Debian"
        return f"no {family} release suite"
    if "main" not in entry.components:
        return "no main component"
    return ""


def _is_security(entry: SourceEntry, uri: str) -> bool:
    parts = urlsplit(uri)
    return (
        any(s.endswith("-security") or s.endswith("/updates") for s in entry.suites)
        or parts.netloc.startswith("security.")
        or any(p.endswith("-security") for p in parts.path.split("/"))
    )


def _release_of(suite: str) -> str:
    """The release a suite belongs to: bookworm-updates -> bookworm."""
    for suffix in _SUITE_SUFFIXES:
        if suite.endswith(suffix):
            return suite.removesuffix(suffix)
    return suite


def _release_names(release: BaseRelease, host: HostRelease) -> set[str]:
    """Suites that mark an entry as an archive of ``release``'s distribution."""
    names = {release.suite}
    if host.family == release.family and host.codename:
        names.add(host.codename)
    if release.family == "debian":
        names |= DEBIAN_SUITES
    return names


def _rank(
    entry: SourceEntry, file: str, release: BaseRelease, host: HostRelease
) -> tuple[int, int]:
    """Lower is better: the distribution's own file first, then the best suite.

    A third-party repository can look like an archive (``bookworm main``,
    ``stable main``) and sorts before debian.sources or ubuntu.sources in
    sources.list.d, so the file decides first. Among suites, the release
    itself, then the host's, then any other.
    """
    own = 0 if file in _DISTRIBUTION_FILES else 1
    releases = {_release_of(s) for s in entry.suites}
    if release.suite in releases:
        return own, 0
    if host.codename in releases:
        return own, 1
    # "stable" & co. are also what third-party repositories call their suites.
    return own, 2 if releases - {
        "stable",
        "testing",
        "unstable",
        "oldstable",
        "oldoldstable",
    } else 3


def _one_line_entries(text: str, path: Path | str = "sources.list") -> Iterator[SourceEntry]:
    """Entries of a one-line file: ``deb [options] uri suite component...``."""
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words or words[0] not in ("deb", "deb-src"):
            continue
        kind, words = words[0], words[1:]
        if words and words[0].startswith("["):
            # Options may hold spaces: [ arch=amd64 signed-by=/usr/share/keyrings/x.gpg ]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield SourceEntry(f"{path}:{number}", (kind,), words[0], (words[1],), tuple(words[2:]))


def _deb822_entries(text: str, path: Path | str = "x.sources") -> Iterator[SourceEntry]:
    """Entries of a deb822 ``.sources`` file: stanzas separated by blank lines."""
    stanza: dict[str, str] = {}
    key = ""
    number = 0
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                number += 1
                yield from _deb822_stanza(stanza, f"{path} stanza {number}")
            stanza, key = {}, ""
        elif raw[0] in " \t" and key:
            stanza[key] += " " + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.strip()


def _deb822_stanza(stanza: dict[str, str], where: str = "") -> Iterator[SourceEntry]:
    """One entry per URI of a stanza; ``Enabled: no`` marks them all disabled."""
    enabled = stanza.get("enabled", "yes").strip().lower() not in ("no", "false", "0")
    types = tuple(stanza.get("types", "").split())
    suites = tuple(stanza.get("suites", "").split())
    components = tuple(stanza.get("components", "").split())
    for uri in stanza.get("uris", "").split():
        yield SourceEntry(where, types, uri, suites, components, enabled)


# --- base image ----------------------------------------------------------------


def ensure_base_image(
    client: docker.DockerClient,
    progress: Say | None = None,
    *,
    release: BaseRelease | None = None,
    host: HostRelease | None = None,
    mirror: str | None = None,
    apt_dir: Path = APT_DIR,
) -> tuple[Image, bool]:
    """The base image of ``release``, made with debootstrap if absent; (image, built).

    The mirror is looked up only when the image has to be built, so a host
    whose apt sources changed keeps working with the image it has.
    """
    host = host or host_release()
    release = release or base_release(host)
    image = find_image(client, release.image)
    if image is not None:
        return image, False
    mirror = mirror or host_mirror(release, host, apt_dir)
    labels = {"org.cqkd.base.mirror": mirror, "org.cqkd.base.suite": release.suite}
    return build_rootfs_image(
        client,
        release.image,
        release,
        mirror,
        packages=BASE_PACKAGES,
        labels=labels,
        progress=progress,
    ), True


def build_rootfs_image(
    client: docker.DockerClient,
    name: str,
    release: BaseRelease,
    mirror: str,
    *,
    packages: tuple[str, ...],
    labels: dict[str, str] | None = None,
    cmd: tuple[str, ...] = ("python3",),
    progress: Say | None = None,
) -> Image:
    """debootstrap ``release`` with ``packages`` and ``docker import`` it as ``name``.

    No registry is needed: the packages come from ``mirror``. Tests build
    their own images (a systemd one, say) the same way.
    """
    if os.geteuid() != 0:
        raise CqkdError(f"building {name} with debootstrap needs root")
    debootstrap = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    if debootstrap is None:
        raise CqkdError("debootstrap is not installed (run the engine install step first)")
    # /var/tmp, not /tmp: /tmp is often a tmpfs mounted nodev/noexec, where
    # debootstrap can neither create device nodes nor run the chroot.
    work = Path(tempfile.mkdtemp(prefix="cqkd-base-", dir="/var/tmp"))
    rootfs = work / "rootfs"
    try:
        say(progress, f"building image {name} (debootstrap {release.suite} from {mirror})…")
        _debootstrap(debootstrap, rootfs, release, mirror, packages)
        _slim(rootfs)
        say(progress, f"importing image {name}…")
        _import_rootfs(client, rootfs, name, {VERSION_LABEL: __version__, **(labels or {})}, cmd)
    finally:
        _remove_tree(work)
    image = find_image(client, name)
    if image is None:
        raise CqkdError(f"the import of {name} finished but the image is not there")
    return image


def _debootstrap(
    debootstrap: str, rootfs: Path, release: BaseRelease, mirror: str, packages: tuple[str, ...]
) -> None:
    argv = [
        debootstrap,
        "--variant=minbase",
        f"--components={','.join(release.components)}",
        f"--include={','.join(packages)}",
        release.suite,
        str(rootfs),
        mirror,
        *_debootstrap_script(release),
    ]
    proc = run(argv, "debootstrap", check=False)
    if proc.returncode != 0:
        log = rootfs / "debootstrap" / "debootstrap.log"
        detail = log.read_text(errors="replace") if log.is_file() else proc.stderr or proc.stdout
        raise CqkdError(f"debootstrap failed (exit {proc.returncode}):\n{tail(detail)}")


DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")


def _debootstrap_script(release: BaseRelease, scripts: Path = DEBOOTSTRAP_SCRIPTS) -> list[str]:
    """debootstrap's script argument for a release it does not know by name.

    A host's debootstrap knows the releases up to its own; a newer one (an
    Ubuntu release after the host's, a Debian one after bookworm's debootstrap)
    is built the same way as the family's generic script says.
    """
    if (scripts / release.suite).exists():
        return []
    generic = scripts / ("gutsy" if release.family == "ubuntu" else "sid")
    return [str(generic)] if generic.exists() else []


def _slim(rootfs: Path) -> None:
    """Drop what no container reads: about a quarter of the tree.

    Every engine that runs the stack (Docker-in-Docker nodes included) gets a
    copy of the image, so this is paid per engine. The same paths Debian's
    own slim images leave out: downloaded packages, package indexes,
    translations, manuals and documentation (license files stay).
    """
    keep = {"locale.alias", "copyright"}
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*",
        "usr/share/locale/**/*",
        "usr/share/man/**/*",
        "usr/share/info/**/*",
        "usr/share/doc/**/*",
    ):
        for path in rootfs.glob(pattern):
            if path.name not in keep and (path.is_symlink() or path.is_file()):
                path.unlink()


def _import_rootfs(
    client: docker.DockerClient,
    rootfs: Path,
    name: str,
    labels: dict[str, str],
    cmd: tuple[str, ...],
) -> None:
    repo, tag = _split_tag(name)
    label_words = " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in labels.items())
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        f"LABEL {label_words}",
        f"CMD {json.dumps(list(cmd))}",
    ]
    # --one-file-system: if debootstrap left /proc or /dev mounted inside the
    # tree, the host's would end up in the image.
    argv = ["tar", "--numeric-owner", "--one-file-system", "-C", str(rootfs), "-c", "."]
    with tempfile.TemporaryFile() as errors:
        tar = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors)
        assert tar.stdout is not None
        stdout = tar.stdout
        chunks = iter(lambda: stdout.read(1 << 20), b"")
        try:
            client.api.import_image(
                src=chunks, repository=repo, tag=tag, changes=changes, stream_src=True
            )
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            tar.kill()
            raise CqkdError(f"docker import of {name} failed: {exc}") from exc
        finally:
            stdout.close()
            code = tar.wait()
        if code not in (0, 1):  # 1: a file changed while read, harmless here
            errors.seek(0)
            detail = tail(errors.read().decode(errors="replace"))
            raise CqkdError(f"tar of the base image tree failed (exit {code}):\n{detail}")


def _remove_tree(path: Path) -> None:
    # Unmount anything debootstrap left mounted first: removing files through
    # a bind mount of /dev would delete the host's device nodes.
    with suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        prefix = str(path) + "/"
        for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


# --- wheelhouse ----------------------------------------------------------------


def project_root() -> Path:
    """The source tree the node image is built from.

    The node image carries the project as a wheel, and a wheel is built from
    the source tree, so an install from a wheel alone cannot make the image.
    """
    root = _PACKAGE.parent
    if (root / "pyproject.toml").is_file():
        return root
    raise CqkdError(
        f"no pyproject.toml next to {_PACKAGE}: building the node image needs the "
        "cqkd-stack source tree (a checkout, or an editable install)"
    )


def build_wheelhouse(
    dest: Path, project_dir: Path | None = None, progress: Say | None = None
) -> list[Path]:
    """Build every wheel the node image installs into ``dest``; return them.

    The folder belongs to the builder: its ``*.whl`` files are removed first,
    so a stale wheel of the project (same version, older code) can never be
    the one pip picks in the image.
    """
    project_dir = project_dir or project_root()
    say(progress, f"building the wheelhouse in {dest} (pip wheel)…")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest)]
    run([*pip, "--no-deps", str(project_dir)], "pip wheel of cqkd-stack")
    run([*pip, *NODE_REQUIREMENTS], "pip wheel of the node's requirements")
    wheels = sorted(dest.glob("*.whl"))
    if not any(w.name.startswith("cqkd_stack-") for w in wheels):
        raise CqkdError(f"pip wheel did not produce a cqkd_stack wheel in {dest}")
    return wheels


# --- node image ----------------------------------------------------------------


# What decides the node image's content: the code its containers run (node/,
# the package's __init__, which every module of it imports, and the short
# names the images call: python3 -m cqkd_stack.resolver, .nodectl, .probe)
# and its recipe (image/). The rest of the package travels in the wheel but
# never runs in a container, so editing the linter or a --help text does not
# rebuild the image and copy it again to every node.
IMAGE_SOURCES = (
    "cqkd_stack/__init__.py",
    "cqkd_stack/resolver.py",
    "cqkd_stack/nodectl.py",
    "cqkd_stack/probe.py",
    "cqkd_stack/node",
    "cqkd_stack/image",
)


def node_dockerfile(project_dir: Path) -> Path:
    """The recipe of ``project_dir``'s node image: that tree's, not this package's.

    The inputs hash covers the tree's own image/ folder, and a benchmark
    builds an older revision's image from its exported tree: with this
    package's Dockerfile, that image had the older code under the newer
    recipe while its label claimed the older recipe.
    """
    own = project_dir / "cqkd_stack" / "image" / "Dockerfile"
    return own if own.is_file() else DOCKERFILE


def build_inputs_hash(project_dir: Path, base_id: str) -> str:
    """A digest of everything that decides the node image's content.

    IMAGE_SOURCES (the code the containers run and the Dockerfile), the
    pinned requirements and the base image's id. Left out on purpose: the
    rest of the package, pyproject.toml, the stack templates and schemas the
    wheel also carries; the node never reads them, and editing them should
    not rebuild the image.
    """
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    add("base", base_id.encode())
    add("requirements", "\n".join(NODE_REQUIREMENTS).encode())
    for source in IMAGE_SOURCES:
        top = project_dir / source
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            rel = path.relative_to(project_dir)
            if not path.is_file() or any(
                p.startswith(".") or p == "__pycache__" for p in rel.parts
            ):
                continue
            if path.suffix in (".pyc", ".pyo"):
                continue
            add(rel.as_posix(), path.read_bytes())
    return digest.hexdigest()


def ensure_node_image(
    client: docker.DockerClient,
    base: Image,
    progress: Say | None = None,
    *,
    project_dir: Path | None = None,
    wheelhouse: Path | None = None,
    tag: str = NODE_IMAGE,
    force: bool = False,
    base_name: str | None = None,
) -> tuple[Image, str, Path | None, list[str]]:
    """The node image for the current sources; (image, inputs hash, wheelhouse, done).

    Skips the wheel build and the docker build entirely when the image under
    ``tag`` already carries the hash of the current inputs. ``base_name`` is
    what the build starts FROM (default: the base image's first tag).
    """
    project_dir = project_dir or project_root()
    inputs = build_inputs_hash(project_dir, base.id)
    repo, _ = _split_tag(tag)
    done: list[str] = []
    existing = find_image(client, tag)
    if not force and existing is not None and existing.labels.get(HASH_LABEL) == inputs:
        if _tag_latest(client, existing, repo):
            done.append(f"tagged {repo}:latest")
        return existing, inputs, None, done

    wheelhouse = wheelhouse or project_dir / "build" / "wheelhouse"
    wheels = build_wheelhouse(wheelhouse, project_dir, progress)
    say(progress, f"building node image {tag} (docker build)…")
    with tempfile.TemporaryDirectory(prefix="cqkd-node-context-") as context:
        shutil.copy2(node_dockerfile(project_dir), Path(context) / "Dockerfile")
        (Path(context) / "wheels").mkdir()
        for wheel in wheels:
            shutil.copy2(wheel, Path(context) / "wheels" / wheel.name)
        try:
            image, _log = client.images.build(
                path=context,
                tag=tag,
                buildargs={
                    "BASE_IMAGE": base_name or (base.tags[0] if base.tags else base.id),
                    "NODE_REQUIREMENTS": " ".join(NODE_REQUIREMENTS),
                },
                labels={HASH_LABEL: inputs, VERSION_LABEL: __version__},
                rm=True,
                forcerm=True,
                pull=False,
            )
        except docker.errors.BuildError as exc:
            log = "".join(
                str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log
            )
            raise CqkdError(f"docker build of {tag} failed: {exc.msg}\n{tail(log)}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise CqkdError(f"docker build of {tag} failed: {exc}") from exc
    done.append(f"built {tag}")
    _tag_latest(client, image, repo)
    if existing is not None and existing.id != image.id:
        # The old image is now untagged; drop it unless something still runs
        # it (then the engine refuses, and that is fine).
        with suppress(docker.errors.APIError):
            client.images.remove(existing.id)
    return image, inputs, wheelhouse, done


def _tag_latest(client: docker.DockerClient, image: Image, repo: str) -> bool:
    latest = find_image(client, f"{repo}:latest")
    if latest is not None and latest.id == image.id:
        return False
    image.tag(repo, "latest")
    return True


def ensure_images(
    progress: Say | None = None,
    *,
    client: docker.DockerClient | None = None,
    project_dir: Path | None = None,
    wheelhouse: Path | None = None,
    mirror: str | None = None,
    suite: str | None = None,
    tag: str = NODE_IMAGE,
    force: bool = False,
) -> ImageResult:
    """Base and node image, each built only if missing or out of date.

    ``mirror`` and ``suite`` override where the base image comes from and its
    release (see :func:`base_release` and :func:`host_mirror`). ``force``
    rebuilds the node image (not the base) even when its inputs are
    unchanged, e.g. after changing the wheels by hand.
    """
    own_client = client is None
    if client is None:
        try:
            client = docker.from_env(timeout=_API_TIMEOUT)
        except docker.errors.DockerException as exc:
            raise CqkdError(f"the Docker engine does not answer: {exc}") from exc
    host = host_release()
    release = base_release(host, suite)
    try:
        base, base_built = ensure_base_image(
            client, progress, release=release, host=host, mirror=mirror
        )
        node, inputs, used_wheelhouse, done = ensure_node_image(
            client,
            base,
            progress,
            project_dir=project_dir,
            wheelhouse=wheelhouse,
            tag=tag,
            force=force,
            base_name=release.image,
        )
    finally:
        if own_client:
            client.close()
    if base_built:
        done.insert(0, f"built {release.image}")
    return ImageResult(
        base_image=release.image,
        base_id=base.id,
        base_size=int(base.attrs.get("Size", 0)),
        node_image=tag,
        node_id=node.id,
        node_size=int(node.attrs.get("Size", 0)),
        inputs_hash=inputs,
        wheelhouse=used_wheelhouse,
        done=done,
    )
