/* history.h - positions, the in-process history ring, and reading and
 * resuming from a namespace's history (private; docs/HISTORY.md). */
#ifndef TASKBUS_HISTORY_H
#define TASKBUS_HISTORY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "taskbus/taskbus.h"

/* Seqs stay below 2^53 so that Lua (doubles) in Redis counts them
 * exactly. */
#define TB__SEQ_MAX UINT64_C(9007199254740991)

/* A parsed position: epoch (8..16 lowercase hex digits) and seq. */
typedef struct tb__pos {
    char epoch[TB_EPOCH_MAX];
    uint64_t seq;
} tb__pos;

/* Parses the len bytes at s as a position, strictly: 8..16 lowercase hex
 * digits, '-', then a decimal seq without leading zeros in
 * 0..TB__SEQ_MAX (0: before the epoch's first event, for a since). Reads
 * nothing beyond s + len. Returns 0 with *out filled, or TB_EINVAL (out
 * is then zeroed). */
int tb__pos_parse(const char *s, size_t len, tb__pos *out);

/* Writes "<epoch>-<seq>" into out (TB_POS_MAX bytes). Returns its
 * length. */
size_t tb__pos_format(char *out, const char *epoch, uint64_t seq);

/* 1 if epoch (NUL-terminated) is 8..16 lowercase hex digits. */
int tb__epoch_valid(const char *epoch);

/* A fresh random epoch: 16 lowercase hex digits. */
void tb__epoch_new(char out[TB_EPOCH_MAX]);

/* Sets ev's position (an event nobody else sees yet: before it is
 * delivered or encoded). */
void tb__event_set_pos(tb_event *ev, const char *epoch, uint64_t seq);

/* ----------------------------------------------------------- bus pages */

/* What a bus answers when asked for its history after a seq. */
typedef struct tb__hist_page {
    char epoch[TB_EPOCH_MAX]; /* the namespace's epoch; "": no event yet */
    uint64_t top;             /* the last seq given out in epoch */
    uint64_t first;           /* the oldest seq held; 0: none held */
    tb_event **evs;           /* held events with seq > after, ascending,
                                 at most the count asked for */
    size_t n;
    /* The entries the read looked at, evs or not (a bus skips one it
     * cannot decode, e.g. over this instance's max_event_size): fewer
     * than the count asked for means the end was reached, not n. The next
     * page starts after seen_to, the seq of the last one (0: none). */
    size_t seen;
    uint64_t seen_to;
} tb__hist_page;

/* The bytes ev counts for against history_max_bytes in the in-process
 * ring: its whole allocation, not just its name and data. */
size_t tb__hist_ev_bytes(const tb_event *ev);

/* Drops the page's references and frees its array; the page is then
 * empty. */
void tb__hist_page_release(tb__hist_page *pg);

/* Reads the app's history after seq `after`, at most count events, into
 * *out (the caller releases it). Blocks up to redis.command_timeout_ms
 * when the bus answers later (the Redis bus); not from a worker's loop
 * then (a task goes through tb__history_fetch_task). 0, TB_ENOTSUP
 * (history off), TB_ENOTCONN, TB_ETIMEDOUT, TB_ENOMEM, TB_EIO. */
int tb__history_fetch(tb_app *app, uint64_t after, size_t count,
                      tb__hist_page *out);

/* The same from a task: suspends it (through the blocking pool when the
 * bus answers asynchronously). TB_ECANCELED too. */
int tb__history_fetch_task(tb_task *self, uint64_t after, size_t count,
                           tb__hist_page *out);

/* Makes the event of a history entry a bus read: the entry's seq, its
 * event name (nlen bytes) and its envelope (len bytes), all from outside.
 * Checks the name, decodes the envelope (max_event_size) and checks that
 * its pos carries seq. 0 with *out (refcount 1), or TB_EPROTO /
 * TB_EMSGSIZE with *why set (a static reason), or TB_ENOMEM. */
int tb__hist_entry(tb_app *app, uint64_t seq, const char *name, size_t nlen,
                   const char *env, size_t len, tb_event **out,
                   const char **why);

/* The position a publish script appended as the envelope's last member
 * (`,"pos":"<pos>"}` at its very end), without decoding it: 0 with *out,
 * else TB_EINVAL (none there). */
int tb__pos_from_tail(const char *msg, size_t len, tb__pos *out);

/* ----------------------------------------------------- in-process ring */

/* The in-process bus's history: the last cap events of the namespace,
 * with the Redis history's semantics (epoch made at the first publish,
 * seq from 1, everything forgotten ttl after the last publish, the epoch
 * and seq kept). Any thread. */
typedef struct tb__hist_ring {
    pthread_mutex_t mu;
    char epoch[TB_EPOCH_MAX]; /* "" until the first publish */
    uint64_t seq;             /* the last given out */
    int64_t last_pub_us;      /* monotonic */
    int64_t ttl_us;
    size_t cap, n, head;     /* evs[head] is the oldest of n */
    size_t bytes, max_bytes; /* held names and data; their bound */
    tb_event **evs;
} tb__hist_ring;

/* 0 or TB_ENOMEM. cap > 0: at most cap events and max_bytes of their
 * names and data (the newest is kept even if alone it is more). */
int tb__hist_ring_init(tb__hist_ring *r, size_t cap, size_t max_bytes,
                       int64_t ttl_ms);
void tb__hist_ring_destroy(tb__hist_ring *r);

/* Gives ev (held by the caller only) the next position, keeps a reference
 * in the ring and runs deliver(ud, ev), all under the ring's lock, so
 * that every receiver sees the events in position order. */
void tb__hist_ring_publish(tb__hist_ring *r, tb_event *ev,
                           void (*deliver)(void *ud, tb_event *ev), void *ud);

/* Fills *out as a bus's history op does. 0 or TB_ENOMEM. */
int tb__hist_ring_read(tb__hist_ring *r, uint64_t after, size_t count,
                       tb__hist_page *out);

/* ------------------------------------------------------------- resume */

/* A resumed subscription's replay state (tb_sub_resume); sub->rs. */
typedef struct tb__resume tb__resume;

/* tb_sub_next's part for a resumed sub: 1 when it answered (*rc set: 0
 * with *ev, TB_SUB_LIVE, or an error), 0 when the sub is live and the
 * caller takes from the queue. Task context. */
int tb__resume_next(tb_task *self, tb_sub *s, tb_event **ev, int *rc);

/* 1 if ev, taken from a resumed sub's queue, was covered by its replay
 * (same epoch, seq at or before the seam) and must be dropped. */
int tb__resume_covered(const tb_sub *s, const tb_event *ev);

/* A resumed sub that went live and is now idle keeps only what
 * tb__resume_covered needs (the seam; tb_sub_recovery_info then fails),
 * and an empty queue's ring shrinks back to its first size: an idle
 * client that resumed costs what one that did not does. On s's worker. */
void tb__resume_settle(tb_sub *s);

/* Frees s's replay state (tb_sub_close). */
void tb__resume_free(tb_sub *s);

#endif /* TASKBUS_HISTORY_H */
