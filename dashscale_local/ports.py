"""Ports: is one in use, a free one for a server we start (outside the kernel's
ephemeral range), and the proxy's listening socket bound before anything starts."""
import socket

from .errors import RuntimeFailure, UsageError

LOOPBACK = "127.0.0.1"


def bind_listener(host, port, what="proxy"):
    """Bind the listening socket now, so a port in use is reported before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"{what} port {port} on {host} is not available: {exc.strerror}"
                         " (choose another with --port)")
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def port_in_use(port, host=LOOPBACK):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_free(port, host=LOOPBACK):
    return not port_in_use(port, host)


def listen_port_range():
    """(start, stop) of ports for servers we pick a port for: outside the kernel's
    ephemeral range, so no outgoing connection (a client, the proxy) can take the port
    between our check and the server's bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low > 12000:
        return 10000, low
    return high + 1, 65000


def free_listen_port(avoid=(), host=LOOPBACK, tries=200):
    """A free port from listen_port_range(), not in ``avoid``."""
    import random

    start, stop = listen_port_range()
    for _ in range(tries):
        port = random.randrange(start, stop)
        if port not in avoid and not port_in_use(port, host):
            return port
    raise RuntimeFailure("no free port found")


def choose_port(previous, avoid, host=LOOPBACK):
    """The previous run's port if it is still free (stable URLs), else a free one."""
    if previous and previous not in avoid and port_free(previous, host):
        return previous
    return free_listen_port(avoid, host)
