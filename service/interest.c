/* interest.c - which event names this process's listeners could match. */
#include "interest.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"

struct tb__interest_entry {
    tb__hnode node; /* first: the table's elements are entries */
    tb__interest_entry *wprev, *wnext;
    long count;
    int exact;
    /* Last, and allocated up to its text's NUL only: a distinct pattern
     * (a client's own, say) costs its length, not TB_EVENT_NAME_MAX. */
    tb__pattern pat;
};

void tb__interest_init(tb__interest *in)
{
    pthread_mutex_init(&in->mu, NULL);
    tb__htab_init(&in->table);
    in->wild = NULL;
    in->nexact = in->nwild = 0;
}

void tb__interest_destroy(tb__interest *in)
{
    /* Every listener is gone by now; free whatever a bug left behind. */
    for (size_t i = 0; i < in->table.nbuckets; i++) {
        tb__hnode *n = in->table.buckets[i];
        while (n) {
            tb__hnode *next = n->next;
            free(n);
            n = next;
        }
    }
    tb__htab_destroy(&in->table);
    pthread_mutex_destroy(&in->mu);
}

static tb__interest_entry *find(tb__interest *in, const tb__pattern *p)
{
    return (tb__interest_entry *)tb__htab_find(&in->table, p->text, p->len);
}

int tb__interest_add(tb__interest *in, const tb__pattern *p)
{
    int rc = 0;
    pthread_mutex_lock(&in->mu);
    tb__interest_entry *e = find(in, p);
    if (!e) {
        size_t head = offsetof(tb__interest_entry, pat.text);
        e = calloc(1, head + p->len + 1);
        if (!e) {
            rc = TB_ENOMEM;
            goto out;
        }
        memcpy(&e->pat, p, offsetof(tb__pattern, text) + p->len + 1);
        e->exact = tb__pattern_is_exact(p);
        if (tb__htab_insert(&in->table, &e->node, e->pat.text, e->pat.len)) {
            free(e);
            rc = TB_ENOMEM;
            goto out;
        }
        if (e->exact) {
            in->nexact++;
        } else {
            e->wnext = in->wild;
            if (in->wild)
                in->wild->wprev = e;
            in->wild = e;
            in->nwild++;
        }
    }
    e->count++;
out:
    pthread_mutex_unlock(&in->mu);
    return rc;
}

void tb__interest_remove(tb__interest *in, const tb__pattern *p)
{
    pthread_mutex_lock(&in->mu);
    tb__interest_entry *e = find(in, p);
    if (e && --e->count == 0) {
        tb__htab_remove(&in->table, &e->node);
        if (e->exact) {
            in->nexact--;
        } else {
            if (e->wprev)
                e->wprev->wnext = e->wnext;
            else
                in->wild = e->wnext;
            if (e->wnext)
                e->wnext->wprev = e->wprev;
            in->nwild--;
        }
        free(e);
    }
    pthread_mutex_unlock(&in->mu);
}

int tb__interest_match(tb__interest *in, const tb__name *n)
{
    int hit = 0;
    pthread_mutex_lock(&in->mu);
    tb__interest_entry *e =
        in->nexact
            ? (tb__interest_entry *)tb__htab_find(&in->table, n->s, n->len)
            : NULL;
    if (e && e->exact) {
        hit = 1;
    } else {
        for (e = in->wild; e && !hit; e = e->wnext)
            hit = tb__pattern_match_split(&e->pat, n);
    }
    pthread_mutex_unlock(&in->mu);
    return hit;
}
