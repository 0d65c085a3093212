/* Compiled fast paths of the SIP parser (issue 12), sans I/O.
 *
 * Every function here is a *recogniser with a builder*: it handles the
 * common, well-formed shapes of its input and returns the very objects the
 * pure-Python code (parser.py, via.py, headers.py, uri.py) would return for
 * them, or None for anything else -- anything unusual, anything malformed,
 * any non-ASCII text.  On None the caller runs its pure-Python code, so an
 * error message (and every rare shape) always comes from one place, and the
 * pure code stays the reference: tests/sip/test_cparse.py checks that both
 * give identical results or identical errors on the torture and mutated
 * corpora.  No function here raises for bad input; only MemoryError.
 *
 * Objects of the Python classes (Via, URI, NameAddr, CSeq, Params) are made
 * the way the Python fast paths make them (``Cls.__new__(Cls)`` then their
 * slots set), through the slot offsets read from the classes when they are
 * registered (``register(name, cls)``); a class not registered, or not
 * shaped as expected, makes the functions that build it return None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

/* -- character classes ------------------------------------------------ */

enum {
    C_TOKEN = 1 << 0,  /* RFC 3261 25.1 token */
    C_USER = 1 << 1,   /* uri.USER_CHARS: A-Za-z0-9 -_.!~*'()&=+$,;?/ */
    C_PCH = 1 << 2,    /* uri.PARAM_CHARS: A-Za-z0-9 -_.!~*'()[]/:&+$ */
    C_WORD = 1 << 3,   /* Call-ID word */
    C_HOST = 1 << 4,   /* A-Za-z0-9 - . */
    C_LABEL = 1 << 5,  /* A-Za-z0-9 _ - */
    C_PV = 1 << 6,     /* token + : [ ] */
    C_DIGIT = 1 << 7,
    C_ALNUM = 1 << 8,
    C_SCHEME = 1 << 9, /* A-Za-z0-9 + - . */
};
static unsigned short cls[256];

static void
init_classes(void)
{
    int c;
    const char *p;
    for (c = 0; c < 256; c++) {
        int alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (alnum)
            cls[c] |= C_TOKEN | C_USER | C_PCH | C_WORD | C_HOST | C_LABEL | C_PV | C_ALNUM | C_SCHEME;
        if (c >= '0' && c <= '9')
            cls[c] |= C_DIGIT;
    }
    for (p = "-.!%*_+`'~"; *p; p++)
        cls[(unsigned char)*p] |= C_TOKEN | C_PV;
    for (p = "-_.!~*'()&=+$,;?/"; *p; p++)
        cls[(unsigned char)*p] |= C_USER;
    for (p = "-_.!~*'()[]/:&+$"; *p; p++)
        cls[(unsigned char)*p] |= C_PCH;
    for (p = "-.!%*_+`'~()<>:\\\"/[]?{}"; *p; p++)
        cls[(unsigned char)*p] |= C_WORD;
    for (p = "-."; *p; p++)
        cls[(unsigned char)*p] |= C_HOST;
    for (p = "_-"; *p; p++)
        cls[(unsigned char)*p] |= C_LABEL;
    for (p = ":[]"; *p; p++)
        cls[(unsigned char)*p] |= C_PV;
    for (p = "+-."; *p; p++)
        cls[(unsigned char)*p] |= C_SCHEME;
}

#define IS(c, k) (cls[(unsigned char)(c)] & (k))

/* -- the registered classes ------------------------------------------- */

typedef struct {
    PyTypeObject *type;
    Py_ssize_t off[8];
} Klass;

enum { K_VIA, K_URI, K_NAMEADDR, K_CSEQ, K_PARAMS, K_COUNT };
static const char *const klass_names[K_COUNT] = {"Via", "URI", "NameAddr", "CSeq", "Params"};
static const char *const klass_slots[K_COUNT][9] = {
    {"protocol", "version", "transport", "host", "port", "params", NULL},
    {"scheme", "user", "password", "host", "port", "params", "headers", "opaque", NULL},
    {"raw_display", "_uri", "_params", "wildcard", "_lazy", NULL},
    {"seq", "method", NULL},
    {"_names", NULL},
};
static Klass klass[K_COUNT];

/* Slot indexes, in the order of klass_slots. */
enum { V_PROTOCOL, V_VERSION, V_TRANSPORT, V_HOST, V_PORT, V_PARAMS };
enum { U_SCHEME, U_USER, U_PASSWORD, U_HOST, U_PORT, U_PARAMS, U_HEADERS, U_OPAQUE };
enum { N_RAW_DISPLAY, N_URI, N_PARAMS, N_WILDCARD, N_LAZY };
enum { S_SEQ, S_METHOD };
enum { P_NAMES };

static PyObject *empty_tuple;
static PyObject *str_SIP, *str_2_0, *str_branch, *str_rport, *str_empty;
static PyObject *kinds;        /* header key -> 1 (single) / 2 (list) */
static PyObject *methods[14];  /* the methods CSeq's fast path knows */
static const char *const method_names[14] = {
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"};

/* Set slot ``i`` of a fresh object (steals ``v``). */
#define SLOT(obj, k, i) (*(PyObject **)((char *)(obj) + klass[k].off[i]))

static inline void
set_slot(PyObject *obj, int k, int i, PyObject *v)
{
    PyObject **p = &SLOT(obj, k, i);
    PyObject *old = *p;
    *p = v;
    Py_XDECREF(old);
}

static PyObject *
new_instance(int k)
{
    PyTypeObject *t = klass[k].type;
    if (k == K_PARAMS) {
        PyObject *p = PyDict_Type.tp_new(t, empty_tuple, NULL);
        if (p == NULL)
            return NULL;
        PyObject *names = PyDict_New();
        if (names == NULL) {
            Py_DECREF(p);
            return NULL;
        }
        set_slot(p, K_PARAMS, P_NAMES, names);
        return p;
    }
    return t->tp_alloc(t, 0);
}

static PyObject *
py_register(PyObject *self, PyObject *args)
{
    const char *name;
    PyObject *type;
    int k, i;
    if (!PyArg_ParseTuple(args, "sO!", &name, &PyType_Type, &type))
        return NULL;
    for (k = 0; k < K_COUNT; k++)
        if (strcmp(name, klass_names[k]) == 0)
            break;
    if (k == K_COUNT) {
        PyErr_Format(PyExc_ValueError, "unknown class %s", name);
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)type;
    if (t->tp_dictoffset != 0) {
        PyErr_Format(PyExc_TypeError, "%s has a __dict__: not slotted", name);
        return NULL;
    }
    if (k == K_PARAMS ? !PyType_IsSubtype(t, &PyDict_Type) : t->tp_base != &PyBaseObject_Type) {
        PyErr_Format(PyExc_TypeError, "%s: unexpected base class", name);
        return NULL;
    }
    Py_ssize_t off[8];
    for (i = 0; klass_slots[k][i] != NULL; i++) {
        PyObject *d = PyDict_GetItemString(t->tp_dict, klass_slots[k][i]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", name, klass_slots[k][i]);
            return NULL;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", name, klass_slots[k][i]);
            return NULL;
        }
        off[i] = m->offset;
    }
    Py_INCREF(type);
    Py_XSETREF(klass[k].type, t);
    memcpy(klass[k].off, off, sizeof(off));
    Py_RETURN_NONE;
}

/* -- helpers -------------------------------------------------------------- */

/* The ASCII bytes of a str, or NULL (not a str, or not ASCII). */
static inline const unsigned char *
ascii_of(PyObject *s, Py_ssize_t *n)
{
    if (!PyUnicode_Check(s) || !PyUnicode_IS_ASCII(s))
        return NULL;
    *n = PyUnicode_GET_LENGTH(s);
    return (const unsigned char *)PyUnicode_DATA(s);
}

static inline PyObject *
sub(PyObject *s, Py_ssize_t a, Py_ssize_t b)
{
    return PyUnicode_Substring(s, a, b);
}

static inline int
ieq(const unsigned char *p, const char *lit, Py_ssize_t n)
{
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= 'a' && c <= 'z')
            c -= 32;
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

/* grammar._host_problem(host) is None: a hostname (labels of A-Za-z0-9_-,
 * neither end a '-', one final '.' allowed), and a dotted-digits one is an
 * IPv4 address without leading zeros. */
static int
host_ok(const unsigned char *h, Py_ssize_t n)
{
    Py_ssize_t i = 0, start;
    int dotted_digits = 1;
    if (n == 0)
        return 0;
    for (;;) {
        start = i;
        while (i < n && IS(h[i], C_LABEL))
            i++;
        if (i == start || h[start] == '-' || h[i - 1] == '-')
            return 0;
        if (i == n)
            break;
        if (h[i] != '.')
            return 0;
        i++;
        if (i == n)
            break; /* one trailing dot */
    }
    for (i = 0; i < n; i++)
        if (!(IS(h[i], C_DIGIT) || h[i] == '.')) {
            dotted_digits = 0;
            break;
        }
    if (dotted_digits) {
        /* _IPV4.fullmatch(host.rstrip(".")): four parts 0-255, no leading 0 */
        Py_ssize_t m = n;
        int parts = 0;
        while (m > 0 && h[m - 1] == '.')
            m--;
        i = 0;
        for (;;) {
            start = i;
            while (i < m && IS(h[i], C_DIGIT))
                i++;
            Py_ssize_t len = i - start;
            if (len == 0 || len > 3 || (len > 1 && h[start] == '0'))
                return 0;
            int v = 0;
            for (Py_ssize_t j = start; j < i; j++)
                v = v * 10 + (h[j] - '0');
            if (v > 255)
                return 0;
            parts++;
            if (i == m)
                break;
            i++; /* '.' */
        }
        if (parts != 4)
            return 0;
    }
    return 1;
}

/* grammar.simple_params(s[a:b]) where s[a] == ';' and the text was checked
 * by the caller's grammar: Params, or NULL with *dup set (a name twice), or
 * NULL with an exception. */
static PyObject *
make_params(PyObject *s, const unsigned char *p, Py_ssize_t a, Py_ssize_t b, int *dup)
{
    PyObject *params = new_instance(K_PARAMS);
    if (params == NULL)
        return NULL;
    PyObject *names = SLOT(params, K_PARAMS, P_NAMES);
    Py_ssize_t i = a + 1;
    *dup = 0;
    while (i <= b) {
        Py_ssize_t end = i, eq = -1;
        while (end < b && p[end] != ';') {
            if (p[end] == '=' && eq < 0)
                eq = end;
            end++;
        }
        Py_ssize_t name_end = eq < 0 ? end : eq;
        PyObject *name = sub(s, i, name_end);
        if (name == NULL)
            goto fail;
        int lower = 1;
        for (Py_ssize_t j = i; j < name_end; j++)
            if (p[j] >= 'A' && p[j] <= 'Z') {
                lower = 0;
                break;
            }
        PyObject *key;
        if (lower) {
            key = name;
            Py_INCREF(key);
        } else {
            key = PyObject_CallMethod(name, "lower", NULL);
            if (key == NULL) {
                Py_DECREF(name);
                goto fail;
            }
        }
        int has = PyDict_Contains(params, key);
        if (has != 0) {
            Py_DECREF(name);
            Py_DECREF(key);
            if (has > 0) {
                *dup = 1;
            }
            goto fail;
        }
        if (!lower && PyDict_SetItem(names, key, name) < 0) {
            Py_DECREF(name);
            Py_DECREF(key);
            goto fail;
        }
        Py_DECREF(name);
        PyObject *value;
        if (eq < 0) {
            value = Py_None;
            Py_INCREF(value);
        } else if ((value = sub(s, eq + 1, end)) == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        int r = PyDict_SetItem(params, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (r < 0)
            goto fail;
        i = end + 1;
    }
    return params;
fail:
    Py_DECREF(params);
    return NULL;
}

/* The port digits p[a:b] (1-5 of them) as an int, or -1 when > 65535. */
static long
port_of(const unsigned char *p, Py_ssize_t a, Py_ssize_t b)
{
    long v = 0;
    for (Py_ssize_t i = a; i < b; i++)
        v = v * 10 + (p[i] - '0');
    return v > 65535 ? -1 : v;
}

/* uri.build_sip_uri for a host that is not an IPv6 reference: NULL without
 * an exception when Python would raise (bad host, port, a repeated param). */
static PyObject *
build_uri(PyObject *s, const unsigned char *p, PyObject *scheme, Py_ssize_t user_a, Py_ssize_t user_b,
          Py_ssize_t host_a, Py_ssize_t host_b, Py_ssize_t port_a, Py_ssize_t port_b, Py_ssize_t par_a,
          Py_ssize_t par_b)
{
    long port = -2;
    int dup;
    if (klass[K_URI].type == NULL || klass[K_PARAMS].type == NULL)
        return NULL;
    if (!host_ok(p + host_a, host_b - host_a))
        return NULL;
    if (port_a >= 0 && (port = port_of(p, port_a, port_b)) < 0)
        return NULL;
    PyObject *u = new_instance(K_URI);
    if (u == NULL)
        return NULL;
    PyObject *params;
    if (par_b > par_a) {
        params = make_params(s, p, par_a, par_b, &dup);
        if (params == NULL)
            goto fail;
    } else if ((params = new_instance(K_PARAMS)) == NULL)
        goto fail;
    set_slot(u, K_URI, U_PARAMS, params);
    Py_INCREF(scheme);
    set_slot(u, K_URI, U_SCHEME, scheme);
    PyObject *v;
    if (user_a >= 0) {
        if ((v = sub(s, user_a, user_b)) == NULL)
            goto fail;
    } else {
        v = Py_None;
        Py_INCREF(v);
    }
    set_slot(u, K_URI, U_USER, v);
    Py_INCREF(Py_None);
    set_slot(u, K_URI, U_PASSWORD, Py_None);
    if ((v = sub(s, host_a, host_b)) == NULL)
        goto fail;
    set_slot(u, K_URI, U_HOST, v);
    if (port >= 0) {
        if ((v = PyLong_FromLong(port)) == NULL)
            goto fail;
    } else {
        v = Py_None;
        Py_INCREF(v);
    }
    set_slot(u, K_URI, U_PORT, v);
    if ((v = PyList_New(0)) == NULL)
        goto fail;
    set_slot(u, K_URI, U_HEADERS, v);
    Py_INCREF(Py_None);
    set_slot(u, K_URI, U_OPAQUE, Py_None);
    return u;
fail:
    Py_DECREF(u);
    return NULL;
}

/* Scan HOST_FAST's hostname alternative from i: the end, or -1. */
static Py_ssize_t
scan_host(const unsigned char *p, Py_ssize_t i, Py_ssize_t n)
{
    Py_ssize_t start = i;
    if (i >= n || !IS(p[i], C_ALNUM))
        return -1;
    while (i < n && IS(p[i], C_HOST))
        i++;
    if (i - start > 1 && p[i - 1] == '-')
        return -1;
    return i;
}

/* Scan ``(;[PCH]+(=[PCH]+)?)*`` from i: the end (i itself when none), or -1. */
static Py_ssize_t
scan_uparams(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, int *count)
{
    *count = 0;
    while (i < n && p[i] == ';') {
        Py_ssize_t s = ++i;
        while (i < n && IS(p[i], C_PCH))
            i++;
        if (i == s)
            return -1;
        if (i < n && p[i] == '=') {
            s = ++i;
            while (i < n && IS(p[i], C_PCH))
                i++;
            if (i == s)
                return -1;
        }
        (*count)++;
    }
    return i;
}

/* Scan ``(;TOKEN(=PV)?)*`` (header parameters) from i. */
static Py_ssize_t
scan_hparams(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, int *count, unsigned short vclass)
{
    *count = 0;
    while (i < n && p[i] == ';') {
        Py_ssize_t s = ++i;
        while (i < n && IS(p[i], C_TOKEN))
            i++;
        if (i == s)
            return -1;
        if (i < n && p[i] == '=') {
            s = ++i;
            while (i < n && IS(p[i], vclass))
                i++;
            if (i == s)
                return -1;
        }
        (*count)++;
    }
    return i;
}

/* -- parse_head: the framing and start line of parser._parse ------------- */

static int
is_cl_name(const char *p, Py_ssize_t n)
{
    if (n == 1)
        return p[0] == 'l' || p[0] == 'L';
    return n == 14 && ieq((const unsigned char *)p, "CONTENT-LENGTH", 14);
}

/* parse_head(data, stream, keys, compact) -> None or
 * (is_request, method | status, uri | reason, version, fields, body):
 * the message parser._parse would build, when it would build it without
 * a ParseError and the message has the common shape (no fold, no control
 * character but HT, a token before every colon, an ASCII start line, a
 * Content-Length of 1-11 digits).  ``keys`` is parser._KEYS (name as
 * written -> key), grown here as there; ``compact`` is message.COMPACT. */
static PyObject *
py_parse_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyDict_Check(args[2]) || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "parse_head(bytes, stream, dict, dict)");
        return NULL;
    }
    PyObject *data = args[0], *keys = args[2], *compact = args[3];
    int stream = PyObject_IsTrue(args[1]);
    if (stream < 0)
        return NULL;
    const char *d = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    Py_ssize_t start = 0, i, first_end = -1, end = -1;

    /* RFC 3261 7.5: CRLFs before the start line are skipped. */
    while (start + 1 < n && d[start] == '\r' && d[start + 1] == '\n')
        start += 2;
    /* The head: every control character but HT in a CRLF pair, up to the
     * first empty line. */
    for (i = start; i < n; i++) {
        unsigned char c = (unsigned char)d[i];
        if (c >= 0x20 && c != 0x7f)
            continue;
        if (c == '\t')
            continue;
        if (c != '\r' || i + 1 >= n || d[i + 1] != '\n')
            Py_RETURN_NONE;
        if (first_end < 0)
            first_end = i;
        if (i + 3 < n && d[i + 2] == '\r' && d[i + 3] == '\n') {
            end = i;
            break;
        }
        i++;
    }
    if (end < 0 || end == start)
        Py_RETURN_NONE; /* not terminated, or empty */

    /* -- the start line (ASCII only) */
    const unsigned char *f = (const unsigned char *)d + start;
    Py_ssize_t fn = first_end - start;
    for (i = 0; i < fn; i++)
        if (f[i] >= 0x80)
            Py_RETURN_NONE;
    int is_request;
    Py_ssize_t p1, p2;
    long status = 0;
    for (p1 = 0; p1 < fn && f[p1] != ' '; p1++)
        ;
    if (p1 == fn)
        Py_RETURN_NONE;
    for (p2 = p1 + 1; p2 < fn && f[p2] != ' '; p2++)
        ;
    if (fn >= 4 && ieq(f, "SIP/", 4)) {
        is_request = 0;
        if (p2 - p1 - 1 != 3 || !IS(f[p1 + 1], C_DIGIT) || !IS(f[p1 + 2], C_DIGIT) || !IS(f[p1 + 3], C_DIGIT))
            Py_RETURN_NONE;
        status = (f[p1 + 1] - '0') * 100 + (f[p1 + 2] - '0') * 10 + (f[p1 + 3] - '0');
        if (status < 100 || status > 699 || p1 != 7 || !ieq(f, "SIP/2.0", 7))
            Py_RETURN_NONE;
    } else {
        is_request = 1;
        /* exactly three non-empty parts split on SP */
        if (p1 == 0 || p2 == p1 + 1 || p2 >= fn - 1)
            Py_RETURN_NONE;
        for (i = p2 + 1; i < fn; i++)
            if (f[i] == ' ')
                Py_RETURN_NONE;
        for (i = 0; i < p1; i++)
            if (!IS(f[i], C_TOKEN))
                Py_RETURN_NONE;
        /* _ABS_URI: scheme ":" 1*(any but CTL and SP) */
        i = p1 + 1;
        if (!((f[i] >= 'A' && f[i] <= 'Z') || (f[i] >= 'a' && f[i] <= 'z')))
            Py_RETURN_NONE;
        while (i < p2 && IS(f[i], C_SCHEME))
            i++;
        if (i >= p2 - 1 || f[i] != ':')
            Py_RETURN_NONE;
        for (i++; i < p2; i++)
            if (f[i] <= 0x20 || f[i] == 0x7f)
                Py_RETURN_NONE;
        if (fn - p2 - 1 != 7 || !ieq(f + p2 + 1, "SIP/2.0", 7))
            Py_RETURN_NONE;
    }

    /* -- header fields */
    PyObject *fields = PyList_New(0);
    if (fields == NULL)
        return NULL;
    long long length = -1;
    Py_ssize_t ls = first_end + 2;
    while (ls <= end) {
        Py_ssize_t le = ls;
        while (le < end && !(d[le] == '\r' && d[le + 1] == '\n'))
            le++;
        /* line d[ls:le] */
        Py_ssize_t colon = ls;
        while (colon < le && IS(d[colon], C_TOKEN))
            colon++;
        if (colon == ls || colon == le || d[colon] != ':')
            goto fallback;
        Py_ssize_t vs = colon + 1, ve = le;
        while (vs < ve && (d[vs] == ' ' || d[vs] == '\t'))
            vs++;
        while (ve > vs && (d[ve - 1] == ' ' || d[ve - 1] == '\t'))
            ve--;
        if (is_cl_name(d + ls, colon - ls)) {
            long long v = 0;
            if (ve - vs < 1 || ve - vs > 11)
                goto fallback;
            for (i = vs; i < ve; i++) {
                if (!IS(d[i], C_DIGIT))
                    goto fallback;
                v = v * 10 + (d[i] - '0');
            }
            if (length >= 0 && v != length)
                goto fallback;
            length = v;
        }
        PyObject *name = PyUnicode_DecodeASCII(d + ls, colon - ls, NULL);
        if (name == NULL)
            goto error;
        PyObject *key = PyDict_GetItemWithError(keys, name);
        if (key != NULL) {
            Py_INCREF(key);
        } else if (PyErr_Occurred()) {
            Py_DECREF(name);
            goto error;
        } else {
            /* parser._key_for */
            char low[64];
            PyObject *lower;
            Py_ssize_t ln = colon - ls;
            if (ln <= (Py_ssize_t)sizeof(low)) {
                for (i = 0; i < ln; i++) {
                    char c = d[ls + i];
                    low[i] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
                }
                lower = PyUnicode_DecodeASCII(low, ln, NULL);
            } else {
                lower = PyObject_CallMethod(name, "lower", NULL);
            }
            if (lower == NULL) {
                Py_DECREF(name);
                goto error;
            }
            key = PyDict_GetItemWithError(compact, lower);
            if (key != NULL) {
                Py_INCREF(key);
                Py_DECREF(lower);
            } else if (PyErr_Occurred()) {
                Py_DECREF(name);
                Py_DECREF(lower);
                goto error;
            } else {
                key = lower;
            }
            if (PyDict_GET_SIZE(keys) < 2048 && PyDict_SetItem(keys, name, key) < 0) {
                Py_DECREF(name);
                Py_DECREF(key);
                goto error;
            }
        }
        PyObject *value = PyUnicode_DecodeUTF8(d + vs, ve - vs, "surrogateescape");
        if (value == NULL) {
            Py_DECREF(name);
            Py_DECREF(key);
            goto error;
        }
        PyObject *field = PyTuple_New(3);
        if (field == NULL) {
            Py_DECREF(name);
            Py_DECREF(key);
            Py_DECREF(value);
            goto error;
        }
        PyTuple_SET_ITEM(field, 0, key);
        PyTuple_SET_ITEM(field, 1, name);
        PyTuple_SET_ITEM(field, 2, value);
        int r = PyList_Append(fields, field);
        Py_DECREF(field);
        if (r < 0)
            goto error;
        ls = le + 2;
    }

    /* -- body (RFC 3261 18.3, 20.14) */
    Py_ssize_t body_start = end + 4, avail = n - body_start;
    if (length < 0) {
        if (stream)
            goto fallback; /* mandatory over stream transports */
        length = avail;
    } else if (avail < length) {
        goto fallback;
    }
    PyObject *body;
    if (body_start == 0 && length == n) {
        body = data;
        Py_INCREF(body);
    } else if ((body = PyBytes_FromStringAndSize(d + body_start, (Py_ssize_t)length)) == NULL) {
        goto error;
    }
    PyObject *a, *b, *version;
    if (is_request) {
        a = PyUnicode_DecodeASCII((const char *)f, p1, NULL);
        b = PyUnicode_DecodeASCII((const char *)f + p1 + 1, p2 - p1 - 1, NULL);
        version = PyUnicode_DecodeASCII((const char *)f + p2 + 1, fn - p2 - 1, NULL);
    } else {
        a = PyLong_FromLong(status);
        b = p2 < fn ? PyUnicode_DecodeASCII((const char *)f + p2 + 1, fn - p2 - 1, NULL) : (Py_INCREF(str_empty), str_empty);
        version = PyUnicode_DecodeASCII((const char *)f, p1, NULL);
    }
    if (a == NULL || b == NULL || version == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(version);
        Py_DECREF(body);
        goto error;
    }
    PyObject *out = PyTuple_New(6);
    if (out == NULL) {
        Py_DECREF(a);
        Py_DECREF(b);
        Py_DECREF(version);
        Py_DECREF(body);
        goto error;
    }
    PyTuple_SET_ITEM(out, 0, PyBool_FromLong(is_request));
    PyTuple_SET_ITEM(out, 1, a);
    PyTuple_SET_ITEM(out, 2, b);
    PyTuple_SET_ITEM(out, 3, version);
    PyTuple_SET_ITEM(out, 4, fields);
    PyTuple_SET_ITEM(out, 5, body);
    return out;
fallback:
    Py_DECREF(fields);
    Py_RETURN_NONE;
error:
    Py_DECREF(fields);
    return NULL;
}

/* -- classify: the first loop of parser._validate ------------------------ */

/* classify(fields) -> (single, lists) or None when a single-value header is
 * repeated (Python then raises, naming it). */
static PyObject *
py_classify(PyObject *self, PyObject *fields)
{
    if (!PyList_Check(fields)) {
        PyErr_SetString(PyExc_TypeError, "classify(list)");
        return NULL;
    }
    PyObject *single = PyDict_New(), *lists = PyDict_New();
    if (single == NULL || lists == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fields); i++) {
        PyObject *f = PyList_GET_ITEM(fields, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 3)
            goto fallback;
        PyObject *key = PyTuple_GET_ITEM(f, 0), *value = PyTuple_GET_ITEM(f, 2);
        PyObject *kind = PyDict_GetItemWithError(kinds, key);
        if (kind == NULL) {
            if (PyErr_Occurred())
                goto error;
            continue;
        }
        if (PyLong_AsLong(kind) == 1) {
            int has = PyDict_Contains(single, key);
            if (has < 0)
                goto error;
            if (has)
                goto fallback;
            if (PyDict_SetItem(single, key, value) < 0)
                goto error;
        } else {
            PyObject *got = PyDict_GetItemWithError(lists, key);
            if (got == NULL) {
                if (PyErr_Occurred())
                    goto error;
                PyObject *l = PyList_New(1);
                if (l == NULL)
                    goto error;
                Py_INCREF(value);
                PyList_SET_ITEM(l, 0, value);
                int r = PyDict_SetItem(lists, key, l);
                Py_DECREF(l);
                if (r < 0)
                    goto error;
            } else if (PyList_Append(got, value) < 0) {
                goto error;
            }
        }
    }
    PyObject *out = PyTuple_Pack(2, single, lists);
    Py_DECREF(single);
    Py_DECREF(lists);
    return out;
fallback:
    Py_DECREF(single);
    Py_DECREF(lists);
    Py_RETURN_NONE;
error:
    Py_XDECREF(single);
    Py_XDECREF(lists);
    return NULL;
}

/* -- small values ---------------------------------------------------------- */

/* callid(text) -> True when parser._CALL_ID matches text as it is. */
static PyObject *
py_callid(PyObject *self, PyObject *s)
{
    Py_ssize_t n, i, at = -1;
    const unsigned char *p = ascii_of(s, &n);
    if (p == NULL || n == 0)
        Py_RETURN_FALSE;
    for (i = 0; i < n; i++) {
        if (p[i] == '@') {
            if (at >= 0)
                Py_RETURN_FALSE;
            at = i;
        } else if (!IS(p[i], C_WORD)) {
            Py_RETURN_FALSE;
        }
    }
    if (at == 0 || at == n - 1)
        Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* max_forwards(text) -> int, or None (headers.parse_max_forwards decides). */
static PyObject *
py_max_forwards(PyObject *self, PyObject *s)
{
    Py_ssize_t n, i;
    const unsigned char *p = ascii_of(s, &n);
    long v = 0;
    if (p == NULL || n == 0)
        Py_RETURN_NONE;
    for (i = 0; i < n; i++)
        if (!IS(p[i], C_DIGIT))
            Py_RETURN_NONE;
    for (i = 0; i < n && p[i] == '0'; i++)
        ;
    if (n - i > 3)
        Py_RETURN_NONE;
    for (; i < n; i++)
        v = v * 10 + (p[i] - '0');
    if (v > 255)
        Py_RETURN_NONE;
    return PyLong_FromLong(v);
}

/* cseq(text) -> CSeq for headers.parse_cseq's fast shape, else None. */
static PyObject *
py_cseq(PyObject *self, PyObject *s)
{
    Py_ssize_t n, i, sp;
    const unsigned char *p = ascii_of(s, &n);
    if (p == NULL || klass[K_CSEQ].type == NULL)
        Py_RETURN_NONE;
    for (sp = 0; sp < n && p[sp] != ' '; sp++)
        ;
    if (sp == 0 || sp == n || sp >= 10)
        Py_RETURN_NONE;
    long seq = 0;
    for (i = 0; i < sp; i++) {
        if (!IS(p[i], C_DIGIT))
            Py_RETURN_NONE;
        seq = seq * 10 + (p[i] - '0');
    }
    Py_ssize_t mlen = n - sp - 1;
    PyObject *method = NULL;
    for (i = 0; i < 14; i++) {
        if ((Py_ssize_t)strlen(method_names[i]) == mlen && memcmp(p + sp + 1, method_names[i], mlen) == 0) {
            method = methods[i];
            break;
        }
    }
    if (method == NULL)
        Py_RETURN_NONE;
    PyObject *c = new_instance(K_CSEQ);
    if (c == NULL)
        return NULL;
    PyObject *v = PyLong_FromLong(seq);
    if (v == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    set_slot(c, K_CSEQ, S_SEQ, v);
    Py_INCREF(method);
    set_slot(c, K_CSEQ, S_METHOD, method);
    return c;
}

/* -- Via (via.parse_via's two fast shapes) --------------------------------- */

static PyObject *
param_get(PyObject *params, const char *name, int *present)
{
    PyObject *v = PyDict_GetItemString(params, name);
    *present = v != NULL;
    return v;
}

static int
digits_upto(PyObject *v, Py_ssize_t most, long limit)
{
    Py_ssize_t n;
    const unsigned char *p = ascii_of(v, &n);
    long x = 0;
    if (p == NULL || n == 0 || n > most)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!IS(p[i], C_DIGIT))
            return 0;
        x = x * 10 + (p[i] - '0');
    }
    return x <= limit;
}

/* via._check_via_params, for the values the fast regex lets through; 0
 * when Python would raise or must decide (an IPv6 received or maddr). */
static int
via_params_ok(PyObject *params)
{
    int has;
    Py_ssize_t n, i;
    const unsigned char *p;
    PyObject *v = param_get(params, "branch", &has);
    if (has) {
        if (v == Py_None || (p = ascii_of(v, &n)) == NULL || n == 0)
            return 0;
        for (i = 0; i < n; i++)
            if (!IS(p[i], C_TOKEN))
                return 0;
    }
    v = param_get(params, "received", &has);
    if (has) {
        if (v == Py_None || (p = ascii_of(v, &n)) == NULL || n == 0)
            return 0;
        for (i = 0; i < n; i++)
            if (!(IS(p[i], C_DIGIT) || p[i] == '.'))
                return 0; /* IPv6, or not an IP address: Python says */
        if (!host_ok(p, n))
            return 0;
    }
    v = param_get(params, "rport", &has);
    if (has && v != Py_None && !digits_upto(v, 5, 65535))
        return 0;
    v = param_get(params, "ttl", &has);
    if (has && (v == Py_None || !digits_upto(v, 3, 255)))
        return 0;
    v = param_get(params, "maddr", &has);
    if (has) {
        if (v == Py_None || (p = ascii_of(v, &n)) == NULL || n == 0 || p[0] == '[' || !host_ok(p, n))
            return 0;
    }
    return 1;
}

/* via(text) -> Via, or None (via.parse_via decides). */
static PyObject *
py_via(PyObject *self, PyObject *s)
{
    Py_ssize_t n, i;
    const unsigned char *p = ascii_of(s, &n);
    if (p == NULL || klass[K_VIA].type == NULL || klass[K_PARAMS].type == NULL)
        Py_RETURN_NONE;
    if (n < 10 || memcmp(p, "SIP/2.0/", 8) != 0)
        Py_RETURN_NONE;
    /* transport: _VIA_HOT [A-Z]+, _VIA_FAST [A-Za-z]+ (upper-cased) */
    Py_ssize_t ta = 8, tb = 8;
    int upper = 1;
    while (tb < n && ((p[tb] >= 'A' && p[tb] <= 'Z') || (p[tb] >= 'a' && p[tb] <= 'z'))) {
        if (p[tb] >= 'a')
            upper = 0;
        tb++;
    }
    if (tb == ta || tb >= n || p[tb] != ' ')
        Py_RETURN_NONE;
    Py_ssize_t ha = tb + 1, hb = scan_host(p, ha, n);
    if (hb < 0)
        Py_RETURN_NONE; /* an IPv6 reference, or not a host: Python */
    /* _VIA_FAST's host is [A-Za-z0-9][A-Za-z0-9\-.]*: a final '-' too */
    while (hb < n && IS(p[hb], C_HOST))
        hb++;
    Py_ssize_t pa = -1, pb = -1;
    i = hb;
    if (i < n && p[i] == ':') {
        pa = ++i;
        while (i < n && IS(p[i], C_DIGIT) && i - pa < 5)
            i++;
        pb = i;
        if (pb == pa)
            Py_RETURN_NONE;
    }
    Py_ssize_t par_a = i;
    int count;
    Py_ssize_t par_b = scan_hparams(p, i, n, &count, C_PV);
    if (par_b != n)
        Py_RETURN_NONE;
    if (!host_ok(p + ha, hb - ha))
        Py_RETURN_NONE;
    long port = -2;
    if (pa >= 0 && (port = port_of(p, pa, pb)) < 0)
        Py_RETURN_NONE;
    int dup;
    PyObject *params;
    if (par_b > par_a) {
        params = make_params(s, p, par_a, par_b, &dup);
        if (params == NULL)
            return dup ? (Py_INCREF(Py_None), Py_None) : NULL;
        if (!via_params_ok(params)) {
            Py_DECREF(params);
            Py_RETURN_NONE;
        }
    } else if ((params = new_instance(K_PARAMS)) == NULL) {
        return NULL;
    }
    PyObject *via = new_instance(K_VIA);
    if (via == NULL) {
        Py_DECREF(params);
        return NULL;
    }
    set_slot(via, K_VIA, V_PARAMS, params);
    Py_INCREF(str_SIP);
    set_slot(via, K_VIA, V_PROTOCOL, str_SIP);
    Py_INCREF(str_2_0);
    set_slot(via, K_VIA, V_VERSION, str_2_0);
    PyObject *v;
    if (upper) {
        v = sub(s, ta, tb);
    } else {
        char buf[32];
        Py_ssize_t tn = tb - ta;
        if (tn > (Py_ssize_t)sizeof(buf)) {
            Py_DECREF(via);
            Py_RETURN_NONE;
        }
        for (i = 0; i < tn; i++)
            buf[i] = (p[ta + i] >= 'a') ? p[ta + i] - 32 : p[ta + i];
        v = PyUnicode_DecodeASCII(buf, tn, NULL);
    }
    if (v == NULL)
        goto fail;
    set_slot(via, K_VIA, V_TRANSPORT, v);
    if ((v = sub(s, ha, hb)) == NULL)
        goto fail;
    set_slot(via, K_VIA, V_HOST, v);
    if (port >= 0) {
        if ((v = PyLong_FromLong(port)) == NULL)
            goto fail;
    } else {
        v = Py_None;
        Py_INCREF(v);
    }
    set_slot(via, K_VIA, V_PORT, v);
    return via;
fail:
    Py_DECREF(via);
    return NULL;
}

/* vias(values) -> [Via, ...] for a list of Via field values each holding
 * one value of via()'s shapes, else None (via.parse_vias decides). */
static PyObject *
py_vias(PyObject *self, PyObject *values)
{
    if (!PyList_Check(values))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyList_GET_ITEM(values, k);
        Py_ssize_t len;
        const unsigned char *p = ascii_of(v, &len);
        if (p == NULL || memchr(p, ',', len) != NULL || memchr(p, '\n', len) != NULL)
            goto fallback;
        PyObject *via = py_via(self, v);
        if (via == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        if (via == Py_None) {
            Py_DECREF(via);
            goto fallback;
        }
        PyList_SET_ITEM(out, k, via);
    }
    return out;
fallback:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* -- name-addr (headers._fast_name_addr's <sip:...> shape) ----------------- */

/* name_addr(text) -> NameAddr, or None (headers._fast_name_addr decides). */
static PyObject *
py_name_addr(PyObject *self, PyObject *s)
{
    Py_ssize_t n, i;
    const unsigned char *p = ascii_of(s, &n);
    if (p == NULL || n == 0 || klass[K_NAMEADDR].type == NULL || klass[K_PARAMS].type == NULL ||
        klass[K_URI].type == NULL)
        Py_RETURN_NONE;
    Py_ssize_t da = -1, db = -1, lt;
    if (p[0] == '"') {
        /* "(?:[^"\\]|\\.)*" then [ \t]* */
        i = 1;
        for (;;) {
            if (i >= n)
                Py_RETURN_NONE;
            if (p[i] == '\\') {
                if (i + 1 >= n || p[i + 1] == '\n')
                    Py_RETURN_NONE;
                i += 2;
            } else if (p[i] == '"') {
                break;
            } else {
                i++;
            }
        }
        da = 0;
        db = ++i;
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        if (i >= n || p[i] != '<')
            Py_RETURN_NONE;
        lt = i;
    } else if (p[0] != '<') {
        /* TOKEN *([ \t]+ TOKEN) [ \t]* */
        if (!IS(p[0], C_TOKEN))
            Py_RETURN_NONE;
        for (i = 0; i < n && p[i] != '<'; i++)
            if (!(IS(p[i], C_TOKEN) || p[i] == ' ' || p[i] == '\t'))
                Py_RETURN_NONE;
        if (i >= n)
            Py_RETURN_NONE;
        lt = i;
        da = 0;
        db = lt;
        while (p[db - 1] == ' ' || p[db - 1] == '\t')
            db--;
    } else {
        lt = 0;
    }
    /* <(sips?):(user@)?host(:port)?uparams> */
    i = lt + 1;
    Py_ssize_t sa = i;
    if (i + 4 <= n && memcmp(p + i, "sip:", 4) == 0)
        i += 4;
    else if (i + 5 <= n && memcmp(p + i, "sips:", 5) == 0)
        i += 5;
    else
        Py_RETURN_NONE;
    Py_ssize_t sb = i - 1;
    Py_ssize_t ua = -1, ub = -1, j = i;
    while (j < n && IS(p[j], C_USER))
        j++;
    if (j > i && j < n && p[j] == '@') {
        ua = i;
        ub = j;
        i = j + 1;
    }
    Py_ssize_t ha = i, hb = scan_host(p, i, n);
    if (hb < 0)
        Py_RETURN_NONE; /* IPv6 reference: built eagerly by Python */
    i = hb;
    Py_ssize_t pa = -1, pb = -1;
    if (i < n && p[i] == ':') {
        pa = ++i;
        while (i < n && IS(p[i], C_DIGIT) && i - pa < 5)
            i++;
        pb = i;
        if (pb == pa)
            Py_RETURN_NONE;
    }
    int ucount, hcount;
    Py_ssize_t upa = i, upb = scan_uparams(p, i, n, &ucount);
    if (upb < 0 || upb >= n || p[upb] != '>')
        Py_RETURN_NONE;
    Py_ssize_t hpa = upb + 1, hpb = scan_hparams(p, hpa, n, &hcount, C_PV);
    if (hpb != n)
        Py_RETURN_NONE;
    if (!host_ok(p + ha, hb - ha))
        Py_RETURN_NONE;

    PyObject *scheme = NULL, *user = NULL, *host = NULL, *port = NULL, *uparams = NULL, *ptext = NULL;
    PyObject *na = NULL, *uri = NULL, *params = NULL;
    if ((scheme = sub(s, sa, sb)) == NULL)
        goto error;
    if (ucount > 1 || (pa >= 0 && pb - pa == 5)) {
        uri = build_uri(s, p, scheme, ua, ub, ha, hb, pa, pb, upa, upb);
        if (uri == NULL)
            goto fallback;
    }
    if (hcount > 1) {
        int dup;
        params = make_params(s, p, hpa, hpb, &dup);
        if (params == NULL)
            goto fallback;
    }
    if (ua >= 0) {
        if ((user = sub(s, ua, ub)) == NULL)
            goto error;
    } else {
        user = Py_None;
        Py_INCREF(user);
    }
    if ((host = sub(s, ha, hb)) == NULL)
        goto error;
    if (pa >= 0) {
        if ((port = sub(s, pa, pb)) == NULL)
            goto error;
    } else {
        port = Py_None;
        Py_INCREF(port);
    }
    if ((uparams = sub(s, upa, upb)) == NULL || (ptext = sub(s, hpa, hpb)) == NULL)
        goto error;
    if ((na = new_instance(K_NAMEADDR)) == NULL)
        goto error;
    PyObject *lazy = PyTuple_Pack(6, scheme, user, host, port, uparams, ptext);
    if (lazy == NULL)
        goto error;
    set_slot(na, K_NAMEADDR, N_LAZY, lazy);
    PyObject *disp;
    if (da >= 0) {
        if ((disp = sub(s, da, db)) == NULL)
            goto error;
    } else {
        disp = Py_None;
        Py_INCREF(disp);
    }
    set_slot(na, K_NAMEADDR, N_RAW_DISPLAY, disp);
    Py_INCREF(Py_False);
    set_slot(na, K_NAMEADDR, N_WILDCARD, Py_False);
    if (uri == NULL) {
        uri = Py_None;
        Py_INCREF(uri);
    }
    set_slot(na, K_NAMEADDR, N_URI, uri);
    uri = NULL;
    if (params == NULL) {
        params = Py_None;
        Py_INCREF(params);
    }
    set_slot(na, K_NAMEADDR, N_PARAMS, params);
    params = NULL;
    Py_DECREF(scheme);
    Py_DECREF(user);
    Py_DECREF(host);
    Py_DECREF(port);
    Py_DECREF(uparams);
    Py_DECREF(ptext);
    return na;
fallback:
    if (PyErr_Occurred())
        goto error;
    Py_XDECREF(scheme);
    Py_XDECREF(uri);
    Py_XDECREF(params);
    Py_RETURN_NONE;
error:
    Py_XDECREF(scheme);
    Py_XDECREF(user);
    Py_XDECREF(host);
    Py_XDECREF(port);
    Py_XDECREF(uparams);
    Py_XDECREF(ptext);
    Py_XDECREF(na);
    Py_XDECREF(uri);
    Py_XDECREF(params);
    return NULL;
}

/* name_addrs(values) -> [NameAddr, ...] for a list of field values each
 * holding one <sip:...> name-addr of name_addr()'s shape, else None
 * (headers.parse_name_addrs decides). */
static PyObject *
py_name_addrs(PyObject *self, PyObject *values)
{
    if (!PyList_Check(values))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyList_GET_ITEM(values, k);
        Py_ssize_t len;
        const unsigned char *p = ascii_of(v, &len);
        if (p == NULL || memchr(p, ',', len) != NULL || memchr(p, '\n', len) != NULL)
            goto fallback;
        PyObject *na = py_name_addr(self, v);
        if (na == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        if (na == Py_None) {
            Py_DECREF(na);
            goto fallback;
        }
        PyList_SET_ITEM(out, k, na);
    }
    return out;
fallback:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* -- sip/sips URI (uri.parse_uri's _SIP_FAST shape) ------------------------ */

/* sip_uri(text) -> URI, or None (uri.parse_uri decides). */
static PyObject *
py_sip_uri(PyObject *self, PyObject *s)
{
    Py_ssize_t n, i;
    const unsigned char *p = ascii_of(s, &n);
    if (p == NULL)
        Py_RETURN_NONE;
    if (memchr(p, '%', n) != NULL)
        Py_RETURN_NONE;
    Py_ssize_t sb;
    if (n > 4 && memcmp(p, "sip:", 4) == 0)
        sb = 3;
    else if (n > 5 && memcmp(p, "sips:", 5) == 0)
        sb = 4;
    else
        Py_RETURN_NONE;
    i = sb + 1;
    Py_ssize_t ua = -1, ub = -1, j = i;
    while (j < n && IS(p[j], C_USER))
        j++;
    if (j > i && j < n && p[j] == '@') {
        ua = i;
        ub = j;
        i = j + 1;
    }
    Py_ssize_t ha = i, hb = scan_host(p, i, n);
    if (hb < 0)
        Py_RETURN_NONE;
    i = hb;
    Py_ssize_t pa = -1, pb = -1;
    if (i < n && p[i] == ':') {
        pa = ++i;
        while (i < n && IS(p[i], C_DIGIT) && i - pa < 5)
            i++;
        pb = i;
        if (pb == pa)
            Py_RETURN_NONE;
    }
    int count;
    Py_ssize_t upa = i, upb = scan_uparams(p, i, n, &count);
    if (upb != n)
        Py_RETURN_NONE;
    PyObject *scheme = sub(s, 0, sb);
    if (scheme == NULL)
        return NULL;
    PyObject *u = build_uri(s, p, scheme, ua, ub, ha, hb, pa, pb, upa, upb);
    Py_DECREF(scheme);
    if (u == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return u;
}

/* -- NameAddr's deferred parts ------------------------------------------------ */

/* params(ptext) -> grammar.simple_params(ptext) for ASCII, non-empty
 * ptext, else None (also for a repeated name: simple_params says so). */
static PyObject *
py_params(PyObject *self, PyObject *s)
{
    Py_ssize_t n;
    int dup;
    const unsigned char *p = ascii_of(s, &n);
    if (p == NULL || n == 0 || klass[K_PARAMS].type == NULL)
        Py_RETURN_NONE;
    PyObject *params = make_params(s, p, 0, n, &dup);
    if (params == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return params;
}

/* lazy_uri(lazy) -> uri.build_sip_uri(*lazy[:5], ...) for NameAddr._lazy
 * (scheme, user, host, port, uparams, ptext), else None. */
static PyObject *
py_lazy_uri(PyObject *self, PyObject *lazy)
{
    Py_ssize_t hn, pn, un;
    int dup;
    if (!PyTuple_Check(lazy) || PyTuple_GET_SIZE(lazy) != 6 || klass[K_URI].type == NULL ||
        klass[K_PARAMS].type == NULL)
        Py_RETURN_NONE;
    PyObject *scheme = PyTuple_GET_ITEM(lazy, 0), *user = PyTuple_GET_ITEM(lazy, 1),
             *host = PyTuple_GET_ITEM(lazy, 2), *port = PyTuple_GET_ITEM(lazy, 3),
             *uparams = PyTuple_GET_ITEM(lazy, 4);
    const unsigned char *h = ascii_of(host, &hn), *up = ascii_of(uparams, &un);
    if (!PyUnicode_Check(scheme) || (user != Py_None && !PyUnicode_Check(user)) || h == NULL || up == NULL ||
        hn == 0 || h[0] == '[' || !host_ok(h, hn))
        Py_RETURN_NONE;
    long portv = -2;
    if (port != Py_None) {
        const unsigned char *pp = ascii_of(port, &pn);
        if (pp == NULL || pn < 1 || pn > 5)
            Py_RETURN_NONE;
        for (Py_ssize_t i = 0; i < pn; i++)
            if (!IS(pp[i], C_DIGIT))
                Py_RETURN_NONE;
        if ((portv = port_of(pp, 0, pn)) < 0)
            Py_RETURN_NONE;
    }
    PyObject *params = un > 0 ? make_params(uparams, up, 0, un, &dup) : new_instance(K_PARAMS);
    if (params == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *u = new_instance(K_URI);
    if (u == NULL) {
        Py_DECREF(params);
        return NULL;
    }
    set_slot(u, K_URI, U_PARAMS, params);
    Py_INCREF(scheme);
    set_slot(u, K_URI, U_SCHEME, scheme);
    Py_INCREF(user);
    set_slot(u, K_URI, U_USER, user);
    Py_INCREF(Py_None);
    set_slot(u, K_URI, U_PASSWORD, Py_None);
    Py_INCREF(host);
    set_slot(u, K_URI, U_HOST, host);
    PyObject *v;
    if (portv >= 0) {
        if ((v = PyLong_FromLong(portv)) == NULL)
            goto fail;
    } else {
        v = Py_None;
        Py_INCREF(v);
    }
    set_slot(u, K_URI, U_PORT, v);
    if ((v = PyList_New(0)) == NULL)
        goto fail;
    set_slot(u, K_URI, U_HEADERS, v);
    Py_INCREF(Py_None);
    set_slot(u, K_URI, U_OPAQUE, Py_None);
    return u;
fail:
    Py_DECREF(u);
    return NULL;
}

/* -- module ------------------------------------------------------------------ */

static PyMethodDef methods_def[] = {
    {"register", py_register, METH_VARARGS, "register(name, cls): a class the builders make."},
    {"parse_head", (PyCFunction)(void (*)(void))py_parse_head, METH_FASTCALL,
     "parse_head(data, stream, keys, compact) -> tuple or None."},
    {"classify", py_classify, METH_O, "classify(fields) -> (single, lists) or None."},
    {"callid", py_callid, METH_O, "callid(text) -> bool."},
    {"max_forwards", py_max_forwards, METH_O, "max_forwards(text) -> int or None."},
    {"cseq", py_cseq, METH_O, "cseq(text) -> CSeq or None."},
    {"via", py_via, METH_O, "via(text) -> Via or None."},
    {"vias", py_vias, METH_O, "vias(values) -> [Via] or None."},
    {"name_addr", py_name_addr, METH_O, "name_addr(text) -> NameAddr or None."},
    {"name_addrs", py_name_addrs, METH_O, "name_addrs(values) -> [NameAddr] or None."},
    {"sip_uri", py_sip_uri, METH_O, "sip_uri(text) -> URI or None."},
    {"params", py_params, METH_O, "params(ptext) -> Params or None."},
    {"lazy_uri", py_lazy_uri, METH_O, "lazy_uri(lazy) -> URI or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cparse",
    "Compiled fast paths of the SIP parser; every function returns None where the pure-Python code decides.",
    -1, methods_def, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cparse(void)
{
    int i;
    init_classes();
    if ((empty_tuple = PyTuple_New(0)) == NULL)
        return NULL;
    str_SIP = PyUnicode_InternFromString("SIP");
    str_2_0 = PyUnicode_InternFromString("2.0");
    str_branch = PyUnicode_InternFromString("branch");
    str_rport = PyUnicode_InternFromString("rport");
    str_empty = PyUnicode_InternFromString("");
    if (!str_SIP || !str_2_0 || !str_branch || !str_rport || !str_empty)
        return NULL;
    for (i = 0; i < 14; i++)
        if ((methods[i] = PyUnicode_InternFromString(method_names[i])) == NULL)
            return NULL;
    if ((kinds = PyDict_New()) == NULL)
        return NULL;
    static const char *const single[] = {"to", "from", "call-id", "cseq", "max-forwards", "content-type", NULL};
    static const char *const listed[] = {"via", "contact", "route", "record-route", NULL};
    PyObject *one = PyLong_FromLong(1), *two = PyLong_FromLong(2);
    for (i = 0; single[i]; i++)
        if (PyDict_SetItemString(kinds, single[i], one) < 0)
            return NULL;
    for (i = 0; listed[i]; i++)
        if (PyDict_SetItemString(kinds, listed[i], two) < 0)
            return NULL;
    Py_DECREF(one);
    Py_DECREF(two);
    return PyModule_Create(&module_def);
}
