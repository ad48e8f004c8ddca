"""A pod's own disk: each replica runs in a private, ephemeral view of the app directory,
as a Dash Enterprise pod does, with `../mount` beside it shared by every process and kept.

Under the run directory:
  deploys/N/         a snapshot of the app tree, taken at start and at each roll (a deploy):
                     code edits reach replicas through a roll only, never half-way
  pods/NAME/app      where the replica runs: an overlay (lower = its deploy, upper =
                     pods/NAME/upper) in its own mount namespace, or else a copy of the
                     deploy; remade empty at every spawn ("gone when the pod restarts")
  pods/NAME/mount →  the shared directory (mount/, or `mount =` in dashscale.ini)
  launch/NAME.pod.sh what supervisord runs: fresh layer, unshare, mount, cd, exec launcher

Snapshots copy small files (an editor's in-place save must not reach a running replica)
and hard-link files of LINK_SIZE or more (a 1 GiB data file is never copied); a reflink
is used instead of either where the filesystem has one. `.git`, `.dashscale` and
virtualenvs are not copied: the first two are left out, venvs become symlinks.
"""
import errno
import os
import shlex
import shutil
import subprocess
import sys

from .errors import RuntimeFailure


LINK_SIZE = 1024 * 1024       # files this big or bigger are linked, not copied
SKIP = {".dashscale", ".git", ".hg", ".svn"}
FICLONE = 0x40049409           # ioctl: reflink a whole file (btrfs, xfs, bcachefs)


class Pods:
    """The replicas' filesystems for one run."""

    def __init__(self, project_dir, run_dir, settings, secrets=()):
        """``secrets``: files the snapshot leaves out (the env files: their values reach
        the replicas as environment variables, and no copy of them lands on disk)."""
        self.secrets = {os.path.abspath(p) for p in secrets}
        self.project_dir, self.run_dir = project_dir, run_dir
        self.pods_dir = os.path.join(run_dir, "pods")
        self.deploys_dir = os.path.join(run_dir, "deploys")
        # settings: a config.Settings (typed and checked there); {} gives the defaults.
        self.wanted = "shared" if settings.get("shared_fs") else settings.get("pod_disk", "auto")
        mount = (settings.get("mount") or "").strip()
        self.mount = os.path.normpath(os.path.join(project_dir, os.path.expanduser(mount))) \
            if mount else os.path.join(run_dir, "mount")
        self.mode = None
        self.deploy_id = 0      # the latest deploy
        self.current = {}       # process type → the deploy its new replicas run
        self.assigned = {}      # replica name → the deploy its program runs

    # -- start, rolls, stop ------------------------------------------------------------
    def prepare(self):
        """Decide the mode, make the shared mount and take the first deploy."""
        self.mode = self.wanted
        if self.mode == "shared":
            return
        if self.mode == "auto":
            self.mode = "overlay" if overlay_works(self.run_dir) else "copy"
        for d in (self.pods_dir, self.deploys_dir):
            _remove(d)   # a previous run's, if it did not stop cleanly
            os.makedirs(d, mode=0o700)
        os.makedirs(self.mount, exist_ok=True)
        self.deploy()

    def deploy(self, types=()):
        """Snapshot the app tree as the next deploy, for the replicas of ``types`` written
        from now on (and of types not seen yet). The other types keep theirs: a scale-up
        runs what its type's other replicas run."""
        if self.mode in (None, "shared"):
            return
        target = os.path.join(self.deploys_dir, str(self.deploy_id + 1))
        try:
            clone_tree(self.project_dir, target, skip=self._skip)
        except OSError as exc:
            _remove(target)
            raise RuntimeFailure(f"cannot snapshot the app directory for the replicas: "
                                 f"{exc.strerror}: {exc.filename} (or run with --shared-fs)")
        self.deploy_id += 1
        self.assign(types)

    def assign(self, types):
        """The latest deploy for the replicas of ``types`` written from now on (a deploy
        is taken first, and assigned once its release steps pass)."""
        if self.mode in (None, "shared"):
            return
        self.current.update(dict.fromkeys(types, self.deploy_id))
        self._collect()

    def step_dir(self, name):
        """Where the release step ``name`` runs: a disk of its own, as a replica's (a copy
        of the latest deploy, `../mount` beside it; gone with discard()); in shared mode
        the user's directory."""
        if self.mode in (None, "shared"):
            return self.project_dir
        pod = os.path.join(self.pods_dir, name)
        _remove(pod)
        os.makedirs(pod, mode=0o700)
        os.symlink(self.mount, os.path.join(pod, "mount"))
        self.assigned[name] = self.deploy_id  # kept while it runs
        clone_tree(self._deploy_path(self.deploy_id), os.path.join(pod, "app"))
        return os.path.join(pod, "app")

    def entry(self, launch_dir, name):
        """Write the replica's pod script (runs the launcher inside its own disk); its
        path, or None in shared mode (the launcher runs in the user's directory)."""
        if self.mode in (None, "shared"):
            return None
        pod = os.path.join(self.pods_dir, name)
        os.makedirs(pod, mode=0o700, exist_ok=True)
        link = os.path.join(pod, "mount")
        if os.path.realpath(link) != os.path.realpath(self.mount):
            _remove(link)
            os.symlink(self.mount, link)
        launcher = os.path.join(launch_dir, f"{name}.sh")
        deploy = self.current.setdefault(name.rpartition(".")[0], self.deploy_id)
        script = pod_script(self.mode, name, pod, self._deploy_path(deploy), launcher)
        path = os.path.join(launch_dir, f"{name}.pod.sh")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(script)
        self.assigned[name] = deploy
        self._collect()
        return path

    def discard(self, name):
        """A replica removed for good (scale down, roll): its disk goes with it."""
        if name in self.assigned:
            del self.assigned[name]
            _remove(os.path.join(self.pods_dir, name))
            self._collect()

    def cleanup(self):
        """After every replica has stopped: the pods' disks and the deploys go."""
        if self.mode not in (None, "shared"):
            _remove(self.pods_dir)
            _remove(self.deploys_dir)

    def status(self):
        return {"mode": self.mode or self.wanted,
                "mount": None if self.mode == "shared" else self.mount,
                "deploy": self.deploy_id or None}

    # -- internals ----------------------------------------------------------------------
    def _deploy_path(self, n):
        return os.path.join(self.deploys_dir, str(n))

    def _collect(self):
        """Delete deploys that no replica runs any more (the current one stays)."""
        keep = {str(n) for n in (*self.assigned.values(), *self.current.values(),
                                 self.deploy_id)}
        for name in os.listdir(self.deploys_dir):
            if name not in keep:
                _remove(os.path.join(self.deploys_dir, name))

    def _skip(self, path, entry):
        """None to copy ``entry`` of directory ``path``; "omit"; or "link" (venvs)."""
        full = os.path.join(path, entry.name)
        if entry.name in SKIP or full == self.mount or full in self.secrets:
            return "omit"
        if entry.is_dir(follow_symlinks=False) and \
                os.path.exists(os.path.join(full, "pyvenv.cfg")):
            return "link"
        return None


def pod_script(mode, name, pod, deploy, launcher):
    """The sh script supervisord runs for a replica with its own disk. exec all the way
    (unshare execs too): the replica's pid stays the one supervisord signals."""
    q = shlex.quote
    lines = [f"# dashscale: {name}'s own disk ({mode}); generated, do not edit",
             f"pod={q(pod)}"]
    if mode == "overlay":
        options = f"lowerdir={deploy},upperdir={pod}/upper,workdir={pod}/work"
        if os.geteuid() != 0:  # overlayfs leaves work/work mode 000, ours in a userns
            lines.append('chmod -R u+rwx "$pod/work" 2>/dev/null')
        lines += ['rm -rf "$pod/upper" "$pod/work" || exit 1',
                  'mkdir -p "$pod/upper" "$pod/work" "$pod/app" || exit 1',
                  f"exec {' '.join(unshare_argv())} /bin/sh -c "
                  + q('mount -t overlay dashscale -o "$1" "$2" && cd "$2" && exec /bin/sh "$3"')
                  + f' pod {q(options)} "$pod/app" {q(launcher)}']
    else:
        clone = f"{q(sys.executable)} -m dashscale_local.podfs {q(deploy)}"
        lines += ['chmod -R u+rwx "$pod/app" 2>/dev/null',
                  'rm -rf "$pod/app" || exit 1',
                  f'{clone} "$pod/app" || exit 1',
                  f'cd "$pod/app" && exec /bin/sh {q(launcher)}']
    return "\n".join(lines) + "\n"


def unshare_argv():
    """A private mount namespace (mounts die with its last process; no pid namespace:
    supervisord and the memory guard see the replica's processes as they are). As an
    ordinary user, a user namespace too (Linux ≥ 5.11 allows overlayfs there); the
    replica then runs as uid 0 inside it, and its files are the user's outside."""
    argv = ["unshare", "-m", "--propagation", "private"]
    return argv if os.geteuid() == 0 else argv[:1] + ["-U", "-r"] + argv[1:]


def overlay_works(run_dir):
    """Can we mount an overlay in a private namespace here? Probed once per kernel and
    user (a cached answer in the run directory; the probe costs ~50 ms)."""
    if sys.platform != "linux" or not shutil.which("unshare") or \
            any(c in run_dir for c in ",:\\"):   # overlay options cannot hold these
        return False
    key = f"{os.uname().release} {os.geteuid()}"
    cache = os.path.join(run_dir, "overlay-probe")
    try:
        with open(cache, encoding="utf-8") as f:
            known, _, answer = f.read().rpartition(" ")
        if known == key:
            return answer == "yes"
    except OSError:
        pass
    probe = os.path.join(run_dir, "probe")
    _remove(probe)
    for d in ("low", "up", "work", "merged"):
        os.makedirs(os.path.join(probe, d))
    open(os.path.join(probe, "low", "f"), "w").close()
    options = f"lowerdir={probe}/low,upperdir={probe}/up,workdir={probe}/work"
    try:
        ok = subprocess.run(
            unshare_argv() + ["/bin/sh", "-c", 'mount -t overlay dashscale -o "$1" "$2" && '
                              'test -f "$2/f" && touch "$2/g"', "probe", options,
                              f"{probe}/merged"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    _remove(probe)
    with os.fdopen(os.open(cache, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                   encoding="utf-8") as f:
        f.write(f"{key} {'yes' if ok else 'no'}")
    return ok


# -- copying trees ------------------------------------------------------------------------

def clone_tree(src, dst, skip=None):
    """Copy the tree ``src`` to ``dst``: small files copied, big ones reflinked or
    hard-linked, symlinks as symlinks. ``skip(path, entry)`` may say "omit" or "link"
    (a symlink to the original instead of a copy)."""
    os.makedirs(dst, mode=0o700)
    with os.scandir(src) as it:
        entries = list(it)
    for entry in entries:
        how = skip(src, entry) if skip else None
        target = os.path.join(dst, entry.name)
        if how == "omit":
            continue
        if how == "link" or entry.is_symlink():
            os.symlink(entry.path if how == "link" else os.readlink(entry.path), target)
        elif entry.is_dir():
            clone_tree(entry.path, target, skip)
            shutil.copystat(entry.path, target)
        elif entry.is_file():
            _clone_file(entry, target)
    shutil.copystat(src, dst)


def _clone_file(entry, target):
    if entry.stat().st_size >= LINK_SIZE:
        if _reflink(entry.path, target):
            return
        try:
            os.link(entry.path, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
    shutil.copy2(entry.path, target)


def _reflink(src, dst):
    """A copy-on-write clone where the filesystem has one; False elsewhere (ext4)."""
    import fcntl
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
    except OSError:
        _remove(dst)
        return False
    shutil.copystat(src, dst)
    return True


def _remove(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        try:
            shutil.rmtree(path)
        except PermissionError:   # overlayfs leaves work/work mode 000 (ours in a userns)
            for root, dirs, _ in os.walk(path):
                for d in dirs:
                    os.chmod(os.path.join(root, d), 0o700)
            shutil.rmtree(path)


if __name__ == "__main__":   # copy mode's pod script: clone a deploy into the pod's app dir
    clone_tree(sys.argv[1], sys.argv[2])
