"""The replica-state check: drive one sequence of callbacks through web=1 and through
web=N, each from a fresh tab, and compare the answers step by step (ReplicaReport)."""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from .app import DashscaleApp
from .callbacks import _as_list


@dataclass
class Call:
    """One step of a sequence: call the callback with this output (see
    CallbackClient.call for ``inputs`` and ``state``)."""
    output: Union[str, List[str]]
    inputs: Any = None
    state: Optional[Dict[str, Any]] = None

    def describe(self):
        if isinstance(self.inputs, dict):
            what = ", ".join(f"{k}={v!r}" for k, v in self.inputs.items())
        elif self.inputs:
            what = ", ".join(f"click {k}" if k.endswith(".n_clicks") else f"{k} changed"
                             for k in _as_list(self.inputs))
        else:
            what = ""
        if self.state:
            what += (", " if what else "") + ", ".join(f"{k}={v!r}" for k, v in self.state.items())
        out = self.output if isinstance(self.output, str) else ", ".join(self.output)
        return f"{out}" + (f" ({what})" if what else "")


def _as_call(step):
    if isinstance(step, Call):
        return step
    if isinstance(step, str):
        return Call(step)
    if isinstance(step, dict):
        return Call(step["output"], step.get("inputs"), step.get("state"))
    return Call(*step)


@dataclass
class Step:
    index: int            # 1-based
    call: Call
    replica: Optional[str]
    status: Optional[int]
    outputs: Any          # normalised outputs ({"id.prop": value} unless normalize says)
    error: Optional[str]

    def comparable(self):
        if self.error is not None:
            return ("error", self.status)
        return ("ok", self.status, self.outputs)


def run_sequence(client_or_app, sequence, normalize=None, ignore=()):
    """Drive ``sequence`` (Calls, in order, one at a time) through a fresh browser tab;
    returns [Step]. ``ignore`` drops outputs ("id.prop") from the comparison;
    ``normalize(outputs) -> comparable`` replaces values that legitimately differ."""
    client = client_or_app.new_client() if isinstance(client_or_app, DashscaleApp) \
        else client_or_app
    steps = []
    try:
        for i, raw in enumerate(sequence, 1):
            call = _as_call(raw)
            result = client.call(call.output, call.inputs, call.state, check=False)
            outputs = {k: v for k, v in result.outputs.items() if k not in set(ignore)}
            if normalize is not None:
                outputs = normalize(outputs)
            steps.append(Step(i, call, result.replica, result.status, outputs, result.error))
    finally:
        if client is not client_or_app:
            client.close()
    return steps


@dataclass
class Divergence:
    index: int
    call: Call
    baseline: Step
    trial: Step


class ReplicaReport:
    """The outcome of the check: ``ok``, ``divergences``, ``spread`` and a readable
    ``str()`` naming the callbacks and replicas involved."""

    def __init__(self, replicas, baseline, trial, divergences, problem=None):
        self.replicas = replicas
        self.baseline = baseline
        self.trial = trial
        self.divergences = divergences
        self.problem = problem       # the check could not decide (no spread, errors)

    @property
    def ok(self):
        return not self.divergences and self.problem is None

    @property
    def spread(self):
        """{replica: calls served} in the N-replica run."""
        counts = {}
        for step in self.trial:
            counts[step.replica] = counts.get(step.replica, 0) + 1
        return counts

    def __str__(self):
        if self.problem and not self.divergences:
            return self.problem
        if not self.divergences:
            spread = ", ".join(f"{k}: {v}" for k, v in sorted(self.spread.items(), key=str))
            return (f"{len(self.trial)} callbacks answered the same with {self.replicas} "
                    f"replicas ({spread}) as with one")
        n = len(self.divergences)
        lines = [f"{n} of {len(self.trial)} callbacks answered differently with "
                 f"{self.replicas} replicas than with 1 (state kept inside a process?):"]
        for d in self.divergences[:10]:
            lines.append(f"  step {d.index}: {d.call.describe()}")
            lines.append(f"      1 replica  ({d.baseline.replica}): {_show(d.baseline)}")
            lines.append(f"      {self.replicas} replicas ({d.trial.replica}): {_show(d.trial)}")
            before = [f"#{s.index} {_short(s.call)} on {s.replica}"
                      for s in self.trial[:d.index - 1]]
            if before:
                lines.append("      earlier calls with " f"{self.replicas} replicas: "
                             + ", ".join(before[-6:]))
        if n > 10:
            lines.append(f"  ... and {n - 10} more")
        first = self.divergences[0]
        lines.append(
            f"The first divergence is step {first.index}, served by {first.trial.replica}; "
            "later steps may only follow from it. An app that keeps data in a module-level "
            "variable (a global dict, list, DataFrame or counter) sees only what this "
            "replica's process wrote: keep per-user state in the browser (dcc.Store) or "
            "in a shared store (Redis, a database, files on shared storage).")
        if self.problem:
            lines.append(self.problem)
        return "\n".join(lines)

    def __repr__(self):
        return f"<ReplicaReport ok={self.ok} divergences={len(self.divergences)}>"


def _short(call):
    return call.output if isinstance(call.output, str) else ",".join(call.output)


def _show(step, limit=160):
    if step.error is not None:
        text = f"ERROR {step.error}"
    elif step.status == 204:
        text = "no update (PreventUpdate)"
    else:
        text = repr(step.outputs)
    return text if len(text) <= limit else text[:limit] + "…"


class ReplicaStateError(AssertionError):
    """The app answered differently with N replicas than with one."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


def compare_steps(baseline, trial, replicas):
    """Compare two runs of one sequence → ReplicaReport."""
    divergences = [Divergence(b.index, b.call, b, t) for b, t in zip(baseline, trial)
                   if b.comparable() != t.comparable()]
    problem = None
    failed = [s for s in baseline if s.error is not None]
    if failed:
        s = failed[0]
        problem = (f"the sequence fails even with one replica: step {s.index} "
                   f"{s.call.describe()}: {s.error}")
    else:
        used = {s.replica for s in trial}
        want = min(replicas, len(trial))
        if len(used) < want:
            problem = (f"inconclusive: the {replicas}-replica run served all {len(trial)} "
                       f"calls from {', '.join(sorted(map(str, used)))}; the proxy did not "
                       "spread them (another client using the same run?)")
    return ReplicaReport(replicas, baseline, trial, divergences, problem)


def _with_web(formation, count):
    from ..formation import parse_formation
    counts = parse_formation(formation, source="formation") if formation else {}
    counts["web"] = count
    return ",".join(f"{k}={v}" for k, v in counts.items())


def check_replica_safe(dashscale_app, sequence, replicas=2, normalize=None, ignore=(),
                       **start):
    """Start the app twice, side by side — web=1 and web=``replicas`` (both fresh) —
    drive ``sequence`` through each proxy from a fresh tab, and compare the answers
    step by step. Round-robin sends consecutive calls to consecutive replicas, so state
    one callback leaves in a process is missing when the next lands on another one.

    ``dashscale_app`` is the fixture (or any callable with its signature); ``start``
    holds its keywords (cwd, procfile, formation, memory_limit, env...).
    Returns a ReplicaReport; both formations are stopped before it returns."""
    if replicas < 2:
        raise ValueError("replicas must be at least 2")
    sequence = [_as_call(s) for s in sequence]
    if len(sequence) < 2:
        raise ValueError("a sequence of at least 2 callbacks is needed to compare")
    formation = start.pop("formation", None)
    timeout = start.pop("timeout", 60)
    one = dashscale_app(formation=_with_web(formation, 1), wait=False, **start)
    many = dashscale_app(formation=_with_web(formation, replicas), wait=False, **start)
    try:
        one.run.wait_ready(timeout=timeout)
        many.run.wait_ready(timeout=timeout)
        baseline = run_sequence(one, sequence, normalize, ignore)
        trial = run_sequence(many, sequence, normalize, ignore)
    finally:
        one._signal_stop()
        many._signal_stop()
        leftovers = one.stop() + many.stop()
    if leftovers:
        raise AssertionError("processes left behind after stop: " + "; ".join(leftovers))
    return compare_steps(baseline, trial, replicas)


def assert_replica_safe(dashscale_app, sequence, replicas=2, normalize=None, ignore=(),
                        **start):
    """check_replica_safe, raising ReplicaStateError (an AssertionError) unless the app
    answered every step the same with ``replicas`` replicas as with one."""
    report = check_replica_safe(dashscale_app, sequence, replicas, normalize, ignore, **start)
    if not report.ok:
        raise ReplicaStateError(report)
    return report
