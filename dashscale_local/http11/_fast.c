/* Fast path of dashscale_local.http11 for the common, plain HTTP message head.
 *
 * Two functions, each of which either returns exactly what the Python path of
 * http11 would produce for its input, or None ("not sure: ask the Python path").
 * They never reject anything: every error, limit and unusual construct (absolute-form
 * targets, Transfer-Encoding, Upgrade, Expect, Via, obs-text, names with "_",
 * duplicate Content-Length, ...) is left to the Python path and its llhttp
 * cross-check, which stay the reference. What is accepted here is a strict subset of
 * what that path accepts, and tests/unit/test_http11_accel.py checks, on the corpus and on
 * generated heads, that both give the same result whenever this one answers.
 *
 * parse_request_head(data, max_request_line, max_header_bytes, max_headers, max_body)
 *   data: the start of a request (its head, and maybe body bytes and more requests).
 *   -> (method, target, version, headers, host, connection, keep_alive,
 *       content_length, forward, head_length) or None
 *   forward: the header lines build_upstream_request passes on (b"name: value\r\n"...).
 *
 * parse_response_head(data, max_header_bytes)
 *   data: the first bytes of a response (its head and maybe some body).
 *   -> (status, reason, version, headers, connection, content_length, forward,
 *       head_length) or None; status >= 200 only.
 *   forward: the header lines build_client_response_head passes on.
 *
 * client_response(data, head_request, keep_alive, client_v11, extra, max_header_bytes)
 *   data: the first read of a response to a request (HEAD or not) from a client
 *   (keep-alive or not, HTTP/1.1 or 1.0), when it holds the whole response.
 *   -> (status, bytes for the client) or None: what build_client_response_head with
 *   ``extra`` lines (b"X-Dashscale-Replica: web.1\r\n") followed by the body gives.
 *
 * headers: [(lower-case name, value)], values without leading/trailing SP/HTAB;
 * connection: frozenset of lower-case Connection tokens, or None without one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static unsigned char TCHAR[256];   /* RFC 9110 token characters */
static unsigned char VALUE[256];   /* field-value bytes accepted here: HTAB, SP, VCHAR */
static unsigned char TARGET[256];  /* origin-form target bytes accepted here */
static unsigned char HOSTC[256];   /* uri-host [":" port], as http11.request._HOST_CHARS */

static PyObject *M_GET, *M_HEAD, *M_POST, *M_PUT, *M_DELETE, *M_OPTIONS, *M_PATCH;
static PyObject *V11, *V10, *CLOSE, *KEEP_ALIVE;

#define IS_OWS(c) ((c) == ' ' || (c) == '\t')

/* What a header name means to the fast path. */
enum { H_OTHER, H_DROP, H_HOST, H_CL, H_CONN, H_BAIL };

static int
name_is(const char *low, Py_ssize_t n, const char *lit)
{
    return (Py_ssize_t)strlen(lit) == n && memcmp(low, lit, n) == 0;
}

static int
starts(const char *low, Py_ssize_t n, const char *lit)
{
    Py_ssize_t k = (Py_ssize_t)strlen(lit);
    return n >= k && memcmp(low, lit, k) == 0;
}

/* Names both directions treat alike: framing and hop-by-hop fields
 * (http11.common._HOP_BY_HOP but Upgrade), a field that Connection could name,
 * and X-Dashscale-*. */
static int
hop_kind(const char *low, Py_ssize_t n)
{
    if (name_is(low, n, "content-length"))
        return H_CL;
    if (name_is(low, n, "connection"))
        return H_CONN;
    if (name_is(low, n, "transfer-encoding") || name_is(low, n, "close"))
        return H_BAIL;
    if (name_is(low, n, "keep-alive") || name_is(low, n, "proxy-connection")
            || name_is(low, n, "te") || name_is(low, n, "trailer")
            || starts(low, n, "x-dashscale-"))
        return H_DROP;
    return H_OTHER;
}

/* Request header names (http11.forward._REQ_DROP and friends). */
static int
request_kind(const char *low, Py_ssize_t n)
{
    if (memchr(low, '_', n))
        return H_BAIL;  /* CGI-style spoofing rules live in Python */
    int kind = hop_kind(low, n);
    if (kind != H_OTHER)
        return kind;
    if (name_is(low, n, "host"))
        return H_HOST;
    if (name_is(low, n, "expect") || name_is(low, n, "upgrade") || name_is(low, n, "via"))
        return H_BAIL;
    if (name_is(low, n, "forwarded") || name_is(low, n, "x-real-ip")
            || starts(low, n, "x-forwarded-"))
        return H_DROP;
    return H_OTHER;
}

/* Response header names (http11.common._RESP_DROP and X-Dashscale-*). */
static int
response_kind(const char *low, Py_ssize_t n)
{
    int kind = hop_kind(low, n);
    if (kind == H_OTHER && name_is(low, n, "upgrade"))
        return H_DROP;
    return kind;
}

/* The parsed header section. */
typedef struct {
    PyObject *headers;   /* list */
    PyObject *forward;   /* bytes */
    PyObject *host;      /* borrowed from headers, or NULL */
    int nhost;
    long long cl;        /* -1: none */
    const unsigned char *cl_text;  /* its digits as received */
    Py_ssize_t cl_len;
    int conn_close, conn_keep_alive, has_conn;
    Py_ssize_t forward_len;
} section;

static void
section_clear(section *s)
{
    Py_CLEAR(s->headers);
    Py_CLEAR(s->forward);
}

/* Connection: tokens other than close / keep-alive are left to Python (they name
 * fields to drop). Returns 0 to bail. */
static int
conn_tokens(section *s, const char *v, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    s->has_conn = 1;
    while (i <= n) {
        Py_ssize_t j = i;
        while (j < n && v[j] != ',')
            j++;
        Py_ssize_t a = i, b = j;
        while (a < b && IS_OWS(v[a])) a++;
        while (b > a && IS_OWS(v[b - 1])) b--;
        char tok[10];
        Py_ssize_t k = b - a;
        if (k == 5 || k == 10) {
            for (Py_ssize_t t = 0; t < k; t++)
                tok[t] = (char)Py_TOLOWER((unsigned char)v[a + t]);
            if (k == 5 && memcmp(tok, "close", 5) == 0)
                s->conn_close = 1;
            else if (k == 10 && memcmp(tok, "keep-alive", 10) == 0)
                s->conn_keep_alive = 1;
            else
                return 0;
        }
        else
            return 0;  /* empty or other token */
        i = j + 1;
    }
    return 1;
}

/* Parse the field lines p[pos..end), where p[end-2..end) is the CRLF of the empty line
 * that closes the section (the caller made sure it is there). Returns 1 on success, 0
 * to bail, -1 on a Python error. */
static int
parse_fields(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end, int request,
             Py_ssize_t max_headers, section *s, char *o)
{
    Py_ssize_t nfields = 0;
    char *out;
    char lowbuf[256];

    if (o == NULL) {
        /* forward is never longer than the section plus one byte per line */
        s->headers = PyList_New(0);
        s->forward = PyBytes_FromStringAndSize(NULL, 2 * (end - pos) + 16);
        if (s->headers == NULL || s->forward == NULL)
            return -1;
        o = PyBytes_AS_STRING(s->forward);
    }
    out = o;
    s->cl = -1;

    while (pos < end - 2) {
        Py_ssize_t ns = pos, nlen, vs, ve;
        while (TCHAR[p[pos]])
            pos++;
        nlen = pos - ns;
        if (nlen == 0 || p[pos] != ':' || nlen > (Py_ssize_t)sizeof(lowbuf))
            return 0;
        pos++;
        while (IS_OWS(p[pos]))
            pos++;
        vs = pos;
        while (VALUE[p[pos]])
            pos++;
        if (p[pos] != '\r' || p[pos + 1] != '\n')
            return 0;  /* bare CR, LF, control byte, obs-text */
        ve = pos;
        while (ve > vs && IS_OWS(p[ve - 1]))
            ve--;
        pos += 2;
        if (++nfields > max_headers)
            return 0;

        for (Py_ssize_t i = 0; i < nlen; i++)
            lowbuf[i] = (char)Py_TOLOWER(p[ns + i]);
        int kind = request ? request_kind(lowbuf, nlen) : response_kind(lowbuf, nlen);
        if (kind == H_BAIL)
            return 0;

        PyObject *value = NULL;
        if (s->headers != NULL) {
            PyObject *name = PyBytes_FromStringAndSize(lowbuf, nlen);
            value = PyBytes_FromStringAndSize((const char *)p + vs, ve - vs);
            PyObject *pair = (name && value) ? PyTuple_Pack(2, name, value) : NULL;
            Py_XDECREF(name);
            Py_XDECREF(value);
            if (pair == NULL || PyList_Append(s->headers, pair) < 0) {
                Py_XDECREF(pair);
                return -1;
            }
            Py_DECREF(pair);
        }

        switch (kind) {
        case H_OTHER:
            memcpy(o, lowbuf, nlen);
            o += nlen;
            *o++ = ':';
            *o++ = ' ';
            memcpy(o, p + vs, ve - vs);
            o += ve - vs;
            *o++ = '\r';
            *o++ = '\n';
            break;
        case H_HOST:
            s->nhost++;
            s->host = value;  /* borrowed: the list holds it */
            for (Py_ssize_t i = vs; i < ve; i++)
                if (!HOSTC[p[i]])
                    return 0;
            break;
        case H_CL: {
            Py_ssize_t k = ve - vs;
            if (s->cl >= 0 || k == 0 || k > 18)
                return 0;  /* duplicate, empty or possibly too large */
            long long v = 0;
            for (Py_ssize_t i = vs; i < ve; i++) {
                if (p[i] < '0' || p[i] > '9')
                    return 0;
                v = v * 10 + (p[i] - '0');
            }
            s->cl = v;
            s->cl_text = p + vs;
            s->cl_len = k;
            break;
        }
        case H_CONN:
            if (!conn_tokens(s, (const char *)p + vs, ve - vs))
                return 0;
            break;
        default:  /* H_DROP */
            break;
        }
    }
    if (pos != end - 2)
        return 0;
    s->forward_len = o - out;
    if (s->forward != NULL && _PyBytes_Resize(&s->forward, o - out) < 0)
        return -1;
    return 1;
}

static PyObject *
connection_set(section *s)
{
    if (!s->has_conn)
        Py_RETURN_NONE;
    PyObject *items = PyTuple_New(s->conn_close + s->conn_keep_alive);
    if (items == NULL)
        return NULL;
    Py_ssize_t i = 0;
    if (s->conn_close) {
        Py_INCREF(CLOSE);
        PyTuple_SET_ITEM(items, i++, CLOSE);
    }
    if (s->conn_keep_alive) {
        Py_INCREF(KEEP_ALIVE);
        PyTuple_SET_ITEM(items, i++, KEEP_ALIVE);
    }
    PyObject *set = PyFrozenSet_New(items);
    Py_DECREF(items);
    return set;
}

static PyObject *
method_object(const unsigned char *p, Py_ssize_t n)
{
#define M(lit, obj) if (n == (Py_ssize_t)sizeof(lit) - 1 && memcmp(p, lit, n) == 0) return obj
    M("GET", M_GET); M("POST", M_POST); M("HEAD", M_HEAD); M("PUT", M_PUT);
    M("DELETE", M_DELETE); M("OPTIONS", M_OPTIONS); M("PATCH", M_PATCH);
#undef M
    return NULL;
}

static PyObject *
parse_request_head(PyObject *self, PyObject *args)
{
    PyObject *data;
    Py_ssize_t max_request_line, max_header_bytes, max_headers;
    long long max_body;
    if (!PyArg_ParseTuple(args, "SnnnL", &data, &max_request_line, &max_header_bytes,
                          &max_headers, &max_body))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data), pos = 0;

    if (n < 16)
        Py_RETURN_NONE;
    /* request line: method SP origin-form SP HTTP/1.x CRLF */
    while (pos < 8 && p[pos] >= 'A' && p[pos] <= 'Z')
        pos++;
    PyObject *method = method_object(p, pos);
    if (method == NULL || p[pos] != ' ' || p[pos + 1] != '/')
        Py_RETURN_NONE;
    Py_ssize_t ts = ++pos;
    while (pos < n && TARGET[p[pos]])
        pos++;
    Py_ssize_t te = pos;
    if (p[pos] != ' ' || n - pos < 11 || memcmp(p + pos + 1, "HTTP/1.", 7) != 0
            || (p[pos + 8] != '1' && p[pos + 8] != '0')
            || p[pos + 9] != '\r' || p[pos + 10] != '\n')
        Py_RETURN_NONE;
    int v11 = p[pos + 8] == '1';
    if (pos + 9 > max_request_line)
        Py_RETURN_NONE;
    Py_ssize_t hs = pos + 11;  /* first field line */
    /* the head ends at the first CRLF CRLF from the request line's CRLF on, within
     * max_header_bytes of the field lines (as RequestParser looks for it) */
    Py_ssize_t limit = hs + max_header_bytes < n ? hs + max_header_bytes : n;
    const char *e = memmem(p + hs - 2, limit - (hs - 2), "\r\n\r\n", 4);
    if (e == NULL)
        Py_RETURN_NONE;
    Py_ssize_t end = (const unsigned char *)e - p + 4;

    section s = {0};
    int ok = parse_fields(p, hs, end, 1, max_headers, &s, NULL);
    if (ok <= 0)
        goto bail;
    if (s.nhost > 1 || (s.nhost == 0 && v11) || s.cl > max_body)
        goto bail;

    PyObject *host = s.host ? s.host : Py_None;
    PyObject *conn = connection_set(&s);
    PyObject *target = PyBytes_FromStringAndSize((const char *)p + ts, te - ts);
    PyObject *cl = s.cl >= 0 ? PyLong_FromLongLong(s.cl) : (Py_INCREF(Py_None), Py_None);
    PyObject *result = NULL;
    if (conn && target && cl) {
        int keep_alive = v11 ? !s.conn_close : s.conn_keep_alive;
        result = Py_BuildValue("(OOOOOOOOOn)", method, target, v11 ? V11 : V10, s.headers,
                               host, conn, keep_alive ? Py_True : Py_False, cl, s.forward,
                               end);
    }
    Py_XDECREF(conn);
    Py_XDECREF(target);
    Py_XDECREF(cl);
    section_clear(&s);
    return result;
bail:
    section_clear(&s);
    if (ok < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The status line of a response, and where its head ends. Returns 1, or 0 to bail. */
typedef struct {
    int status, v11;
    Py_ssize_t reason_end, fields, end;
} status_line;

static int
parse_status_line(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_header_bytes,
                  status_line *sl)
{
    /* HTTP/1.x SP 3DIGIT SP reason CRLF */
    if (n < 17 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '1' && p[7] != '0')
            || p[8] != ' ' || p[12] != ' ')
        return 0;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        status = status * 10 + (p[i] - '0');
    }
    if (status < 200)
        return 0;  /* interim responses and 101 */
    const char *e = memmem(p, n < max_header_bytes ? n : max_header_bytes, "\r\n\r\n", 4);
    if (e == NULL)
        return 0;
    Py_ssize_t pos = 13;
    while (VALUE[p[pos]])
        pos++;
    if (p[pos] != '\r' || p[pos + 1] != '\n')
        return 0;
    sl->status = status;
    sl->v11 = p[7] == '1';
    sl->reason_end = pos;
    sl->fields = pos + 2;
    sl->end = (const unsigned char *)e - p + 4;
    return 1;
}

static PyObject *
parse_response_head(PyObject *self, PyObject *args)
{
    PyObject *data;
    Py_ssize_t max_header_bytes;
    if (!PyArg_ParseTuple(args, "Sn", &data, &max_header_bytes))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    status_line sl;
    if (!parse_status_line(p, PyBytes_GET_SIZE(data), max_header_bytes, &sl))
        Py_RETURN_NONE;

    section s = {0};
    int ok = parse_fields(p, sl.fields, sl.end, 0, PY_SSIZE_T_MAX, &s, NULL);
    if (ok <= 0) {
        section_clear(&s);
        if (ok < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *conn = connection_set(&s);
    PyObject *reason = PyBytes_FromStringAndSize((const char *)p + 13, sl.reason_end - 13);
    PyObject *cl = s.cl >= 0 ? PyLong_FromLongLong(s.cl) : (Py_INCREF(Py_None), Py_None);
    PyObject *result = NULL;
    if (conn && reason && cl)
        result = Py_BuildValue("(iOOOOOOn)", sl.status, reason, sl.v11 ? V11 : V10,
                               s.headers, conn, cl, s.forward, sl.end);
    Py_XDECREF(conn);
    Py_XDECREF(reason);
    Py_XDECREF(cl);
    section_clear(&s);
    return result;
}

#define PUT(lit) (memcpy(o, lit, sizeof(lit) - 1), o += sizeof(lit) - 1)

/* What the proxy sends its client for a whole response that came in one read: what
 * http11.forward.build_client_response_head (plus the body) gives for it. */
static PyObject *
client_response(PyObject *self, PyObject *args)
{
    PyObject *data, *extra;
    int head_request, keep_alive, client_v11;
    Py_ssize_t max_header_bytes;
    if (!PyArg_ParseTuple(args, "SpppSn", &data, &head_request, &keep_alive, &client_v11,
                          &extra, &max_header_bytes))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    status_line sl;
    if (!parse_status_line(p, n, max_header_bytes, &sl) || sl.reason_end == 13)
        Py_RETURN_NONE;  /* an empty reason takes the phrase table of Python */
    int bodiless = sl.status == 204 || sl.status == 304 || head_request;

    /* status line + fields (at most twice the section) + framing + extra + body */
    Py_ssize_t extra_len = PyBytes_GET_SIZE(extra);
    Py_ssize_t cap = sl.fields + 2 * (sl.end - sl.fields) + 16 + 64 + extra_len + 2
                     + (n - sl.end);
    PyObject *outb = PyBytes_FromStringAndSize(NULL, cap);
    if (outb == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(outb), *o = out;
    PUT("HTTP/1.1 ");
    memcpy(o, p + 9, sl.reason_end - 9);  /* status SP reason */
    o += sl.reason_end - 9;
    PUT("\r\n");

    section s = {0};
    int ok = parse_fields(p, sl.fields, sl.end, 0, PY_SSIZE_T_MAX, &s, o);
    if (ok <= 0)
        goto bail;
    o += s.forward_len;
    Py_ssize_t body = 0;
    if (bodiless) {
        if (s.cl >= 0 && sl.status != 204) {
            PUT("content-length: ");
            memcpy(o, s.cl_text, s.cl_len);
            o += s.cl_len;
            PUT("\r\n");
        }
    }
    else {
        if (s.cl < 0 || n - sl.end < s.cl)
            goto bail;  /* read until close, or the body is still to come */
        body = (Py_ssize_t)s.cl;
        o += sprintf(o, "content-length: %lld\r\n", s.cl);
    }
    if (!keep_alive)
        PUT("connection: close\r\n");
    else if (!client_v11)
        PUT("connection: keep-alive\r\n");
    memcpy(o, PyBytes_AS_STRING(extra), extra_len);
    o += extra_len;
    PUT("\r\n");
    memcpy(o, p + sl.end, body);
    o += body;
    if (_PyBytes_Resize(&outb, o - out) < 0)
        return NULL;
    return Py_BuildValue("(iN)", sl.status, outb);
bail:
    Py_DECREF(outb);
    if (ok < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_request_head", parse_request_head, METH_VARARGS,
     "A plain request head, parsed as http11 would, or None (see the C source)."},
    {"parse_response_head", parse_response_head, METH_VARARGS,
     "A plain response head, parsed as http11 would, or None (see the C source)."},
    {"client_response", client_response, METH_VARARGS,
     "A whole plain response as the proxy relays it, or None (see the C source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fast",
    "Fast path of dashscale_local.http11 (see the C source).", -1, methods,
};

static int
init_tables(void)
{
    const char *t = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const char *h = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:[]";
    for (; *t; t++)
        TCHAR[(unsigned char)*t] = 1;
    for (; *h; h++)
        HOSTC[(unsigned char)*h] = 1;
    VALUE['\t'] = 1;
    for (int c = 0x20; c < 0x7f; c++)
        VALUE[c] = 1;
    /* unreserved, sub-delims, ":", "@", "/", "?", "%": RFC 3986 path and query */
    const char *u = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                    "-._~!$&'()*+,;=:@/?%";
    for (; *u; u++)
        TARGET[(unsigned char)*u] = 1;
#define B(var, lit) if ((var = PyBytes_FromString(lit)) == NULL) return -1
    B(M_GET, "GET"); B(M_HEAD, "HEAD"); B(M_POST, "POST"); B(M_PUT, "PUT");
    B(M_DELETE, "DELETE"); B(M_OPTIONS, "OPTIONS"); B(M_PATCH, "PATCH");
    B(CLOSE, "close"); B(KEEP_ALIVE, "keep-alive");
#undef B
    if ((V11 = PyUnicode_InternFromString("1.1")) == NULL
            || (V10 = PyUnicode_InternFromString("1.0")) == NULL)
        return -1;
    return 0;
}

PyMODINIT_FUNC
PyInit__fast(void)
{
    if (init_tables() < 0)
        return NULL;
    return PyModule_Create(&module);
}
