"""Everything `start` reads before it runs anything: Procfile, .env, limits, formation.

All of it is parsed and checked up front, so bad input fails with exit 2 and a
one-line message before any process starts.
"""
import os

from . import release, rundir
from .envfile import load_env_files
from .errors import UsageError
from .podfs import Pods
from .formation import parse_formation, parse_scale_file, resolve_formation, unknown_type
from .procfile import load_procfile
from .pyenv import missing_programs, resolve
from .sizes import parse_limits

SCALE_FILE = "DOKKU_SCALE"


class Project:
    def __init__(self, procfile_path, env_files=(), memory_limit=None, settings=None):
        self.procfile_path = os.path.abspath(procfile_path)
        self.directory = os.path.dirname(self.procfile_path)
        self.run_dir = rundir.run_dir_for(self.procfile_path)
        self.env_files = [os.path.abspath(p) for p in env_files] or \
            [os.path.join(self.directory, ".env")]
        # Taken before reading: a save from here on shows as a different stamp.
        self.loaded_stamps = self.stamps()
        self.procfile = load_procfile(self.procfile_path)
        self.type_names = release.process_types(self.procfile)  # `release` is a step
        self.release_steps = release.steps(self.procfile, self.directory)
        self.env_required = bool(env_files)
        self.env = load_env_files(self.env_files, required=self.env_required)
        if memory_limit is not None:
            self.limit_spec, self.limit_source = memory_limit, "--memory-limit"
        elif settings is not None:  # dashscale.ini next to the Procfile, else the default
            self.limit_spec = settings.memory_limit
            self.limit_source = settings.where("memory_limit")
        else:
            self.limit_spec, self.limit_source = None, "memory_limit"
        self.memory_limits = parse_limits(self.limit_spec, self.type_names, self.limit_source)
        self.extra_env = {}  # e.g. REDIS_URL from managed services
        self.checks = None   # checks.Checks from CHECKS, loaded by `start`
        # the replicas' own disks (the env files stay out of their snapshots)
        self.pods = Pods(self.directory, self.run_dir, settings or {}, self.env_files)
        self.python_env = resolve(self.directory, settings.python if settings else None,
                                  settings.where("python") if settings else "python")

    def missing_programs(self, procfile=None):
        """(line, message) per Procfile type whose program the replicas' Python
        environment lacks (gunicorn not installed in the app's venv…)."""
        return missing_programs(procfile or self.procfile, self.python_env, self.directory)

    def check_programs(self, procfile=None):
        """UsageError (exit 2) naming the Procfile line of the first missing program."""
        for line, message in self.missing_programs(procfile):
            raise UsageError(message, file=self.procfile_path, line=line)

    def reread(self):
        """Parse the Procfile, env files and limits again, as a new (procfile, env,
        limits) triple; raises UsageError and changes nothing when any is bad."""
        procfile = load_procfile(self.procfile_path)
        self.check_programs(procfile)
        env = load_env_files(self.env_files, required=self.env_required)
        limits = parse_limits(self.limit_spec, release.process_types(procfile),
                              self.limit_source)
        return procfile, env, limits

    @property
    def watched_files(self):
        """The files whose edits the runner applies while running."""
        return [self.procfile_path, self.scale_file, self.checks_file, *self.env_files,
                os.path.join(self.directory, release.PROJECT_TOML)]

    @property
    def checks_file(self):
        from .checks import FILE_NAME
        return os.path.join(self.directory, FILE_NAME)

    def stamps(self):
        """{path: (inode, size, mtime) or None} of the watched files."""
        stamps = {}
        for path in self.watched_files:
            try:
                st = os.stat(path)
                stamps[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                stamps[path] = None
        return stamps

    @property
    def scale_file(self):
        return os.path.join(self.directory, SCALE_FILE)

    def saved_formation(self, types=None):
        """The persisted formation: DOKKU_SCALE next to the Procfile if present, else
        the one `dashscale scale` last left in the run directory."""
        for path in (self.scale_file, os.path.join(self.run_dir, "formation")):
            if os.path.exists(path):
                try:
                    with open(path, encoding="utf-8") as f:
                        counts = parse_scale_file(f.read(), path)
                except (OSError, UnicodeDecodeError) as exc:
                    raise UsageError(f"cannot read scale file: {exc}", file=path)
                types = list(types if types is not None else self.type_names)
                unknown = [k for k in counts if k != "all" and k not in types]
                if unknown:
                    raise unknown_type(unknown[0], types, path)
                return counts
        return {}

    def save_formation(self, counts):
        path = self.scale_file if os.path.exists(self.scale_file) else \
            os.path.join(self.run_dir, "formation")
        text = "".join(f"{k}={v}\n" for k, v in counts.items())
        tmp = path + ".tmp"
        private = 0o600 if path.startswith(self.run_dir + os.sep) else 0o666  # umask applies
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, private)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    def formation(self, specs, settings, use_saved=True):
        """1 per type, then the saved formation, then each -m/-c spec (later wins)."""
        parsed = [parse_formation(s, source="-m") for s in specs if s]
        saved = self.saved_formation() if use_saved else {}
        return resolve_formation(self.type_names, saved, *parsed, **settings.caps)


def find_procfile(path=None):
    return os.path.abspath(path or "Procfile")
