import pytest

from dashscale_local.errors import UsageError
from dashscale_local.formation import (BASE_PORT, DEFAULT_POD_LIMIT, MAX_REPLICAS_PER_TYPE,
                                       PORT_STEP_PER_TYPE, ReplicaSpec, format_formation,
                                       parse_formation, parse_scale_file, plan_replicas,
                                       replica_port, resolve_formation)

TYPES = ["web", "worker"]


def test_constants():
    assert (MAX_REPLICAS_PER_TYPE, DEFAULT_POD_LIMIT, BASE_PORT, PORT_STEP_PER_TYPE) == \
        (10, 40, 5006, 100)


@pytest.mark.parametrize("spec, expected", [
    ("web=4,worker=1", {"web": 4, "worker": 1}),
    ("all=3", {"all": 3}),
    (" web = 4 , worker=0 ", {"web": 4, "worker": 0}),
    ("web=2,", {"web": 2}),
    ("", {}),
    ("web=007", {"web": 7}),
    ("my-type_2=1", {"my-type_2": 1}),
])
def test_parse_formation(spec, expected):
    assert parse_formation(spec) == expected


def test_parse_formation_keeps_order():
    assert list(parse_formation("worker=1,web=2")) == ["worker", "web"]


@pytest.mark.parametrize("spec, bad, why", [
    ("web", "'web'", "expected type=N"),
    ("web:4", "'web:4'", "expected type=N"),
    ("=4", "'=4'", "expected type=N"),
    ("web=4 worker=1", "'web=4 worker=1'", "expected type=N"),
    ("web=four", "'web=four'", "whole number"),
    ("web=-1", "'web=-1'", "whole number"),
    ("web=+1", "'web=+1'", "whole number"),
    ("web=1.5", "'web=1.5'", "whole number"),
    ("web=", "'web='", "whole number"),
    ("web=٣", "'web=٣'", "whole number"),
    ("web=1,web=2", "'web'", "twice"),
])
def test_parse_formation_errors(spec, bad, why):
    with pytest.raises(UsageError) as e:
        parse_formation(spec, source="-m")
    msg = str(e.value)
    assert msg.startswith("-m: ")
    assert bad in msg and why in msg
    assert e.value.exit_code == 2


def test_parse_formation_source_is_named():
    with pytest.raises(UsageError) as e:
        parse_formation("web=x", source="-c")
    assert str(e.value).startswith("-c: ")


def test_scale_file():
    text = "\ufeff# DOKKU_SCALE\nweb=4\r\n\n  worker = 0  \n"
    assert parse_scale_file(text, "DOKKU_SCALE") == {"web": 4, "worker": 0}


@pytest.mark.parametrize("text, line, fragment", [
    ("web=1\nworker=x\n", 2, "'worker=x'"),
    ("# c\n\nweb=1,worker=2\n", 3, "'web=1,worker=2'"),
    ("web=1\nweb=2\n", 2, "'web' is given twice"),
    ("web\n", 1, "'web'"),
])
def test_scale_file_errors(text, line, fragment):
    with pytest.raises(UsageError) as e:
        parse_scale_file(text, "app/DOKKU_SCALE")
    assert (e.value.file, e.value.line) == ("app/DOKKU_SCALE", line)
    assert str(e.value).startswith(f"app/DOKKU_SCALE:{line}: ")
    assert fragment in str(e.value)


@pytest.mark.parametrize("specs, expected", [
    ((), {"web": 1, "worker": 1}),
    (({"web": 4},), {"web": 4, "worker": 1}),
    (({"all": 3},), {"web": 3, "worker": 3}),
    (({"all": 3, "web": 5},), {"web": 5, "worker": 3}),
    (({"web": 5, "all": 3},), {"web": 5, "worker": 3}),  # specific wins within a spec
    (({"web": 5}, {"all": 2}), {"web": 2, "worker": 2}),  # later spec wins
    (({"all": 2}, {"web": 4}), {"web": 4, "worker": 2}),
    (({"web": 0, "worker": 0},), {"web": 0, "worker": 0}),
    (({"all": 20}, {"all": 1}), {"web": 1, "worker": 1}),  # caps apply to the result
])
def test_resolve(specs, expected):
    result = resolve_formation(TYPES, *specs)
    assert result == expected
    assert list(result) == TYPES


def test_resolve_unknown_type():
    with pytest.raises(UsageError) as e:
        resolve_formation(TYPES, {"wbe": 2})
    assert str(e.value) == "unknown process type 'wbe' (Procfile has: web, worker)"


@pytest.mark.parametrize("spec", [{"web": 11}, {"all": 11}])
def test_resolve_cap_per_type(spec):
    assert resolve_formation(TYPES, {"web": 10})["web"] == 10
    with pytest.raises(UsageError) as e:
        resolve_formation(TYPES, spec)
    msg = str(e.value)
    assert "web=11" in msg and "cap of 10" in msg and "Dash Enterprise" in msg


def test_resolve_custom_cap():
    assert resolve_formation(TYPES, {"web": 20}, max_per_type=20)["web"] == 20
    with pytest.raises(UsageError, match="cap of 2"):
        resolve_formation(TYPES, {"web": 3}, max_per_type=2)


def test_resolve_pod_limit():
    types = [f"t{i}" for i in range(5)]
    assert sum(resolve_formation(types, {"all": 8}).values()) == 40
    with pytest.raises(UsageError) as e:
        resolve_formation(types, {"all": 8, "t0": 9})
    msg = str(e.value)
    assert "41" in msg and "pod limit of 40" in msg and "--pod-limit" in msg
    with pytest.raises(UsageError, match="pod limit of 3"):
        resolve_formation(TYPES, {"all": 2}, pod_limit=3)
    assert resolve_formation(TYPES, {"all": 2}, pod_limit=4) == {"web": 2, "worker": 2}


@pytest.mark.parametrize("position, index, port", [
    (0, 1, 5006), (0, 4, 5009), (1, 1, 5106), (2, 10, 5215)])
def test_replica_port(position, index, port):
    assert replica_port(position, index) == port


def test_replica_port_custom():
    assert replica_port(1, 2, base_port=8000, step=10) == 8011


def test_plan_replicas():
    plan = plan_replicas(TYPES, {"worker": 2, "web": 3})
    assert plan == [
        ReplicaSpec("web.1", "web", 1, 5006), ReplicaSpec("web.2", "web", 2, 5007),
        ReplicaSpec("web.3", "web", 3, 5008),
        ReplicaSpec("worker.1", "worker", 1, 5106), ReplicaSpec("worker.2", "worker", 2, 5107),
    ]


def test_plan_zero_keeps_port_blocks():
    plan = plan_replicas(["web", "worker", "clock"], {"web": 0, "worker": 0, "clock": 1})
    assert [(r.name, r.port) for r in plan] == [("clock.1", 5206)]


def test_plan_custom_base_port():
    assert [r.port for r in plan_replicas(TYPES, {"web": 1, "worker": 1}, 9000)] == \
        [9000, 9100]


def test_plan_port_overflow():
    assert plan_replicas(["web"], {"web": 1}, 65535)[0].port == 65535
    with pytest.raises(UsageError) as e:
        plan_replicas(TYPES, {"web": 1, "worker": 1}, 65500)
    assert "65600" in str(e.value) and "worker.1" in str(e.value) and "65535" in str(e.value)


def test_plan_too_many_for_port_block():
    with pytest.raises(UsageError, match="web=101"):
        plan_replicas(TYPES, {"web": 101})


@pytest.mark.parametrize("counts, text", [
    ({"web": 4, "worker": 1}, "web=4,worker=1"), ({}, ""), ({"web": 0}, "web=0")])
def test_format_formation_roundtrip(counts, text):
    assert format_formation(counts) == text
    assert parse_formation(text) == counts
