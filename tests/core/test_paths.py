"""conveyor.core._paths: config paths stay inside the project; archives unpack inside
their folder."""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conveyor.core._paths import (
    ArchiveRefused,
    OutsideProject,
    PathRefused,
    inside_project,
    safe_extract,
    shown,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    return project


def test_paths_inside_are_resolved(root: Path) -> None:
    base = root.resolve()
    assert inside_project(root, "data/out.jsonl", key="k") == base / "data" / "out.jsonl"
    assert inside_project(root, "data/../out", key="k") == base / "out"
    assert inside_project(root, ".", key="k") == base
    assert inside_project(root, str(base / "x"), key="k") == base / "x"


def test_dot_dot_is_refused_with_the_key_and_the_fix(root: Path) -> None:
    with pytest.raises(OutsideProject) as info:
        inside_project(root, "../x", key="sink.path")
    assert str(info.value) == (
        f"sink.path '../x' is outside the project folder {root} (it resolves to "
        f"{root.resolve().parent / 'x'}); use a path inside the project, or set "
        "`allow_outside_project: true` beside it to allow this path"
    )
    assert (info.value.key, info.value.path) == ("sink.path", "../x")
    assert isinstance(info.value, PathRefused)
    assert isinstance(info.value, ValueError)


def test_an_absolute_path_elsewhere_and_its_own_fix(root: Path) -> None:
    with pytest.raises(OutsideProject) as info:
        inside_project(root, "/etc/passwd", key="pipeline.state_dir", fix="do X")
    assert str(info.value) == (
        f"pipeline.state_dir '/etc/passwd' is outside the project folder {root}; use a path "
        "inside the project, or do X"
    )


def test_allowed_outside(root: Path, tmp_path: Path) -> None:
    assert inside_project(root, "../x", key="k", allow_outside=True) == tmp_path.resolve() / "x"


def test_a_symlink_out_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(OutsideProject, match=r"\(it resolves to .*elsewhere/f\)"):
        inside_project(root, "link/f", key="k")
    (root / "inner").mkdir()
    (root / "ok").symlink_to(root / "inner", target_is_directory=True)
    assert inside_project(root, "ok/f", key="k") == root.resolve() / "inner" / "f"


def test_a_symlink_loop_is_refused(root: Path) -> None:
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    if sys.version_info >= (3, 13):  # resolve() gives up on the loop without an error
        assert inside_project(root, "a/x", key="k").is_relative_to(root.resolve())
        return
    with pytest.raises(PathRefused, match=r"^k 'a/x' cannot be resolved: "):
        inside_project(root, "a/x", key="k")  # resolve(): RuntimeError("Symlink loop")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "is empty"),
        ("  ", "is empty"),
        ("a\x00b", "contains a control character (\\x00)"),
        ("a\x1b[2Jb", "contains a control character (\\x1b)"),
        ("a\nb", "contains a control character (\\n)"),
        ("a\u202eb", "contains a control character (\\u202e)"),
        ("d/" + "n" * 256, "has a file or folder name of 256 bytes; at most 255 are accepted"),
        ("d/" * 2100, "is 4200 characters long; at most 4096 are accepted"),
    ],
)
def test_odd_paths_are_refused(root: Path, path: str, problem: str) -> None:
    with pytest.raises(PathRefused) as info:
        inside_project(root, path, key="k", allow_outside=True)
    message = str(info.value)
    assert message.startswith(f"k {shown(path)} {problem}; ")
    assert message.endswith("name a file or folder inside the project")
    assert not isinstance(info.value, OutsideProject)


def test_shown_escapes_and_shortens() -> None:
    assert shown("a\x1b]0;x\x07") == "'a\\x1b]0;x\\x07'"
    assert shown("x" * 200) == "'" + "x" * 120 + "…'"


# --- archives ---------------------------------------------------------------------------


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_a_tar_unpacks_inside(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar.gz", (_file("data/a.csv"), b"x,y\n"), (_file("b"), b"1"))
    written = safe_extract(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "b",
        "data/a.csv",
    ]
    assert (tmp_path / "out" / "data" / "a.csv").read_bytes() == b"x,y\n"


@pytest.mark.parametrize(
    ("member", "words"),
    [
        ((_file("../evil"), b"x"), "would land outside"),
        ((_file("/abs/evil"), b"x"), "would land outside"),
        ((_link("up", "../../etc/passwd"), b""), "is refused"),
        ((_link("abs", "/etc/passwd"), b""), "is refused"),
        ((_link("hard", "/etc/passwd", tarfile.LNKTYPE), b""), "is refused"),
    ],
)
def test_a_tar_member_landing_outside_is_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], words: str
) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", (_file("first"), b"1"), member)
    with pytest.raises(ArchiveRefused) as info:
        safe_extract(archive, tmp_path / "out")
    assert str(info.value).startswith(f"archive member {shown(member[0].name)} of {archive} ")
    assert words in str(info.value)
    assert not (tmp_path / "out" / "first").exists()  # nothing written before the check
    assert not (tmp_path / "evil").exists()


def test_a_tar_device_file_is_refused(tmp_path: Path) -> None:
    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    archive = _tar(tmp_path / "dev.tar", (device, b""))
    with pytest.raises(ArchiveRefused, match=r"archive member 'dev' .* is refused"):
        safe_extract(archive, tmp_path / "out")


def test_a_zip_unpacks_inside_and_refuses_escapes(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as archive:
        archive.writestr("dir/", "")
        archive.writestr("dir/a.txt", "hello")
    written = safe_extract(tmp_path / "ok.zip", tmp_path / "out", key="source.archive")
    assert [p.read_text() for p in written] == ["hello"]
    for name in ("../evil", "/abs/evil", "a/../../evil", "C:\\evil", "a\\..\\..\\evil"):
        with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
            archive.writestr("fine.txt", "x")
            archive.writestr(name, "x")
        with pytest.raises(ArchiveRefused) as info:
            safe_extract(tmp_path / "evil.zip", tmp_path / "zout", key="source.archive")
        assert str(info.value).startswith(f"source.archive member {shown(name)} of ")
        assert not (tmp_path / "zout" / "fine.txt").exists()


def test_a_zip_symlink_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as archive:
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveRefused, match="is a symbolic link"):
        safe_extract(tmp_path / "link.zip", tmp_path / "out")


def test_archive_bombs_are_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros", b"\0" * (1 << 20))
    with pytest.raises(ArchiveRefused, match="unpacks to more than 1,000 bytes"):
        safe_extract(tmp_path / "big.zip", tmp_path / "out", max_bytes=1000)
    tar = _tar(tmp_path / "big.tar", (_file("zeros"), b"\0" * 5000))
    with pytest.raises(ArchiveRefused, match="unpacks to more than 1,000 bytes"):
        safe_extract(tar, tmp_path / "tout", max_bytes=1000)
    many = _tar(tmp_path / "many.tar", *[(_file(f"f{i}"), b"") for i in range(5)])
    with pytest.raises(ArchiveRefused, match="more than 3 members"):
        safe_extract(many, tmp_path / "mout", max_members=3)


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(ArchiveRefused, match="is not a tar or zip file"):
        safe_extract(tmp_path / "plain.txt", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []
