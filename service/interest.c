/* interest.c - which event names this process's listeners could match. */
#include "interest.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"

/* The wildcard entries of one literal prefix. */
typedef struct tb__interest_group {
    tb__hnode node; /* first; keyed by prefix */
    tb__interest_entry *head;
    int depth;
    char prefix[];
} tb__interest_group;

struct tb__interest_entry {
    tb__hnode node; /* first: the table's elements are entries */
    tb__interest_entry *wprev, *wnext; /* in group */
    tb__interest_group *group;         /* wildcard entries */
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
    tb__htab_init(&in->prefixes);
    memset(in->depths, 0, sizeof in->depths);
    in->nexact = in->nwild = 0;
}

void tb__interest_destroy(tb__interest *in)
{
    /* Every listener is gone by now; free whatever a bug left behind. */
    tb__htab *tables[] = {&in->table, &in->prefixes};
    for (int t = 0; t < 2; t++) {
        for (size_t i = 0; i < tables[t]->nbuckets; i++) {
            tb__hnode *n = tables[t]->buckets[i];
            while (n) {
                tb__hnode *next = n->next;
                free(n);
                n = next;
            }
        }
        tb__htab_destroy(tables[t]);
    }
    pthread_mutex_destroy(&in->mu);
}

static tb__interest_entry *find(tb__interest *in, const tb__pattern *p)
{
    return (tb__interest_entry *)tb__htab_find(&in->table, p->text, p->len);
}

/* Puts wildcard entry e in its prefix's group, made if missing. 0 or
 * TB_ENOMEM. */
static int group_join(tb__interest *in, tb__interest_entry *e)
{
    int depth;
    size_t n = tb__pattern_prefix(&e->pat, &depth);
    tb__interest_group *g =
        (tb__interest_group *)tb__htab_find(&in->prefixes, e->pat.text, n);
    if (!g) {
        g = calloc(1, sizeof *g + n + 1);
        if (!g)
            return TB_ENOMEM;
        memcpy(g->prefix, e->pat.text, n);
        g->depth = depth;
        if (tb__htab_insert(&in->prefixes, &g->node, g->prefix, n)) {
            free(g);
            return TB_ENOMEM;
        }
        in->depths[depth]++;
    }
    e->group = g;
    e->wnext = g->head;
    if (g->head)
        g->head->wprev = e;
    g->head = e;
    in->nwild++;
    return 0;
}

static void group_leave(tb__interest *in, tb__interest_entry *e)
{
    tb__interest_group *g = e->group;
    if (e->wprev)
        e->wprev->wnext = e->wnext;
    else
        g->head = e->wnext;
    if (e->wnext)
        e->wnext->wprev = e->wprev;
    in->nwild--;
    if (!g->head) {
        tb__htab_remove(&in->prefixes, &g->node);
        in->depths[g->depth]--;
        free(g);
    }
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
        } else if (group_join(in, e)) {
            tb__htab_remove(&in->table, &e->node);
            free(e);
            rc = TB_ENOMEM;
            goto out;
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
        if (e->exact)
            in->nexact--;
        else
            group_leave(in, e);
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
    } else if (in->nwild) {
        for (int k = 0; k < n->nseg && !hit; k++) {
            if (!in->depths[k])
                continue;
            size_t len = k ? (size_t)n->off[k - 1] + n->seglen[k - 1] : 0;
            tb__interest_group *g =
                (tb__interest_group *)tb__htab_find(&in->prefixes, n->s, len);
            for (e = g ? g->head : NULL; e && !hit; e = e->wnext)
                hit = tb__pattern_match_split(&e->pat, n);
        }
    }
    pthread_mutex_unlock(&in->mu);
    return hit;
}
