import pytest

from dashscale_local import procfile as procfile_module

from dashscale_local.errors import UsageError
from dashscale_local.procfile import (ProcessType, ProcfileWarning, load_procfile,
                                      parse_procfile)


def commands(text):
    return parse_procfile(text).commands


@pytest.mark.parametrize("text, expected", [
    ("web: gunicorn app:server\n", {"web": "gunicorn app:server"}),
    # colons inside the command belong to the command
    ("web: gunicorn app:server -b 127.0.0.1:$PORT",
     {"web": "gunicorn app:server -b 127.0.0.1:$PORT"}),
    ("web:gunicorn app:server", {"web": "gunicorn app:server"}),
    ("web:\tgunicorn\tapp:server\t\n", {"web": "gunicorn\tapp:server"}),
    ("web: python app.py   \n", {"web": "python app.py"}),
    ("web-2: a\nmy_worker: b\nWEB: c\n", {"web-2": "a", "my_worker": "b", "WEB": "c"}),
    ("123: x", {"123": "x"}),
    ("web: a\r\nworker: b\r\n", {"web": "a", "worker": "b"}),
    ("\ufeffweb: a\n", {"web": "a"}),
    ("# comment\n\n   \nweb: a\n  # indented comment\n#worker: b\n", {"web": "a"}),
    ("web: a # shell comment stays", {"web": "a # shell comment stays"}),
    ("web: echo 'x: y'", {"web": "echo 'x: y'"}),
])
def test_valid(text, expected):
    assert commands(text) == expected


def test_order_lines_and_names():
    p = parse_procfile("\n# c\nworker: w\nweb: g\n", "dir/Procfile")
    assert p.path == "dir/Procfile"
    assert p.names == ["worker", "web"]
    assert p.types["worker"] == ProcessType("worker", "w", 3)
    assert p.types["web"].line == 4
    assert p.warnings == []


def test_names_are_case_sensitive():
    assert parse_procfile("web: a\nWeb: b").names == ["web", "Web"]


@pytest.mark.parametrize("line, why", [
    ("web gunicorn x", "not a 'name: command' line"),
    ("web gunicorn app:server", "not a 'name: command' line"),
    ("we b: x", "not a 'name: command' line"),
    ("web.1: x", "invalid process type name 'web.1'"),
    ("wéb: x", "invalid process type name 'wéb'"),
    ("web : x", "space before ':'"),
    ("  web: x", "indented line ignored"),
    ("\tweb: x", "indented line ignored"),
    (": x", "not a 'name: command' line"),
])
def test_skipped_lines_warn_with_line_number(line, why):
    p = parse_procfile(f"# header\nworker: w\n{line}\n", "Procfile")
    assert p.names == ["worker"]
    [w] = p.warnings
    assert (w.file, w.line) == ("Procfile", 3)
    assert why in w.message
    assert line.strip() in w.message


def test_warning_truncates_long_lines_and_formats():
    p = parse_procfile("web: a\nthis is a very long line that nobody should write ")
    [w] = p.warnings
    assert "…" in w.message
    assert len(w.message) < 120
    assert str(w).startswith("Procfile:2: ")
    assert str(ProcfileWarning("P", 7, "m")) == "P:7: m"


def test_several_warnings_keep_their_lines():
    p = parse_procfile("oops\nweb: a\n\nalso oops\n")
    assert [w.line for w in p.warnings] == [1, 4]


def check_error(text, line, *fragments, path="Procfile"):
    with pytest.raises(UsageError) as e:
        parse_procfile(text, path)
    assert e.value.file == path
    assert e.value.line == line
    for fragment in fragments:
        assert fragment in str(e.value)
    assert e.value.exit_code == 2
    return e.value


def test_duplicate():
    err = check_error("web: a\nworker: b\nweb: c\n", 3, "duplicate process type 'web'",
                      "(first on line 1)")
    assert str(err).startswith("Procfile:3: ")


@pytest.mark.parametrize("text, line", [
    ("web:", 1), ("web:   \n", 1), ("web:\t\r\n", 1), ("worker: w\nweb:\n", 2)])
def test_empty_command_is_an_error(text, line):
    check_error(text, line, "'web' has an empty command")


@pytest.mark.parametrize("text", ["", "\n\n", "# only\n# comments\n", "\ufeff", "junk line\n"])
def test_no_process_types(text):
    err = check_error(text, None, "no process types found", path="my/Procfile")
    assert str(err).startswith("my/Procfile: no process types found")


def test_name_too_long():
    ok = "w" * 63
    assert parse_procfile(f"{ok}: x").names == [ok]
    check_error(f"web: a\n{'w' * 64}: x", 2, "longer than 63 characters")


def test_all_is_reserved():
    check_error("web: a\nall: b", 2, "'all' is reserved")


def test_load(tmp_path):
    path = tmp_path / "Procfile"
    path.write_bytes(b"\xef\xbb\xbfweb: gunicorn app:server\r\n")
    p = load_procfile(str(path))
    assert p.path == str(path)
    assert p.commands == {"web": "gunicorn app:server"}


def test_load_missing(tmp_path):
    path = str(tmp_path / "Procfile")
    with pytest.raises(UsageError) as e:
        load_procfile(path)
    assert str(e.value) == (f"{path}: Procfile not found — run `dashscale init` to write one "
                            "for the Dash app here")


def test_load_directory(tmp_path):
    with pytest.raises(UsageError) as e:
        load_procfile(str(tmp_path))
    assert e.value.file == str(tmp_path)


def test_load_not_utf8(tmp_path):
    path = tmp_path / "Procfile"
    path.write_bytes(b"web: a\nworker: caf\xe9\n")
    with pytest.raises(UsageError) as e:
        load_procfile(str(path))
    assert (e.value.file, e.value.line) == (str(path), 2)
    assert "UTF-8" in str(e.value) and "0xe9" in str(e.value)


def test_load_unreadable(tmp_path, monkeypatch):
    # chmod 0 does not stop root, so fake the PermissionError
    def denied(path, mode="r"):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(procfile_module, "open", denied, raising=False)
    path = str(tmp_path / "Procfile")
    with pytest.raises(UsageError) as e:
        load_procfile(path)
    assert str(e.value) == f"{path}: cannot read Procfile: Permission denied"


def test_load_propagates_parse_errors_with_path(tmp_path):
    path = tmp_path / "Procfile"
    path.write_text("web: a\nweb: b\n")
    with pytest.raises(UsageError) as e:
        load_procfile(str(path))
    assert str(e.value).startswith(f"{path}:2: duplicate")
