"""Security review, the part without processes: the proxy's rebuilt upstream head carries
no spoofable header (the rest of the review runs real replicas: tests/e2e/test_security.py)."""


def test_underscore_spellings_of_proxy_headers_are_not_forwarded():
    """Unit: the rebuilt upstream head carries no underscore spelling of a header the
    proxy drops or sets (X_Forwarded_For, X-Dashscale_Replica, X_Real_IP, Forwarded_…),
    and keeps other underscored names (the app's own business)."""
    from dashscale_local import http11
    [req] = http11.RequestParser().feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded_Host: e\r\n"
        b"X_Dashscale_Replica: web.9\r\nX_Real_IP: 1\r\nForwarded_: x\r\nVia_: y\r\n"
        b"My_Header: kept\r\n\r\n")[:1]
    head = http11.build_upstream_request(req, b"127.0.0.1").lower()
    assert b"6.6.6.6" not in head and b"web.9" not in head and b"x_real_ip" not in head
    assert b"x-forwarded_host" not in head
    assert b"my_header: kept" in head
    assert head.count(b"x-forwarded-for: ") == 1 and b"x-forwarded-for: 127.0.0.1" in head
