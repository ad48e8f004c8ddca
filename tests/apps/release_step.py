"""A release step for the tests: appends one JSON line (the step's name, its working
directory and the environment it sees) to released.jsonl in the directory it runs in,
prints one line, and exits with $RELEASE_EXIT (default 0)."""
import json
import os
import sys

KEYS = ("GREETING", "DASH_APP_NAME", "DASH_REQUESTS_PATHNAME_PREFIX", "PYTHONUNBUFFERED",
        "DASHSCALE_REPLICA", "PORT")


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "release"
    record = {"step": name, "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in KEYS}}
    with open("released.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"{name} ran with GREETING={record['env']['GREETING']}")
    sys.exit(int(os.environ.get("RELEASE_EXIT") or 0))


if __name__ == "__main__":
    main()
