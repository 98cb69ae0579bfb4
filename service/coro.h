/* coro.h - stackful coroutines on pooled, guard-paged stacks (private). */
#ifndef TASKBUS_CORO_H
#define TASKBUS_CORO_H

#include <stddef.h>
#include <stdint.h>

/* One pool per thread (per worker). A pool and every coroutine taken from it
 * belong to the thread that created the pool: none of these functions is
 * thread-safe, and a coroutine is only ever resumed on its pool's thread.
 *
 * Model: asymmetric coroutines. The thread's own stack (the worker loop)
 * resumes a coroutine; the coroutine runs until it calls tb__coro_yield()
 * or its entry function returns, and control comes back to the resumer.
 * A coroutine never resumes another coroutine directly.
 */

typedef struct tb__coro tb__coro;
typedef struct tb__stack_pool tb__stack_pool;
typedef void (*tb__coro_entry)(void *arg);

/* Creates a pool whose stacks are stack_size bytes (rounded up to whole
 * pages, at least 16 KiB) each with a PROT_NONE-equivalent guard page below
 * it, so that an overflow faults instead of corrupting memory. Freed stacks
 * keep their pages for fast reuse; tb__stack_pool_trim() returns the pages
 * of those beyond the keep_resident most recently used to the kernel
 * (MADV_DONTNEED; they stay mapped). Returns NULL on failure (errno set). */
tb__stack_pool *tb__stack_pool_new(size_t stack_size, size_t keep_resident);

/* Unmaps every stack. All coroutines of the pool must have been freed with
 * tb__coro_free() (suspended ones included: their stacks are simply
 * dropped). */
void tb__stack_pool_free(tb__stack_pool *pool);

/* Free stacks beyond keep_resident that still hold their pages. */
size_t tb__stack_pool_excess(const tb__stack_pool *pool);
/* Gives back the pages of at most max of those; returns how many. Costs a
 * system call each: call it off the hot path (a worker does from a timer). */
size_t tb__stack_pool_trim(tb__stack_pool *pool, size_t max);

/* Stack size actually used (after rounding). */
size_t tb__stack_pool_stack_size(const tb__stack_pool *pool);
/* Stacks mapped in all (in use + free). */
size_t tb__stack_pool_mapped(const tb__stack_pool *pool);

/* Takes a coroutine from the pool (reusing a finished one when possible)
 * that will run entry(arg) when first resumed. Returns NULL on failure. */
tb__coro *tb__coro_new(tb__stack_pool *pool, tb__coro_entry entry, void *arg);

/* Switches into co from the thread's own stack. Returns when co yields
 * (returns 0) or its entry has returned (returns 1; co is then finished and
 * must be freed, not resumed). Aborts with a message if called from inside a
 * coroutine, on a finished coroutine, or on one that is already running. */
int tb__coro_resume(tb__coro *co);

/* Switches from the running coroutine back to its resumer. Aborts with a
 * message naming `who` (the public function that needed to suspend) if no
 * coroutine is running on this thread. */
void tb__coro_yield(const char *who);

/* The coroutine running on this thread, or NULL. */
tb__coro *tb__coro_self(void);

/* Per-coroutine user pointer (taskbus keeps its tb_task here). */
void tb__coro_set_data(tb__coro *co, void *data);
void *tb__coro_get_data(const tb__coro *co);

/* Returns co to its pool. co must not be running. A suspended coroutine may
 * be freed: its stack is reclaimed without unwinding (used when shutdown
 * abandons tasks that ignored cancellation). */
void tb__coro_free(tb__coro *co);

#endif /* TASKBUS_CORO_H */
