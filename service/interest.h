/* interest.h - which event names this process's listeners could match
 * (private). */
#ifndef TASKBUS_INTEREST_H
#define TASKBUS_INTEREST_H

#include <pthread.h>
#include <stddef.h>

#include "htab.h"
#include "pattern.h"
#include "taskbus/taskbus.h"

/* The union of every worker's listeners, as patterns with counts, so that
 * a bus can drop an event nobody in this process listens for before it
 * spends anything on it (the Redis bus decodes nothing for such events).
 * Workers update it only when their own index changes shape: the first or
 * last listener of an exact name on that worker, and every wildcard
 * listener. Thread-safe. */
typedef struct tb__interest_entry tb__interest_entry;

typedef struct tb__interest {
    pthread_mutex_t mu;
    tb__htab table; /* pattern text -> entry */
    /* Entries with wildcards again, by literal prefix (tb__pattern_prefix;
     * several share one), and how many there are of each prefix depth: a
     * name is matched only against the patterns that begin as it does. */
    tb__htab prefixes; /* prefix -> entries */
    int depths[TB_EVENT_SEGMENTS_MAX];
    size_t nexact, nwild; /* distinct patterns of each kind */
} tb__interest;

void tb__interest_init(tb__interest *in);
void tb__interest_destroy(tb__interest *in);

/* Counts one more listener for p. 0 or TB_ENOMEM. */
int tb__interest_add(tb__interest *in, const tb__pattern *p);
/* Counts one fewer; p must have been added. */
void tb__interest_remove(tb__interest *in, const tb__pattern *p);

/* 1 if some listener's pattern could match the event name n, else 0. */
int tb__interest_match(tb__interest *in, const tb__name *n);

#endif /* TASKBUS_INTEREST_H */
