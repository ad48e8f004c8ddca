"""Under a 200 MiB limit per replica, the report callback asking for 400 MiB gets its
replica OOMKilled (exit 137), as on Dash Enterprise; the other replica keeps serving."""
import pytest

pytestmark = pytest.mark.slow


def test_big_report_is_oomkilled(dashscale_app):
    run = dashscale_app(formation="web=2", memory_limit="200MiB")
    small = run.call_callback("report.children", "build.n_clicks", state={"size.value": 16})
    assert small.value("report.children") == "report built from 16 MiB"

    big = run.call_callback("report.children", "build.n_clicks", state={"size.value": 400},
                            check=False)
    assert not big.ok                      # the browser would see a failed callback
    event = run.wait_for_event("oomkill")
    victim = event["message"].split()[0]
    assert victim != run.replica_of(small)   # round-robin: the next replica got it
    replica = run.wait_for_state(victim, "OOMKILLED")
    assert replica["oom_kills"] == 1
    assert replica["last_exit"]["code"] == 137 and replica["last_exit"]["reason"] == "OOMKilled"

    survivor = run.get("/")                 # the app still answers, from the other one
    assert survivor.status == 200 and run.replica_of(survivor) != victim
