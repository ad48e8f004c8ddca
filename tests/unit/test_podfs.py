"""A pod's own disk (podfs): each replica's writes to the app directory are its own and
gone after a restart. Here the snapshot that makes that disk, without processes (real
replicas: tests/e2e/test_podfs.py)."""
import os

from dashscale_local import podfs


def test_snapshot_copies_code_links_big_files_and_leaves_out_git_and_venvs(tmp_path):
    src = tmp_path / "app"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("X = 1\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    (src / ".venv").mkdir()
    (src / ".venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (src / ".dashscale").mkdir()
    (src / "big.bin").write_bytes(b"\0" * podfs.LINK_SIZE)
    os.symlink("pkg/mod.py", src / "alias.py")
    pods = podfs.Pods(str(src), str(src / ".dashscale"), {})
    dst = tmp_path / "snap"
    podfs.clone_tree(str(src), str(dst), skip=pods._skip)
    assert sorted(os.listdir(dst)) == [".venv", "alias.py", "big.bin", "pkg"]
    assert os.readlink(dst / ".venv") == str(src / ".venv")
    assert os.readlink(dst / "alias.py") == "pkg/mod.py"
    assert os.stat(dst / "pkg" / "mod.py").st_ino != os.stat(src / "pkg" / "mod.py").st_ino
    assert os.stat(dst / "big.bin").st_ino == os.stat(src / "big.bin").st_ino
    assert os.stat(dst / "pkg" / "mod.py").st_mtime_ns == os.stat(src / "pkg" / "mod.py").st_mtime_ns
