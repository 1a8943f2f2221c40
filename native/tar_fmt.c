/* The tar format for warren-layer-convert (native/layer_convert.c): the output buffer and the
 * headers it writes (image_tar._ustar's bytes), and the numbers and PAX records it reads
 * (tarfmt's rules, declining wherever those would refuse). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer_convert.h"

/* --------------------------------------------------------------------------- output */

static unsigned char *obuf;
static size_t olen;

void write_all(const unsigned char *p, size_t n) {
    while (n) {
        ssize_t k = write(out_fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EPIPE) {
                put_result("{\"kind\":\"broken_pipe\"}");
                _exit(0);
            }
            decline("write error");
        }
        p += k;
        n -= (size_t)k;
    }
}

void flush_out(void) {
    write_all(obuf, olen);
    olen = 0;
}

void emit(const void *p, size_t n) {
    if (olen + n > OUTBUF) {
        flush_out();
        if (n > OUTBUF) {
            write_all(p, n);
            return;
        }
    }
    memcpy(obuf + olen, p, n);
    olen += n;
}

const unsigned char ZERO[BLOCK];


/* --------------------------------------------------------------------- tar numbers */

/* tarfmt._number for plain octal: the field up to its NUL, spaces stripped; empty is 0.
 * Anything else (base-256, 8 or 9, other bytes) is declined. */
uint64_t octal(const unsigned char *f, size_t n) {
    size_t end = 0;
    while (end < n && f[end]) end++;
    size_t a = 0, b = end;
    while (a < b && f[a] == ' ') a++;
    while (b > a && f[b - 1] == ' ') b--;
    uint64_t v = 0;
    for (size_t i = a; i < b; i++) {
        if (f[i] < '0' || f[i] > '7') decline("not a plain octal number");
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    return v;
}

int decimal(const unsigned char *p, size_t n, uint64_t *out) {
    if (n == 0 || n > 18) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return 1;
}

/* tar_stream._fast_check_sum's accepted case: a plain octal sum equal to the unsigned one. */
void check_sum(const unsigned char *blk) {
    uint64_t sum = 8 * 0x20;
    for (int i = 0; i < BLOCK; i++)
        if (i < 148 || i >= 156) sum += blk[i];
    const unsigned char *f = blk + 148;
    size_t end = 0;
    while (end < 8 && f[end]) end++;
    size_t a = 0, b = end;
    while (a < b && f[a] == ' ') a++;
    while (b > a && f[b - 1] == ' ') b--;
    if (a == b) decline("checksum");
    uint64_t v = 0;
    for (size_t i = a; i < b; i++) {
        if (f[i] < '0' || f[i] > '7') decline("checksum");
        v = v * 8 + (uint64_t)(f[i] - '0');
    }
    if (v != sum) decline("checksum");
}

/* ------------------------------------------------------------------------ PAX records */

Bytes pax_path, pax_link, pax_size, pax_uid, pax_gid, pax_mtime;

static void set_bytes(Bytes *b, const unsigned char *p, size_t n) {
    free(b->p);
    b->p = malloc(n ? n : 1);
    if (!b->p) decline("out of memory");
    memcpy(b->p, p, n);
    b->n = n;
    b->set = 1;
}

void clear_meta(void) {
    Bytes *all[] = {&pax_path, &pax_link, &pax_size, &pax_uid, &pax_gid, &pax_mtime};
    for (int i = 0; i < 6; i++) {
        free(all[i]->p);
        all[i]->p = NULL;
        all[i]->n = 0;
        all[i]->set = 0;
    }
}

static int key_is(const unsigned char *k, size_t n, const char *name) {
    return n == strlen(name) && memcmp(k, name, n) == 0;
}

/* tarfmt._parse_pax, declining where it would refuse. */
void parse_pax(const unsigned char *d, size_t n) {
    size_t p = 0;
    while (p < n) {
        if (d[p] == 0) break;
        size_t sp = p, lim = p + 20 < n ? p + 20 : n;
        while (sp < lim && d[sp] != ' ') sp++;
        if (sp >= lim || sp == p) decline("PAX record");
        uint64_t len = 0;
        for (size_t i = p; i < sp; i++) {
            if (d[i] < '0' || d[i] > '9') decline("PAX record");
            len = len * 10 + (uint64_t)(d[i] - '0');
        }
        uint64_t end = p + len;
        if (end <= sp + 1 || end > n || d[end - 1] != '\n') decline("PAX record");
        const unsigned char *k = d + sp + 1, *eq = memchr(k, '=', end - 1 - (sp + 1));
        if (!eq) decline("PAX record");
        size_t kn = (size_t)(eq - k);
        const unsigned char *v = eq + 1;
        size_t vn = (size_t)(d + end - 1 - v);
        if (kn >= 10 && memcmp(k, "GNU.sparse", 10) == 0) decline("sparse");
        if (key_is(k, kn, "path")) set_bytes(&pax_path, v, vn);
        else if (key_is(k, kn, "linkpath")) set_bytes(&pax_link, v, vn);
        else if (key_is(k, kn, "size")) set_bytes(&pax_size, v, vn);
        else if (key_is(k, kn, "uid")) set_bytes(&pax_uid, v, vn);
        else if (key_is(k, kn, "gid")) set_bytes(&pax_gid, v, vn);
        else if (key_is(k, kn, "mtime")) set_bytes(&pax_mtime, v, vn);
        p = (size_t)end;
    }
}

/* tarfmt._pax_time_ns for [digits][.digits], in whole seconds clamped as the converter
 * writes them (the ns are only ever divided back). */
uint64_t pax_mtime_s(const Bytes *b) {
    const unsigned char *dot = memchr(b->p, '.', b->n);
    size_t wn = dot ? (size_t)(dot - b->p) : b->n;
    uint64_t whole;
    if (!decimal(b->p, wn, &whole)) decline("PAX mtime");
    for (size_t i = wn + 1; dot && i < b->n; i++)
        if (b->p[i] < '0' || b->p[i] > '9') decline("PAX mtime");
    return whole;
}

/* ---------------------------------------------------------------------- tar headers */

static const unsigned char *header_tail(void) {
    static unsigned char tail[255];
    static int made;
    if (!made) {
        memcpy(tail, "ustar\0" "00", 8);
        memcpy(tail + 72, "0000000\0" "0000000\0", 16);
        made = 1;
    }
    return tail;
}

static void put_id(unsigned char *f, uint64_t n) {
    if (n < OCT7) {
        snprintf((char *)f, 8, "%07llo", (unsigned long long)n);
        return;
    }
    f[0] = 0x80;
    for (int i = 0; i < 7; i++) f[1 + i] = (unsigned char)(n >> (8 * (6 - i)));
}

/* image_tar._ustar (the common header is the same bytes). */
static void ustar(const char *name, size_t nlen, char typ, uint64_t mode, uint64_t uid, uint64_t gid,
                  uint64_t size, uint64_t mtime, const char *link, size_t llen) {
    unsigned char h[BLOCK];
    memset(h, 0, BLOCK);
    memcpy(h, name, nlen > 100 ? 100 : nlen);
    snprintf((char *)h + 100, 8, "%07llo", (unsigned long long)mode);
    put_id(h + 108, uid);
    put_id(h + 116, gid);
    if (size < OCT11) snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)size);
    snprintf((char *)h + 136, 12, "%011llo", (unsigned long long)(mtime < OCT11 ? mtime : OCT11 - 1));
    memset(h + 148, ' ', 8);
    h[156] = (unsigned char)typ;
    memcpy(h + 157, link, llen > 100 ? 100 : llen);
    memcpy(h + 257, header_tail(), 255);
    uint64_t sum = 0;
    for (int i = 0; i < BLOCK; i++) sum += h[i];
    char ck[8];
    snprintf(ck, 8, "%06llo", (unsigned long long)sum);
    memcpy(h + 148, ck, 6);
    h[154] = 0;
    h[155] = ' ';
    emit(h, BLOCK);
}

static size_t record(unsigned char *out, const char *key, const char *v, size_t vn) {
    size_t body = 1 + strlen(key) + 1 + vn + 1, n = body + 1, digits;
    for (;;) {
        char tmp[24];
        digits = (size_t)snprintf(tmp, sizeof tmp, "%zu", n);
        if (digits + body == n) break;
        n = digits + body;
    }
    size_t o = (size_t)sprintf((char *)out, "%zu ", n);
    memcpy(out + o, key, strlen(key));
    o += strlen(key);
    out[o++] = '=';
    memcpy(out + o, v, vn);
    o += vn;
    out[o++] = '\n';
    return o;
}

/* image_tar._Converter._header. */
void header_x(const char *path, size_t plen, char typ, uint64_t mode, uint64_t uid, uint64_t gid,
              uint64_t size, uint64_t mtime, const char *link, size_t llen, int opaque) {
    if (mtime >= OCT11) mtime = OCT11 - 1;
    if (plen <= 100 && llen <= 100 && size < OCT11 && !opaque) {
        ustar(path, plen, typ, mode, uid, gid, size, mtime, link, llen);
        return;
    }
    static unsigned char pax[3 * (MAX_NAME + 64)];
    char num[24];
    size_t o = record(pax, "path", path, plen);
    o += record(pax + o, "size", num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)size));
    if (llen) o += record(pax + o, "linkpath", link, llen);
    if (opaque) o += record(pax + o, "SCHILY.xattr.trusted.overlay.opaque", "y", 1);
    ustar("pax", 3, 'x', 0644, 0, 0, o, 0, "", 0);
    emit(pax, o);
    emit(ZERO, (BLOCK - o % BLOCK) % BLOCK);
    const char *tail = plen > 100 ? path + plen - 100 : path;
    ustar(tail, plen > 100 ? 100 : plen, typ, mode, uid, gid, size, mtime, link, llen);
}

void header(const char *path, size_t plen, char typ, uint64_t mode, uint64_t uid, uint64_t gid,
            uint64_t size, uint64_t mtime, const char *link, size_t llen) {
    header_x(path, plen, typ, mode, uid, gid, size, mtime, link, llen, 0);
}

void out_init(void) {
    obuf = malloc(OUTBUF);
    if (!obuf) decline("out of memory");
}
