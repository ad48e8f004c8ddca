"""`dashscale check --replicas` on real replicas (live comparison of the web replicas),
and Dash Enterprise's system environment variables in every process."""
import json
import urllib.request

import pytest

DASH_PROCFILE = "web: gunicorn replica_app:server --workers 1\n"


def _env_of(port, keys):
    url = f"http://127.0.0.1:{port}/env?keys={','.join(keys)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_every_process_sees_de_variables_and_env_file_wins(dashscale, app_dir):
    (app_dir / ".env").write_text("DASH_APP_NAME=from-dotenv\n")
    run = dashscale("web: gunicorn echo_app:app -w 1\nworker: gunicorn echo_app:app -w 1\n",
                    formation="web=2,worker=1")
    keys = ["DASH_APP_NAME", "DASH_REQUESTS_PATHNAME_PREFIX", "DASH_ROUTES_PATHNAME_PREFIX"]
    for r in run.status()["replicas"]:
        assert _env_of(r["port"], keys) == {"DASH_APP_NAME": "from-dotenv",
                                            "DASH_REQUESTS_PATHNAME_PREFIX": "/",
                                            "DASH_ROUTES_PATHNAME_PREFIX": "/"}, r["name"]


# -- check --replicas on real replicas ---------------------------------------------------
def _check(run):
    result = run.cli("check", "--replicas", "--json", timeout=120)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None, \
        result.stderr


def _start(dashscale, app_dir, mode, formation="web=2"):
    (app_dir / ".env").write_text(f"REPLICA_APP_MODE={mode}\n")
    return dashscale(DASH_PROCFILE, formation=formation, timeout=120)


@pytest.mark.slow
def test_ids_drawn_per_process_are_reported(dashscale, app_dir):
    run = _start(dashscale, app_dir, "ids")
    code, data, err = _check(run)
    assert code == 1, err
    assert set(data) >= {"divergences", "replicas", "agree"} and data["agree"] is False
    assert [r["name"] for r in data["replicas"]] == ["web.1", "web.2"]
    by_what = {}
    for d in data["divergences"]:
        assert set(d) >= {"replica", "what", "id", "detail", "cause"}
        assert d["replica"] == "web.2"
        by_what.setdefault(d["what"], []).append(d)
    ids = [d for d in by_what["layout"] if d["id"] and d["id"].startswith("graph-")]
    assert ids and "on web.1" in ids[0]["detail"] and "on web.2" in ids[0]["detail"]
    assert "fixed ids" in ids[0]["cause"]
    assert any("started at" in d["detail"] and "import" in d["cause"]
               for d in by_what["layout"])
    assert any(d["id"].startswith("graph-") for d in by_what["dependencies"])
    assert "session" not in by_what  # the key is shared
    # The dashboard shows the last result.
    _status, _headers, body = run.get("/_dashscale/api/status")
    shown = json.loads(body)["replica_check"]
    assert shown["agree"] is False and len(shown["divergences"]) == len(data["divergences"])
    text = run.cli("check", "--replicas")
    assert text.returncode == 1 and "likely cause" in text.stdout


@pytest.mark.slow
def test_clean_app_passes(dashscale, app_dir):
    run = _start(dashscale, app_dir, "clean")
    code, data, err = _check(run)
    assert (code, data["agree"], data["divergences"]) == (0, True, []), err
    assert all(r["cookies"] == ["session"] for r in data["replicas"])  # compared, accepted


@pytest.mark.slow
def test_per_process_secret_loses_the_session(dashscale, app_dir):
    run = _start(dashscale, app_dir, "session")
    code, data, err = _check(run)
    assert code == 1, err
    sessions = [d for d in data["divergences"] if d["what"] == "session"]
    assert {d["replica"] for d in sessions} == {"web.1", "web.2"}
    assert sessions[0]["id"] == "session" and "secret key" in sessions[0]["cause"]
    assert not [d for d in data["divergences"] if d["what"] != "session"]


@pytest.mark.slow
def test_one_replica_or_no_dash_app_is_a_usage_error(dashscale, app_dir):
    run = dashscale("web: gunicorn echo_app:app -w 1\n")
    result = run.cli("check", "--replicas")
    assert result.returncode == 2 and "at least 2 ready web replicas" in result.stderr
    run.cli("scale", "web=2", check=True)
    run.wait_ready(count=2)
    result = run.cli("check", "--replicas")  # echo_app is not a Dash app
    assert result.returncode == 2 and "no web replica serves a Dash app under /" in \
        result.stderr, result.stderr
