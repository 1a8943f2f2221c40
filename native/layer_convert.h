/* What native/layer_convert.c and native/tar_fmt.c share (see layer_convert.c). */
#ifndef WARREN_LAYER_CONVERT_H
#define WARREN_LAYER_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#define BLOCK 512
#define INBUF (1 << 20)
#define OUTBUF (1 << 20)
#define MAX_META (1 << 20)
#define MAX_NAME 4096
#define MAX_COMPONENT 255
#define MAX_DEPTH 256
#define MAX_ID 65535
#define MAX_MEMBERS 1000000
#define KEY_CELLS 16
#define MAX_NAME_CELLS (32u << 20)
#define IMPLIED_PER_MEMBER 4
#define IMPLIED_FREE 16384
#define MAX_MTIME_S (1ULL << 33) /* tarfmt.MAX_MTIME_NS in seconds */
#define OCT11 (1ULL << 33)       /* 8**11 */
#define OCT7 (1ULL << 21)        /* 8**7 */

extern int in_fd, out_fd, result_fd;
extern uint64_t uid_base, limit;

/* layer_convert.c */
void put_result(const char *s);
/* seccomp.c: the deny-list of the converter's processes (CONFINE_CONVERTER: no exec, no new
 * process; a program stacks its own allow-list on it) or of tar2sqfs (CONFINE_PACKER, installed
 * before its exec: execve and threads kept); confine_converter: the compiled converter's own
 * allow-list (reads of in, writes of out and result, splice in -> out, its memory, exit).
 * 0, or -1 with errno. */
#define CONFINE_CONVERTER 1
#define CONFINE_PACKER 2
int confine(int kind);
int confine_converter(int in, int out, int result);
void decline(const char *why) __attribute__((noreturn));

/* tar_fmt.c: the output */
extern const unsigned char ZERO[BLOCK];
void write_all(const unsigned char *p, size_t n);
void flush_out(void);
void emit(const void *p, size_t n);
void out_init(void);
void header_x(const char *path, size_t plen, char typ, uint64_t mode, uint64_t uid, uint64_t gid,
              uint64_t size, uint64_t mtime, const char *link, size_t llen, int opaque);
void header(const char *path, size_t plen, char typ, uint64_t mode, uint64_t uid, uint64_t gid,
            uint64_t size, uint64_t mtime, const char *link, size_t llen);

/* tar_fmt.c: numbers and PAX records in */
uint64_t octal(const unsigned char *f, size_t n);
int decimal(const unsigned char *p, size_t n, uint64_t *out);
void check_sum(const unsigned char *blk);
typedef struct {
    unsigned char *p;
    size_t n;
    int set;
} Bytes;
extern Bytes pax_path, pax_link, pax_size, pax_uid, pax_gid, pax_mtime;
void clear_meta(void);
void parse_pax(const unsigned char *d, size_t n);
uint64_t pax_mtime_s(const Bytes *b);

#endif
