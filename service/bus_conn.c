/* bus_conn.c - a bus's connection to its backend, for every bus that has
 * one: its state, since when, attempts, reconnects and last error, the
 * wait for the first connection, and the backoff between attempts. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

#include "internal.h"

struct tb__bus_conn {
    int64_t retry_min_ms, retry_max_ms;
    uint64_t rng; /* the bus's thread */

    pthread_mutex_t mu;
    pthread_cond_t cv; /* state changes; tb__bus_conn_wait waits on it */
    atomic_int state;  /* tb_bus_state; written under mu */
    int64_t since_us;  /* the rest under mu */
    uint64_t attempts, reconnects;
    char last_error[256];
};

/* Moves to st under mu and wakes the waiters. */
static void set_locked(tb__bus_conn *c, tb_bus_state st)
{
    atomic_store_explicit(&c->state, st, memory_order_release);
    c->since_us = tb__now_us();
    if (st == TB_BUS_CONNECTED)
        c->attempts = 0;
    pthread_cond_broadcast(&c->cv);
}

tb_bus_state tb__bus_conn_state(tb__bus_conn *c)
{
    return (tb_bus_state)atomic_load_explicit(&c->state, memory_order_acquire);
}

void tb__bus_conn_set(tb__bus_conn *c, tb_bus_state st)
{
    pthread_mutex_lock(&c->mu);
    set_locked(c, st);
    pthread_mutex_unlock(&c->mu);
}

uint64_t tb__bus_conn_up(tb__bus_conn *c, int *reconnected)
{
    pthread_mutex_lock(&c->mu);
    int was = atomic_load_explicit(&c->state, memory_order_relaxed);
    uint64_t failed = c->attempts;
    *reconnected = was == TB_BUS_RECONNECTING;
    if (*reconnected)
        c->reconnects++;
    set_locked(c, TB_BUS_CONNECTED);
    pthread_mutex_unlock(&c->mu);
    return failed;
}

uint64_t tb__bus_conn_down(tb__bus_conn *c, const char *why, int *lost)
{
    pthread_mutex_lock(&c->mu);
    *lost = atomic_load_explicit(&c->state, memory_order_relaxed) ==
            TB_BUS_CONNECTED;
    snprintf(c->last_error, sizeof c->last_error, "%s", why);
    if (*lost) {
        c->attempts = 0;
        set_locked(c, TB_BUS_RECONNECTING);
    } else {
        c->attempts++;
    }
    uint64_t failed = c->attempts;
    pthread_mutex_unlock(&c->mu);
    return failed;
}

/* xorshift64*: jitter only, nothing secret. */
static uint64_t rnd(tb__bus_conn *c)
{
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return c->rng * 0x2545F4914F6CDD1DULL;
}

int64_t tb__bus_conn_backoff_ms(tb__bus_conn *c, uint64_t failed)
{
    int64_t d = c->retry_min_ms;
    for (uint64_t i = 0; i < failed && d < c->retry_max_ms; i++)
        d *= 2;
    if (d > c->retry_max_ms)
        d = c->retry_max_ms;
    int64_t lo = d / 2;
    return lo + (int64_t)(rnd(c) % (uint64_t)(d - lo + 1));
}

int tb__bus_conn_wait(tb__bus_conn *c, int64_t timeout_us, char *err,
                      size_t errsz)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (timeout_us % 1000000) * 1000;
    ts.tv_sec += (time_t)(timeout_us / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&c->mu);
    while (atomic_load_explicit(&c->state, memory_order_relaxed) !=
               TB_BUS_CONNECTED &&
           pthread_cond_timedwait(&c->cv, &c->mu, &ts) != ETIMEDOUT)
        ;
    int up = atomic_load_explicit(&c->state, memory_order_relaxed) ==
             TB_BUS_CONNECTED;
    if (!up)
        snprintf(err, errsz, "%s", c->last_error);
    pthread_mutex_unlock(&c->mu);
    return up;
}

void tb__bus_conn_status(tb__bus_conn *c, tb_bus_info *out)
{
    pthread_mutex_lock(&c->mu);
    out->state = (tb_bus_state)atomic_load(&c->state);
    out->since_us = c->since_us;
    out->attempts = c->attempts;
    out->reconnects = c->reconnects;
    snprintf(out->last_error, sizeof out->last_error, "%s", c->last_error);
    pthread_mutex_unlock(&c->mu);
}

tb__bus_conn *tb__bus_conn_new(int retry_min_ms, int retry_max_ms)
{
    tb__bus_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->retry_min_ms = retry_min_ms;
    c->retry_max_ms = retry_max_ms;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed)
        seed = (uint64_t)tb__mono_us() ^ (uint64_t)(uintptr_t)c;
    c->rng = seed | 1;
    pthread_mutex_init(&c->mu, NULL);
    tb__cond_init_mono(&c->cv);
    atomic_init(&c->state, TB_BUS_STOPPED);
    c->since_us = tb__now_us();
    return c;
}

void tb__bus_conn_free(tb__bus_conn *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}
