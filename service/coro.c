/* coro.c - stackful coroutines on slab-pooled, guard-paged stacks. */
/* glibc's fortified longjmp (longjmp_chk) refuses to jump to another stack,
 * which is what every switch here does. */
#undef _FORTIFY_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "coro.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define CORO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CORO_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define CORO_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CORO_TSAN 1
#endif
#endif

#ifdef CORO_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef CORO_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define CORO_VALGRIND 1
#endif
#endif

/* Linux 6.13 guard regions: page-table markers that fault like PROT_NONE but
 * do not split the VMA, so 100 000 guarded stacks stay far below
 * vm.max_map_count. */
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

/* Stacks per mmap. One slab is one VMA when guard regions work; with the
 * mprotect fallback it is 2 * SLAB_STACKS + 1. */
#define SLAB_STACKS 64
#define MIN_STACK_SIZE ((size_t)16 * 1024)

enum coro_state {
    CORO_FREE,      /* in the pool, not handed out */
    CORO_READY,     /* handed out, entry not started */
    CORO_RUNNING,   /* the thread is executing on its stack */
    CORO_SUSPENDED, /* yielded; frames live on its stack */
    CORO_FINISHED,  /* entry returned; trampoline parked in env */
};

/* The control block lives in a malloc'd array beside the slab, never on the
 * stack, so a stack's untouched pages stay untouched and MADV_DONTNEED on a
 * free stack cannot destroy pool bookkeeping. */
struct tb__coro {
    sigjmp_buf env; /* where the coroutine continues when resumed */
    tb__coro_entry entry;
    void *arg;
    void *data;
    tb__stack_pool *pool;
    char *stack; /* lowest usable byte, just above the guard page */
    tb__coro *next_free;
    unsigned char state;
    /* env holds the trampoline's loop point, so the next entry can start
     * with a plain siglongjmp instead of a new makecontext. */
    bool primed;
#ifdef CORO_ASAN
    void *asan_fake_stack;
#endif
#ifdef CORO_TSAN
    void *tsan_fiber;
#endif
#ifdef CORO_VALGRIND
    unsigned valgrind_id;
#endif
};

struct slab {
    struct slab *next;
    char *base;
    size_t len;
    tb__coro coros[SLAB_STACKS];
};

struct thread_state;

struct tb__stack_pool {
    size_t stack_size; /* usable bytes per stack */
    size_t slot_size;  /* guard page + stack */
    size_t page_size;
    size_t keep_resident;
    size_t mapped;
    size_t in_use;
    size_t warm_count;
    /* Free stacks whose pages are (or may be) resident. LIFO, so the stack
     * that ran last, still in cache, is the next one handed out. */
    tb__coro *warm;
    /* Free stacks with no resident pages: never used, or given back. */
    tb__coro *cold;
    struct slab *slabs;
    const struct thread_state *owner;
    bool guard_by_mprotect;
};

/* What the thread's own stack needs while one of its coroutines runs. Only
 * that stack resumes coroutines, so one saved context per thread is enough
 * and the control blocks stay small. */
struct thread_state {
    tb__coro *current;
    sigjmp_buf resumer;
#ifdef CORO_ASAN
    void *asan_fake_stack;
    const void *asan_stack_bottom;
    size_t asan_stack_size;
#endif
#ifdef CORO_TSAN
    void *tsan_fiber;
#endif
};

static _Thread_local struct thread_state ts;

__attribute__((noreturn, cold, format(printf, 1, 2))) static void
die(const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    /* One write, so the line is not interleaved with other threads' output,
     * and no malloc on a possibly broken heap. */
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "taskbus: %s\n", msg);
    abort();
}

/* Sanitizer hooks. Each switch is bracketed: leave_stack() just before
 * jumping, arrive_stack() first thing on the other side. A NULL fake_save on
 * leave tells ASan the stack being left is finished, so its fake frames can
 * go; a NULL one on arrive means there is nothing to restore. */
static inline __attribute__((always_inline)) void
leave_stack(void **fake_save, const void *bottom, size_t size, void *tsan_to)
{
#ifdef CORO_ASAN
    __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
    (void)fake_save, (void)bottom, (void)size;
#endif
#ifdef CORO_TSAN
    __tsan_switch_to_fiber(tsan_to, 0);
#else
    (void)tsan_to;
#endif
}

static inline __attribute__((always_inline)) void
arrive_stack(void *fake_save, const void **bottom_old, size_t *size_old)
{
#ifdef CORO_ASAN
    __sanitizer_finish_switch_fiber(fake_save, bottom_old, size_old);
#else
    (void)fake_save, (void)bottom_old, (void)size_old;
#endif
}

#ifdef CORO_ASAN
#define ASAN_FAKE(p) (p)
#define ASAN_THREAD_STACK(t) (t)->asan_stack_bottom, (t)->asan_stack_size
#define ASAN_THREAD_STACK_OUT(t) &(t)->asan_stack_bottom, &(t)->asan_stack_size
#else
#define ASAN_FAKE(p) NULL
#define ASAN_THREAD_STACK(t) NULL, 0
#define ASAN_THREAD_STACK_OUT(t) NULL, NULL
#endif
#ifdef CORO_TSAN
#define TSAN_FIBER(p) (p)
#else
#define TSAN_FIBER(p) NULL
#endif

/* Saves the coroutine's place and jumps back to the thread stack in
 * tb__coro_resume(). Kept out of line so that sigsetjmp gets a frame of its
 * own on the coroutine stack and no caller state is cached across it. */
static __attribute__((noinline)) void switch_to_resumer(tb__coro *co,
                                                        bool finished)
{
    struct thread_state *t = &ts;

    t->current = NULL;
    if (sigsetjmp(co->env, 0) == 0) {
        leave_stack(finished ? NULL : ASAN_FAKE(&co->asan_fake_stack),
                    ASAN_THREAD_STACK(t), TSAN_FIBER(t->tsan_fiber));
        siglongjmp(t->resumer, 1);
    }
    /* Back from tb__coro_resume(). After a finished run ASan dropped this
     * stack's fake frames, so there is nothing to restore. */
    arrive_stack(finished ? NULL : ASAN_FAKE(co->asan_fake_stack),
                 ASAN_THREAD_STACK_OUT(t));
}

/* The bottom frame of every coroutine stack. It never returns: after each
 * entry it parks in switch_to_resumer(), and when the coroutine is taken from
 * the pool again the next resume lands back here to run the new entry. */
static void trampoline(void)
{
    tb__coro *self = ts.current;

    arrive_stack(NULL, ASAN_THREAD_STACK_OUT(&ts));
    for (;;) {
        self->entry(self->arg);
        self->state = CORO_FINISHED;
        switch_to_resumer(self, true);
    }
}

/* First run on a stack that holds no trampoline yet (new, given back with
 * MADV_DONTNEED, or abandoned while suspended). The only place that uses
 * ucontext: getcontext and setcontext each cost a signal-mask syscall, which
 * is why later switches use sigsetjmp/siglongjmp instead. */
static __attribute__((noinline, noreturn)) void start_fresh(tb__coro *co)
{
    ucontext_t uc;
    size_t size = co->pool->stack_size;

    if (getcontext(&uc) != 0)
        die("getcontext() failed starting coroutine %p: %s", (void *)co,
            strerror(errno));
    uc.uc_link = NULL;
    uc.uc_stack.ss_sp = co->stack;
    uc.uc_stack.ss_size = size;
    uc.uc_stack.ss_flags = 0;
    makecontext(&uc, trampoline, 0);
    co->primed = true;
#ifdef CORO_ASAN
    /* Frames abandoned on the new stack left poisoned shadow behind, and this
     * frame is about to be abandoned too: the way back is a siglongjmp to
     * tb__coro_resume(), which ASan cannot see from here. */
    __asan_unpoison_memory_region(co->stack, size);
    __asan_handle_no_return();
#endif
#ifdef CORO_TSAN
    if (co->tsan_fiber == NULL)
        co->tsan_fiber = __tsan_create_fiber(0);
#endif
    leave_stack(ASAN_FAKE(&ts.asan_fake_stack), co->stack, size,
                TSAN_FIBER(co->tsan_fiber));
    setcontext(&uc);
    die("setcontext() failed starting coroutine %p: %s", (void *)co,
        strerror(errno));
}

__attribute__((noreturn, cold)) static void bad_resume(const tb__coro *co)
{
    switch (co->state) {
    case CORO_RUNNING:
        die("tb__coro_resume(): coroutine %p is already running; a "
            "coroutine cannot resume itself",
            (const void *)co);
    case CORO_FINISHED:
        die("tb__coro_resume(): coroutine %p has finished; free it with "
            "tb__coro_free() and take a new one",
            (const void *)co);
    case CORO_FREE:
        die("tb__coro_resume(): coroutine %p was freed", (const void *)co);
    default:
        die("tb__coro_resume(): coroutine %p is corrupt (state %d)",
            (const void *)co, co->state);
    }
}

int tb__coro_resume(tb__coro *co)
{
    struct thread_state *t = &ts;

    if (co->state != CORO_READY && co->state != CORO_SUSPENDED)
        bad_resume(co);
    if (t->current != NULL)
        die("tb__coro_resume() called from inside coroutine %p: only the "
            "thread's own stack (the worker loop) may resume a coroutine",
            (void *)t->current);
    if (co->pool->owner != t)
        die("tb__coro_resume(): coroutine %p belongs to another thread's "
            "pool",
            (void *)co);

    co->state = CORO_RUNNING;
    t->current = co;
#ifdef CORO_TSAN
    t->tsan_fiber = __tsan_get_current_fiber();
#endif
    if (sigsetjmp(t->resumer, 0) == 0) {
        if (!co->primed)
            start_fresh(co);
        leave_stack(ASAN_FAKE(&t->asan_fake_stack), co->stack,
                    co->pool->stack_size, TSAN_FIBER(co->tsan_fiber));
        siglongjmp(co->env, 1);
    }
    arrive_stack(ASAN_FAKE(t->asan_fake_stack), NULL, NULL);
    return co->state == CORO_FINISHED;
}

void tb__coro_yield(const char *who)
{
    tb__coro *co = ts.current;

    if (co == NULL)
        die("%s must be called from inside a task: it suspends the calling "
            "task, and no task is running on this thread",
            who != NULL ? who : "tb__coro_yield()");
    co->state = CORO_SUSPENDED;
    switch_to_resumer(co, false);
}

tb__coro *tb__coro_self(void)
{
    return ts.current;
}

void tb__coro_set_data(tb__coro *co, void *data)
{
    co->data = data;
}

void *tb__coro_get_data(const tb__coro *co)
{
    return co->data;
}

/* Puts a guard below every stack of a new slab. */
static int install_guards(tb__stack_pool *pool, char *base)
{
    for (size_t i = 0; i < SLAB_STACKS; i++) {
        char *guard = base + i * pool->slot_size;
        int tries = 0;

        while (!pool->guard_by_mprotect) {
            if (madvise(guard, pool->page_size, MADV_GUARD_INSTALL) == 0)
                break;
            if ((errno == EINTR || errno == EAGAIN) && ++tries < 8)
                continue;
            if (errno == ENOMEM)
                return -1;
            /* Kernels before 6.13 and mlocked mappings say EINVAL; seccomp
             * sandboxes may say EPERM or ENOSYS. mprotect costs two VMAs
             * per stack: fine up to about 30 000 stacks per process. */
            pool->guard_by_mprotect = true;
        }
        if (pool->guard_by_mprotect &&
            mprotect(guard, pool->page_size, PROT_NONE) != 0)
            return -1;
    }
    return 0;
}

static int add_slab(tb__stack_pool *pool)
{
    size_t len = SLAB_STACKS * pool->slot_size;
    struct slab *slab;
    char *base;
    int err;

    slab = malloc(sizeof *slab);
    if (slab == NULL)
        return -1;
    /* NORESERVE: a stack costs only the pages it touches, not commit charge
     * for its full size. MAP_STACK also opts out of THP on Linux >= 6.7;
     * the madvise does so on older kernels: a huge page would make one
     * touched stack page cost 2 MiB. */
    base = mmap(NULL, len, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (base == MAP_FAILED) {
        free(slab);
        return -1;
    }
    (void)madvise(base, len, MADV_NOHUGEPAGE);
    if (install_guards(pool, base) != 0) {
        err = errno;
        munmap(base, len);
        free(slab);
        errno = err;
        return -1;
    }
    slab->base = base;
    slab->len = len;
    /* Pushed in reverse so that stacks go out in address order. */
    for (size_t i = SLAB_STACKS; i-- > 0;) {
        tb__coro *co = &slab->coros[i];

        memset(co, 0, sizeof *co);
        co->pool = pool;
        co->stack = base + i * pool->slot_size + pool->page_size;
        co->state = CORO_FREE;
        co->next_free = pool->cold;
        pool->cold = co;
#ifdef CORO_VALGRIND
        co->valgrind_id =
            VALGRIND_STACK_REGISTER(co->stack, co->stack + pool->stack_size);
#endif
    }
    slab->next = pool->slabs;
    pool->slabs = slab;
    pool->mapped += SLAB_STACKS;
    return 0;
}

tb__stack_pool *tb__stack_pool_new(size_t stack_size, size_t keep_resident)
{
    long ps = sysconf(_SC_PAGESIZE);
    size_t page = ps > 0 ? (size_t)ps : 4096;
    size_t size = stack_size < MIN_STACK_SIZE ? MIN_STACK_SIZE : stack_size;
    tb__stack_pool *pool;

    /* A whole slab must fit in one mapping (and in ptrdiff_t). */
    if (size > PTRDIFF_MAX / SLAB_STACKS - 2 * page) {
        errno = ENOMEM;
        return NULL;
    }
    size = (size + page - 1) / page * page;
    pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return NULL;
    pool->stack_size = size;
    pool->slot_size = size + page;
    pool->page_size = page;
    pool->keep_resident = keep_resident;
    pool->owner = &ts;
    return pool;
}

void tb__stack_pool_free(tb__stack_pool *pool)
{
    struct slab *slab, *next;

    if (pool == NULL)
        return;
    if (pool->in_use != 0)
        die("tb__stack_pool_free(): %zu coroutine(s) of pool %p are still "
            "live; free each with tb__coro_free() first",
            pool->in_use, (void *)pool);
    for (slab = pool->slabs; slab != NULL; slab = next) {
        next = slab->next;
        for (size_t i = 0; i < SLAB_STACKS; i++) {
#ifdef CORO_VALGRIND
            VALGRIND_STACK_DEREGISTER(slab->coros[i].valgrind_id);
#endif
#ifdef CORO_TSAN
            if (slab->coros[i].tsan_fiber != NULL)
                __tsan_destroy_fiber(slab->coros[i].tsan_fiber);
#endif
        }
        munmap(slab->base, slab->len);
        free(slab);
    }
    free(pool);
}

size_t tb__stack_pool_stack_size(const tb__stack_pool *pool)
{
    return pool->stack_size;
}

size_t tb__stack_pool_mapped(const tb__stack_pool *pool)
{
    return pool->mapped;
}

tb__coro *tb__coro_new(tb__stack_pool *pool, tb__coro_entry entry, void *arg)
{
    tb__coro *co;

    if (pool == NULL || entry == NULL) {
        errno = EINVAL;
        return NULL;
    }
    if (pool->warm != NULL) {
        co = pool->warm;
        pool->warm = co->next_free;
        pool->warm_count--;
    } else {
        if (pool->cold == NULL && add_slab(pool) != 0)
            return NULL;
        co = pool->cold;
        pool->cold = co->next_free;
    }
    co->next_free = NULL;
    co->entry = entry;
    co->arg = arg;
    co->data = NULL;
    co->state = CORO_READY;
    pool->in_use++;
    return co;
}

void tb__coro_free(tb__coro *co)
{
    tb__stack_pool *pool;

    if (co == NULL)
        return;
    pool = co->pool;
    switch (co->state) {
    case CORO_RUNNING:
        die("tb__coro_free(): coroutine %p is running; a coroutine cannot "
            "free itself, its resumer frees it after it yields or finishes",
            (void *)co);
    case CORO_FREE:
        die("tb__coro_free(): coroutine %p was already freed", (void *)co);
    case CORO_SUSPENDED:
        /* Its frames are dropped without unwinding, so env points into
         * garbage: the next user must start the stack from scratch. */
        co->primed = false;
#ifdef CORO_TSAN
        __tsan_destroy_fiber(co->tsan_fiber);
        co->tsan_fiber = NULL;
#endif
        break;
    default:
        break;
    }
    co->state = CORO_FREE;
    co->entry = NULL;
    co->arg = NULL;
    co->data = NULL;
    pool->in_use--;
    /* Always warm here: giving pages back costs a madvise and a TLB
     * shootdown each, far too much for a path taken once per task. The
     * owner trims the excess later, off the hot path. */
    co->next_free = pool->warm;
    pool->warm = co;
    pool->warm_count++;
}

size_t tb__stack_pool_excess(const tb__stack_pool *pool)
{
    return pool->warm_count > pool->keep_resident
               ? pool->warm_count - pool->keep_resident
               : 0;
}

size_t tb__stack_pool_trim(tb__stack_pool *pool, size_t max)
{
    size_t n = 0;
    if (tb__stack_pool_excess(pool) == 0 || max == 0)
        return 0;
    /* The first keep_resident entries are the most recently used (LIFO):
     * keep them, give back what follows. */
    tb__coro **pp = &pool->warm;
    for (size_t i = 0; i < pool->keep_resident && *pp; i++)
        pp = &(*pp)->next_free;
    while (*pp && n < max) {
        tb__coro *co = *pp;
        *pp = co->next_free;
        /* Failure would only leave the pages resident, which is harmless.
         * The trampoline frame goes with them, hence primed = false. */
        (void)madvise(co->stack, pool->stack_size, MADV_DONTNEED);
        co->primed = false;
        co->next_free = pool->cold;
        pool->cold = co;
        pool->warm_count--;
        n++;
    }
    return n;
}
