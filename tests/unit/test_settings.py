"""Typed settings (config.Settings): every key parsed and checked in one place, from
conf/defaults.ini, dashscale.ini and the command line; errors name where the value came
from, the key and the value; one app-name rule for `start` and `export`."""
import configparser
import dataclasses
import os

import click
import pytest
import yaml
from click.testing import CliRunner

from dashscale_local import config, memory
from dashscale_local.balancer import Pool
from dashscale_local.cli import main, start
from dashscale_local.config import load_settings, number, option_name, packaged_text
from dashscale_local.errors import UsageError
from dashscale_local.proxy import ProxySettings

# key: (good value as written, its typed value, bad value, what the error says)
CASES = {
    "host": ("0.0.0.0", "0.0.0.0", "my host", "'my host' is not an IP address or host name"),
    "port": ("8051", 8051, "80a", "not a whole number: '80a'"),
    "base_port": ("6000", 6000, "0", "'0' must be a whole number from 1 to 65535"),
    "max_replicas_per_type": ("20", 20, "0", "'0' must be a whole number >= 1"),
    "pod_limit": ("3", 3, "-1", "'-1' must be a whole number >= 1"),
    "memory_limit": ("web=2GiB, worker=512MiB", "web=2GiB, worker=512MiB", "web=10XB",
                     "invalid size '10XB'"),
    "memory_metric": ("RSS", "rss", "vss", "'vss' is not one of pss, rss, uss"),
    "memory_interval": ("0.5", 0.5, "0", "'0' must be a number of seconds >= 0.01"),
    "on_limit": ("restart", "restart", "retry", "'retry' is not one of stop, restart"),
    "backoff_initial": ("3", 3.0, "soon", "not a number: 'soon'"),
    "backoff_max": ("30", 30.0, "inf", "'inf' must be a number of seconds >= 0"),
    "backoff_reset": ("0", 0.0, "-1", "'-1' must be a number of seconds >= 0"),
    "startsecs": ("0", 0, "1.5", "not a whole number: '1.5'"),
    "startretries": ("5", 5, "x", "not a whole number: 'x'"),
    "stop_timeout": ("3", 3, "nan", "not a whole number: 'nan'"),
    "app_name": ("sales-report", "sales-report", "demo-", "invalid app name 'demo-'"),
    "spread": ("yes", True, "maybe", "'maybe' is not one of true, false"),
    "ready_timeout": ("5", 5.0, "0", "'0' must be a number of seconds >= 0.01"),
    "services": ("redis, pg", ("redis", "postgres"), "redis,mongo", "unknown service 'mongo'"),
    "proxy_max_body": ("1KiB", 1024, "10XB", "invalid size '10XB'"),
    "proxy_header_timeout": ("0.5", 0.5, "0", "'0' must be a number of seconds >= 0.01"),
    "proxy_body_timeout": ("1", 1.0, "-1", "'-1' must be a number of seconds >= 0.01"),
    "proxy_keepalive_timeout": ("2", 2.0, "", "not a number: ''"),
    "proxy_connect_timeout": ("0.3", 0.3, "nan", "'nan' must be a number of seconds"),
    "proxy_read_timeout": ("30", 30.0, "30s", "not a number: '30s'"),
    "proxy_send_timeout": ("7", 7.0, "0.001", "'0.001' must be a number of seconds >= 0.01"),
    "proxy_max_connections": ("10", 10, "0", "'0' must be a whole number >= 1"),
    "proxy_retry_after": ("3", 3, "1.5", "not a whole number: '1.5'"),
    "proxy_health_interval": ("0", 0.0, "-2", "'-2' must be a number of seconds >= 0"),
    "balance": ("least-outstanding", "least-outstanding", "random",
                "'random' is not one of round-robin, least-outstanding"),
    "python": (" /usr/bin/python3 ", "/usr/bin/python3", None, None),
    "shared_fs": ("on", True, "2", "'2' is not one of true, false"),
    "mount": ("/tmp/shared", "/tmp/shared", None, None),
    "pod_disk": ("copy", "copy", "zfs", "'zfs' is not one of auto, overlay, copy"),
    "proxy_health_idle_interval": ("10", 10.0, "-1", "'-1' must be a number of seconds >= 0"),
    "memory_idle_interval": ("2", 2.0, "0", "'0' must be a number of seconds >= 0.01"),
    "memory_max_growth": ("1GiB", 2**30, "lots", "lots"),
    "monitor_idle_interval": ("0.5", 0.5, "x", "not a number: 'x'"),
}
BAD = [key for key, case in CASES.items() if case[2] is not None]


def write_ini(directory, text):
    path = os.path.join(str(directory), "dashscale.ini")
    with open(path, "w") as f:
        f.write("[dashscale]\n" + text + "\n")
    return path


def error_of(fn):
    with pytest.raises(UsageError) as info:
        fn()
    return str(info.value)


def test_every_setting_has_a_case():
    assert set(CASES) == set(config.PARSERS)


def test_defaults_ini_holds_every_setting_and_parses():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(packaged_text("defaults.ini"))
    keys = set(parser["dashscale"])
    assert keys <= set(config.PARSERS)
    assert set(config.PARSERS) == keys
    s = load_settings()
    assert (s.port, s.base_port, s.caps) == (8050, 5006, {"pod_limit": 40, "max_per_type": 10})
    assert (s.memory_limit, s.memory_interval, s.spread, s.services) == ("8GiB", 0.25, False, ())
    assert (s.python, s.shared_fs, s.mount, s.balance) == ("", False, "", "round-robin")
    assert s.sources == {} and s.where("port") == "port"


@pytest.mark.parametrize("key", list(CASES))
def test_each_setting_from_dashscale_ini(tmp_path, key):
    text, typed = CASES[key][:2]
    ini = write_ini(tmp_path, f"{key} = {text}")
    s = load_settings(str(tmp_path))
    assert getattr(s, key) == typed and type(getattr(s, key)) is type(typed)
    assert s.where(key) == f"{ini}: {key}" and s.sources == {key: f"{ini}: {key}"}


@pytest.mark.parametrize("key", BAD)
def test_each_bad_setting_in_dashscale_ini_names_file_key_and_value(tmp_path, key):
    bad, fragment = CASES[key][2:]
    ini = write_ini(tmp_path, f"{key} = {bad}")
    message = error_of(lambda: load_settings(str(tmp_path)))
    assert message.startswith(f"{ini}: {key}: ") and fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize("key", BAD)
def test_each_bad_setting_from_the_command_line_names_the_option(tmp_path, key):
    bad, fragment = CASES[key][2:]
    write_ini(tmp_path, f"{key} = {CASES[key][0]}")  # the command line wins over the file
    message = error_of(lambda: load_settings(str(tmp_path), {key: bad}))
    assert message.startswith(f"{option_name(key)}: ") and fragment in message, message


def test_command_line_values_arrive_typed_and_win(tmp_path):
    write_ini(tmp_path, "port = 9000\nspread = true\nservices = redis")
    s = load_settings(str(tmp_path), {"port": 8123, "spread": False, "services": ("postgres",),
                                      "host": None})
    assert (s.port, s.spread, s.services, s.host) == (8123, False, ("postgres",), "127.0.0.1")
    assert s.where("port") == "--port" and s.where("services") == "--service"
    assert s.where("host") == "host"
    with pytest.raises(UsageError, match="^--port: not a whole number: 'True'"):
        load_settings(str(tmp_path), {"port": True})
    with pytest.raises(UsageError, match="^--port: '65536' must be a whole number from 0"):
        load_settings(str(tmp_path), {"port": 65536})


def test_backoff_max_below_initial(tmp_path):
    ini = write_ini(tmp_path, "backoff_initial = 20\nbackoff_max = 10")
    assert error_of(lambda: load_settings(str(tmp_path))) == \
        f"{ini}: backoff_max: backoff_max (10) must be >= backoff_initial (20)"
    assert error_of(lambda: load_settings(str(tmp_path), {"backoff_initial": 400})) == \
        f"{ini}: backoff_max: backoff_max (10) must be >= backoff_initial (400)"


def test_memory_limit_sizes_are_checked_here_and_types_by_the_project(tmp_path):
    message = error_of(lambda: load_settings(str(tmp_path), {"memory_limit": "web=32MiB"}))
    assert message.startswith("--memory-limit: web: limit 32 MiB is below the minimum")
    assert load_settings(str(tmp_path), {"memory_limit": "nosuchtype=1GiB"}).memory_limit \
        == "nosuchtype=1GiB"


def test_unknown_key_and_unreadable_file_name_the_file(tmp_path):
    ini = write_ini(tmp_path, "prot = 8051")
    assert error_of(lambda: load_settings(str(tmp_path))) == \
        f"{ini}: unknown setting 'prot' (did you mean 'port'?)"
    with pytest.raises(TypeError):  # an option the code does not know is a bug, not input
        load_settings(None, {"prot": 1})
    for text, message in (
            ("[dashscale]\nport 8051\n", "2: not a 'key = value' line: 'port 8051'"),
            ("port = 8051\n", "1: 'port = 8051' comes before the [dashscale] line"),
            ("[dashscale]\nport = 1\nport = 2\n", "3: 'port' is set twice"),
            ("[a]\n[a]\n", "2: section 'a' already exists")):
        with open(ini, "w") as f:
            f.write(text)
        assert error_of(lambda: load_settings(str(tmp_path))).startswith(f"{ini}:{message}")


def test_other_sections_and_a_missing_file_are_fine(tmp_path):
    assert load_settings(str(tmp_path)).port == 8050
    (tmp_path / "dashscale.ini").write_text("[other]\nanything = 1\n")
    assert load_settings(str(tmp_path)).port == 8050


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1
    with pytest.raises(TypeError):
        s["port"] = 1
    assert not hasattr(s, "setdefault")
    with pytest.raises(TypeError):
        s.sources["port"] = "--port"
    assert dataclasses.replace(s, port=9000).port == 9000
    with pytest.raises(UsageError, match="^port: not a whole number"):
        dataclasses.replace(s, port="x")  # values set in code are checked too
    assert hash(s) == hash(load_settings())


def test_dict_style_reads_give_typed_values_that_old_consumers_understand(tmp_path):
    write_ini(tmp_path, "spread = yes\nproxy_max_body = 1KiB\nstartsecs = 2")
    s = load_settings(str(tmp_path))
    assert s["port"] == 8050 and int(s["port"]) == 8050
    assert number(s, "memory_interval") == 0.25 and number(s, "stop_timeout", int) == 10
    assert int(float(s["startsecs"])) == 2 and int(float(s.get("pod_limit", 40))) == 40
    assert str(s.get("spread", "false")).lower() in ("1", "true", "yes", "on")
    assert str(load_settings().get("spread")).lower() not in ("1", "true", "yes", "on")
    assert s.get("balance", "x") == "round-robin" and s.get("nope", 7) == 7
    assert (s.get("app_name") or "") == "" and s["proxy_max_body"] == 1024
    assert "port" in s and "nope" not in s and "sources" not in s
    assert dict(s)["memory_metric"] == "pss" and list(s) == list(config.PARSERS)
    with pytest.raises(KeyError):
        s["nope"]


def test_one_app_name_rule():
    for good in ("a", "sales-report", "a--b", "x" * 63, "app2", ""):
        assert config.app_name(good) == good
    for bad in ("demo-", "Sales", "sales_report", "1sales", "-a", "x" * 64, "a/b", "a.b"):
        with pytest.raises(ValueError, match="invalid app name"):
            config.app_name(bad)


@pytest.mark.parametrize("name", ["demo-", "Sales"])
def test_start_and_export_refuse_the_same_app_names(tmp_path, name):
    (tmp_path / "Procfile").write_text("web: gunicorn app:server\n")
    procfile = str(tmp_path / "Procfile")
    for args in (["start"], ["export", "k8s"], ["export", "supervisord"]):
        result = CliRunner().invoke(main, [*args, "-f", procfile, "--app-name", name])
        assert result.exit_code == 2, (args, result.output)
        assert f"--app-name: invalid app name {name!r}" in result.stderr
    assert not (tmp_path / ".dashscale").exists()


def test_export_takes_the_app_name_from_dashscale_ini_as_start_does(tmp_path):
    (tmp_path / "Procfile").write_text("web: gunicorn app:server\n")
    write_ini(tmp_path, "app_name = sales")
    result = CliRunner().invoke(main, ["export", "k8s", "-f", str(tmp_path / "Procfile")])
    assert result.exit_code == 0, result.output
    kinds = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(result.stdout) if d}
    assert ("Ingress", "sales") in kinds and ("Deployment", "sales-web") in kinds
    write_ini(tmp_path, "app_name = demo-")
    result = CliRunner().invoke(main, ["export", "k8s", "-f", str(tmp_path / "Procfile")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'dashscale.ini'}: app_name: invalid app name 'demo-'" in result.stderr


def test_start_with_a_bad_setting_exits_2_before_anything_runs(tmp_path):
    (tmp_path / "Procfile").write_text("web: gunicorn app:server\n")
    ini = write_ini(tmp_path, "proxy_read_timeout = soon")
    result = CliRunner().invoke(main, ["start", "-f", str(tmp_path / "Procfile")])
    assert result.exit_code == 2
    assert result.stderr == f"dashscale: {ini}: proxy_read_timeout: not a number: 'soon'\n"
    write_ini(tmp_path, "")
    result = CliRunner().invoke(main, ["start", "-f", str(tmp_path / "Procfile"),
                                       "--pod-limit", "0"])
    assert result.exit_code == 2
    assert result.stderr == "dashscale: --pod-limit: '0' must be a whole number >= 1\n"
    assert not (tmp_path / ".dashscale").exists()


def test_choices_agree_with_their_owners_and_the_cli():
    assert config.MEMORY_METRICS == memory.METRICS
    assert config.BALANCE_POLICIES == Pool.POLICIES
    options = {p.name: p for p in start.params}
    for key, choices in (("memory_metric", config.MEMORY_METRICS), ("on_limit", ("stop", "restart")),
                         ("balance", config.BALANCE_POLICIES)):
        assert isinstance(options[key].type, click.Choice)
        assert tuple(options[key].type.choices) == choices
        config.PARSERS[key](choices[-1])


def test_proxy_settings_come_from_settings():
    s = dataclasses.replace(load_settings(), proxy_read_timeout=12, proxy_max_body="2KiB")
    p = ProxySettings(s)
    assert (p.read_timeout, p.max_body, p.max_connections) == (12.0, 2048, 4096)
    assert ProxySettings().read_timeout == load_settings().proxy_read_timeout == 300
    p = ProxySettings({"proxy_header_timeout": 0.5, "proxy_max_body": "1KiB"})
    assert (p.header_timeout, p.max_body, p.sweep_interval) == (0.5, 1024, 0.125)
    assert set(ProxySettings.KEYS) == {k for k in config.PARSERS if k.startswith("proxy_")}
    with pytest.raises(UsageError, match="^proxy setting proxy_read_timeout: not a number"):
        ProxySettings({"proxy_read_timeout": "abc"})
