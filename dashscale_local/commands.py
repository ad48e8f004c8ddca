"""A Procfile command, read as a shell would run it: compound or not, the program it
runs first, gunicorn's arguments, and the command a replica runs (gunicorn bound to
loopback unless it binds itself)."""
import os
import shlex

# Shell words that are not programs on PATH: `exec` is skipped, the others end the check
# (a compound command such as `cd sub && gunicorn …` is left to the shell).
SHELL_WORDS = {"cd", "export", "source", ".", "set", "if", "for", "while", "until", "case",
               "test", "[", "true", "false", ":", "command", "eval", "trap", "ulimit",
               "umask", "wait", "{", "(", "!", "builtin", "unset", "read", "echo", "printf"}


def is_compound(command):
    """True when the command needs a shell of its own (so `exec` must not prefix it)."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        return any(tok and set(tok) <= set(";&|()<>") and tok not in ("<", ">", ">>")
                   for tok in lexer)
    except ValueError:
        return True


def _is_assignment(word):
    return "=" in word and not word.startswith("-")


def gunicorn_args(command):
    """argv after the gunicorn program, or None when the command is not gunicorn."""
    if is_compound(command):
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    while argv and _is_assignment(argv[0]):
        argv = argv[1:]  # leading VAR=value assignments
    if not argv:
        return None
    prog = os.path.basename(argv[0])
    if prog == "gunicorn":
        return argv[1:]
    if prog.startswith("python") and argv[1:3] == ["-m", "gunicorn"]:
        return argv[3:]
    return None


def runs_gunicorn(command):
    """True when the Procfile command runs gunicorn (directly, behind a wrapper or
    after `cd … &&`): its exit codes 3 and 4 mean what failure.GUNICORN_EXIT says."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return any(w.rsplit("/", 1)[-1] == "gunicorn" for w in words)


def program_of(command):
    """The program a Procfile command runs first (after VAR=value and `exec`), or None
    when the shell decides (a builtin, a $VARIABLE, unparsable quoting)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    while words and (_is_assignment(words[0]) or words[0] == "exec"):
        words = words[1:]
    if not words or words[0] in SHELL_WORDS or any(c in words[0] for c in "$`;&|()<>*?"):
        return None
    return words[0]


def leading_assignment(command):
    """True when the command starts with VAR=value (`exec VAR=1 cmd` is not valid sh)."""
    try:
        first = shlex.split(command)[0]
    except (ValueError, IndexError):
        return False
    name, eq, _ = first.partition("=")
    return bool(eq) and name.isidentifier()


def has_bind(args):
    return any(a in ("-b", "--bind") or a.startswith("--bind=") or
               (a.startswith("-b") and not a.startswith("--")) for a in args)


def replica_command(command, host="127.0.0.1"):
    """The Procfile command as a replica runs it: gunicorn without a bind gets one on
    loopback (with PORT set and no --bind, gunicorn would listen on 0.0.0.0)."""
    args = gunicorn_args(command)
    if args is not None and not has_bind(args):
        return f"{command} --bind {host}:$PORT"
    return command
