"""Watch the Procfile, the env files and the scale file, and tell the runner when one
changed. The directory is watched (not the files) so that editors' atomic saves —
write a temp file, rename it over the original — are seen too. Events are debounced:
an editor's burst of writes becomes one reload."""
import os

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

DEBOUNCE_S = 0.1
# inotify also reports reads: the runner's own re-read of a file must not trigger
# another reload (a bad file was reported ~10 times a second).
READ_EVENTS = ("opened", "closed_no_write")


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher):
        self.watcher = watcher

    def on_any_event(self, event):
        if event.event_type in READ_EVENTS:
            return
        for path in (getattr(event, "src_path", None), getattr(event, "dest_path", None)):
            if path:
                self.watcher.seen(os.path.abspath(os.fsdecode(path)))


class FileWatcher:
    """Calls ``on_change(paths)`` on the asyncio loop, once per burst of changes."""

    def __init__(self, loop, paths, on_change, debounce=DEBOUNCE_S):
        self.loop = loop
        self.paths = {os.path.abspath(p) for p in paths}
        self.on_change = on_change
        self.debounce = debounce
        self.pending = set()
        self.timer = None
        self.observer = None

    def start(self):
        self.observer = Observer()
        for directory in {os.path.dirname(p) for p in self.paths}:
            if os.path.isdir(directory):
                self.observer.schedule(_Handler(self), directory, recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def stop(self):
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(5)

    def seen(self, path):  # watchdog thread
        if path in self.paths:
            self.loop.call_soon_threadsafe(self._kick, path)

    def _kick(self, path):  # loop thread
        self.pending.add(path)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.debounce, self._fire)

    def _fire(self):
        self.timer = None
        paths, self.pending = self.pending, set()
        self.on_change(paths)
