/* warren-layer-convert: the layer image converter's fast path (docs/templates.md §2).
 *
 *   warren-layer-convert IN_FD OUT_FD RESULT_FD UID_BASE MAX_BYTES
 *
 * Reads an OCI layer tar (untrusted) from IN_FD and writes to OUT_FD the very bytes that
 * warren.layers.image_tar.convert_layer writes for it (the tar tar2sqfs packs), then one JSON
 * result to RESULT_FD: {"kind":"ok","stats":{...}}, {"kind":"broken_pipe"} (tar2sqfs stopped
 * reading) or {"kind":"declined","message":...}.
 *
 * It converts what layers are made of: ustar/PAX headers with octal numbers, regular files,
 * directories, symlinks, hard links to earlier files, fifos, whiteouts and opaque markers,
 * device nodes (skipped), every name new. Anything else — every refusal of the Python
 * converter, GNU long names, base-256 numbers, signed checksums, sparse records, names listed
 * twice, limits reached — it declines: the agent then converts the whole layer again with
 * the Python converter (from the tar it kept), which gives the answer and the message. So this
 * program never has to refuse anything itself: it accepts a subset of what the Python converter
 * accepts, and for that subset writes the same bytes (tests/unit/layers/test_native_convert.py
 * compares the two on every tar of the tests). It runs as a uid of its own under the limits the
 * converter's server set before exec'ing it, and under a seccomp filter (seccomp.c) from before
 * its first read of the tar. With --confined-exec it is tar2sqfs' launcher instead: the
 * packer's filter, then exec. The tar format's details: tar_fmt.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <unistd.h>

#include "layer_convert.h"

int in_fd, out_fd, result_fd;
uint64_t uid_base, limit;

/* ------------------------------------------------------------------ declining, results */

void put_result(const char *s) {
    size_t n = strlen(s);
    while (n) {
        ssize_t k = write(result_fd, s, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            _exit(1);
        }
        s += k;
        n -= (size_t)k;
    }
}

/* Not ours to judge: the Python converter takes the layer (the message is only for logs). */
void decline(const char *why) {
    char buf[256];
    snprintf(buf, sizeof buf, "{\"kind\":\"declined\",\"message\":\"%s\"}", why);
    put_result(buf);
    _exit(0);
}

/* ---------------------------------------------------------------------------- input */

static unsigned char *ibuf;
static size_t ioff, iend; /* buffered: ibuf[ioff:iend] */
static uint64_t pos;      /* tar bytes consumed */

static void room(uint64_t n) {
    if (pos + n > limit || pos + n < pos) decline("over the size limit");
}

/* At least n (<= INBUF) bytes buffered, or 0 at the end of the stream. */
static int fill(size_t n) {
    if (iend - ioff >= n) return 1;
    memmove(ibuf, ibuf + ioff, iend - ioff);
    iend -= ioff;
    ioff = 0;
    while (iend < n) {
        ssize_t k = read(in_fd, ibuf + iend, INBUF - iend);
        if (k < 0) {
            if (errno == EINTR) continue;
            decline("read error");
        }
        if (k == 0) return 0;
        iend += (size_t)k;
    }
    return 1;
}

static const unsigned char *take(size_t n) {
    room(n);
    if (!fill(n)) decline("truncated");
    const unsigned char *p = ibuf + ioff;
    ioff += n;
    pos += n;
    return p;
}

/* n bytes of the input dropped: the data of a member that writes none (tarfmt.members skips
 * it), never parsed as headers. */
static void skip(uint64_t n) {
    while (n) {
        size_t k = n < INBUF ? (size_t)n : INBUF;
        take(k);
        n -= k;
    }
}

/* n bytes of the input to the output (a regular file's data), then its padding. */
static void copy_data(uint64_t n) {
    uint64_t pad = (BLOCK - n % BLOCK) % BLOCK;
    room(n + pad); /* members() checked it already; kept as the invariant */
    pos += n + pad;
    size_t have = iend - ioff;
    size_t k = have < n ? have : (size_t)n;
    emit(ibuf + ioff, k);
    ioff += k;
    n -= k;
    if (n) flush_out();
    while (n) {
        ssize_t got = splice(in_fd, NULL, out_fd, NULL, n, SPLICE_F_MOVE);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && errno == EPIPE) {
            put_result("{\"kind\":\"broken_pipe\"}");
            _exit(0);
        }
        if (got < 0) { /* not two pipes (a test's file): through the buffer */
            size_t want = n < INBUF ? (size_t)n : INBUF;
            if (!fill(want)) decline("truncated");
            emit(ibuf + ioff, want);
            ioff += want;
            n -= want;
            continue;
        }
        if (got == 0) decline("truncated");
        n -= (uint64_t)got;
    }
    emit(ZERO, (size_t)pad);
    if (!fill((size_t)pad)) decline("truncated");
    ioff += (size_t)pad;
}

/* -------------------------------------------------------------------- names and table */

typedef struct {
    char *key; /* the normalized path, components joined by '/' */
    uint32_t len;
    char kind; /* 'd' or 'f' (0: empty slot) */
    char emitted;
} Slot;

static Slot *table;
static size_t tcap, tcount;
static uint64_t cells, members_seen, implied;

static uint64_t hash_key; /* random per process: names cannot be chosen to collide */

/* FNV-1a from a secret start, then mixed (murmur3's finalizer): FNV's low bits, the table's
 * index, depend only on the input's low bits, and a tenant could compute names that all land
 * in one slot (65 536 of them: 16 s of CPU instead of 0.14). */
static uint64_t hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL ^ hash_key;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

static Slot *find(const char *s, size_t n) {
    size_t i = (size_t)hash(s, n) & (tcap - 1);
    while (table[i].kind) {
        if (table[i].len == n && memcmp(table[i].key, s, n) == 0) return &table[i];
        i = (i + 1) & (tcap - 1);
    }
    return &table[i];
}

static void grow(void) {
    Slot *old = table;
    size_t ocap = tcap;
    tcap = tcap ? tcap * 2 : 1 << 16;
    table = calloc(tcap, sizeof(Slot));
    if (!table) decline("out of memory");
    for (size_t i = 0; i < ocap; i++)
        if (old[i].kind) *find(old[i].key, old[i].len) = old[i];
    free(old);
}

/* _Namespace._add: a new name, paid for in cells. */
static Slot *add(const char *s, size_t n, int depth, char kind) {
    cells += (uint64_t)depth + KEY_CELLS;
    if (cells > MAX_NAME_CELLS) decline("names too many or too deep");
    if ((tcount + 1) * 2 > tcap) grow();
    Slot *sl = find(s, n);
    sl->key = malloc(n ? n : 1);
    if (!sl->key) decline("out of memory");
    memcpy(sl->key, s, n);
    sl->len = (uint32_t)n;
    sl->kind = kind;
    sl->emitted = 0;
    tcount++;
    return sl;
}

typedef struct {
    char path[MAX_NAME + 1];
    size_t len;
    int depth;
    size_t ends[MAX_DEPTH + 1]; /* ends[i]: length of the first i+1 components joined */
} Name;

/* tarfmt.normalize, declining where it would refuse. */
static void normalize(const unsigned char *raw, size_t n, Name *out) {
    if (memchr(raw, 0, n) || n > MAX_NAME) decline("name");
    out->len = 0;
    out->depth = 0;
    int prev_wh = 0, wh_dir = 0; /* the component before starts with `.wh.`; one but the last did */
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && raw[j] != '/') j++;
        size_t c = j - i;
        const unsigned char *comp = raw + i;
        i = j + 1;
        if (c == 0 || (c == 1 && comp[0] == '.')) continue;
        if (c == 2 && comp[0] == '.' && comp[1] == '.') decline("'..' in name");
        if (c > MAX_COMPONENT) decline("name component");
        if (out->depth >= MAX_DEPTH) decline("too deep");
        if (out->depth) out->path[out->len++] = '/';
        memcpy(out->path + out->len, comp, c);
        out->len += c;
        out->ends[out->depth++] = out->len;
        wh_dir |= prev_wh;
        prev_wh = c >= 4 && memcmp(comp, ".wh.", 4) == 0;
    }
    if (wh_dir) decline("a whiteout name as a directory");
}

/* ----------------------------------------------------------------------- the converter */

typedef struct {
    int set;
    Name name;
    uint64_t mode, uid, gid, mtime;
} Pending;

static Pending pending;
static char last_parents[MAX_NAME + 1];
static size_t last_parents_len = (size_t)-1;
static uint64_t files, data_bytes, skipped;
static int has_python3, removes_python3;

static void claim(Slot *sl) {
    if (sl->emitted) decline("a name twice");
    sl->emitted = 1;
}

static void flush_pending(void) {
    if (!pending.set) return;
    pending.set = 0;
    Name *nm = &pending.name;
    claim(find(nm->path, nm->len));
    header(nm->path, nm->len, '5', pending.mode, pending.uid, pending.gid, 0, pending.mtime, "", 0);
}

/* _Namespace._parents of the first `depth` components of nm: the directories on the way that
 * the tar did not list are made (and paid for). */
static void ns_parents(const Name *nm, int depth) {
    if (depth <= 0) return;
    Slot *sl = find(nm->path, nm->ends[depth - 1]);
    if (sl->kind == 'd') return;
    for (int i = 0; i < depth; i++) {
        size_t l = nm->ends[i];
        sl = find(nm->path, l);
        if (!sl->kind) {
            implied++;
            if (implied > IMPLIED_PER_MEMBER * members_seen + IMPLIED_FREE) decline("implied dirs");
            add(nm->path, l, i + 1, 'd');
        } else if (sl->kind != 'd') {
            decline("not a directory on the path");
        }
    }
}

/* _Converter._parents: those not written yet are written (0755, the mapped root). */
static void conv_parents(const Name *nm, int depth) {
    if (depth <= 0) return;
    size_t plen = nm->ends[depth - 1];
    if (plen == last_parents_len && memcmp(last_parents, nm->path, plen) == 0) return;
    for (int i = 0; i < depth; i++) {
        size_t l = nm->ends[i];
        Slot *p = find(nm->path, l);
        if (!p->emitted) {
            p->emitted = 1;
            header(nm->path, l, '5', 0755, uid_base, uid_base, 0, 0, "", 0);
        }
    }
    memcpy(last_parents, nm->path, plen);
    last_parents_len = plen;
}

static void parents(const Name *nm) {
    ns_parents(nm, nm->depth - 1);
    flush_pending(); /* the Python converter writes the directory held back here */
    conv_parents(nm, nm->depth - 1);
}

static void probe(const Name *nm, int is_dir, int is_file_or_link) {
    static const char py[] = "usr/bin/python3";
    if (nm->len == 15 && memcmp(nm->path, py, 15) == 0) {
        has_python3 = is_file_or_link;
        removes_python3 = 1;
    } else if (((nm->len == 3 && memcmp(nm->path, "usr", 3) == 0) ||
                (nm->len == 7 && memcmp(nm->path, "usr/bin", 7) == 0)) && !is_dir) {
        has_python3 = 0;
        removes_python3 = 1;
    }
}

/* Python3Probe.whiteout / .opaque: `usr`, `usr/bin` (and for a whiteout `usr/bin/python3`). */
static int on_python3_path(const char *p, size_t n, int with_python3) {
    return (n == 3 && memcmp(p, "usr", 3) == 0) || (n == 7 && memcmp(p, "usr/bin", 7) == 0) ||
           (with_python3 && n == 15 && memcmp(p, "usr/bin/python3", 15) == 0);
}

typedef struct {
    const unsigned char *name, *link;
    size_t nlen, llen;
    char type;
    uint64_t mode, uid, gid, size, mtime;
} Member;

static Name cur, target;

/* `dir/.wh..wh..opq`: the directory opaque (the PAX xattr), its marker right after it. */
static void opaque(const Name *nm) {
    int depth = nm->depth - 1;
    size_t dlen = depth ? nm->ends[depth - 1] : 0;
    ns_parents(nm, depth); /* the directory itself included */
    if (depth && on_python3_path(nm->path, dlen, 0)) removes_python3 = 1;
    if (pending.set && pending.name.len == dlen && memcmp(pending.name.path, nm->path, dlen) == 0) {
        pending.set = 0;
        claim(find(nm->path, dlen));
        header_x(nm->path, dlen, '5', pending.mode, pending.uid, pending.gid, 0, pending.mtime, "", 0, 1);
        return;
    }
    flush_pending();
    if (!depth || find(nm->path, dlen)->emitted) decline("an opaque marker apart from its directory");
    conv_parents(nm, depth - 1);
    claim(find(nm->path, dlen));
    header_x(nm->path, dlen, '5', 0755, uid_base, uid_base, 0, 0, "", 0, 1);
}

/* `dir/.wh.name`: overlayfs' whiteout of `dir/name` (a 0/0 character device). */
static void whiteout(const Name *nm, const char *base, size_t blen, uint64_t mtime) {
    if (blen == 4 || (blen == 5 && base[4] == '.') || (blen == 6 && base[4] == '.' && base[5] == '.'))
        decline("a whiteout of nothing");
    size_t dlen = nm->depth > 1 ? nm->ends[nm->depth - 2] : 0;
    size_t tlen = dlen + (dlen ? 1 : 0) + blen - 4;
    memcpy(target.path, nm->path, dlen);
    if (dlen) target.path[dlen] = '/';
    memcpy(target.path + tlen - (blen - 4), base + 4, blen - 4);
    ns_parents(nm, nm->depth - 1);
    if (find(target.path, tlen)->kind) decline("a whiteout of a name already there");
    add(target.path, tlen, nm->depth, 'w');
    if (on_python3_path(target.path, tlen, 1)) has_python3 = 0, removes_python3 = 1;
    files++;
    flush_pending();
    conv_parents(nm, nm->depth - 1);
    claim(find(target.path, tlen));
    header(target.path, tlen, '3', 0, 0, 0, 0, mtime, "", 0);
}

static void member(const Member *m) {
    normalize(m->name, m->nlen, &cur);
    if (m->uid > MAX_ID || m->gid > MAX_ID) decline("owner");
    if (cur.depth == 0) return; /* the root entry: ignored */
    char t = m->type;
    size_t bstart = cur.depth > 1 ? cur.ends[cur.depth - 2] + 1 : 0;
    const char *base = cur.path + bstart;
    size_t blen = cur.len - bstart;
    int known_before = find(cur.path, cur.len)->kind != 0;
    members_seen++;
    if (blen >= 4 && memcmp(base, ".wh.", 4) == 0) {
        if (blen == 12 && memcmp(base, ".wh..wh..opq", 12) == 0) {
            opaque(&cur);
        } else if (blen >= 8 && memcmp(base, ".wh..wh.", 8) == 0) {
            skipped++; /* aufs' metadata */
            flush_pending();
        } else {
            whiteout(&cur, base, blen, m->mtime);
        }
        return;
    }
    if (t == '3' || t == '4') { /* a sandbox gets its /dev from the runtime */
        skipped++;
        flush_pending();
        return;
    }
    if (known_before) decline("a name twice");
    parents(&cur); /* also writes the directory held back, as the Python one does here */
    int is_reg = t == '0' || t == '\0' || t == '7';
    probe(&cur, t == '5', is_reg || t == '1' || t == '2');
    uint64_t uid = uid_base + m->uid, gid = uid_base + m->gid;
    if (t == '5') {
        add(cur.path, cur.len, cur.depth, 'd');
        pending.set = 1;
        pending.name = cur;
        pending.mode = m->mode;
        pending.uid = uid;
        pending.gid = gid;
        pending.mtime = m->mtime;
        return;
    }
    const unsigned char *link = m->link;
    size_t llen = m->llen;
    if (t == '2' && (llen == 0 || memchr(link, 0, llen))) decline("symlink target");
    if (llen > MAX_NAME) decline("a long link target"); /* fits the PAX buffer below */
    if (t == '1') {
        normalize(link, llen, &target);
        if (target.depth == 0 || find(target.path, target.len)->kind != 'f') decline("hard link");
        link = (const unsigned char *)target.path;
        llen = target.len;
    }
    claim(add(cur.path, cur.len, cur.depth, 'f'));
    files++;
    data_bytes += m->size;
    if (is_reg) {
        header(cur.path, cur.len, '0', m->mode, uid, gid, m->size, m->mtime, "", 0);
        copy_data(m->size);
    } else if (t == '2' || t == '1') {
        header(cur.path, cur.len, t, m->mode, uid, gid, 0, m->mtime, (const char *)link, llen);
    } else if (t == '6') {
        header(cur.path, cur.len, '6', m->mode, uid, gid, 0, m->mtime, "", 0);
    }
}

/* tarfmt.members (with tar_stream's shortcuts), feeding member(). */
static void convert(void) {
    uint64_t count = 0;
    static unsigned char blk[BLOCK];
    for (;;) {
        room(BLOCK);
        if (!fill(BLOCK)) decline("no end-of-archive marker");
        memcpy(blk, take(BLOCK), BLOCK);
        if (memcmp(blk, ZERO, BLOCK) == 0) return;
        check_sum(blk);
        char typ = (char)blk[156];
        if (typ == 'x' || typ == 'g') {
            uint64_t size = octal(blk + 124, 12);
            if (size > MAX_META) decline("meta too large");
            const unsigned char *d = take((size_t)size);
            if (typ == 'x') {
                unsigned char *copy = malloc(size ? size : 1);
                if (!copy) decline("out of memory");
                memcpy(copy, d, size);
                size_t pad = (BLOCK - size % BLOCK) % BLOCK;
                take(pad);
                parse_pax(copy, size);
                free(copy);
            } else {
                take((BLOCK - size % BLOCK) % BLOCK);
            }
            continue;
        }
        if (typ == 'L' || typ == 'K') decline("GNU long name");
        Member m;
        size_t nl = 0;
        while (nl < 100 && blk[nl]) nl++;
        static unsigned char full[512];
        const unsigned char *name = blk;
        if (memcmp(blk + 257, "ustar\0" "00", 8) == 0) {
            size_t pl = 0;
            while (pl < 155 && blk[345 + pl]) pl++;
            if (pl) {
                memcpy(full, blk + 345, pl);
                full[pl] = '/';
                memcpy(full + pl + 1, blk, nl);
                name = full;
                nl = pl + 1 + nl;
            }
        }
        m.name = name;
        m.nlen = nl;
        m.mode = octal(blk + 100, 8) & 07777;
        m.uid = octal(blk + 108, 8);
        m.gid = octal(blk + 116, 8);
        m.size = octal(blk + 124, 12);
        m.mtime = octal(blk + 136, 12);
        if (m.mtime > MAX_MTIME_S) m.mtime = MAX_MTIME_S;
        size_t ll = 0;
        while (ll < 100 && blk[157 + ll]) ll++;
        m.link = blk + 157;
        m.llen = ll;
        if (pax_path.set) m.name = pax_path.p, m.nlen = pax_path.n;
        if (pax_link.set) m.link = pax_link.p, m.llen = pax_link.n;
        if (pax_size.set && !decimal(pax_size.p, pax_size.n, &m.size)) decline("PAX size");
        if (pax_uid.set && !decimal(pax_uid.p, pax_uid.n, &m.uid)) decline("PAX uid");
        if (pax_gid.set && !decimal(pax_gid.p, pax_gid.n, &m.gid)) decline("PAX gid");
        if (pax_mtime.set) m.mtime = pax_mtime_s(&pax_mtime);
        if (m.mtime > MAX_MTIME_S) m.mtime = MAX_MTIME_S;
        if (++count > MAX_MEMBERS) decline("too many members");
        m.type = typ;
        if (typ == '\0' && m.nlen && m.name[m.nlen - 1] == '/') m.type = '5';
        if (m.type != '\0' && (m.type < '0' || m.type > '7')) decline("member type");
        int is_reg = m.type == '0' || m.type == '\0' || m.type == '7';
        if (!is_reg) m.size = 0;
        uint64_t data = m.size + (BLOCK - m.size % BLOCK) % BLOCK, start = pos;
        room(data);
        member(&m); /* consumes a regular file's data and padding when it writes them */
        skip(data - (pos - start)); /* the root entry's, a whiteout's, ...: tarfmt skips them */
        clear_meta();
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--confined-exec") == 0) {
        /* tar2sqfs' launcher: its filter, then the program (which keeps it for good) */
        if (confine(CONFINE_PACKER) != 0) {
            perror("warren-layer-convert: seccomp");
            return 126;
        }
        execv(argv[2], argv + 2);
        perror(argv[2]);
        return 127;
    }
    if (argc != 6) {
        fprintf(stderr, "usage: warren-layer-convert IN_FD OUT_FD RESULT_FD UID_BASE MAX_BYTES\n"
                        "       warren-layer-convert --confined-exec PROGRAM [ARG...]\n");
        return 2;
    }
    in_fd = atoi(argv[1]);
    out_fd = atoi(argv[2]);
    result_fd = atoi(argv[3]);
    uid_base = strtoull(argv[4], NULL, 10);
    limit = strtoull(argv[5], NULL, 10);
    /* Not dumpable, as the Python child that exec'd it (setresuid made that one so, execve
     * undoes it): no other process of nobody may ptrace it or read its /proc files. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) decline("prctl");
    if (getrandom(&hash_key, sizeof hash_key, 0) != sizeof hash_key) decline("getrandom");
    signal(SIGPIPE, SIG_IGN);
    ibuf = malloc(INBUF);
    if (!ibuf) decline("out of memory");
    out_init();
    grow();
    /* From here on it reads the tenant's bytes: only reads of in_fd, writes of out_fd and
     * result_fd, splices between them, its own memory and exit (seccomp.c) */
    if (confine_converter(in_fd, out_fd, result_fd) != 0) decline("seccomp");
    convert();
    flush_pending();
    emit(ZERO, BLOCK);
    emit(ZERO, BLOCK);
    flush_out();
    close(out_fd); /* tar2sqfs sees the end of its tar now */
    char buf[512];
    snprintf(buf, sizeof buf,
             "{\"kind\":\"ok\",\"stats\":{\"files\":%llu,\"bytes\":%llu,\"has_python3\":%s,"
             "\"removes_python3\":%s,\"skipped\":%llu}}",
             (unsigned long long)files, (unsigned long long)data_bytes, has_python3 ? "true" : "false",
             removes_python3 ? "true" : "false", (unsigned long long)skipped);
    put_result(buf);
    return 0;
}
