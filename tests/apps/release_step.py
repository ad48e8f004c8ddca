"""A release step for the tests: appends one JSON line (the step's name, its working
directory, the environment it sees and the app's VERSION file) to ../mount/released.jsonl (shared by every
process, as on Dash Enterprise), writes scratch.txt where it runs (its own disk),
prints one line, and exits with $RELEASE_EXIT (default 0)."""
import json
import os
import sys

KEYS = ("GREETING", "DASH_APP_NAME", "DASH_REQUESTS_PATHNAME_PREFIX", "PYTHONUNBUFFERED",
        "DASHSCALE_REPLICA", "PORT")


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "release"
    record = {"step": name, "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in KEYS},
              "version": open("VERSION").read() if os.path.exists("VERSION") else None}
    os.makedirs(os.path.join("..", "mount"), exist_ok=True)  # (--shared-fs: beside the app)
    with open(os.path.join("..", "mount", "released.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    with open("scratch.txt", "w") as f:
        f.write(name)
    print(f"{name} ran with GREETING={record['env']['GREETING']}")
    sys.exit(int(os.environ.get("RELEASE_EXIT") or 0))


if __name__ == "__main__":
    main()
