/* warren-layer-sqfs: the tar side (layer_sqfs_tar.c: input, headers, PAX records) and what
 * layer_sqfs.c (the tree and the image) shares with it. */
#ifndef WARREN_LAYER_SQFS_H
#define WARREN_LAYER_SQFS_H

#include <stddef.h>
#include <stdint.h>

#include "layer_convert.h" /* MAX_NAME */

#define TAR_BLOCK 512
#define IN_SIZE (1 << 20)
#define MAX_PAX (64 << 10) /* a PAX record set: a path, a link and a few xattrs */
#define MAX_XATTRS 16      /* per entry */
#define MAX_LINK 4096      /* a symlink's target */

/* A refusal or failure: one line on stderr, exit status 1. */
void die(const char *what, const char *detail) __attribute__((noreturn));
/* die(what) unless err (a libsquashfs status) is 0. */
void check(int err, const char *what);
char *dup_n(const char *s, size_t n);

/* stdin, read in IN_SIZE reads: a short input is refused ("truncated tar"). */
void read_exact(void *dst, size_t n);
const unsigned char *take(size_t n);
void skip(uint64_t n);
uint64_t padding(uint64_t size);

uint64_t field_octal(const unsigned char *f, size_t n, const char *what);
uint32_t owner(const unsigned char *f, const char *what);
void header_sum(const unsigned char *h);
int all_zero(const unsigned char *h);

/* What a PAX header set for the entry after it. */
typedef struct {
    char path[MAX_NAME + 1], link[MAX_LINK + 1];
    size_t path_n, link_n;
    int has_path, has_link, has_size;
    uint64_t size;
    unsigned nx;
    char *xkey[MAX_XATTRS];
    unsigned char *xval[MAX_XATTRS];
    size_t xlen[MAX_XATTRS];
} Pax;
extern Pax pax;
void clear_pax(void);
void read_pax(uint64_t size);

#endif
