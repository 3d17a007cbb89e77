/* LD_PRELOAD shim for h2load: every request body it reads is a distinct request.
 *
 * h2load sends one file (-d) as every request's body, reading it with pread at offset 0
 * for each request. This shim counts those reads of the file named by FENLIU_H2_BODY and
 * writes the count into the bytes it returns, as fixed-width decimals at the offsets the
 * harness gives (bench/cpu.py builds the template):
 *
 *   FENLIU_H2_REQ_OFF    request_id digits (10): the count        -> no retry, ever
 *   FENLIU_H2_BUYER_OFF  buyer_id digits (10): the count, or the count modulo
 *                        FENLIU_H2_BUYERS when set (messages of already open sessions)
 *   FENLIU_H2_SHOP_OFF   shop_id digits (3): the count modulo FENLIU_H2_SHOPS
 *   FENLIU_H2_START      the first count (default 0)
 *
 * Build: cc -O2 -shared -fPIC -o h2distinct.so h2distinct.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static atomic_long counter = -1;
static int body_fd = -1;
static long req_off = -1, buyer_off = -1, shop_off = -1, buyers = 0, shops = 1;

static long env(const char *name, long fallback) {
    const char *v = getenv(name);
    return v ? atol(v) : fallback;
}

static int is_body(int fd) {
    if (fd == body_fd) return 1;
    const char *want = getenv("FENLIU_H2_BODY");
    if (!want) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) return 0;
    target[n] = 0;
    if (strcmp(target, want) != 0) return 0;
    body_fd = fd;
    req_off = env("FENLIU_H2_REQ_OFF", -1);
    buyer_off = env("FENLIU_H2_BUYER_OFF", -1);
    shop_off = env("FENLIU_H2_SHOP_OFF", -1);
    buyers = env("FENLIU_H2_BUYERS", 0);
    shops = env("FENLIU_H2_SHOPS", 1);
    long start = env("FENLIU_H2_START", 0);
    long expected = -1;
    atomic_compare_exchange_strong(&counter, &expected, start);
    return 1;
}

static void digits(char *at, int width, long value) {
    for (int i = width - 1; i >= 0; i--) {
        at[i] = (char)('0' + value % 10);
        value /= 10;
    }
}

static void patch(void *buf, ssize_t got) {
    long n = atomic_fetch_add(&counter, 1);
    char *b = buf;
    if (req_off >= 0 && req_off + 10 <= got) digits(b + req_off, 10, n);
    if (buyer_off >= 0 && buyer_off + 10 <= got) digits(b + buyer_off, 10, buyers ? n % buyers : n);
    if (shop_off >= 0 && shop_off + 3 <= got) digits(b + shop_off, 3, n % shops);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pread");
    ssize_t got = real(fd, buf, count, offset);
    if (got > 0 && offset == 0 && is_body(fd)) patch(buf, got);
    return got;
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real) real = dlsym(RTLD_NEXT, "pread64");
    ssize_t got = real(fd, buf, count, offset);
    if (got > 0 && offset == 0 && is_body(fd)) patch(buf, got);
    return got;
}
