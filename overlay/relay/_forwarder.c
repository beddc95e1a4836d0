/* The datagram relay's fast path: forwards the data of paired sessions without entering
 * Python (overlay.relay.datagram_io; the rules are overlay.relay.datagram's).
 *
 * A Forwarder reads the relay's UDP socket when the event loop says it is readable
 * (on_readable, registered with loop.add_reader). A datagram from an address that holds a
 * lease is forwarded here when the lease allows it; every other datagram goes to the
 * ``slow`` callable, i.e. to the sans-IO core, which owns every decision:
 *
 *   - a lease is put by the core (put) for one paired session: its two addresses, when
 *     each was last heard, how many bytes the relay may still send to each (the
 *     anti-amplification room) and a credit of bytes the core took from the session's and
 *     the relay's token buckets;
 *   - a datagram is forwarded here only if it is not a control message (the magic), is at
 *     most max_datagram bytes, its destination was heard within consent_s, fits the room
 *     towards the destination and fits the credit; then the source's room grows by
 *     amplification x its size, exactly as the core counts;
 *   - anything else goes to the core, which first takes the lease back (take: what was
 *     used since it was put) and decides as it always does.
 *
 * So the fast path forwards only what the core would have forwarded, and never more than
 * the core granted. It runs on the event loop's thread: there is no lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 32
#define BUFFER_BYTES 2048

typedef struct {
    struct sockaddr_storage sa;
    socklen_t len;
    double heard;        /* monotonic seconds */
    long long room;      /* bytes the relay may still send to this address */
    long long received;  /* bytes received from it since the lease was put */
    long long sent;      /* bytes sent to it since the lease was put */
} End;

typedef struct {
    int used;
    End end[2];
    long long credit;
    long long datagrams;
    long long bytes;
    double last_forward;
} Lease;

typedef struct {
    int lease;  /* -1: empty, -2: deleted, else the lease's index */
    int side;
    struct sockaddr_storage sa;
} Slot;

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *slow;
    double consent_s;
    long long amplification;
    long long max_datagram;
    char magic[8];
    Py_ssize_t magic_len;
    Lease *leases;
    int leases_cap;
    int leases_used;
    Slot *slots;
    int slots_cap;   /* a power of two */
    int slots_full;  /* live and deleted */
    long long forwarded;
    long long send_errors;
    unsigned char (*buffers)[BUFFER_BYTES];
} Forwarder;

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

static unsigned int address_hash(const struct sockaddr_storage *a) {
    unsigned int h = 2166136261u;
    const unsigned char *p;
    size_t n;
    unsigned short port;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        p = (const unsigned char *)&x->sin_addr;
        n = sizeof(x->sin_addr);
        port = x->sin_port;
    } else {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        p = (const unsigned char *)&x->sin6_addr;
        n = sizeof(x->sin6_addr);
        port = x->sin6_port;
    }
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    h = (h ^ (port & 0xff)) * 16777619u;
    h = (h ^ (port >> 8)) * 16777619u;
    return h;
}

/* the slot holding ``a``, or NULL */
static Slot *find_slot(Forwarder *self, const struct sockaddr_storage *a) {
    unsigned int mask = (unsigned int)self->slots_cap - 1;
    unsigned int i = address_hash(a) & mask;
    for (int probes = 0; probes < self->slots_cap; probes++, i = (i + 1) & mask) {
        Slot *s = &self->slots[i];
        if (s->lease == -1) return NULL;
        if (s->lease >= 0 && same_address(&s->sa, a)) return s;
    }
    return NULL;
}

static int rebuild_slots(Forwarder *self, int cap) {
    Slot *old = self->slots;
    int old_cap = self->slots_cap;
    Slot *slots = PyMem_Calloc((size_t)cap, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < cap; i++) slots[i].lease = -1;
    self->slots = slots;
    self->slots_cap = cap;
    self->slots_full = 0;
    for (int i = 0; i < old_cap; i++) {
        if (old[i].lease < 0) continue;
        unsigned int mask = (unsigned int)cap - 1;
        unsigned int j = address_hash(&old[i].sa) & mask;
        while (slots[j].lease != -1) j = (j + 1) & mask;
        slots[j] = old[i];
        self->slots_full++;
    }
    PyMem_Free(old);
    return 0;
}

static int insert_slot(Forwarder *self, const struct sockaddr_storage *a, int lease, int side) {
    if ((self->slots_full + 1) * 2 > self->slots_cap) {
        int cap = self->slots_cap;
        while ((self->leases_used * 2 + 2) * 2 > cap) cap *= 2;
        if (rebuild_slots(self, cap) < 0) return -1;
    }
    unsigned int mask = (unsigned int)self->slots_cap - 1;
    unsigned int i = address_hash(a) & mask;
    while (self->slots[i].lease >= 0) i = (i + 1) & mask;
    if (self->slots[i].lease == -1) self->slots_full++;
    self->slots[i].lease = lease;
    self->slots[i].side = side;
    self->slots[i].sa = *a;
    return 0;
}

static int parse_address(PyObject *addr, struct sockaddr_storage *out, socklen_t *len) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(addr, "si", &host, &port)) return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)port);
        *len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)port);
        *len = sizeof(*v6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
    return -1;
}

static PyObject *address_tuple(const struct sockaddr_storage *sa) {
    char host[INET6_ADDRSTRLEN];
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, (int)ntohs(v4->sin_port));
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, (int)ntohs(v6->sin6_port));
    }
    Py_RETURN_NONE;
}

/* -- the type --------------------------------------------------------------------------- */

static int Forwarder_init(Forwarder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "slow", "magic", "max_datagram", "consent_s",
                             "amplification", NULL};
    const char *magic;
    Py_ssize_t magic_len;
    PyObject *slow;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOy#LdL", kwlist, &self->fd, &slow, &magic,
                                     &magic_len, &self->max_datagram, &self->consent_s,
                                     &self->amplification))
        return -1;
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "slow must be callable");
        return -1;
    }
    if (magic_len <= 0 || magic_len > (Py_ssize_t)sizeof(self->magic)) {
        PyErr_SetString(PyExc_ValueError, "magic must be 1-8 bytes");
        return -1;
    }
    if (self->max_datagram <= 0 || self->max_datagram >= BUFFER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "max_datagram out of range");
        return -1;
    }
    memcpy(self->magic, magic, (size_t)magic_len);
    self->magic_len = magic_len;
    Py_XSETREF(self->slow, Py_NewRef(slow));
    if (self->buffers == NULL) {
        self->buffers = PyMem_Malloc((size_t)BATCH * BUFFER_BYTES);
        if (self->buffers == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    if (self->slots == NULL) {
        self->slots_cap = 0;
        if (rebuild_slots(self, 64) < 0) return -1;
    }
    return 0;
}

static void Forwarder_dealloc(Forwarder *self) {
    Py_XDECREF(self->slow);
    PyMem_Free(self->leases);
    PyMem_Free(self->slots);
    PyMem_Free(self->buffers);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(put_doc,
"put(a, b, heard_a, heard_b, room_a, room_b, credit) -> handle\n\n"
"Lease a paired session: addresses a and b ((host, port)), when each was last heard\n"
"(time.monotonic()), the bytes the relay may still send to each, and the credit.");

static PyObject *Forwarder_put(Forwarder *self, PyObject *args) {
    PyObject *a, *b;
    double heard_a, heard_b;
    long long room_a, room_b, credit;
    if (!PyArg_ParseTuple(args, "OOddLLL", &a, &b, &heard_a, &heard_b, &room_a, &room_b,
                          &credit))
        return NULL;
    End ends[2];
    memset(ends, 0, sizeof(ends));
    if (parse_address(a, &ends[0].sa, &ends[0].len) < 0) return NULL;
    if (parse_address(b, &ends[1].sa, &ends[1].len) < 0) return NULL;
    if (same_address(&ends[0].sa, &ends[1].sa) || find_slot(self, &ends[0].sa) != NULL ||
        find_slot(self, &ends[1].sa) != NULL) {
        PyErr_SetString(PyExc_ValueError, "address already leased");
        return NULL;
    }
    int index = -1;
    for (int i = 0; i < self->leases_cap; i++) {
        if (!self->leases[i].used) {
            index = i;
            break;
        }
    }
    if (index < 0) {
        int cap = self->leases_cap ? self->leases_cap * 2 : 16;
        Lease *grown = PyMem_Realloc(self->leases, (size_t)cap * sizeof(Lease));
        if (grown == NULL) return PyErr_NoMemory();
        memset(grown + self->leases_cap, 0, (size_t)(cap - self->leases_cap) * sizeof(Lease));
        index = self->leases_cap;
        self->leases = grown;
        self->leases_cap = cap;
    }
    Lease *lease = &self->leases[index];
    memset(lease, 0, sizeof(*lease));
    lease->end[0] = ends[0];
    lease->end[1] = ends[1];
    lease->end[0].heard = heard_a;
    lease->end[1].heard = heard_b;
    lease->end[0].room = room_a;
    lease->end[1].room = room_b;
    lease->credit = credit;
    if (insert_slot(self, &ends[0].sa, index, 0) < 0) return NULL;
    if (insert_slot(self, &ends[1].sa, index, 1) < 0) {
        find_slot(self, &ends[0].sa)->lease = -2;
        return NULL;
    }
    lease->used = 1;
    self->leases_used++;
    return PyLong_FromLong(index);
}

PyDoc_STRVAR(take_doc,
"take(handle) -> (received_a, sent_a, heard_a, received_b, sent_b, heard_b, datagrams,\n"
"bytes, last_forward, credit_left)\n\n"
"End a lease; what its session did on the fast path since it was put.");

static PyObject *Forwarder_take(Forwarder *self, PyObject *arg) {
    long index = PyLong_AsLong(arg);
    if (index == -1 && PyErr_Occurred()) return NULL;
    if (index < 0 || index >= self->leases_cap || !self->leases[index].used) {
        PyErr_SetString(PyExc_KeyError, "no such lease");
        return NULL;
    }
    Lease *lease = &self->leases[index];
    for (int side = 0; side < 2; side++) {
        Slot *slot = find_slot(self, &lease->end[side].sa);
        if (slot != NULL) slot->lease = -2;
    }
    lease->used = 0;
    self->leases_used--;
    return Py_BuildValue("(LLdLLdLLdL)", lease->end[0].received, lease->end[0].sent,
                         lease->end[0].heard, lease->end[1].received, lease->end[1].sent,
                         lease->end[1].heard, lease->datagrams, lease->bytes,
                         lease->last_forward, lease->credit);
}

/* forward one datagram if its lease allows it; 1 if it did (or dropped it on a send
 * error), 0 if the core must see it */
static int forward(Forwarder *self, const unsigned char *data, size_t n,
                   const struct sockaddr_storage *from, double *now) {
    if ((long long)n > self->max_datagram) return 0;
    if (n >= (size_t)self->magic_len && memcmp(data, self->magic, (size_t)self->magic_len) == 0)
        return 0;
    Slot *slot = find_slot(self, from);
    if (slot == NULL) return 0;
    Lease *lease = &self->leases[slot->lease];
    End *src = &lease->end[slot->side];
    End *dst = &lease->end[1 - slot->side];
    long long size = (long long)n;
    if (*now == 0.0) *now = monotonic_now();
    if (*now - dst->heard > self->consent_s || size > dst->room || size > lease->credit)
        return 0;
    src->heard = *now;
    src->received += size;
    src->room += self->amplification * size;
    ssize_t rc = sendto(self->fd, data, n, 0, (const struct sockaddr *)&dst->sa, dst->len);
    if (rc < 0) {
        self->send_errors++;  /* a full send buffer drops the datagram, as UDP does */
    }
    /* charged even when the send failed: the core's grant counts what it let through */
    dst->sent += size;
    dst->room -= size;
    lease->credit -= size;
    lease->datagrams++;
    lease->bytes += size;
    lease->last_forward = *now;
    self->forwarded++;
    return 1;
}

PyDoc_STRVAR(on_readable_doc,
"on_readable() -> None\n\n"
"Read what the socket holds (up to one batch): forward what leases allow, give the rest\n"
"to slow(data, (host, port)).");

static PyObject *Forwarder_on_readable(Forwarder *self, PyObject *Py_UNUSED(ignored)) {
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_storage froms[BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = self->buffers[i];
        iovs[i].iov_len = BUFFER_BYTES;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &froms[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(froms[i]);
    }
    int got = recvmmsg(self->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) Py_RETURN_NONE;
        if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
            Py_RETURN_NONE;  /* an ICMP error for an earlier send: nothing to read */
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    double now = 0.0;
    for (int i = 0; i < got; i++) {
        size_t n = msgs[i].msg_len;
        if (n > BUFFER_BYTES) n = BUFFER_BYTES;
        if (forward(self, self->buffers[i], n, &froms[i], &now)) continue;
        PyObject *addr = address_tuple(&froms[i]);
        if (addr == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
            continue;
        }
        if (addr == Py_None) {
            Py_DECREF(addr);
            continue;
        }
        PyObject *data = PyBytes_FromStringAndSize((const char *)self->buffers[i],
                                                   (Py_ssize_t)n);
        PyObject *result = data ? PyObject_CallFunctionObjArgs(self->slow, data, addr, NULL)
                                : NULL;
        Py_XDECREF(data);
        Py_DECREF(addr);
        if (result == NULL) {
            PyErr_WriteUnraisable(self->slow);
        } else {
            Py_DECREF(result);
        }
        now = 0.0;  /* the core may have changed the leases and taken time */
    }
    Py_RETURN_NONE;
}

static PyObject *Forwarder_len(Forwarder *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->leases_used);
}

static PyObject *Forwarder_forwarded(Forwarder *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(self->forwarded);
}

static PyObject *Forwarder_send_errors(Forwarder *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(self->send_errors);
}

static PyMethodDef Forwarder_methods[] = {
    {"put", (PyCFunction)Forwarder_put, METH_VARARGS, put_doc},
    {"take", (PyCFunction)Forwarder_take, METH_O, take_doc},
    {"on_readable", (PyCFunction)Forwarder_on_readable, METH_NOARGS, on_readable_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Forwarder_getset[] = {
    {"leases", (getter)Forwarder_len, NULL, "leases held", NULL},
    {"forwarded", (getter)Forwarder_forwarded, NULL, "datagrams forwarded here", NULL},
    {"send_errors", (getter)Forwarder_send_errors, NULL, "sends that failed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "overlay.relay._forwarder.Forwarder",
    .tp_doc = PyDoc_STR("The datagram relay's fast path over one UDP socket."),
    .tp_basicsize = sizeof(Forwarder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Forwarder_init,
    .tp_dealloc = (destructor)Forwarder_dealloc,
    .tp_methods = Forwarder_methods,
    .tp_getset = Forwarder_getset,
};

static struct PyModuleDef forwarder_module = {
    PyModuleDef_HEAD_INIT, "overlay.relay._forwarder",
    "The datagram relay's fast path (see overlay.relay.datagram_io).", -1, NULL, NULL,
    NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__forwarder(void) {
    if (PyType_Ready(&ForwarderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&forwarder_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Forwarder", (PyObject *)&ForwarderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
