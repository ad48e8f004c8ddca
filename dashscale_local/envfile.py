"""Load ``.env`` files (python-dotenv syntax: quotes, ``export``, ``${VAR}``)."""

import os

from .errors import UsageError


def load_env_files(paths, required):
    """Merge the env files in ``paths``, later files winning.

    ``required=False`` is for the implicit ``.env`` next to the Procfile
    (missing is fine); ``required=True`` for files given with ``-e``, where a
    missing file is a typo worth reporting.  Keys without ``=`` have no value
    and are skipped rather than set to the empty string.
    """
    env = {}
    for path in paths:
        if not os.path.exists(path):
            if required:
                raise UsageError("env file not found", file=path)
            continue
        if os.path.isdir(path):
            raise UsageError("is a directory, not an env file", file=path)
        from dotenv import dotenv_values  # ~6 ms; most projects have no .env

        try:
            values = dotenv_values(path, encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError("env file is not valid UTF-8", file=path) from None
        except OSError as e:
            raise UsageError(f"cannot read env file: {e.strerror}", file=path) from None
        env.update((k, v) for k, v in values.items() if v is not None)
    return env
