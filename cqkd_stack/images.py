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
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests
from docker.models.images import Image

from . import DEFAULT_NODE_IMAGE, __version__
from .errors import CqkdError
from .process import Progress, run, say, tail

BASE_IMAGE = "cqkd-base:bookworm"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates")

# The tag stacks refer to by default (the renderer's default image).
NODE_IMAGE = DEFAULT_NODE_IMAGE
# What the node needs besides its own package: pure-Python wheels, pinned so
# every build of one project version holds the same code.
NODE_REQUIREMENTS = ("kademlia==2.2.3", "rpcudp==5.0.1", "u-msgpack-python==2.8.0")

HASH_LABEL = "org.cqkd.build-inputs"
VERSION_LABEL = "org.cqkd.version"

_PACKAGE = Path(__file__).resolve().parent
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


def _get_image(client: docker.DockerClient, name: str) -> Image | None:
    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def _split_tag(name: str) -> tuple[str, str]:
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "latest"
    return repo, tag


# --- Debian mirror -------------------------------------------------------------


def debian_mirror(suite: str = BASE_SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses for ``suite``.

    The base image comes from the same place the host's packages do, so it
    works wherever apt works (a local mirror, a proxy, a snapshot) and no
    host name is baked in here.
    """
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for uri, suites in entries:
            if suite in suites:
                return uri
    raise CqkdError(
        f"cannot find a Debian mirror for '{suite}' in {apt_dir}/sources.list or "
        f"{parts}/: pass the mirror URL explicitly"
    )


def _one_line_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0], [words[1]]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    stanza: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                yield from _deb822_stanza(stanza)
            stanza, key = {}, ""
        elif raw[0] in " \t" and key:
            stanza[key] += " " + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.strip()


def _deb822_stanza(stanza: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    if "deb" not in stanza.get("types", "").split():
        return
    if stanza.get("enabled", "yes").lower() == "no":
        return
    suites = stanza.get("suites", "").split()
    for uri in stanza.get("uris", "").split():
        yield uri, suites


# --- base image ----------------------------------------------------------------


def ensure_base_image(
    client: docker.DockerClient,
    progress: Progress | None = None,
    *,
    mirror: str | None = None,
    name: str = BASE_IMAGE,
) -> tuple[Image, bool]:
    """The Debian base image, made with debootstrap if absent; (image, built)."""
    image = _get_image(client, name)
    if image is not None:
        return image, False
    if os.geteuid() != 0:
        raise CqkdError(f"building {name} with debootstrap needs root")
    debootstrap = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    if debootstrap is None:
        raise CqkdError("debootstrap is not installed (run the engine install step first)")
    mirror = mirror or debian_mirror()
    # /var/tmp, not /tmp: /tmp is often a tmpfs mounted nodev/noexec, where
    # debootstrap can neither create device nodes nor run the chroot.
    work = Path(tempfile.mkdtemp(prefix="cqkd-base-", dir="/var/tmp"))
    rootfs = work / "rootfs"
    try:
        say(progress, f"building base image {name} (debootstrap {BASE_SUITE} from {mirror})…")
        _debootstrap(debootstrap, rootfs, mirror)
        _slim(rootfs)
        say(progress, f"importing base image {name}…")
        _import_rootfs(client, rootfs, name, mirror)
    finally:
        _remove_tree(work)
    image = _get_image(client, name)
    if image is None:
        raise CqkdError(f"the import of {name} finished but the image is not there")
    return image, True


def _debootstrap(debootstrap: str, rootfs: Path, mirror: str) -> None:
    argv = [
        debootstrap,
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        BASE_SUITE,
        str(rootfs),
        mirror,
    ]
    proc = run(argv, "debootstrap", check=False)
    if proc.returncode != 0:
        log = rootfs / "debootstrap" / "debootstrap.log"
        detail = log.read_text(errors="replace") if log.is_file() else proc.stderr or proc.stdout
        raise CqkdError(f"debootstrap failed (exit {proc.returncode}):\n{tail(detail)}")


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


def _import_rootfs(client: docker.DockerClient, rootfs: Path, name: str, mirror: str) -> None:
    repo, tag = _split_tag(name)
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        f"LABEL {VERSION_LABEL}={__version__} org.cqkd.base.mirror={mirror}",
        'CMD ["python3"]',
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
    dest: Path, project_dir: Path | None = None, progress: Progress | None = None
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


def build_inputs_hash(project_dir: Path, base_id: str) -> str:
    """A digest of everything that decides the node image's content.

    The package sources (the Dockerfile included, it lives there),
    pyproject.toml, the pinned requirements and the base image's id. The
    stack templates and schemas the wheel also carries are left out on
    purpose: the node never reads them, and editing a template should not
    rebuild the image.
    """
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    add("base", base_id.encode())
    add("requirements", "\n".join(NODE_REQUIREMENTS).encode())
    add("pyproject.toml", (project_dir / "pyproject.toml").read_bytes())
    package = project_dir / "cqkd_stack"
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(project_dir)
        if not path.is_file() or any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        add(rel.as_posix(), path.read_bytes())
    return digest.hexdigest()


def ensure_node_image(
    client: docker.DockerClient,
    base: Image,
    progress: Progress | None = None,
    *,
    project_dir: Path | None = None,
    wheelhouse: Path | None = None,
    tag: str = NODE_IMAGE,
    force: bool = False,
) -> tuple[Image, str, Path | None, list[str]]:
    """The node image for the current sources; (image, inputs hash, wheelhouse, done).

    Skips the wheel build and the docker build entirely when the image under
    ``tag`` already carries the hash of the current inputs.
    """
    project_dir = project_dir or project_root()
    inputs = build_inputs_hash(project_dir, base.id)
    repo, _ = _split_tag(tag)
    done: list[str] = []
    existing = _get_image(client, tag)
    if not force and existing is not None and existing.labels.get(HASH_LABEL) == inputs:
        if _tag_latest(client, existing, repo):
            done.append(f"tagged {repo}:latest")
        return existing, inputs, None, done

    wheelhouse = wheelhouse or project_dir / "build" / "wheelhouse"
    wheels = build_wheelhouse(wheelhouse, project_dir, progress)
    say(progress, f"building node image {tag} (docker build)…")
    with tempfile.TemporaryDirectory(prefix="cqkd-node-context-") as context:
        shutil.copy2(DOCKERFILE, Path(context) / "Dockerfile")
        (Path(context) / "wheels").mkdir()
        for wheel in wheels:
            shutil.copy2(wheel, Path(context) / "wheels" / wheel.name)
        try:
            image, _log = client.images.build(
                path=context,
                tag=tag,
                buildargs={
                    "BASE_IMAGE": BASE_IMAGE,
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
    latest = _get_image(client, f"{repo}:latest")
    if latest is not None and latest.id == image.id:
        return False
    image.tag(repo, "latest")
    return True


def ensure_images(
    progress: Progress | None = None,
    *,
    client: docker.DockerClient | None = None,
    project_dir: Path | None = None,
    wheelhouse: Path | None = None,
    mirror: str | None = None,
    tag: str = NODE_IMAGE,
    force: bool = False,
) -> ImageResult:
    """Base and node image, each built only if missing or out of date.

    ``force`` rebuilds the node image (not the base) even when its inputs are
    unchanged, e.g. after changing the wheels by hand.
    """
    own_client = client is None
    if client is None:
        try:
            client = docker.from_env(timeout=_API_TIMEOUT)
        except docker.errors.DockerException as exc:
            raise CqkdError(f"the Docker engine does not answer: {exc}") from exc
    try:
        base, base_built = ensure_base_image(client, progress, mirror=mirror)
        node, inputs, used_wheelhouse, done = ensure_node_image(
            client,
            base,
            progress,
            project_dir=project_dir,
            wheelhouse=wheelhouse,
            tag=tag,
            force=force,
        )
    finally:
        if own_client:
            client.close()
    if base_built:
        done.insert(0, f"built {BASE_IMAGE}")
    return ImageResult(
        base_image=BASE_IMAGE,
        base_id=base.id,
        base_size=int(base.attrs.get("Size", 0)),
        node_image=tag,
        node_id=node.id,
        node_size=int(node.attrs.get("Size", 0)),
        inputs_hash=inputs,
        wheelhouse=used_wheelhouse,
        done=done,
    )
