/* bus_rx.c - receiving for every bus: a message from the backend becomes an
 * event in the workers' inboxes (name and size checks, interest, envelope,
 * duplicates, batches). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "internal.h"

#define DEDUPE_IDS 16384 /* event ids remembered to drop resent duplicates */
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
};

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

int tb__bus_rx_message(tb__bus_rx *rx, const char *ch, size_t chlen,
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
    /* Nobody in this process listens for it: spend nothing more on it
     * (decoding is most of a received event's cost). */
    if (tb__app_wants(rx->app, &split))
        take(rx, name, ch, chlen, msg, len);
    return 0;
}

void tb__bus_rx_tick(tb__bus_rx *rx, int64_t now_us)
{
    tb__ratelog_flush(&rx->log, now_us);
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
    return rx;
}

void tb__bus_rx_free(tb__bus_rx *rx)
{
    if (!rx)
        return;
    for (size_t i = 0; i < rx->nbatch; i++)
        tb_event_unref(rx->batch[i]);
    free(rx->ring);
    free(rx->slots);
    free(rx);
}
