import pytest

from dashscale_local.envfile import load_env_files
from dashscale_local.errors import UsageError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("A=1", {"A": "1"}),
    ("A='single quoted # not a comment'", {"A": "single quoted # not a comment"}),
    ('A="double \\"quoted\\""', {"A": 'double "quoted"'}),
    ('A="multi\nline"', {"A": "multi\nline"}),
    ("export A=1\nexport B='2'", {"A": "1", "B": "2"}),
    ("# comment\n\nA=1 # trailing comment\n", {"A": "1"}),
    ("A=", {"A": ""}),
    ("A\nB=2", {"B": "2"}),  # a key without '=' has no value: skipped
    ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
    ("\ufeffA=1", {"A": "1"}),
    ("A=x\nB=${A}y", {"A": "x", "B": "xy"}),
    ("URL=postgres://u:p@h:5432/db?x=1", {"URL": "postgres://u:p@h:5432/db?x=1"}),
    ("A=café", {"A": "café"}),
])
def test_syntax(tmp_path, text, expected):
    assert load_env_files([write(tmp_path, ".env", text)], required=True) == expected


def test_later_file_wins(tmp_path):
    first = write(tmp_path, "a.env", "A=1\nB=1\n")
    second = write(tmp_path, "b.env", "B=2\nC=2\n")
    assert load_env_files([first, second], required=True) == {"A": "1", "B": "2", "C": "2"}
    assert load_env_files([second, first], required=True)["B"] == "1"


def test_key_without_value_does_not_erase_earlier(tmp_path):
    first = write(tmp_path, "a.env", "A=1\n")
    second = write(tmp_path, "b.env", "A\n")
    assert load_env_files([first, second], required=True) == {"A": "1"}


def test_optional_missing_is_fine(tmp_path):
    present = write(tmp_path, "b.env", "B=2")
    assert load_env_files([str(tmp_path / ".env")], required=False) == {}
    assert load_env_files([str(tmp_path / ".env"), present], required=False) == {"B": "2"}


def test_required_missing_is_an_error(tmp_path):
    missing = str(tmp_path / "prod.env")
    with pytest.raises(UsageError) as e:
        load_env_files([missing], required=True)
    assert str(e.value) == f"{missing}: env file not found"
    assert e.value.exit_code == 2


def test_directory_is_an_error(tmp_path):
    with pytest.raises(UsageError) as e:
        load_env_files([str(tmp_path)], required=False)
    assert e.value.file == str(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes(b"A=caf\xe9\n")
    with pytest.raises(UsageError) as e:
        load_env_files([str(path)], required=False)
    assert e.value.file == str(path) and "UTF-8" in str(e.value)


def test_empty_list():
    assert load_env_files([], required=True) == {}
