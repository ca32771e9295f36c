/* LD_PRELOAD shim for the clock and disk nemeses (libfaketime breaks Python 3.11 here).
 *
 * Interposes clock_gettime (CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_REALTIME)
 * and fsync / fdatasync / msync. The state lives in the text file named by
 * CHAOS_FAULT_FILE, re-read at most every 5 ms of real time:
 *
 *     rate anchor_ns mono_offset_ns real_offset_ns fail_sync
 *
 *   fake(t) = t + (t - anchor) * (rate - 1) + offset      (t: the real clock)
 *
 * monotonic and boottime use mono_offset (the server's consensus ticks follow
 * CLOCK_BOOTTIME, asyncio's and gRPC's timers CLOCK_MONOTONIC: both must move
 * together), realtime real_offset (the realtime drift is measured against the
 * real monotonic clock). The five values are published under a sequence
 * counter, so a thread never combines a new rate with an old anchor or offset
 * (which would read as a jump of the whole accumulated offset). fail_sync = 1 makes every
 * fsync/fdatasync/msync fail with EIO. Sleeps are untouched: only what the
 * process reads as "now" changes. A deadline the process computed from its
 * faked clock is turned back into the real clock before the kernel sees it
 * (the kernel sleeps on the real one), so time.sleep(0.1) still sleeps 0.1 s
 * after a step of +60 s instead of 60.1 s, and not 0 s after a step back. chaos/nemesis.py writes the file so that
 * the fake clocks stay continuous when the rate changes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_msync)(void *, size_t, int);

static volatile double g_rate = 1.0;
static volatile int64_t g_anchor, g_mono_off, g_real_off;
static volatile int g_fail_sync;
static volatile unsigned g_seq;
static volatile int g_writing; /* one thread refreshes at a time */ /* odd while the values above are being written */
static volatile int64_t g_next_check;
static __thread int t_busy;

#define CHECK_EVERY_NS 5000000LL

static int64_t ns_of(const struct timespec *ts) { return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec; }

static void resolve(void) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
}

static void refresh(int64_t now_mono) {
    if (now_mono < g_next_check || t_busy) return;
    g_next_check = now_mono + CHECK_EVERY_NS;
    const char *path = getenv("CHAOS_FAULT_FILE");
    if (!path) return;
    if (__atomic_exchange_n(&g_writing, 1, __ATOMIC_ACQUIRE)) return; /* another thread reads it now */
    t_busy = 1;
    FILE *f = fopen(path, "r");
    if (f) {
        double rate; long long anchor, mono_off, real_off; int fail;
        if (fscanf(f, "%lf %lld %lld %lld %d", &rate, &anchor, &mono_off, &real_off, &fail) == 5) {
            __atomic_add_fetch(&g_seq, 1, __ATOMIC_SEQ_CST);
            g_rate = rate; g_anchor = anchor; g_mono_off = mono_off; g_real_off = real_off; g_fail_sync = fail;
            __atomic_add_fetch(&g_seq, 1, __ATOMIC_SEQ_CST);
        }
        fclose(f);
    }
    t_busy = 0;
    __atomic_store_n(&g_writing, 0, __ATOMIC_RELEASE);
}

int clock_gettime(clockid_t clk, struct timespec *tp) {
    resolve();
    if (clk != CLOCK_MONOTONIC && clk != CLOCK_BOOTTIME && clk != CLOCK_REALTIME)
        return real_clock_gettime(clk, tp);
    struct timespec mono;
    int rc = real_clock_gettime(CLOCK_MONOTONIC, &mono);
    if (rc) return rc;
    int64_t m = ns_of(&mono);
    refresh(m);
    double rate;
    int64_t anchor, mono_off, real_off;
    unsigned seq;
    do { /* a consistent snapshot of the five values */
        seq = __atomic_load_n(&g_seq, __ATOMIC_SEQ_CST);
        rate = g_rate; anchor = g_anchor; mono_off = g_mono_off; real_off = g_real_off;
    } while ((seq & 1) || seq != __atomic_load_n(&g_seq, __ATOMIC_SEQ_CST));
    int64_t drift = (int64_t)((double)(m - anchor) * (rate - 1.0));
    int64_t v;
    if (clk == CLOCK_MONOTONIC) {
        v = m + drift + mono_off;
    } else {
        struct timespec base;
        rc = real_clock_gettime(clk, &base);
        if (rc) return rc;
        v = ns_of(&base) + drift + (clk == CLOCK_BOOTTIME ? mono_off : real_off);
    }
    tp->tv_sec = v / 1000000000LL;
    tp->tv_nsec = v % 1000000000LL;
    return 0;
}

/* The real deadline for an absolute deadline on the faked clock clk. */
static void to_real(clockid_t clk, const struct timespec *fake, struct timespec *out) {
    *out = *fake;
    if (clk != CLOCK_MONOTONIC && clk != CLOCK_BOOTTIME && clk != CLOCK_REALTIME) return;
    struct timespec now_fake, now_real;
    resolve();
    if (clock_gettime(clk, &now_fake) || real_clock_gettime(clk, &now_real)) return;
    int64_t v = ns_of(fake) - (ns_of(&now_fake) - ns_of(&now_real));
    if (v < 0) v = 0;
    out->tv_sec = v / 1000000000LL;
    out->tv_nsec = v % 1000000000LL;
}

int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem) {
    static int (*real_fn)(clockid_t, int, const struct timespec *, struct timespec *);
    if (!real_fn) real_fn = dlsym(RTLD_NEXT, "clock_nanosleep");
    if (!(flags & TIMER_ABSTIME)) return real_fn(clk, flags, req, rem);
    struct timespec deadline;
    to_real(clk, req, &deadline);
    return real_fn(clk, flags, &deadline, rem);
}

int sem_clockwait(sem_t *sem, clockid_t clk, const struct timespec *abstime) {
    static int (*real_fn)(sem_t *, clockid_t, const struct timespec *);
    if (!real_fn) real_fn = dlsym(RTLD_NEXT, "sem_clockwait");
    struct timespec deadline;
    to_real(clk, abstime, &deadline);
    return real_fn(sem, clk, &deadline);
}

int sem_timedwait(sem_t *sem, const struct timespec *abstime) {
    static int (*real_fn)(sem_t *, const struct timespec *);
    if (!real_fn) real_fn = dlsym(RTLD_NEXT, "sem_timedwait");
    struct timespec deadline;
    to_real(CLOCK_REALTIME, abstime, &deadline);
    return real_fn(sem, &deadline);
}

int pthread_cond_clockwait(pthread_cond_t *cond, pthread_mutex_t *mutex, clockid_t clk,
                           const struct timespec *abstime) {
    static int (*real_fn)(pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *);
    if (!real_fn) real_fn = dlsym(RTLD_NEXT, "pthread_cond_clockwait");
    struct timespec deadline;
    to_real(clk, abstime, &deadline);
    return real_fn(cond, mutex, clk, &deadline);
}

int pthread_cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *mutex, const struct timespec *abstime) {
    static int (*real_fn)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
    if (!real_fn) real_fn = dlsym(RTLD_NEXT, "pthread_cond_timedwait");
    /* glibc keeps the condition's clock in bit 0 of __wrefs (1: CLOCK_MONOTONIC) */
    clockid_t clk = (cond->__data.__wrefs & 1) ? CLOCK_MONOTONIC : CLOCK_REALTIME;
    struct timespec deadline;
    to_real(clk, abstime, &deadline);
    return real_fn(cond, mutex, &deadline);
}

static int sync_fails(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* refreshes the state */
    return g_fail_sync;
}

int fsync(int fd) {
    if (!real_fsync) real_fsync = dlsym(RTLD_NEXT, "fsync");
    if (sync_fails()) { errno = EIO; return -1; }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (!real_fdatasync) real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    if (sync_fails()) { errno = EIO; return -1; }
    return real_fdatasync(fd);
}

int msync(void *addr, size_t len, int flags) {
    if (!real_msync) real_msync = dlsym(RTLD_NEXT, "msync");
    if (sync_fails()) { errno = EIO; return -1; }
    return real_msync(addr, len, flags);
}
