/* warren-layer-sqfs's input (layer_sqfs.c): stdin read in large reads, tar headers and PAX
 * records checked as the converter writes them, anything else refused. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer_convert.h"
#include "layer_sqfs.h"

/* ------------------------------------------------------------------------ failing */

void die(const char *what, const char *detail) {
    fprintf(stderr, "warren-layer-sqfs: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    _exit(1);
}

void check(int err, const char *what) {
    if (err == 0) return;
    char num[16];
    snprintf(num, sizeof num, "%d", err);
    die(what, num);
}

/* --------------------------------------------------------------------------- input */

static unsigned char in_buf[IN_SIZE];
static size_t in_pos, in_len;

/* At least one byte buffered, or a truncated input refused. */
static void fill(void) {
    if (in_pos < in_len) return;
    in_pos = in_len = 0;
    for (;;) {
        ssize_t n = read(0, in_buf, IN_SIZE);
        if (n > 0) {
            in_len = (size_t)n;
            return;
        }
        if (n == 0) die("truncated tar", NULL);
        if (errno != EINTR) die("read error", strerror(errno));
    }
}

void read_exact(void *dst, size_t n) {
    unsigned char *d = dst;
    while (n) {
        fill();
        size_t k = in_len - in_pos < n ? in_len - in_pos : n;
        memcpy(d, in_buf + in_pos, k);
        in_pos += k;
        d += k;
        n -= k;
    }
}

/* The next n (<= IN_SIZE) bytes, contiguous in the input buffer, valid until the next read: a
 * full data block is compressed from there, not copied first. */
const unsigned char *take(size_t n) {
    if (in_len - in_pos < n) {
        memmove(in_buf, in_buf + in_pos, in_len - in_pos);
        in_len -= in_pos;
        in_pos = 0;
        while (in_len < n) {
            ssize_t k = read(0, in_buf + in_len, IN_SIZE - in_len);
            if (k > 0) in_len += (size_t)k;
            else if (k == 0) die("truncated tar", NULL);
            else if (errno != EINTR) die("read error", strerror(errno));
        }
    }
    const unsigned char *p = in_buf + in_pos;
    in_pos += n;
    return p;
}

void skip(uint64_t n) {
    while (n) {
        fill();
        size_t k = in_len - in_pos < n ? in_len - in_pos : (size_t)n;
        in_pos += k;
        n -= k;
    }
}

uint64_t padding(uint64_t size) { return (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK; }

char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) die("out of memory", NULL);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* ------------------------------------------------------------------ tar headers */

/* An octal field up to its NUL, spaces around it stripped; anything else refused. */
uint64_t field_octal(const unsigned char *f, size_t n, const char *what) {
    size_t end = 0;
    while (end < n && f[end]) end++;
    size_t a = 0, b = end;
    while (a < b && f[a] == ' ') a++;
    while (b > a && f[b - 1] == ' ') b--;
    if (b - a > 21) die("bad number", what);
    uint64_t v = 0;
    for (size_t i = a; i < b; i++) {
        if (f[i] < '0' || f[i] > '7') die("bad number", what);
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    return v;
}

/* An owner: octal, or GNU base-256 (the mapped ids, past 7 octal digits); 32 bits at most. */
uint32_t owner(const unsigned char *f, const char *what) {
    uint64_t v = 0;
    if (f[0] == 0x80) {
        for (int i = 1; i < 8; i++) v = v << 8 | f[i];
    } else {
        v = field_octal(f, 8, what);
    }
    if (v > UINT32_MAX) die("bad owner", what);
    return (uint32_t)v;
}

/* The unsigned sum of the header with its checksum field as spaces (summed whole, then the
 * field taken out: a loop without a branch, which the compiler vectorizes). */
void header_sum(const unsigned char *h) {
    uint32_t sum = 8 * ' ';
    for (int i = 0; i < TAR_BLOCK; i++) sum += h[i];
    for (int i = 148; i < 156; i++) sum -= h[i];
    if (field_octal(h + 148, 8, "checksum") != sum) die("bad header checksum", NULL);
}

int all_zero(const unsigned char *h) {
    for (int i = 0; i < TAR_BLOCK; i++)
        if (h[i]) return 0;
    return 1;
}

Pax pax;

void clear_pax(void) {
    for (unsigned i = 0; i < pax.nx; i++) {
        free(pax.xkey[i]);
        free(pax.xval[i]);
    }
    pax.nx = 0;
    pax.has_path = pax.has_link = pax.has_size = 0;
}

static const char OPAQUE_XATTR[] = "trusted.overlay.opaque";

static int key_is(const unsigned char *k, size_t n, const char *name) {
    return n == strlen(name) && memcmp(k, name, n) == 0;
}

static void pax_record(const unsigned char *k, size_t kn, const unsigned char *v, size_t vn) {
    static const char XATTR[] = "SCHILY.xattr.";
    if (key_is(k, kn, "path")) {
        if (vn > MAX_NAME) die("bad PAX path", "too long");
        memcpy(pax.path, v, vn);
        pax.path_n = vn;
        pax.has_path = 1;
    } else if (key_is(k, kn, "linkpath")) {
        if (vn > MAX_LINK) die("bad PAX linkpath", "too long");
        memcpy(pax.link, v, vn);
        pax.link_n = vn;
        pax.has_link = 1;
    } else if (key_is(k, kn, "size")) {
        uint64_t s = 0;
        if (vn == 0 || vn > 18) die("bad PAX size", NULL);
        for (size_t i = 0; i < vn; i++) {
            if (v[i] < '0' || v[i] > '9') die("bad PAX size", NULL);
            s = s * 10 + (uint64_t)(v[i] - '0');
        }
        pax.size = s;
        pax.has_size = 1;
    } else if (kn > sizeof XATTR - 1 && memcmp(k, XATTR, sizeof XATTR - 1) == 0) {
        if (pax.nx == MAX_XATTRS) die("too many xattrs", NULL);
        const unsigned char *name = k + sizeof XATTR - 1;
        size_t nn = kn - (sizeof XATTR - 1);
        if (memchr(name, 0, nn)) die("bad xattr name", NULL);
        /* The converter writes one xattr, the opaque marker. Anything else (a file capability
         * valid for host root, overlayfs' redirect...) would come from a converter taken over. */
        if (!key_is(name, nn, OPAQUE_XATTR) || vn != 1 || v[0] != 'y')
            die("an xattr the converter does not write", NULL);
        pax.xkey[pax.nx] = dup_n((const char *)name, nn);
        pax.xval[pax.nx] = (unsigned char *)dup_n((const char *)v, vn);
        pax.xlen[pax.nx++] = vn;
    } else {
        die("a PAX record the converter does not write", NULL);
    }
}

/* "<len> <key>=<value>\n" records; a repeated key: its last value. */
static void pax_records(const unsigned char *d, size_t n) {
    size_t p = 0;
    while (p < n) {
        size_t sp = p, lim = p + 20 < n ? p + 20 : n;
        while (sp < lim && d[sp] != ' ') sp++;
        if (sp >= lim || sp == p) die("bad PAX record", NULL);
        uint64_t len = 0;
        for (size_t i = p; i < sp; i++) {
            if (d[i] < '0' || d[i] > '9') die("bad PAX record", NULL);
            len = len * 10 + (uint64_t)(d[i] - '0');
        }
        if (len > n - p || p + len <= sp + 1 || d[p + len - 1] != '\n') die("bad PAX record", NULL);
        const unsigned char *k = d + sp + 1, *end = d + p + len - 1;
        const unsigned char *eq = memchr(k, '=', (size_t)(end - k));
        if (!eq || eq == k) die("bad PAX record", NULL);
        pax_record(k, (size_t)(eq - k), eq + 1, (size_t)(end - eq - 1));
        p += len;
    }
}

void read_pax(uint64_t size) {
    static unsigned char buf[MAX_PAX];
    if (size > MAX_PAX) die("PAX header too large", NULL);
    read_exact(buf, (size_t)size);
    skip(padding(size));
    pax_records(buf, (size_t)size);
}

