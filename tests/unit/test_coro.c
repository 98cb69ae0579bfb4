/* test_coro.c - unit tests for service/coro.c (coroutines and stack pools). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coro.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#define KIB ((size_t)1024)

/* Offset of the low 32 bits of a syscall's third argument, for seccomp. */
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ARG2_LOW (offsetof(struct seccomp_data, args[2]) + 4)
#else
#define ARG2_LOW offsetof(struct seccomp_data, args[2])
#endif

static size_t page_size(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

/* An address on the running stack, for tests that look at stack layout: the
 * frame address, because ASan may move locals to a heap "fake stack". */
#define STACK_HERE() ((char *)__builtin_frame_address(0))

/* Uses stack until `want` bytes lie between `top` and the deepest frame.
 * Frames stay far below a page, so every page on the way is written: a guard
 * page cannot be stepped over. */
static __attribute__((noinline)) size_t dig(const char *top, size_t want)
{
    volatile char pad[128];
    ptrdiff_t used;

    pad[0] = 1;
    used = (ptrdiff_t)((uintptr_t)top - (uintptr_t)STACK_HERE());
    if (used >= (ptrdiff_t)want)
        return pad[0];
    return dig(top, want) + pad[0];
}

/* ------------------------------------------------------------ ping-pong */

typedef struct {
    char log[32];
    size_t n;
    tb__coro *self_inside;
} pingpong;

static void pingpong_entry(void *arg)
{
    pingpong *pp = arg;

    pp->self_inside = tb__coro_self();
    pp->log[pp->n++] = 'a';
    tb__coro_yield("test");
    pp->log[pp->n++] = 'b';
    tb__coro_yield("test");
    pp->log[pp->n++] = 'c';
}

static void test_ping_pong_order(void **state)
{
    (void)state;
    tb__stack_pool *pool = tb__stack_pool_new(0, 4);
    pingpong pp = {{0}, 0, NULL};
    tb__coro *co;

    assert_non_null(pool);
    co = tb__coro_new(pool, pingpong_entry, &pp);
    assert_non_null(co);
    /* Taking a coroutine does not start it. */
    assert_int_equal(pp.n, 0);
    assert_null(tb__coro_self());

    pp.log[pp.n++] = '1';
    assert_int_equal(tb__coro_resume(co), 0);
    assert_null(tb__coro_self());
    pp.log[pp.n++] = '2';
    assert_int_equal(tb__coro_resume(co), 0);
    pp.log[pp.n++] = '3';
    assert_int_equal(tb__coro_resume(co), 1);
    pp.log[pp.n] = '\0';

    assert_string_equal(pp.log, "1a2b3c");
    assert_ptr_equal(pp.self_inside, co);
    assert_null(tb__coro_self());
    tb__coro_free(co);
    tb__stack_pool_free(pool);
}

/* ----------------------------------------------------- arg and data */

typedef struct {
    void *arg_seen;
    void *data_seen;
} argdata;

static void argdata_entry(void *arg)
{
    argdata *ad = arg;
    tb__coro *self = tb__coro_self();

    ad->arg_seen = arg;
    ad->data_seen = tb__coro_get_data(self);
    tb__coro_yield("test");
    /* Data set from inside is visible to the resumer. */
    tb__coro_set_data(self, &ad->data_seen);
}

static void test_entry_arg_and_data(void **state)
{
    (void)state;
    tb__stack_pool *pool = tb__stack_pool_new(0, 4);
    argdata ad = {NULL, NULL};
    int marker;
    tb__coro *co;

    co = tb__coro_new(pool, argdata_entry, &ad);
    assert_null(tb__coro_get_data(co));
    tb__coro_set_data(co, &marker);
    assert_ptr_equal(tb__coro_get_data(co), &marker);
    assert_int_equal(tb__coro_resume(co), 0);
    assert_ptr_equal(ad.arg_seen, &ad);
    assert_ptr_equal(ad.data_seen, &marker);
    assert_int_equal(tb__coro_resume(co), 1);
    assert_ptr_equal(tb__coro_get_data(co), &ad.data_seen);
    tb__coro_free(co);

    /* A reused coroutine starts with no data. */
    co = tb__coro_new(pool, argdata_entry, &ad);
    assert_null(tb__coro_get_data(co));
    tb__coro_free(co);
    tb__stack_pool_free(pool);
}

/* ------------------------------------------------------------ finished */

static void count_entry(void *arg)
{
    ++*(int *)arg;
}

static void yield_n_entry(void *arg)
{
    int *left = arg;

    while (*left > 0) {
        --*left;
        tb__coro_yield("test");
    }
}

static void test_finished_returns_one(void **state)
{
    (void)state;
    tb__stack_pool *pool = tb__stack_pool_new(0, 4);
    int runs = 0, left = 3;
    tb__coro *co;

    co = tb__coro_new(pool, count_entry, &runs);
    assert_int_equal(tb__coro_resume(co), 1);
    assert_int_equal(runs, 1);
    tb__coro_free(co);

    co = tb__coro_new(pool, yield_n_entry, &left);
    for (int i = 0; i < 3; i++)
        assert_int_equal(tb__coro_resume(co), 0);
    assert_int_equal(left, 0);
    assert_int_equal(tb__coro_resume(co), 1);
    tb__coro_free(co);
    tb__stack_pool_free(pool);
}

/* --------------------------------------------------------------- reuse */

static void test_reuse_runs_new_entry(void **state)
{
    (void)state;
    /* keep_resident 0 sends the freed stack back to the kernel, so reuse
     * has to start it again; 8 keeps it, so reuse goes through the parked
     * trampoline. Both must run the new entry exactly once. */
    static const size_t keeps[] = {0, 8};

    for (size_t k = 0; k < sizeof keeps / sizeof keeps[0]; k++) {
        tb__stack_pool *pool = tb__stack_pool_new(32 * KIB, keeps[k]);
        int runs_a = 0, runs_b = 0, left;
        tb__coro **all, *co;
        size_t slab;

        assert_non_null(pool);
        assert_int_equal(tb__stack_pool_mapped(pool), 0);
        co = tb__coro_new(pool, yield_n_entry, &left);
        slab = tb__stack_pool_mapped(pool);
        assert_true(slab >= 1);
        tb__coro_free(co);

        /* Hold every mapped stack, so any new one must come from a free. */
        all = calloc(slab, sizeof *all);
        assert_non_null(all);
        for (size_t i = 0; i < slab; i++) {
            all[i] = tb__coro_new(pool, count_entry, &runs_a);
            assert_non_null(all[i]);
        }
        assert_int_equal(tb__stack_pool_mapped(pool), slab);
        assert_int_equal(tb__coro_resume(all[0]), 1);
        assert_int_equal(runs_a, 1);
        tb__coro_free(all[0]);
        /* Trimming gives back what is beyond keep_resident: with 0, this
         * stack, which must then start from scratch. */
        assert_int_equal(tb__stack_pool_trim(pool, SIZE_MAX),
                         keeps[k] == 0 ? 1 : 0);
        assert_int_equal(tb__stack_pool_excess(pool), 0);

        all[0] = tb__coro_new(pool, count_entry, &runs_b);
        assert_int_equal(tb__stack_pool_mapped(pool), slab);
        assert_int_equal(tb__coro_resume(all[0]), 1);
        assert_int_equal(runs_a, 1);
        assert_int_equal(runs_b, 1);

        /* Many rounds on one stack: no growth, each entry runs once, and
         * entries that yield work after reuse too. */
        tb__coro_free(all[0]);
        for (int round = 0; round < 2000; round++) {
            left = round % 3;
            co = tb__coro_new(pool, yield_n_entry, &left);
            for (int i = 0; i < round % 3; i++)
                assert_int_equal(tb__coro_resume(co), 0);
            assert_int_equal(tb__coro_resume(co), 1);
            assert_int_equal(left, 0);
            tb__coro_free(co);
            if (round % 7 == 0)
                tb__stack_pool_trim(pool, SIZE_MAX);
        }
        assert_int_equal(tb__stack_pool_mapped(pool), slab);

        for (size_t i = 1; i < slab; i++)
            tb__coro_free(all[i]);
        free(all);
        tb__stack_pool_free(pool);
    }
}

/* ------------------------------------------------------ many suspended */

#define MANY 1000
#define MANY_STEPS 3

typedef struct {
    int id;
    int steps;
    int bad;
    char *stack;
} job;

static void job_entry(void *arg)
{
    job *j = arg;

    j->stack = STACK_HERE();
    for (int i = 0; i < MANY_STEPS; i++) {
        /* Counted, not asserted: a failing cmocka assert would jump off
         * this stack and leave the coroutine running. */
        if (tb__coro_get_data(tb__coro_self()) != j)
            j->bad++;
        j->steps++;
        tb__coro_yield("test");
    }
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (char *const *)a;
    uintptr_t y = (uintptr_t) * (char *const *)b;

    return x < y ? -1 : x > y;
}

static void test_many_suspended(void **state)
{
    (void)state;
    tb__stack_pool *pool = tb__stack_pool_new(16 * KIB, 16);
    job *jobs = calloc(MANY, sizeof *jobs);
    tb__coro **cos = calloc(MANY, sizeof *cos);
    char **stacks = calloc(MANY, sizeof *stacks);
    size_t size = tb__stack_pool_stack_size(pool);

    assert_non_null(jobs);
    assert_non_null(cos);
    assert_non_null(stacks);
    for (int i = 0; i < MANY; i++) {
        jobs[i].id = i;
        cos[i] = tb__coro_new(pool, job_entry, &jobs[i]);
        assert_non_null(cos[i]);
        tb__coro_set_data(cos[i], &jobs[i]);
    }
    assert_true(tb__stack_pool_mapped(pool) >= MANY);

    /* Round-robin, so all MANY are suspended at once between rounds. */
    for (int step = 1; step <= MANY_STEPS; step++) {
        for (int i = 0; i < MANY; i++)
            assert_int_equal(tb__coro_resume(cos[i]), 0);
        for (int i = 0; i < MANY; i++) {
            assert_int_equal(jobs[i].steps, step);
            assert_int_equal(jobs[i].bad, 0);
        }
    }
    for (int i = 0; i < MANY; i++)
        assert_int_equal(tb__coro_resume(cos[i]), 1);

    /* Every live coroutine had a stack of its own, at least a full stack
     * size away from the next. */
    for (int i = 0; i < MANY; i++)
        stacks[i] = jobs[i].stack;
    qsort(stacks, MANY, sizeof *stacks, cmp_ptr);
    for (int i = 1; i < MANY; i++)
        assert_true((uintptr_t)stacks[i] - (uintptr_t)stacks[i - 1] >= size);

    for (int i = 0; i < MANY; i++)
        tb__coro_free(cos[i]);
    free(stacks);
    free(cos);
    free(jobs);
    tb__stack_pool_free(pool);
}

/* ----------------------------------------------------- free suspended */

typedef struct {
    int before;
    int after;
} halves;

static void halves_entry(void *arg)
{
    halves *h = arg;

    h->before++;
    tb__coro_yield("test");
    h->after++;
}

static void test_free_suspended(void **state)
{
    (void)state;
    static const size_t keeps[] = {0, 1000};

    for (size_t k = 0; k < sizeof keeps / sizeof keeps[0]; k++) {
        tb__stack_pool *pool = tb__stack_pool_new(0, keeps[k]);
        tb__coro *first = tb__coro_new(pool, count_entry, NULL);
        size_t slab = tb__stack_pool_mapped(pool);
        tb__coro **cos = calloc(slab, sizeof *cos);
        halves *old = calloc(slab, sizeof *old);
        halves *fresh = calloc(slab, sizeof *fresh);

        assert_non_null(cos);
        assert_non_null(old);
        assert_non_null(fresh);
        tb__coro_free(first);

        /* Suspend every mapped stack mid-entry, then abandon them all. */
        for (size_t i = 0; i < slab; i++) {
            cos[i] = tb__coro_new(pool, halves_entry, &old[i]);
            assert_int_equal(tb__coro_resume(cos[i]), 0);
        }
        for (size_t i = 0; i < slab; i++)
            tb__coro_free(cos[i]);

        /* The same stacks run new entries from the start; nothing of the
         * abandoned ones ever runs again. */
        for (size_t i = 0; i < slab; i++) {
            cos[i] = tb__coro_new(pool, halves_entry, &fresh[i]);
            assert_int_equal(tb__coro_resume(cos[i]), 0);
        }
        assert_int_equal(tb__stack_pool_mapped(pool), slab);
        for (size_t i = 0; i < slab; i++) {
            assert_int_equal(tb__coro_resume(cos[i]), 1);
            tb__coro_free(cos[i]);
        }
        for (size_t i = 0; i < slab; i++) {
            assert_int_equal(old[i].before, 1);
            assert_int_equal(old[i].after, 0);
            assert_int_equal(fresh[i].before, 1);
            assert_int_equal(fresh[i].after, 1);
        }
        free(fresh);
        free(old);
        free(cos);
        tb__stack_pool_free(pool);
    }
}

/* ---------------------------------------------------------- residency */

typedef struct {
    char *sp;
    size_t touch;
} toucher;

static void toucher_entry(void *arg)
{
    toucher *t = arg;

    t->sp = STACK_HERE();
    if (t->touch > 0)
        dig(t->sp, t->touch);
    tb__coro_yield("test");
}

/* Resident pages among the stack_size bytes that end with sp's page: the
 * whole stack when sp lies in its top page. */
static size_t resident_pages(const char *sp, size_t stack_size)
{
    size_t page = page_size();
    char *top = (char *)((uintptr_t)sp & ~(uintptr_t)(page - 1));
    char *low = top + page - stack_size;
    size_t n = stack_size / page, count = 0;
    unsigned char *vec = malloc(n);

    assert_non_null(vec);
    assert_int_equal(mincore(low, stack_size, vec), 0);
    for (size_t i = 0; i < n; i++)
        count += vec[i] & 1;
    free(vec);
    return count;
}

static void test_suspended_residency(void **state)
{
    (void)state;
    tb__stack_pool *pool = tb__stack_pool_new(256 * KIB, 0);
    size_t size = tb__stack_pool_stack_size(pool);
    toucher small = {NULL, 0}, deep = {NULL, 64 * KIB};
    tb__coro *co;
#ifdef UNDER_ASAN
    const size_t max_pages = 4; /* ASan frames carry redzones */
#else
    const size_t max_pages = 2;
#endif

    /* An idle coroutine that used little stack costs about one page. */
    co = tb__coro_new(pool, toucher_entry, &small);
    assert_int_equal(tb__coro_resume(co), 0);
    assert_true(resident_pages(small.sp, size) >= 1);
    assert_true(resident_pages(small.sp, size) <= max_pages);
    assert_int_equal(tb__coro_resume(co), 1);
    tb__coro_free(co);

    /* With keep_resident 0 a freed stack gives its pages back when the
     * pool is trimmed, not before (free stays cheap). */
    co = tb__coro_new(pool, toucher_entry, &deep);
    assert_int_equal(tb__coro_resume(co), 0);
    assert_true(resident_pages(deep.sp, size) >= 64 * KIB / page_size());
    assert_int_equal(tb__coro_resume(co), 1);
    tb__coro_free(co);
    assert_true(resident_pages(deep.sp, size) >= 64 * KIB / page_size());
    assert_int_equal(tb__stack_pool_excess(pool), 1);
    assert_int_equal(tb__stack_pool_trim(pool, 0), 0);
    assert_int_equal(tb__stack_pool_trim(pool, SIZE_MAX), 1);
    assert_int_equal(resident_pages(deep.sp, size), 0);
    tb__stack_pool_free(pool);

    /* Within keep_resident it keeps them. */
    pool = tb__stack_pool_new(256 * KIB, 1);
    co = tb__coro_new(pool, toucher_entry, &deep);
    assert_int_equal(tb__coro_resume(co), 0);
    assert_int_equal(tb__coro_resume(co), 1);
    tb__coro_free(co);
    assert_true(resident_pages(deep.sp, size) >= 64 * KIB / page_size());
    tb__stack_pool_free(pool);
}

/* --------------------------------------------------------- two threads */

#define THREAD_JOBS 16
#define THREAD_ROUNDS 20000

typedef struct {
    tb__coro *co;
    long total;
    long bad;
    long add;
} tjob;

typedef struct {
    int id;
    pthread_barrier_t *barrier;
    tjob jobs[THREAD_JOBS];
    long bad_outside;
    int failed_setup;
} tstate;

static void tjob_entry(void *arg)
{
    tjob *j = arg;

    for (int r = 0; r < THREAD_ROUNDS; r++) {
        /* A "current coroutine" shared between threads would be the other
         * thread's coroutine here sooner or later. */
        if (tb__coro_self() != j->co || tb__coro_get_data(j->co) != j)
            j->bad++;
        j->total += j->add;
        tb__coro_yield("test");
    }
}

static void *thread_main(void *arg)
{
    tstate *ts = arg;
    tb__stack_pool *pool = tb__stack_pool_new(0, THREAD_JOBS);

    if (pool == NULL) {
        ts->failed_setup = 1;
        pthread_barrier_wait(ts->barrier);
        return NULL;
    }
    for (int i = 0; i < THREAD_JOBS; i++) {
        tjob *j = &ts->jobs[i];

        j->add = (ts->id + 1) * 1000 + i;
        j->co = tb__coro_new(pool, tjob_entry, j);
        if (j->co == NULL)
            ts->failed_setup = 1;
        else
            tb__coro_set_data(j->co, j);
    }
    if (ts->failed_setup) {
        pthread_barrier_wait(ts->barrier);
        return NULL;
    }
    for (int i = 0; i < THREAD_JOBS; i++)
        tb__coro_resume(ts->jobs[i].co);
    /* Both pools now hold suspended coroutines at the same time. */
    pthread_barrier_wait(ts->barrier);
    for (int r = 1; r <= THREAD_ROUNDS; r++) {
        for (int i = 0; i < THREAD_JOBS; i++) {
            int done = tb__coro_resume(ts->jobs[i].co);

            if (done != (r == THREAD_ROUNDS))
                ts->jobs[i].bad++;
            if (tb__coro_self() != NULL)
                ts->bad_outside++;
        }
    }
    for (int i = 0; i < THREAD_JOBS; i++)
        tb__coro_free(ts->jobs[i].co);
    tb__stack_pool_free(pool);
    return NULL;
}

static void test_two_threads(void **state)
{
    (void)state;
    pthread_barrier_t barrier;
    pthread_t th[2];
    tstate *st = calloc(2, sizeof *st);

    assert_non_null(st);
    assert_int_equal(pthread_barrier_init(&barrier, NULL, 2), 0);
    for (int t = 0; t < 2; t++) {
        st[t].id = t;
        st[t].barrier = &barrier;
        assert_int_equal(pthread_create(&th[t], NULL, thread_main, &st[t]), 0);
    }
    for (int t = 0; t < 2; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    pthread_barrier_destroy(&barrier);

    for (int t = 0; t < 2; t++) {
        assert_int_equal(st[t].failed_setup, 0);
        assert_int_equal(st[t].bad_outside, 0);
        for (int i = 0; i < THREAD_JOBS; i++) {
            assert_int_equal(st[t].jobs[i].bad, 0);
            assert_int_equal(st[t].jobs[i].total,
                             (long)THREAD_ROUNDS * st[t].jobs[i].add);
        }
    }
    /* The main thread never ran a coroutine. */
    assert_null(tb__coro_self());
    free(st);
}

/* ------------------------------------------------------ forked children */

/* cmocka catches SIGSEGV and SIGABRT to report failures; a child must die of
 * them for real. No core files: the deaths are on purpose. */
static void child_setup(void)
{
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE};
    struct rlimit no_core = {0, 0};

    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], SIG_DFL);
    setrlimit(RLIMIT_CORE, &no_core);
}

/* Runs fn in a child; returns its wait status and, in out, its stderr. */
static int run_child(void (*fn)(void), char *out, size_t out_size)
{
    int fds[2], status;
    size_t len = 0;
    ssize_t n;
    pid_t pid;

    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        child_setup();
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        fn();
        _exit(0);
    }
    close(fds[1]);
    while (len + 1 < out_size &&
           (n = read(fds[0], out + len, out_size - 1 - len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        len += (size_t)n;
    }
    out[len] = '\0';
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

/* The child's own checks: fail by exit code, since cmocka's asserts would
 * jump back into the test runner inside the child. */
#define CHILD_CHECK(cond, code)                                                \
    do {                                                                       \
        if (!(cond))                                                           \
            _exit(code);                                                       \
    } while (0)

/* ------------------------------------------------------------ overflow */

typedef struct {
    char *sp;
    int overflow;
    size_t want;
} victim;

static void victim_entry(void *arg)
{
    victim *v = arg;

    v->sp = STACK_HERE();
    tb__coro_yield("test");
    if (v->overflow)
        dig(v->sp, v->want);
}

/* Overflows a coroutine stack by a page and a half past its own bottom: with
 * a guard that faults at once; without one, it would write into the guard
 * slot and the neighbour's stack and return normally. */
static void overflow_scenario(void)
{
    tb__stack_pool *pool = tb__stack_pool_new(16 * KIB, 0);
    size_t size = tb__stack_pool_stack_size(pool);
    victim a = {NULL, 0, 0}, b = {NULL, 0, 0}, *high;
    tb__coro *ca, *cb;

    CHILD_CHECK(pool != NULL, 10);
    ca = tb__coro_new(pool, victim_entry, &a);
    cb = tb__coro_new(pool, victim_entry, &b);
    CHILD_CHECK(ca != NULL && cb != NULL, 11);
    CHILD_CHECK(tb__coro_resume(ca) == 0 && tb__coro_resume(cb) == 0, 12);

    /* The higher one, so that the other stack lies below it. */
    high = a.sp > b.sp ? &a : &b;
    high->overflow = 1;
    high->want = size + page_size() + page_size() / 2;
    tb__coro_resume(high == &a ? ca : cb);
    _exit(0);
}

static void assert_overflow_faulted(int status, const char *err)
{
#ifdef UNDER_ASAN
    /* ASan may catch the fault itself and exit with its own code. */
    if (WIFEXITED(status) &&
        (WEXITSTATUS(status) == 0 ||
         (WEXITSTATUS(status) >= 10 && WEXITSTATUS(status) <= 12)))
        fail_msg("overflow child exited %d: %s", WEXITSTATUS(status), err);
#else
    if (!WIFSIGNALED(status))
        fail_msg("overflow child did not die of a signal (exit %d): %s",
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1, err);
    assert_int_equal(WTERMSIG(status), SIGSEGV);
#endif
}

static void test_overflow_faults(void **state)
{
    (void)state;
    char err[4096];

    assert_overflow_faulted(run_child(overflow_scenario, err, sizeof err), err);
}

/* ------------------------------------------------- guard installation */

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

static int count_vmas(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    int c, n = 0;

    if (f == NULL)
        return -1;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static bool guard_regions_work(void)
{
    size_t page = page_size();
    void *p = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    bool ok;

    assert_true(p != MAP_FAILED);
    ok = madvise(p, page, MADV_GUARD_INSTALL) == 0;
    munmap(p, 2 * page);
    return ok;
}

/* 100 000 stacks must fit under vm.max_map_count (65530 by default), so a
 * guard must not cost a VMA of its own. */
static void test_guards_keep_vmas_few(void **state)
{
    (void)state;
    tb__stack_pool *pool;
    tb__coro **cos;
    int before, after;

    if (!guard_regions_work())
        skip(); /* kernel < 6.13: the mprotect fallback splits VMAs */
    cos = calloc(MANY, sizeof *cos);
    assert_non_null(cos);
    before = count_vmas();
    assert_true(before > 0);
    pool = tb__stack_pool_new(16 * KIB, 0);
    for (int i = 0; i < MANY; i++) {
        cos[i] = tb__coro_new(pool, count_entry, NULL);
        assert_non_null(cos[i]);
    }
    after = count_vmas();
    assert_true(after - before < MANY / 4);
    for (int i = 0; i < MANY; i++)
        tb__coro_free(cos[i]);
    tb__stack_pool_free(pool);
    free(cos);
}

/* Makes madvise(MADV_GUARD_INSTALL) fail with EINVAL, as on a kernel older
 * than 6.13. Returns 0, or -1 where seccomp filters are not allowed. */
static int refuse_guard_regions(void)
{
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG2_LOW),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_GUARD_INSTALL, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof code / sizeof code[0], code};

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        return -1;
    return 0;
}

static void fallback_child(void)
{
    tb__stack_pool *pool;
    int before, after;
    tb__coro *co;

    if (refuse_guard_regions() != 0 || guard_regions_work())
        _exit(20);
    before = count_vmas();
    pool = tb__stack_pool_new(16 * KIB, 0);
    co = tb__coro_new(pool, count_entry, NULL);
    CHILD_CHECK(co != NULL, 21);
    after = count_vmas();
    /* mprotect'ed guards split the slab: about two VMAs per stack. */
    CHILD_CHECK(before > 0 && after - before >= 64, 22);
    tb__coro_free(co);
    tb__stack_pool_free(pool);
    overflow_scenario();
}

static void test_overflow_faults_with_mprotect_fallback(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(fallback_child, err, sizeof err);

    if (WIFEXITED(status) && WEXITSTATUS(status) == 20)
        skip(); /* no seccomp here to simulate an old kernel */
    if (WIFEXITED(status) && WEXITSTATUS(status) > 20)
        fail_msg("fallback child failed check %d: %s", WEXITSTATUS(status),
                 err);
    assert_overflow_faulted(status, err);
}

/* Using nearly all of a stack is fine: the rounded size is really usable. */
static void use_most_entry(void *arg)
{
    size_t *size = arg;

    dig(STACK_HERE(), *size - 2 * page_size());
}

static void test_stack_size(void **state)
{
    (void)state;
    size_t page = page_size();
    tb__stack_pool *pool;
    tb__coro *co;
    size_t size;

    pool = tb__stack_pool_new(0, 0);
    assert_non_null(pool);
    assert_int_equal(tb__stack_pool_stack_size(pool), round_up(16 * KIB, page));
    tb__stack_pool_free(pool);

    pool = tb__stack_pool_new(1, 0);
    assert_int_equal(tb__stack_pool_stack_size(pool), round_up(16 * KIB, page));
    tb__stack_pool_free(pool);

    pool = tb__stack_pool_new(16 * KIB + 1, 0);
    assert_int_equal(tb__stack_pool_stack_size(pool),
                     round_up(16 * KIB + 1, page));
    assert_true(tb__stack_pool_stack_size(pool) > 16 * KIB);
    tb__stack_pool_free(pool);

    pool = tb__stack_pool_new(100000, 0);
    assert_int_equal(tb__stack_pool_stack_size(pool), round_up(100000, page));
    size = tb__stack_pool_stack_size(pool);
    co = tb__coro_new(pool, use_most_entry, &size);
    assert_int_equal(tb__coro_resume(co), 1);
    tb__coro_free(co);
    tb__stack_pool_free(pool);

    errno = 0;
    assert_null(tb__stack_pool_new(SIZE_MAX, 0));
    assert_int_equal(errno, ENOMEM);

    errno = 0;
    pool = tb__stack_pool_new(0, 0);
    assert_null(tb__coro_new(pool, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(tb__stack_pool_mapped(pool), 0);
    tb__stack_pool_free(pool);
}

/* -------------------------------------------------------------- misuse */

static tb__coro *misuse_other;

static void yield_outside_child(void)
{
    tb__coro_yield("tb_sleep()");
}

static void resume_other_entry(void *arg)
{
    (void)arg;
    tb__coro_resume(misuse_other);
}

static void resume_inside_child(void)
{
    tb__stack_pool *pool = tb__stack_pool_new(0, 0);
    tb__coro *co = tb__coro_new(pool, resume_other_entry, NULL);

    misuse_other = tb__coro_new(pool, count_entry, NULL);
    tb__coro_resume(co);
}

static void resume_self_entry(void *arg)
{
    (void)arg;
    tb__coro_resume(tb__coro_self());
}

static void resume_running_child(void)
{
    tb__stack_pool *pool = tb__stack_pool_new(0, 0);

    tb__coro_resume(tb__coro_new(pool, resume_self_entry, NULL));
}

static void resume_finished_child(void)
{
    tb__stack_pool *pool = tb__stack_pool_new(0, 0);
    int runs = 0;
    tb__coro *co = tb__coro_new(pool, count_entry, &runs);

    CHILD_CHECK(tb__coro_resume(co) == 1, 10);
    tb__coro_resume(co);
}

static void free_self_entry(void *arg)
{
    (void)arg;
    tb__coro_free(tb__coro_self());
}

static void free_running_child(void)
{
    tb__stack_pool *pool = tb__stack_pool_new(0, 0);

    tb__coro_resume(tb__coro_new(pool, free_self_entry, NULL));
}

static void double_free_child(void)
{
    tb__stack_pool *pool = tb__stack_pool_new(0, 0);
    tb__coro *co = tb__coro_new(pool, count_entry, NULL);

    tb__coro_free(co);
    tb__coro_free(co);
}

static void pool_free_live_child(void)
{
    tb__stack_pool *pool = tb__stack_pool_new(0, 0);

    CHILD_CHECK(tb__coro_new(pool, count_entry, NULL) != NULL, 10);
    tb__stack_pool_free(pool);
}

static void *resume_elsewhere_thread(void *arg)
{
    tb__coro_resume(arg);
    return NULL;
}

static void resume_other_thread_child(void)
{
    tb__stack_pool *pool = tb__stack_pool_new(0, 0);
    pthread_t th;

    pthread_create(&th, NULL, resume_elsewhere_thread,
                   tb__coro_new(pool, count_entry, NULL));
    pthread_join(th, NULL);
}

static void expect_abort(void (*fn)(void), const char *needle)
{
    char err[8192];
    int status = run_child(fn, err, sizeof err);

    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT)
        fail_msg("expected SIGABRT with \"%s\"; got status %#x, stderr: %s",
                 needle, status, err);
    if (strstr(err, needle) == NULL)
        fail_msg("stderr lacks \"%s\": %s", needle, err);
}

static void test_misuse_aborts(void **state)
{
    (void)state;
    expect_abort(yield_outside_child,
                 "tb_sleep() must be called from inside a task");
    expect_abort(resume_inside_child, "called from inside coroutine");
    expect_abort(resume_running_child, "is already running");
    expect_abort(resume_finished_child, "has finished");
    expect_abort(free_running_child, "is running");
    expect_abort(double_free_child, "already freed");
    expect_abort(pool_free_live_child, "1 coroutine(s) of pool");
    expect_abort(resume_other_thread_child, "another thread's pool");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_pong_order),
        cmocka_unit_test(test_entry_arg_and_data),
        cmocka_unit_test(test_finished_returns_one),
        cmocka_unit_test(test_reuse_runs_new_entry),
        cmocka_unit_test(test_many_suspended),
        cmocka_unit_test(test_free_suspended),
        cmocka_unit_test(test_suspended_residency),
        cmocka_unit_test(test_two_threads),
        cmocka_unit_test(test_overflow_faults),
        cmocka_unit_test(test_guards_keep_vmas_few),
        cmocka_unit_test(test_overflow_faults_with_mprotect_fallback),
        cmocka_unit_test(test_stack_size),
        cmocka_unit_test(test_misuse_aborts),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
