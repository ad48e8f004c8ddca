"""Prefixed, coloured output as honcho prints it: ``HH:MM:SS web.1 | line``."""
import os
import sys
import time

COLOURS = ("36", "33", "32", "35", "34", "31")  # cyan yellow green magenta blue red
SYSTEM_COLOUR = "1"


class Printer:
    def __init__(self, stream=None, colour=None, width=8):
        self.stream = stream or sys.stdout
        if colour is None:
            colour = (self.stream.isatty() and "NO_COLOR" not in os.environ) or \
                bool(os.environ.get("FORCE_COLOR"))
        self.colour = colour
        self.width = width
        self._type_colours = {}

    def colour_for(self, name):
        type_ = name.split(".")[0]
        if name == "dashscale":
            return SYSTEM_COLOUR
        if type_ not in self._type_colours:
            self._type_colours[type_] = COLOURS[len(self._type_colours) % len(COLOURS)]
        return self._type_colours[type_]

    def line(self, name, text):
        self.width = max(self.width, len(name))
        prefix = f"{time.strftime('%H:%M:%S')} {name.ljust(self.width)} |"
        if self.colour:
            prefix = f"\x1b[{self.colour_for(name)}m{prefix}\x1b[0m"
        try:
            self.stream.write(f"{prefix} {text}\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass

    def system(self, text):
        self.line("dashscale", text)


class LogTail:
    """Follows one replica's log file from its current end, surviving truncation
    and rotation (the file shrinking or being replaced)."""

    def __init__(self, path, from_start=False, offset=0):
        self.path = path
        self.offset = None if not from_start else offset
        self.inode = None
        self.partial = b""

    @classmethod
    def from_end(cls, path):
        """Follow ``path`` from where it ends now: earlier runs' lines stay in the file
        (for `dashscale logs`) but are not printed again. A file that does not exist
        yet is followed from its start."""
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        return cls(path, from_start=True, offset=size)

    def read_lines(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self.offset is None:
            self.offset = st.st_size
        if self.inode not in (None, st.st_ino) or st.st_size < self.offset:
            self.offset = 0  # rotated or truncated
        self.inode = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(1 << 20)
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


def last_lines(path, count=10, max_bytes=16384):
    if count <= 0:
        return []  # (lines[-0:] would be all of them)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    return [line.decode("utf-8", "replace") for line in data.splitlines()[-count:]]
