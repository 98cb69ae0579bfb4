/* bus_rx.c - receiving for every bus: a message from the backend becomes an
 * event in the workers' inboxes (name and size checks, interest, envelope,
 * duplicates, batches). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "history.h"
#include "internal.h"

#define DEDUPE_IDS 16384 /* event ids remembered to drop resent duplicates */
#define CATCHUP_PAGE 512 /* history entries asked for per catch-up read */
/* Messages parked while a catch-up read is under way: beyond, they are
 * dropped (the history has them; the next read fetches them). */
#define PARK_MAX_BYTES (32 << 20)
#define PARK_MAX_MSGS 65536
/* A catch-up read that failed (not connected, timed out, a bad answer) is
 * tried again this much later, or at the reconnection. */
#define CATCHUP_RETRY_US 1000000
#define DEDUPE_SLOTS (2 * DEDUPE_IDS) /* hash slots; a power of two */
#define RX_BATCH 256                  /* received events handed over at once */

typedef struct seen {
    uint64_t hash;
    char id[TB_EVENT_ID_MAX]; /* "" when unused */
} seen;

struct tb__bus_rx {
    tb_app *app;
    char who[32];     /* "redis bus", for logs */
    char prefix[128]; /* "<ns>:event:" */
    size_t prefix_len;
    size_t max_event_size;
    size_t raw_max; /* largest message worth decoding */
    void (*schedule)(void *ud);
    void *ud;
    atomic_uint_fast64_t received, duplicates, malformed, oversize;
    tb__ratelog log;
    /* Decoded events not yet handed to the workers: delivered together
     * (tb__bus_rx_flush), one lock and one wake-up per worker per batch
     * instead of per event. */
    tb_event *batch[RX_BATCH];
    size_t nbatch;
    seen *ring;      /* DEDUPE_IDS ids, oldest overwritten first */
    uint32_t *slots; /* DEDUPE_SLOTS: ring index + 1, 0 when empty */
    uint32_t ring_pos;

    /* Positions (tb__bus_rx_track): see bus.h. */
    int (*fetch)(void *ud, uint64_t after, size_t count);
    void (*rollback)(void *ud);
    void *fetch_ud;
    char epoch[TB_EPOCH_MAX];      /* of last; "" while unknown */
    uint64_t last;                 /* the last position delivered (or the
                                      baseline read at the first connection) */
    char last_id[TB_EVENT_ID_MAX]; /* the event id at last; "" unknown */
    int unparking;                 /* the message at hand was parked */
    int catching;                  /* a catch-up read is under way: park */
    uint64_t reads;                /* catch-up reads sent */
    int baseline;     /* the baseline read is under way: do not park */
    uint64_t top;     /* the history's end at the last read */
    int64_t retry_at; /* a failed read is tried again then; 0: none */
    struct parked *park_head, *park_tail;
    size_t park_n, park_bytes;
    tb__ratelog pos_log;
};

/* A message received while catching up, kept in order. */
typedef struct parked {
    struct parked *next;
    uint64_t reads; /* rx->reads when it was parked */
    size_t chlen, len;
    char data[]; /* channel, then message */
} parked;

/* ---------------------------------------------------------------- dedupe */

static uint32_t slot_home(const tb__bus_rx *rx, uint32_t v)
{
    return (uint32_t)rx->ring[v - 1].hash & (DEDUPE_SLOTS - 1);
}

/* Removes the slot holding ring index idx (backward-shift deletion keeps
 * linear probing correct without tombstones). */
static void dedupe_forget(tb__bus_rx *rx, uint32_t idx)
{
    uint32_t mask = DEDUPE_SLOTS - 1;
    uint32_t i = slot_home(rx, idx + 1);
    while (rx->slots[i] != idx + 1) {
        if (!rx->slots[i])
            return; /* not there: nothing to do */
        i = (i + 1) & mask;
    }
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!rx->slots[j])
            break;
        uint32_t k = slot_home(rx, rx->slots[j]);
        /* The entry at j may stay if its home lies cyclically in (i, j]. */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        rx->slots[i] = rx->slots[j];
        i = j;
    }
    rx->slots[i] = 0;
}

/* Returns 1 if id was seen among the last DEDUPE_IDS ids, else records it
 * (forgetting the oldest) and returns 0. */
static int dedupe_seen(tb__bus_rx *rx, const char *id)
{
    uint32_t mask = DEDUPE_SLOTS - 1;
    size_t len = strlen(id);
    uint64_t h = tb__hash_str(id, len);
    for (uint32_t i = (uint32_t)h & mask; rx->slots[i]; i = (i + 1) & mask) {
        const seen *s = &rx->ring[rx->slots[i] - 1];
        if (s->hash == h && strcmp(s->id, id) == 0)
            return 1;
    }
    uint32_t idx = rx->ring_pos;
    rx->ring_pos = (rx->ring_pos + 1) % DEDUPE_IDS;
    if (rx->ring[idx].id[0])
        dedupe_forget(rx, idx);
    rx->ring[idx].hash = h;
    snprintf(rx->ring[idx].id, sizeof rx->ring[idx].id, "%s", id);
    uint32_t i = (uint32_t)h & mask;
    while (rx->slots[i])
        i = (i + 1) & mask;
    rx->slots[i] = idx + 1;
    return 0;
}

/* ---------------------------------------------------------------- receive */

/* Drops a message that cannot be delivered; counted in *counter and logged
 * (rate-limited) with its channel. */
static void drop_message(tb__bus_rx *rx, atomic_uint_fast64_t *counter,
                         const char *channel, size_t chlen, size_t len,
                         const char *why)
{
    atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
    if (tb__ratelog_ok(&rx->log, tb__mono_us())) {
        char ch[160];
        tb__log(TB_LOG_WARN,
                "%s: dropped a message of %zu bytes on channel %s: %s", rx->who,
                len, tb__log_printable(ch, sizeof ch, channel, chlen), why);
    }
}

void tb__bus_rx_refuse(tb__bus_rx *rx, const char *channel, size_t chlen,
                       size_t len, const char *why)
{
    drop_message(rx, &rx->malformed, channel, chlen, len, why);
}

void tb__bus_rx_flush(tb__bus_rx *rx)
{
    if (!rx->nbatch)
        return;
    tb__app_deliver_batch(rx->app, rx->batch, rx->nbatch);
    for (size_t i = 0; i < rx->nbatch; i++)
        tb_event_unref(rx->batch[i]);
    rx->nbatch = 0;
}

/* Takes ev's reference into the batch; the batch goes out when full, or
 * when the bus flushes it (it is told to when the batch is started). */
static void batch_push(tb__bus_rx *rx, tb_event *ev)
{
    rx->batch[rx->nbatch++] = ev;
    if (rx->nbatch == 1)
        rx->schedule(rx->ud);
    if (rx->nbatch == RX_BATCH)
        tb__bus_rx_flush(rx);
}

/* Decodes a message whose name and size have been checked, and batches
 * the event unless it is a duplicate. */
static void take(tb__bus_rx *rx, const char *name, const char *channel,
                 size_t chlen, const char *msg, size_t len)
{
    tb_event *ev = NULL;
    const char *why = NULL;
    int rc = tb__envelope_decode(rx->app, name, msg, len, rx->max_event_size,
                                 &ev, &why);
    if (rc == TB_EMSGSIZE) {
        drop_message(rx, &rx->oversize, channel, chlen, len,
                     "data over max_event_size");
        return;
    }
    if (rc == TB_ENOMEM) {
        if (tb__ratelog_ok(&rx->log, tb__mono_us()))
            tb__log(TB_LOG_ERROR, "%s: event %s dropped: out of memory",
                    rx->who, name);
        return;
    }
    if (rc != 0) {
        char whybuf[160];
        snprintf(whybuf, sizeof whybuf, "malformed envelope: %s",
                 why ? why : tb_strerror(rc));
        drop_message(rx, &rx->malformed, channel, chlen, len, whybuf);
        return;
    }
    if (dedupe_seen(rx, tb_event_id(ev))) {
        atomic_fetch_add_explicit(&rx->duplicates, 1, memory_order_relaxed);
        tb_event_unref(ev);
    } else {
        atomic_fetch_add_explicit(&rx->received, 1, memory_order_relaxed);
        batch_push(rx, ev);
    }
}

/* ---------------------------------------------------------- positions */

static void pos_warn(tb__bus_rx *rx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void pos_warn(tb__bus_rx *rx, const char *fmt, ...)
{
    if (!tb__ratelog_ok(&rx->pos_log, tb__mono_us()))
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    tb__log(TB_LOG_WARN, "%s: %s", rx->who, buf);
}

/* Hands a decoded event of the history to the workers as take() does
 * (interest, duplicates, batch); takes a reference of its own. */
static void take_event(tb__bus_rx *rx, tb_event *ev)
{
    tb__name split;
    if (tb__name_split(&split, ev->name) != 0 ||
        !tb__app_wants(rx->app, &split))
        return;
    if (dedupe_seen(rx, tb_event_id(ev))) {
        atomic_fetch_add_explicit(&rx->duplicates, 1, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&rx->received, 1, memory_order_relaxed);
    batch_push(rx, tb_event_ref(ev));
}

/* Appends p to the parked messages. */
static void park_link(tb__bus_rx *rx, parked *p)
{
    p->next = NULL;
    if (rx->park_tail)
        rx->park_tail->next = p;
    else
        rx->park_head = p;
    rx->park_tail = p;
    rx->park_n++;
    rx->park_bytes += p->chlen + p->len;
}

static void park(tb__bus_rx *rx, const char *ch, size_t chlen, const char *msg,
                 size_t len)
{
    if (rx->park_n >= PARK_MAX_MSGS ||
        rx->park_bytes + chlen + len > PARK_MAX_BYTES)
        return; /* the history has it: the next read brings it */
    parked *p = malloc(sizeof *p + chlen + len);
    if (!p)
        return;
    p->reads = rx->reads;
    p->chlen = chlen;
    p->len = len;
    memcpy(p->data, ch, chlen);
    memcpy(p->data + chlen, msg, len);
    park_link(rx, p);
}

/* The last position delivered is now seq, of the event id (len bytes;
 * NULL: not known, as for a baseline or a hole). */
static void set_last(tb__bus_rx *rx, uint64_t seq, const char *id, size_t len)
{
    rx->last = seq;
    if (!id || len >= sizeof rx->last_id)
        len = 0;
    memcpy(rx->last_id, id ? id : "", len);
    rx->last_id[len] = '\0';
}

/* The id at the head of an envelope (every encoder starts it with
 * {"id":"...": bus_redis.c's note_echo relies on it too) into *len
 * bytes at the returned pointer; NULL when it does not start so. */
static const char *head_id(const char *msg, size_t len, size_t *idlen)
{
    static const char head[] = "{\"id\":\"";
    size_t h = sizeof head - 1;
    if (len <= h || memcmp(msg, head, h) != 0)
        return NULL;
    const char *end = memchr(msg + h, '"', len - h);
    if (!end || end == msg + h ||
        memchr(msg + h, '\\', (size_t)(end - msg - h)))
        return NULL;
    *idlen = (size_t)(end - msg - h);
    return msg + h;
}

/* A read that could not be sent or failed tells nothing of what the
 * history holds: nothing is lost yet. The parked messages and the last
 * position stay; live ones keep being parked; the read is tried again
 * after CATCHUP_RETRY_US (tb__bus_rx_tick) or at the reconnection. */
static void retry_later(tb__bus_rx *rx, int rc)
{
    rx->catching = 1;
    rx->retry_at = tb__mono_us() + CATCHUP_RETRY_US;
    pos_warn(rx,
             "cannot read the history after %s-%" PRIu64 " (%s): trying "
             "again in %d ms",
             rx->epoch, rx->last, tb_strerror(rc), CATCHUP_RETRY_US / 1000);
}

static void catch_up(tb__bus_rx *rx)
{
    rx->catching = 1;
    rx->retry_at = 0;
    rx->reads++;
    int rc = rx->fetch(rx->fetch_ud, rx->last, CATCHUP_PAGE);
    if (rc)
        retry_later(rx, rc);
}

/* What the position p of a live message means: 1 to take it, 0 when it
 * was dropped (a duplicate) or parked. */
static int track(tb__bus_rx *rx, const tb__pos *p, const char *ch, size_t chlen,
                 const char *msg, size_t len)
{
    if (rx->catching) {
        park(rx, ch, chlen, msg, len);
        return 0;
    }
    size_t idlen = 0;
    const char *id;
    if (!rx->epoch[0]) {
        memcpy(rx->epoch, p->epoch, sizeof rx->epoch);
        id = head_id(msg, len, &idlen);
        set_last(rx, p->seq, id, idlen);
        return 1;
    }
    if (strcmp(rx->epoch, p->epoch) != 0) {
        /* Redis lost the history, or the message is forged or stale: the
         * history decides. Taken for a new epoch on its word alone, a
         * forged one would make us read the whole history again and again
         * (unpark drops it once a read has said otherwise). */
        park(rx, ch, chlen, msg, len);
        catch_up(rx);
        return 0;
    }
    if (p->seq <= rx->last) {
        /* Parked, and the read after it brought it: a duplicate. Live, it
         * may be one too (a resend), but also an event published before
         * the baseline read and still on its way, or a position a Redis
         * failover gave out again (replication is asynchronous): the
         * event id decides. */
        if (!rx->unparking)
            return 1;
        atomic_fetch_add_explicit(&rx->duplicates, 1, memory_order_relaxed);
        return 0;
    }
    if (p->seq == rx->last + 1) {
        id = head_id(msg, len, &idlen);
        set_last(rx, p->seq, id, idlen);
        return 1;
    }
    park(rx, ch, chlen, msg, len);
    catch_up(rx);
    return 0;
}

static int message(tb__bus_rx *rx, const char *ch, size_t chlen,
                   const char *msg, size_t len);

/* Runs the parked messages through again, in order (one may start
 * another catch-up: the rest are parked again behind it). One received
 * before the last read was sent was published before that read ran: if
 * it is beyond the history's end in our epoch, no script gave out its
 * position: dropped as malformed. */
static void unpark(tb__bus_rx *rx)
{
    parked *p = rx->park_head;
    uint64_t reads = rx->reads;
    rx->park_head = rx->park_tail = NULL;
    rx->park_n = rx->park_bytes = 0;
    while (p) {
        parked *next = p->next;
        tb__pos pos;
        int before = p->reads < reads &&
                     tb__pos_from_tail(p->data + p->chlen, p->len, &pos) == 0;
        if (rx->catching) {
            /* Parked again behind a new read, with the read it came
             * before: what that read's answer says holds for it too. */
            park_link(rx, p);
            p = next;
            continue;
        }
        if (before && rx->epoch[0] && strcmp(pos.epoch, rx->epoch) != 0) {
            /* A read after it answered with the history's epoch: this one
             * is forged, or from before Redis lost the history. Tracked
             * again, it would start another read of the whole history. */
            drop_message(rx, &rx->malformed, p->data, p->chlen, p->len,
                         "position of another epoch than the history's");
        } else if (before && strcmp(pos.epoch, rx->epoch) == 0 &&
                   pos.seq > rx->top) {
            drop_message(rx, &rx->malformed, p->data, p->chlen, p->len,
                         "position beyond the history's end");
        } else {
            rx->unparking = 1;
            message(rx, p->data, p->chlen, p->data + p->chlen, p->len);
            rx->unparking = 0;
        }
        free(p);
        p = next;
    }
}

void tb__bus_rx_track(tb__bus_rx *rx,
                      int (*fetch)(void *ud, uint64_t after, size_t count),
                      void *ud)
{
    rx->fetch = fetch;
    rx->fetch_ud = ud;
}

void tb__bus_rx_on_rollback(tb__bus_rx *rx, void (*rollback)(void *ud))
{
    rx->rollback = rollback;
}

void tb__bus_rx_connected(tb__bus_rx *rx)
{
    if (!rx->fetch)
        return;
    if (rx->epoch[0]) {
        catch_up(rx);
        return;
    }
    rx->baseline = 1;
    if (rx->fetch(rx->fetch_ud, 0, 0) != 0)
        rx->baseline = 0;
}

void tb__bus_rx_epoch(tb__bus_rx *rx, char out[TB_EPOCH_MAX])
{
    memcpy(out, rx->epoch, TB_EPOCH_MAX);
}

void tb__bus_rx_last(tb__bus_rx *rx, char epoch[TB_EPOCH_MAX], uint64_t *seq,
                     char id[TB_EVENT_ID_MAX])
{
    memcpy(epoch, rx->epoch, TB_EPOCH_MAX);
    *seq = rx->last;
    memcpy(id, rx->last_id, TB_EVENT_ID_MAX);
}

void tb__bus_rx_disconnected(tb__bus_rx *rx)
{
    rx->catching = 0;
    rx->retry_at = 0; /* the reconnection reads */
    rx->baseline = 0;
}

void tb__bus_rx_fetched(tb__bus_rx *rx, int status, const tb__hist_page *pg)
{
    if (rx->baseline) {
        rx->baseline = 0;
        if (status == 0 && !rx->epoch[0] && pg->epoch[0]) {
            memcpy(rx->epoch, pg->epoch, sizeof rx->epoch);
            set_last(rx, pg->top, NULL, 0);
            rx->top = pg->top;
        }
        return;
    }
    if (!rx->catching)
        return; /* a read of a connection that is gone */
    if (status != 0) {
        retry_later(rx, status);
        return;
    }
    if (!pg->epoch[0] || strcmp(pg->epoch, rx->epoch) != 0) {
        /* Redis lost the history: our position means nothing there. */
        pos_warn(rx,
                 "the history's epoch is now %s (was %s): Redis lost it; "
                 "events published meanwhile may be lost",
                 pg->epoch[0] ? pg->epoch : "(none yet)", rx->epoch);
        memcpy(rx->epoch, pg->epoch, sizeof rx->epoch);
        set_last(rx, 0, NULL, 0);
        if (pg->epoch[0]) {
            catch_up(rx); /* everything of the new epoch */
            return;
        }
        rx->catching = 0;
        rx->top = 0;
        unpark(rx);
        return;
    }
    rx->top = pg->top;
    atomic_fetch_add_explicit(&rx->app->hist_reads, 1, memory_order_relaxed);
    if (pg->top < rx->last) {
        /* Same epoch, but the end is before what we delivered: Redis
         * came back from an older snapshot and will give those positions
         * out again. A new epoch tells resuming clients so. */
        pos_warn(rx,
                 "the history ends at %s-%" PRIu64 ", before %" PRIu64 " "
                 "delivered here: Redis came back from an older snapshot; "
                 "starting the history over in a new epoch",
                 rx->epoch, pg->top, rx->last);
        if (rx->rollback)
            rx->rollback(rx->fetch_ud);
        set_last(rx, pg->top, NULL, 0);
    }
    for (size_t i = 0; i < pg->n; i++) {
        tb_event *ev = pg->evs[i];
        if (ev->seq <= rx->last)
            continue;
        atomic_fetch_add_explicit(&rx->app->hist_recovered, 1,
                                  memory_order_relaxed);
        if (ev->seq > rx->last + 1)
            atomic_fetch_add_explicit(&rx->app->hist_lost,
                                      ev->seq - rx->last - 1,
                                      memory_order_relaxed);
        if (ev->seq > rx->last + 1)
            pos_warn(rx,
                     "%" PRIu64 " event(s) after %s-%" PRIu64 " are no longer "
                     "in the history (history_size, history_ttl): lost",
                     ev->seq - rx->last - 1, rx->epoch, rx->last);
        const char *eid = tb_event_id(ev);
        set_last(rx, ev->seq, eid, strlen(eid));
        take_event(rx, ev);
    }
    if (pg->seen == CATCHUP_PAGE) {
        /* More; entries skipped at the page's end (undecodable here,
         * logged by the bus) are a hole, and the next read starts after
         * them. */
        if (pg->seen_to > rx->last) {
            atomic_fetch_add_explicit(&rx->app->hist_lost,
                                      pg->seen_to - rx->last,
                                      memory_order_relaxed);
            set_last(rx, pg->seen_to, NULL, 0);
        }
        catch_up(rx);
        return;
    }
    if (rx->last < pg->top) {
        atomic_fetch_add_explicit(&rx->app->hist_lost, pg->top - rx->last,
                                  memory_order_relaxed);
        pos_warn(rx,
                 "%" PRIu64 " event(s) after %s-%" PRIu64 " are not in the "
                 "history: lost",
                 pg->top - rx->last, rx->epoch, rx->last);
        set_last(rx, pg->top, NULL, 0);
    }
    rx->catching = 0;
    unpark(rx);
}

int tb__bus_rx_message(tb__bus_rx *rx, const char *ch, size_t chlen,
                       const char *msg, size_t len)
{
    return message(rx, ch, chlen, msg, len);
}

static int message(tb__bus_rx *rx, const char *ch, size_t chlen,
                   const char *msg, size_t len)
{
    char name[TB_EVENT_NAME_MAX + 1];
    size_t nlen = chlen > rx->prefix_len ? chlen - rx->prefix_len : 0;
    if (!nlen || memcmp(ch, rx->prefix, rx->prefix_len) != 0 ||
        nlen > TB_EVENT_NAME_MAX || memchr(ch + rx->prefix_len, 0, nlen)) {
        drop_message(rx, &rx->malformed, ch, chlen, len, "invalid event name");
        return TB_EINVAL;
    }
    memcpy(name, ch + rx->prefix_len, nlen);
    name[nlen] = '\0';
    /* Split once: this validates the name and serves the interest check. */
    tb__name split;
    if (tb__name_split(&split, name) != 0) {
        drop_message(rx, &rx->malformed, ch, chlen, len, "invalid event name");
        return TB_EINVAL;
    }
    if (len > rx->raw_max) {
        drop_message(rx, &rx->oversize, ch, chlen, len,
                     "too large for max_event_size");
        return TB_EMSGSIZE;
    }
    /* Positions are tracked whoever listens: a skipped event is not a
     * gap. */
    tb__pos pos;
    if (rx->fetch && tb__pos_from_tail(msg, len, &pos) == 0 &&
        !track(rx, &pos, ch, chlen, msg, len))
        return 0;
    /* Nobody in this process listens for it: spend nothing more on it
     * (decoding is most of a received event's cost). */
    if (tb__app_wants(rx->app, &split))
        take(rx, name, ch, chlen, msg, len);
    return 0;
}

void tb__bus_rx_tick(tb__bus_rx *rx, int64_t now_us)
{
    if (rx->retry_at && now_us >= rx->retry_at && rx->fetch)
        catch_up(rx);
    tb__ratelog_flush(&rx->log, now_us);
    tb__ratelog_flush(&rx->pos_log, now_us);
}

void tb__bus_rx_status(tb__bus_rx *rx, tb_bus_info *out)
{
    out->received = atomic_load(&rx->received);
    out->duplicates = atomic_load(&rx->duplicates);
    out->malformed = atomic_load(&rx->malformed);
    out->oversize = atomic_load(&rx->oversize);
}

/* ---------------------------------------------------------------- life */

tb__bus_rx *tb__bus_rx_new(tb_app *app, const char *who, const char *prefix,
                           void (*schedule)(void *ud), void *ud)
{
    tb__bus_rx *rx = calloc(1, sizeof *rx);
    if (!rx)
        return NULL;
    rx->ring = calloc(DEDUPE_IDS, sizeof *rx->ring);
    rx->slots = calloc(DEDUPE_SLOTS, sizeof *rx->slots);
    if (!rx->ring || !rx->slots) {
        tb__bus_rx_free(rx);
        return NULL;
    }
    rx->app = app;
    snprintf(rx->who, sizeof rx->who, "%s", who);
    rx->prefix_len =
        (size_t)snprintf(rx->prefix, sizeof rx->prefix, "%s", prefix);
    if (rx->prefix_len >= sizeof rx->prefix)
        rx->prefix_len = sizeof rx->prefix - 1;
    rx->schedule = schedule;
    rx->ud = ud;
    /* An envelope is bigger than its data (JSON escapes up to 6 bytes per
     * byte, numbers may be rewritten longer): the exact check is
     * tb__envelope_decode's; this one only spares us parsing a message no
     * envelope of an acceptable event could be. */
    size_t m = app->cfg.core.max_event_size;
    rx->max_event_size = m;
    rx->raw_max = m > (SIZE_MAX - 65536) / 8 ? SIZE_MAX : m * 8 + 65536;
    atomic_init(&rx->received, 0);
    atomic_init(&rx->duplicates, 0);
    atomic_init(&rx->malformed, 0);
    atomic_init(&rx->oversize, 0);
    rx->log.who = rx->who;
    rx->log.what = "dropped-message lines";
    rx->pos_log.who = rx->who;
    rx->pos_log.what = "history lines";
    return rx;
}

void tb__bus_rx_free(tb__bus_rx *rx)
{
    if (!rx)
        return;
    for (size_t i = 0; i < rx->nbatch; i++)
        tb_event_unref(rx->batch[i]);
    while (rx->park_head) {
        parked *p = rx->park_head;
        rx->park_head = p->next;
        free(p);
    }
    free(rx->ring);
    free(rx->slots);
    free(rx);
}
