"""Which release the base image is made of, and from which mirror, per host.

The fixtures under tests/data/apt are the stock apt sources and os-release
files of each distribution (see their README), so these tests read what a
fresh host really has; the edge cases are written inline next to their test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cqkd_stack.core.errors import CqkdError
from cqkd_stack.host import images
from cqkd_stack.host.images import BaseRelease

DATA = Path(__file__).resolve().parents[2] / "data" / "apt"
DEBIAN = "http://deb.debian.org/debian"


def _host(name: str) -> tuple[images.HostRelease, Path]:
    root = DATA / name / "etc"
    return images.host_release(root / "os-release"), root / "apt"


def _choose(name: str, suite: str | None = None) -> tuple[BaseRelease, str]:
    """What setup would build on host ``name``: (release, mirror)."""
    host, apt_dir = _host(name)
    release = images.base_release(host, suite)
    return release, images.host_mirror(release, host, apt_dir)


@pytest.mark.parametrize(
    ("host", "mirror"),
    [
        # debian:bookworm image: deb822 with snapshot comments and a security stanza.
        ("debian-12-image", DEBIAN),
        # The netinst installer: one-line, deb-src lines, a commented cdrom line.
        ("debian-12-installer", "http://deb.debian.org/debian/"),
        # Cloud images name a mirror list (mirror+file:) instead of a URL.
        ("debian-12-cloud", "https://deb.debian.org/debian"),
        # Debian 13: the host's trixie mirror serves the bookworm base image.
        ("debian-13-image", DEBIAN),
        ("debian-13-apt-example", DEBIAN),
    ],
)
def test_a_debian_host_of_any_release_gets_bookworm_from_its_own_mirror(
    host: str, mirror: str
) -> None:
    release, found = _choose(host)
    assert release == BaseRelease("debian", "bookworm")
    assert release.image == images.BASE_IMAGE == "cqkd-base:bookworm"
    assert release.components == ("main",)
    assert found == mirror


@pytest.mark.parametrize(
    ("host", "suite", "mirror"),
    [
        # One-line file where main and universe sit on separate lines.
        ("ubuntu-22.04", "jammy", "http://archive.ubuntu.com/ubuntu/"),
        # deb822 ubuntu.sources; sources.list holds only the "moved" comment.
        ("ubuntu-24.04", "noble", "http://archive.ubuntu.com/ubuntu/"),
        # arm64: ports.ubuntu.com serves the release and its security suite.
        ("ubuntu-24.04-arm64", "noble", "http://ports.ubuntu.com/ubuntu-ports/"),
    ],
)
def test_an_ubuntu_host_gets_its_own_release_from_its_own_mirror(
    host: str, suite: str, mirror: str
) -> None:
    release, found = _choose(host)
    assert release == BaseRelease("ubuntu", suite)
    assert release.image == f"cqkd-base:{suite}"
    # python3-pip is in universe on Ubuntu.
    assert release.components == ("main", "universe")
    assert found == mirror


def test_os_release_of_each_fixture_is_read() -> None:
    assert _host("debian-12-image")[0] == images.HostRelease(
        "debian", "bookworm", "Debian GNU/Linux 12 (bookworm)"
    )
    assert _host("debian-13-image")[0].codename == "trixie"
    assert _host("ubuntu-22.04")[0] == images.HostRelease("ubuntu", "jammy", "Ubuntu 22.04 LTS")
    assert _host("ubuntu-24.04")[0].family == "ubuntu"


def test_an_ubuntu_derivative_uses_its_ubuntu_codename(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text(
        'NAME="Linux Mint"\nVERSION_CODENAME=wilma\nID=linuxmint\n'
        'ID_LIKE="ubuntu debian"\nUBUNTU_CODENAME=noble\n'
    )
    host = images.host_release(os_release)
    assert images.base_release(host) == BaseRelease("ubuntu", "noble")


def test_a_host_of_another_family_is_treated_as_debian(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text("ID=fedora\nVERSION_ID=40\n")
    host = images.host_release(os_release)
    assert host.family == ""
    assert images.base_release(host) == BaseRelease("debian", "bookworm")
    missing = images.host_release(tmp_path / "absent")
    assert images.base_release(missing) == BaseRelease("debian", "bookworm")


def test_suite_overrides_the_choice() -> None:
    # A Debian host may ask for another Debian release from the same mirror.
    assert _choose("debian-13-image", "trixie") == (BaseRelease("debian", "trixie"), DEBIAN)
    # On Ubuntu, a Debian release name means a Debian mirror (given with --mirror).
    host, _ = _host("ubuntu-24.04")
    assert images.base_release(host, "bookworm") == BaseRelease("debian", "bookworm")
    assert images.base_release(host, "jammy") == BaseRelease("ubuntu", "jammy")


def test_an_ubuntu_host_without_codename_asks_for_suite(tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=ubuntu\nPRETTY_NAME="Ubuntu"\n')
    with pytest.raises(CqkdError, match="--suite"):
        images.base_release(images.host_release(os_release))


# --- edge cases ---------------------------------------------------------------

BOOKWORM = BaseRelease("debian", "bookworm")
DEBIAN_HOST = images.HostRelease("debian", "bookworm", "Debian GNU/Linux 12 (bookworm)")
UBUNTU_HOST = images.HostRelease("ubuntu", "noble", "Ubuntu 24.04 LTS")


def _apt(tmp_path: Path, sources_list: str = "", **parts: str) -> Path:
    """An apt directory: sources.list plus sources.list.d files named by keyword."""
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    if sources_list:
        (apt / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (apt / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return apt


def _error(apt: Path, release: BaseRelease = BOOKWORM, host=DEBIAN_HOST) -> str:
    with pytest.raises(CqkdError) as caught:
        images.host_mirror(release, host, apt)
    return caught.value.message


def test_only_security_lines_is_a_clear_error(tmp_path: Path) -> None:
    apt = _apt(
        tmp_path,
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\n",
    )
    message = _error(apt)
    assert "cannot find a Debian mirror for the base image (debian bookworm)" in message
    assert f"{apt}/sources.list:1: http://security.debian.org/debian-security" in message
    assert f"{apt}/sources.list:2:" in message
    assert "a security archive" in message
    assert "--mirror URL" in message and "http://deb.debian.org/debian" in message
    assert "cqkd.mirror" in message and "--suite" in message


def test_ubuntu_security_only_names_an_ubuntu_mirror_in_the_hint(tmp_path: Path) -> None:
    apt = _apt(tmp_path, "deb http://security.ubuntu.com/ubuntu noble-security main universe\n")
    message = _error(apt, BaseRelease("ubuntu", "noble"), UBUNTU_HOST)
    assert "cannot find an Ubuntu mirror" in message
    assert "http://archive.ubuntu.com/ubuntu" in message


def test_no_sources_at_all_says_what_was_read(tmp_path: Path) -> None:
    apt = _apt(tmp_path)
    message = _error(apt)
    assert f"no sources file under {apt}" in message
    assert f"{apt}/sources.list:" in message  # the absent file is listed too


def test_a_disabled_stanza_is_ignored(tmp_path: Path) -> None:
    apt = _apt(
        tmp_path,
        debian_sources=(
            "Types: deb\nURIs: http://old.example/debian\nSuites: bookworm\n"
            "Components: main\nEnabled: no\n\n"
            "Types: deb\nURIs: http://new.example/debian\nSuites: bookworm\n"
            "Components: main\n"
        ),
    )
    assert images.host_mirror(BOOKWORM, DEBIAN_HOST, apt) == "http://new.example/debian"
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://old.example/debian\nSuites: bookworm\n"
        "Components: main\nEnabled: no\n"
    )
    assert "disabled (Enabled: no)" in _error(apt)


def test_one_line_options_in_brackets_are_skipped(tmp_path: Path) -> None:
    apt = _apt(
        tmp_path,
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://one.example/debian bookworm main\n",
    )
    assert images.host_mirror(BOOKWORM, DEBIAN_HOST, apt) == "http://one.example/debian"
    # Options with spaces inside the brackets, too.
    (apt / "sources.list").write_text(
        "deb [ arch=amd64,arm64 signed-by=/etc/apt/keyrings/x.gpg ] "
        "http://two.example/debian trixie main contrib\n"
    )
    assert images.host_mirror(BOOKWORM, DEBIAN_HOST, apt) == "http://two.example/debian"


def test_deb_src_and_comments_are_ignored(tmp_path: Path) -> None:
    apt = _apt(
        tmp_path,
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://source.example/debian bookworm main\n"
        "deb http://binary.example/debian bookworm main # trailing comment\n",
    )
    assert images.host_mirror(BOOKWORM, DEBIAN_HOST, apt) == "http://binary.example/debian"
    (apt / "sources.list").write_text("deb-src http://source.example/debian bookworm main\n")
    message = _error(apt)
    assert "source packages only (deb-src)" in message
    assert "commented.example" not in message


def test_third_party_repositories_are_passed_over(tmp_path: Path) -> None:
    """Docker's (no main), PostgreSQL's (no Debian suite), a cdrom, nodesource."""
    apt = _apt(
        tmp_path,
        "deb cdrom:[Debian GNU/Linux 12.7.0 _Bookworm_]/ bookworm main\n"
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] "
        "https://download.docker.com/linux/debian bookworm stable\n"
        "deb http://apt.postgresql.org/pub/repos/apt bookworm-pgdg main\n",
        nodesource_sources=(
            "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
            "Components: main\nArchitectures: amd64\n"
        ),
    )
    message = _error(apt)
    assert "debootstrap cannot fetch from this kind of URI" in message  # cdrom
    assert "download.docker.com/linux/debian bookworm: no main component" in message
    assert "bookworm-pgdg: no Debian release suite" in message
    assert "nodistro: no Debian release suite" in message
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n"
    )
    assert images.host_mirror(BOOKWORM, DEBIAN_HOST, apt) == DEBIAN


def test_the_release_itself_is_preferred_over_a_stable_alias(tmp_path: Path) -> None:
    """ "stable main" is also what some third-party repositories call themselves."""
    apt = _apt(
        tmp_path,
        "deb https://packages.example.com/repos/code stable main\n",
        debian_sources="Types: deb\nURIs: http://mirror.example/debian\nSuites: sid\n"
        "Components: main\n",
    )
    assert images.host_mirror(BOOKWORM, DEBIAN_HOST, apt) == "http://mirror.example/debian"


def test_a_sid_host_with_bookworm_updates_lines_mixed_in(tmp_path: Path) -> None:
    host = images.HostRelease("debian", "forky", "Debian GNU/Linux forky/sid")
    apt = _apt(
        tmp_path,
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb http://ftp.example/debian/ unstable main contrib\n"
        "deb http://ftp.example/debian/ bookworm-updates main\n",
    )
    # bookworm-updates belongs to the base image's own release: preferred.
    assert images.host_mirror(BOOKWORM, host, apt) == "http://ftp.example/debian/"


def test_an_ubuntu_host_takes_neither_a_debian_line_nor_a_ppa(tmp_path: Path) -> None:
    apt = _apt(
        tmp_path,
        "deb http://deb.debian.org/debian bookworm main\n",
        # add-apt-repository on 24.04 writes deb822 files that sort before ubuntu.sources.
        deadsnakes_ubuntu_ppa_noble_sources=(
            "Types: deb\nURIs: https://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu/\n"
            "Suites: noble\nComponents: main\n"
        ),
    )
    noble = BaseRelease("ubuntu", "noble")
    message = _error(apt, noble, UBUNTU_HOST)
    assert "debian bookworm: no Ubuntu release suite" in message
    assert "a PPA" in message
    (apt / "sources.list.d" / "ubuntu.sources").write_text(
        "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu/\nSuites: noble noble-updates\n"
        "Components: main universe\n"
    )
    assert images.host_mirror(noble, UBUNTU_HOST, apt) == "http://archive.ubuntu.com/ubuntu/"


def test_the_distribution_file_wins_over_a_third_party_lookalike(tmp_path: Path) -> None:
    """packages.sury.org says "bookworm main" and sorts before debian.sources."""
    apt = _apt(
        tmp_path,
        aaa_php_list="deb https://packages.sury.org/php/ bookworm main\n",
        debian_sources="Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\n"
        "Components: main\n",
    )
    assert images.host_mirror(BOOKWORM, DEBIAN_HOST, apt) == DEBIAN


def test_an_unreadable_mirror_list_is_reported(tmp_path: Path) -> None:
    apt = _apt(
        tmp_path,
        debian_sources="Types: deb\nURIs: mirror+file:///etc/apt/mirrors/debian.list\n"
        "Suites: bookworm\nComponents: main\n",
    )
    assert "cannot read its mirror list" in _error(apt)
    (apt / "mirrors").mkdir()
    (apt / "mirrors" / "debian.list").write_text("# nothing yet\n")
    assert "names no mirror" in _error(apt)


def test_continuation_lines_and_field_case_in_deb822() -> None:
    text = "types: deb\nURIS: http://a.example/debian\n http://b.example/debian\nSuites: bookworm\n"
    entries = list(images._deb822_entries(text, "x.sources"))
    assert [e.uri for e in entries] == ["http://a.example/debian", "http://b.example/debian"]
    assert entries[0].where == "x.sources stanza 1"


def test_debootstrap_gets_a_generic_script_for_a_release_it_does_not_know(
    tmp_path: Path,
) -> None:
    (tmp_path / "sid").touch()
    (tmp_path / "gutsy").touch()
    (tmp_path / "bookworm").touch()
    assert images._debootstrap_script(BOOKWORM, tmp_path) == []
    assert images._debootstrap_script(BaseRelease("debian", "duke"), tmp_path) == [
        str(tmp_path / "sid")
    ]
    assert images._debootstrap_script(BaseRelease("ubuntu", "noble"), tmp_path) == [
        str(tmp_path / "gutsy")
    ]
