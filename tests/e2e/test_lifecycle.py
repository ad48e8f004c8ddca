"""The replica state machine (lifecycle.py) against a real supervisord and gunicorn: the
facts the fake observations of tests/unit/test_lifecycle.py rely on."""
import pytest

from dashscale_local.lifecycle import Fatal, ProcessInfo, State, StopProcess
from tests import TESTS
from tests.unit.test_lifecycle import Replica, of


# ─── the facts it relies on, from a real supervisord and gunicorn ──────────────────
@pytest.mark.slow
def test_real_supervisord_hides_gunicorn_exit_4_and_its_log_gives_it(tmp_path):
    """An app that cannot load: gunicorn exits 4 within startsecs, so supervisord's RPC
    says BACKOFF with exitstatus 0 (issue 14's "exit 0: Exited too quickly"); its log
    line says 4. Driven the way the runner will drive it, the machine goes FATAL with
    the real code at the first exit, and its StopProcess leaves nothing retrying."""
    import os
    import sys
    import time

    from dashscale_local.supervisor import Supervisord
    from dashscale_local.testing import free_port, wait_for

    apps = os.path.join(TESTS, "apps")
    # startsecs 10: however loaded the machine, the exit is "too quick" (BACKOFF)
    sup = Supervisord(str(tmp_path), {"startsecs": 10, "startretries": 2, "stopwaitsecs": 5})
    sup.write_config()
    sup.write_program("web.1", "web", f"{sys.executable} -m gunicorn echo_app:no_such_attr "
                      f"--workers 1 --bind 127.0.0.1:{free_port()}", {}, apps)
    rpc_seen, x = [], Replica()
    sup.start()
    try:
        sup.wait_up()
        sup.add(["web.1"])
        sup.start_replica("web.1")

        def poll():  # as the runner's monitor will
            info = sup.all_info()["web.1"]
            logged = sup.exits()  # after the poll: every exit it shows is logged
            rpc_seen.append((info["statename"], info["exitstatus"]))
            effects = x.see(ProcessInfo.from_rpc(info, time.time(), logged.get("web.1")))
            for e in of(effects, StopProcess):
                sup.stop_replica(e.name)
            return x.r.state is State.FATAL

        wait_for(poll, 30, interval=0.02, message="FATAL")
        assert ("BACKOFF", 0) in rpc_seen  # the RPC's view of the exit: code 0
        assert sup.exits()["web.1"] == (4, None)
        assert of(x.log, Fatal) == [Fatal("web.1", 4, "app failed to load")]
        assert x.r.last_exit["code"] == 4
        wait_for(lambda: sup.all_info()["web.1"]["statename"] == "STOPPED", 10,
                 message="supervisord stopped it")
        with open(os.path.join(str(tmp_path), "logs", "supervisord.log")) as f:
            spawned = [ln for ln in f if "spawned: 'web.1'" in ln]
        assert len(spawned) == 1, spawned  # no retry: FATAL at the first exit
        with open(sup.log_path("web.1")) as f:
            assert "Failed to find attribute 'no_such_attr' in 'echo_app'." in f.read()
    finally:
        sup.shutdown(10)
    assert sup.process.poll() is not None
