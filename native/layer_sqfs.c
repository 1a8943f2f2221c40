/* warren-layer-sqfs: the layer converter's tar (stdin) -> a squashfs image (docs/templates.md §2).
 *
 * A drop-in for what the agent asked of `tar2sqfs -q --no-skip -c lz4 -d uid=0,gid=0,mode=0700`:
 * the same image semantics (owners, modes, mtimes, links, whiteout devices, xattrs; directories'
 * link counts are 2 + their subdirectories, where tar2sqfs gave 2 + their entries), in one
 * thread: file data and fragment blocks are written here, the tables by libsquashfs (tar2sqfs
 * handed every file to a block thread: ~30 % of its samples were futex hand-offs, one per file).
 * No deduplication of identical files (tar2sqfs' other data step).
 *
 * Its input is the converter's own output format (native/tar_fmt.c, image_tar.py): ustar headers,
 * a PAX record before those that need one (path, size, linkpath, the opaque xattr), every parent
 * directory before its children, each name once. It is read as hostile all the same (a
 * converter taken over could write anything): every read checked, names, depths, entry counts
 * and PAX records bounded, anything the converter never writes refused; a refusal is one line on
 * stderr and exit status 1, and the agent extracts the layer instead. CPU, memory and the
 * image's size are bounded from outside (prlimit, agent/layer_image.py). Once its output is open
 * it confines itself: the converter's seccomp filter (seccomp.c: no exec, no new process or
 * thread, no signal, socket, namespace...) and one of its own allowing only what writing the
 * image takes (no open of any other path, no exec).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sqfs/block.h>
#include <sqfs/compressor.h>
#include <sqfs/dir_writer.h>
#include <sqfs/error.h>
#include <sqfs/frag_table.h>
#include <sqfs/id_table.h>
#include <sqfs/inode.h>
#include <sqfs/io.h>
#include <sqfs/meta_writer.h>
#include <sqfs/super.h>
#include <sqfs/xattr_writer.h>

#include "layer_convert.h"
#include "layer_sqfs.h"

#define MAX_NODES (1u << 22) /* entries of one image (the converter's MAX_MEMBERS + implied) */
#define NO_XATTR 0xFFFFFFFFu

/* ---------------------------------------------------------------------- the tree */

typedef struct Node Node;
struct Node {
    Node *parent, *first, *next; /* children, unsorted until written */
    Node *target;                /* a hard link's entry: the node it names */
    char *name;
    char *symlink;
    sqfs_inode_generic_t *inode; /* a regular file's (its data written already) */
    uint32_t mode, uid, gid, mtime, nlink, subdirs, xattr, ino;
    uint64_t ref;
    int written;
};

static Node root = {.mode = S_IFDIR | 0700, .xattr = NO_XATTR};
static uint32_t node_count = 1; /* nodes with an inode of their own, root included */
static uint32_t entry_count;

/* (parent, name) -> node: open addressing, grown at half full. */
static Node **table;
static size_t table_cap;

static size_t hash(const Node *parent, const char *name, size_t n) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)(uintptr_t)parent;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

static Node **slot(const Node *parent, const char *name, size_t n) {
    size_t i = hash(parent, name, n) & (table_cap - 1);
    for (;; i = (i + 1) & (table_cap - 1)) {
        Node *e = table[i];
        if (!e || (e->parent == parent && strlen(e->name) == n && memcmp(e->name, name, n) == 0))
            return &table[i];
    }
}

static void grow(void) {
    Node **old = table;
    size_t old_cap = table_cap;
    table_cap = table_cap ? table_cap * 2 : 1 << 14;
    table = calloc(table_cap, sizeof *table);
    if (!table) die("out of memory", NULL);
    for (size_t i = 0; i < old_cap; i++)
        if (old[i]) *slot(old[i]->parent, old[i]->name, strlen(old[i]->name)) = old[i];
    free(old);
}

static Node *child(const Node *parent, const char *name, size_t n) { return *slot(parent, name, n); }

/* The directory a path's components before its last name, or a refusal. */
static Node *walk(const char *path, size_t n, Node *from) {
    Node *d = from;
    size_t a = 0;
    while (a < n) {
        const char *sl = memchr(path + a, '/', n - a);
        size_t b = sl ? (size_t)(sl - path) : n;
        d = child(d, path + a, b - a);
        if (!d) die("a parent directory is not listed before its entry", NULL);
        if (d->target) d = d->target;
        if (!S_ISDIR(d->mode)) die("a parent is not a directory", NULL);
        a = b + 1;
    }
    return d;
}

/* Checks a path as the converter writes them: relative, no empty, "." or ".." component, no
 * trailing slash, bounded. Returns where its last component starts. */
static size_t check_path(const char *p, size_t n) {
    if (n == 0 || n > MAX_NAME) die("bad path", "empty or too long");
    size_t start = 0, depth = 0, last = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && p[i] != '/') continue;
        size_t len = i - start;
        if (len == 0 || len > MAX_COMPONENT) die("bad path", "empty or too long a component");
        if ((len == 1 && p[start] == '.') || (len == 2 && p[start] == '.' && p[start + 1] == '.'))
            die("bad path", "a '.' or '..' component");
        if (++depth > MAX_DEPTH) die("bad path", "too deep");
        last = start;
        start = i + 1;
    }
    return last;
}

/* The last parent looked up: siblings follow each other, so most entries need no walk. */
static char last_dir[MAX_NAME + 1];
static size_t last_dir_len = (size_t)-1;
static Node *last_dir_node;

static Node *add_node(const char *path, size_t n) {
    size_t base = check_path(path, n);
    size_t dlen = base ? base - 1 : 0;
    Node *dir;
    if (dlen == last_dir_len && memcmp(path, last_dir, dlen) == 0) {
        dir = last_dir_node;
    } else {
        dir = walk(path, dlen, &root);
        memcpy(last_dir, path, dlen);
        last_dir_len = dlen;
        last_dir_node = dir;
    }
    if (++entry_count > MAX_NODES) die("too many entries", NULL);
    if ((size_t)entry_count * 2 >= table_cap) grow();
    Node **s = slot(dir, path + base, n - base);
    if (*s) die("an entry is listed twice", NULL);
    Node *e = calloc(1, sizeof *e);
    if (!e) die("out of memory", NULL);
    e->parent = dir;
    e->name = dup_n(path + base, n - base);
    e->xattr = NO_XATTR;
    e->nlink = 1;
    e->next = dir->first;
    dir->first = e;
    *s = e;
    return e;
}

/* ------------------------------------------------------------------- the writer */

#define BS SQFS_DEFAULT_BLOCK_SIZE
#define UNCOMPRESSED (1u << 24) /* a block size word's flag: stored as is */
#define NO_FRAGMENT 0xFFFFFFFFu
#define MAX_FILE (1ULL << 40) /* a file's size: its block list is allocated up front */
_Static_assert(BS <= IN_SIZE, "a data block is taken whole from the input buffer");

static sqfs_file_t *out;
static sqfs_compressor_t *cmp;
static sqfs_frag_table_t *fragtbl;
static sqfs_id_table_t *idtbl;
static sqfs_xattr_writer_t *xwr;
static sqfs_super_t super;
static int compress_data; /* lz4 on data and fragment blocks, or stored as is ("none") */

static void open_image(const char *path, int compress) {
    sqfs_compressor_config_t cfg;
    check(sqfs_compressor_config_init(&cfg, SQFS_COMP_LZ4, BS, 0), "compressor");
    check(sqfs_compressor_create(&cfg, &cmp), "compressor");
    out = sqfs_open_file(path, 0); /* O_EXCL: never an existing file, nor through a link */
    if (!out) die("cannot create the image", strerror(errno));
    check(sqfs_super_init(&super, BS, 0, SQFS_COMP_LZ4), "superblock");
    check(sqfs_super_write(&super, out), "writing the superblock");
    int ret = cmp->write_options(cmp, out);
    if (ret < 0) check(ret, "writing the compressor options");
    if (ret > 0) super.flags |= SQFS_FLAG_COMPRESSOR_OPTIONS;
    fragtbl = sqfs_frag_table_create(0);
    idtbl = sqfs_id_table_create(0);
    xwr = sqfs_xattr_writer_create(0);
    if (!fragtbl || !idtbl || !xwr) die("out of memory", NULL);
    compress_data = compress;
}

/* File data, written here rather than by libsquashfs' block processor: Debian's build always
 * hands every block to a worker thread (its serial processor is only built without pthreads),
 * and each small file's tail was one hand-off (futex waits and wake-ups: ~30 % of tar2sqfs'
 * samples). Full blocks go out as they fill, tails are packed into fragment blocks. No
 * deduplication (tar2sqfs' only other data step): a layer's duplicate files cost their bytes. */
static unsigned char frag_buf[BS], scratch[BS];
static size_t frag_len;
static uint32_t frag_count;

/* One block at the end of the image; its size word (UNCOMPRESSED set if stored as is). */
static uint32_t put_block(const unsigned char *data, size_t n) {
    const void *src = data;
    uint32_t word = (uint32_t)n | UNCOMPRESSED;
    if (compress_data) {
        sqfs_s32 k = cmp->do_block(cmp, data, (sqfs_u32)n, scratch, sizeof scratch);
        if (k < 0) check(k, "compressing a block");
        if (k > 0) {
            src = scratch;
            word = (uint32_t)k;
        }
    }
    check(out->write_at(out, out->get_size(out), src, SQFS_ON_DISK_BLOCK_SIZE(word)), "writing a block");
    return word;
}

static void flush_fragments(void) {
    if (frag_len == 0) return;
    sqfs_u64 at = out->get_size(out);
    uint32_t word = put_block(frag_buf, frag_len);
    sqfs_u32 index;
    check(sqfs_frag_table_append(fragtbl, at, word, &index), "the fragment table");
    if (index != frag_count) die("the fragment table", "an unexpected index");
    frag_count++;
    frag_len = 0;
}

/* A regular file's inode, its data read from the tar and written. */
static sqfs_inode_generic_t *file_data(uint64_t size) {
    if (size > MAX_FILE) die("a file too large", NULL);
    size_t blocks = (size_t)(size / BS), tail = (size_t)(size % BS);
    sqfs_inode_generic_t *inode = calloc(1, sizeof *inode + blocks * sizeof(sqfs_u32));
    if (!inode) die("out of memory", NULL);
    inode->base.type = SQFS_INODE_FILE;
    inode->payload_bytes_available = inode->payload_bytes_used = (sqfs_u32)(blocks * sizeof(sqfs_u32));
    check(sqfs_inode_set_file_size(inode, size), "a file's size");
    check(sqfs_inode_set_file_block_start(inode, out->get_size(out)), "a file's blocks");
    for (size_t i = 0; i < blocks; i++) inode->extra[i] = put_block(take(BS), BS);
    if (tail) {
        if (frag_len + tail > BS) flush_fragments();
        read_exact(frag_buf + frag_len, tail);
        check(sqfs_inode_set_frag_location(inode, frag_count, (sqfs_u32)frag_len), "a fragment");
        frag_len += tail;
    } else {
        check(sqfs_inode_set_frag_location(inode, NO_FRAGMENT, 0), "a file");
    }
    skip(padding(size));
    return inode;
}

/* ----------------------------------------------------------------------- entries */

static uint32_t xattrs_of_entry(void) {
    if (pax.nx == 0) return NO_XATTR;
    sqfs_u32 idx;
    check(sqfs_xattr_writer_begin(xwr, 0), "xattrs");
    for (unsigned i = 0; i < pax.nx; i++)
        check(sqfs_xattr_writer_add(xwr, pax.xkey[i], pax.xval[i], pax.xlen[i]), "an xattr");
    check(sqfs_xattr_writer_end(xwr, &idx), "xattrs");
    return idx;
}

static void hard_link(Node *e, const char *link, size_t n) {
    size_t base = check_path(link, n);
    Node *dir = base ? walk(link, base - 1, &root) : &root;
    Node *t = child(dir, link + base, n - base);
    if (!t) die("a hard link to an entry not listed before it", NULL);
    if (t->target) t = t->target;
    if (t == e) die("a hard link to itself", NULL);
    if (S_ISDIR(t->mode)) die("a hard link to a directory", NULL);
    if (t->nlink == UINT32_MAX) die("too many hard links", NULL);
    t->nlink++;
    e->target = t;
}

/* One entry whose header is h (its PAX records, if any, in pax). */
static void entry(const unsigned char *h) {
    char name[101], linkname[101];
    memcpy(name, h, 100);
    name[100] = 0;
    memcpy(linkname, h + 157, 100);
    linkname[100] = 0;
    if (memcmp(h + 257, "ustar\0" "00", 8) != 0) die("not a ustar header", NULL);
    if (h[345]) die("a ustar prefix (the converter writes none)", NULL);
    const char *path = pax.has_path ? pax.path : name;
    size_t plen = pax.has_path ? pax.path_n : strlen(name);
    if (memchr(path, 0, plen)) die("bad path", "a NUL byte");
    const char *link = pax.has_link ? pax.link : linkname;
    size_t llen = pax.has_link ? pax.link_n : strlen(linkname);
    uint64_t size = pax.has_size ? pax.size : field_octal(h + 124, 12, "size");
    uint64_t mtime = field_octal(h + 136, 12, "mtime");
    char typ = (char)h[156];
    if (typ == 'g') die("a global PAX header (the converter writes none)", NULL);
    if (size && typ != '0' && typ != 0) die("data on an entry that is not a file", NULL);
    if (node_count == UINT32_MAX - 1) die("too many entries", NULL);
    Node *e = add_node(path, plen);
    e->uid = owner(h + 108, "uid");
    e->gid = owner(h + 116, "gid");
    e->mtime = mtime > UINT32_MAX ? UINT32_MAX : (uint32_t)mtime;
    uint32_t perm = (uint32_t)field_octal(h + 100, 8, "mode") & 07777;
    if (typ == '1') {
        if (pax.nx) die("xattrs on a hard link", NULL);
        hard_link(e, link, llen);
        return;
    }
    node_count++;
    e->xattr = xattrs_of_entry();
    switch (typ) {
    case '0':
    case 0:
        e->mode = S_IFREG | perm;
        e->inode = file_data(size);
        break;
    case '2':
        if (llen == 0 || memchr(link, 0, llen)) die("bad symlink target", NULL);
        e->mode = S_IFLNK | perm;
        e->symlink = dup_n(link, llen);
        break;
    case '3':
        if (field_octal(h + 329, 8, "devmajor") || field_octal(h + 337, 8, "devminor"))
            die("a device that is not a whiteout (0/0)", NULL);
        e->mode = S_IFCHR | perm;
        break;
    case '5':
        e->mode = S_IFDIR | perm;
        e->nlink = 2;
        e->parent->subdirs++;
        break;
    case '6':
        e->mode = S_IFIFO | perm;
        break;
    default:
        die("an entry type the converter does not write", NULL);
    }
}

/* The whole tar: entries up to the end-of-archive blocks. */
static void read_tar(void) {
    unsigned char h[TAR_BLOCK];
    for (;;) {
        read_exact(h, TAR_BLOCK);
        if (all_zero(h)) {
            read_exact(h, TAR_BLOCK);
            if (!all_zero(h)) die("data after an end-of-archive block", NULL);
            if (pax.has_path || pax.has_link || pax.has_size || pax.nx) die("a PAX header ends the tar", NULL);
            return;
        }
        header_sum(h);
        if (h[156] == 'x') {
            read_pax(field_octal(h + 124, 12, "size"));
            continue;
        }
        entry(h);
        clear_pax();
    }
}

/* -------------------------------------------------------------------- the image */

static sqfs_meta_writer_t *im, *dm;
static sqfs_dir_writer_t *dirwr;
static uint32_t next_ino;

static int by_name(const void *a, const void *b) {
    return strcmp((*(Node *const *)a)->name, (*(Node *const *)b)->name);
}

/* A directory's children sorted by name (the order the kernel looks names up in). */
static void sort_children(Node *d) {
    size_t k = 0;
    for (Node *c = d->first; c; c = c->next) k++;
    if (k < 2) return;
    Node **kids = malloc(k * sizeof *kids);
    if (!kids) die("out of memory", NULL);
    k = 0;
    for (Node *c = d->first; c; c = c->next) kids[k++] = c;
    qsort(kids, k, sizeof *kids, by_name);
    for (size_t i = 0; i < k; i++) kids[i]->next = i + 1 < k ? kids[i + 1] : NULL;
    d->first = kids[0];
    free(kids);
}

/* Children sorted, and inode numbers given in post-order (children before their directory, the
 * root last), as tar2sqfs does. Recursion bounded by MAX_DEPTH. */
static void number(Node *d) {
    sort_children(d);
    for (Node *c = d->first; c; c = c->next) {
        if (c->target) continue;
        if (S_ISDIR(c->mode)) number(c);
        else c->ino = ++next_ino;
    }
    d->ino = ++next_ino;
}

static sqfs_inode_generic_t *leaf_inode(Node *n) {
    size_t extra = n->symlink ? strlen(n->symlink) : 0;
    sqfs_inode_generic_t *inode = calloc(1, sizeof *inode + extra);
    if (!inode) die("out of memory", NULL);
    switch (n->mode & S_IFMT) {
    case S_IFLNK:
        inode->base.type = SQFS_INODE_SLINK;
        inode->data.slink.nlink = n->nlink;
        inode->data.slink.target_size = (sqfs_u32)extra;
        inode->payload_bytes_available = inode->payload_bytes_used = (sqfs_u32)extra;
        memcpy(inode->extra, n->symlink, extra);
        break;
    case S_IFCHR:
        inode->base.type = SQFS_INODE_CDEV;
        inode->data.dev.nlink = n->nlink;
        break;
    default: /* S_IFIFO */
        inode->base.type = SQFS_INODE_FIFO;
        inode->data.ipc.nlink = n->nlink;
        break;
    }
    return inode;
}

static void put_inode(Node *n, sqfs_inode_generic_t *inode) {
    inode->base.mode = (sqfs_u16)n->mode;
    inode->base.mod_time = n->mtime;
    inode->base.inode_number = n->ino;
    check(sqfs_inode_set_xattr_index(inode, n->xattr), "an inode's xattrs");
    if (n->xattr == NO_XATTR && !S_ISDIR(n->mode)) check(sqfs_inode_make_basic(inode), "an inode");
    check(sqfs_id_table_id_to_index(idtbl, n->uid, &inode->base.uid_idx), "the id table");
    check(sqfs_id_table_id_to_index(idtbl, n->gid, &inode->base.gid_idx), "the id table");
    sqfs_u64 block;
    sqfs_u32 offset;
    sqfs_meta_writer_get_position(im, &block, &offset);
    n->ref = block << 16 | offset;
    check(sqfs_meta_writer_write_inode(im, inode), "an inode");
    n->written = 1;
}

static void write_leaf(Node *n) {
    if (S_ISREG(n->mode)) {
        sqfs_inode_generic_t *inode = n->inode;
        n->inode = NULL;
        if (n->nlink > 1) {
            check(sqfs_inode_make_extended(inode), "an inode");
            inode->data.file_ext.nlink = n->nlink;
        }
        put_inode(n, inode);
        free(inode);
        return;
    }
    sqfs_inode_generic_t *inode = leaf_inode(n);
    put_inode(n, inode);
    free(inode);
}

/* A directory after its children (post-order, recursion bounded by MAX_DEPTH): its listing,
 * then its inode. */
static void write_dir(Node *d) {
    for (Node *c = d->first; c; c = c->next) {
        Node *t = c->target ? c->target : c;
        if (S_ISDIR(t->mode)) write_dir(t);
        else if (!t->written) write_leaf(t); /* a hard link's target may sit in a later directory */
    }
    check(sqfs_dir_writer_begin(dirwr, 0), "a directory");
    for (Node *c = d->first; c; c = c->next) {
        Node *t = c->target ? c->target : c;
        check(sqfs_dir_writer_add_entry(dirwr, c->name, t->ino, t->ref, (sqfs_u16)t->mode), "a directory entry");
    }
    check(sqfs_dir_writer_end(dirwr), "a directory");
    sqfs_u32 parent = d == &root ? 0 : d->parent->ino;
    sqfs_inode_generic_t *inode = sqfs_dir_writer_create_inode(dirwr, 0, d->xattr, parent);
    if (!inode) die("out of memory", NULL);
    uint32_t nlink = 2 + d->subdirs;
    if (inode->base.type == SQFS_INODE_DIR) inode->data.dir.nlink = nlink;
    else inode->data.dir_ext.nlink = nlink;
    put_inode(d, inode);
    free(inode);
}

static void pad_image(void) {
    static const unsigned char zero[SQFS_DEVBLK_SIZE];
    sqfs_u64 size = out->get_size(out);
    size_t n = (SQFS_DEVBLK_SIZE - size % SQFS_DEVBLK_SIZE) % SQFS_DEVBLK_SIZE;
    if (n) check(out->write_at(out, size, zero, n), "padding the image");
}

/* Data done: inodes and directories, the tables, the superblock last. */
static void finish_image(void) {
    flush_fragments();
    im = sqfs_meta_writer_create(out, cmp, 0);
    dm = sqfs_meta_writer_create(out, cmp, SQFS_META_WRITER_KEEP_IN_MEMORY);
    if (!im || !dm) die("out of memory", NULL);
    dirwr = sqfs_dir_writer_create(dm, 0);
    if (!dirwr) die("out of memory", NULL);
    number(&root);
    super.inode_count = next_ino;
    super.inode_table_start = out->get_size(out);
    write_dir(&root);
    check(sqfs_meta_writer_flush(im), "the inode table");
    check(sqfs_meta_writer_flush(dm), "the directory table");
    super.root_inode_ref = root.ref;
    super.directory_table_start = out->get_size(out);
    check(sqfs_meta_write_write_to_file(dm), "the directory table");
    check(sqfs_frag_table_write(fragtbl, out, &super, cmp), "the fragment table");
    check(sqfs_id_table_write(idtbl, out, &super, cmp), "the id table");
    check(sqfs_xattr_writer_flush(xwr, out, &super, cmp), "the xattr table");
    super.bytes_used = out->get_size(out);
    check(sqfs_super_write(&super, out), "the superblock");
    pad_image();
}

/* ------------------------------------------------------------------ confinement */

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no seccomp filter for this architecture"
#endif

/* What writing the image takes once its file is open (strace over the tests' tars: read,
 * pwrite64, brk, mmap, munmap; write for its one line on stderr): reading stdin, writing the
 * image and stderr, its own memory (mmap never with PROT_EXEC), exit. Nothing that names a
 * path (open, exec, link, unlink, stat...), no new process. Anything else: EPERM. */
static const int ALLOWED[] = {
    SYS_read, SYS_write, SYS_pwrite64, SYS_close, SYS_munmap, SYS_mremap, SYS_brk, SYS_madvise,
    SYS_futex, SYS_rt_sigreturn, SYS_exit, SYS_exit_group,
};

static void confine_writer(void) {
    if (confine(CONFINE_CONVERTER) != 0) die("seccomp", strerror(errno));
    struct sock_filter f[64];
    unsigned n = 0, k = sizeof ALLOWED / sizeof ALLOWED[0];
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    /* mmap: allowed unless executable (prot, the third argument's low word) */
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mmap, 0, 4);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2]));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    for (unsigned i = 0; i < k; i++) /* a match jumps to the allow at the end */
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)ALLOWED[i], (unsigned char)(k - i), 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) die("seccomp", strerror(errno));
}

/* ------------------------------------------------------------------------- main */

static void usage(void) {
    die("usage", "warren-layer-sqfs [--compress lz4|none] IMAGE < converted.tar");
}

int main(int argc, char **argv) {
    int compress = 1, a = 1;
    for (; a < argc - 1; a += 2) {
        if (strcmp(argv[a], "--compress") == 0 && strcmp(argv[a + 1], "lz4") == 0) compress = 1;
        else if (strcmp(argv[a], "--compress") == 0 && strcmp(argv[a + 1], "none") == 0) compress = 0;
        else usage();
    }
    if (a != argc - 1 || argv[a][0] == 0) usage();
    open_image(argv[a], compress);
    confine_writer();
    grow();
    read_tar();
    finish_image();
    return 0;
}
