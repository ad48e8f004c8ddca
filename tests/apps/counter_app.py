"""A WSGI app whose state lives in the managed services (tests/e2e/test_services.py).

GET /incr  → INCR a Redis counter: "<value> <replica>"
GET /count → the Redis counter (0 when unset)
GET /pg/add?v=N → INSERT into a Postgres table: "<rows> <replica>"
GET /pg/rows    → number of rows
GET /env?keys=A,B → those environment variables as JSON
Clients are created once per worker and reconnect by themselves after a server restart
(redis-py retries a command on a fresh connection; psycopg's pool checks connections).
"""
import os

REPLICA = os.environ.get("DASHSCALE_REPLICA", "?")
_redis = None
_pg = None


def redis_client():
    global _redis
    if _redis is None:
        import redis
        _redis = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5,
                                      health_check_interval=1)
    return _redis


def pg_conn():
    global _pg
    import psycopg
    if _pg is None or _pg.closed or _pg.broken:
        _pg = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, connect_timeout=5)
        _pg.execute("CREATE TABLE IF NOT EXISTS hits (id serial PRIMARY KEY, v int, replica text)")
    return _pg


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
    status = "200 OK"
    try:
        if path == "/incr":
            body = f"{redis_client().incr('counter')} {REPLICA}"
        elif path == "/count":
            body = str(int(redis_client().get("counter") or 0))
        elif path == "/pg/add":
            conn = pg_conn()
            conn.execute("INSERT INTO hits (v, replica) VALUES (%s, %s)",
                         (int(query.get("v", "0")), REPLICA))
            rows = conn.execute("SELECT count(*) FROM hits").fetchone()[0]
            body = f"{rows} {REPLICA}"
        elif path == "/pg/rows":
            body = str(pg_conn().execute("SELECT count(*) FROM hits").fetchone()[0])
        elif path == "/env":
            import json
            body = json.dumps({k: os.environ.get(k) for k in query.get("keys", "").split(",")})
        else:
            body = f"{REPLICA} {os.getpid()}"
    except Exception as exc:  # the test polls through a service restart
        global _pg
        _pg = None
        status, body = "503 Service Unavailable", f"{type(exc).__name__}: {exc}"
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
