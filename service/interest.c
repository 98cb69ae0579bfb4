/* interest.c - which event names this process's listeners could match. */
#include "interest.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"

struct tb__interest_entry {
    tb__hnode node;  /* first: the table's elements are entries */
    tb__hnode pnode; /* wildcard entries: in prefixes, by literal prefix */
    long count;
    int exact;
    int depth; /* wildcard entries: the prefix's segments */
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
    /* Every listener is gone by now; free whatever a bug left behind
     * (each entry is in table; prefixes holds some of them again). */
    for (size_t i = 0; i < in->table.nbuckets; i++) {
        tb__hnode *n = in->table.buckets[i];
        while (n) {
            tb__hnode *next = n->next;
            free(n);
            n = next;
        }
    }
    tb__htab_destroy(&in->table);
    tb__htab_destroy(&in->prefixes);
    pthread_mutex_destroy(&in->mu);
}

static tb__interest_entry *find(tb__interest *in, const tb__pattern *p)
{
    return (tb__interest_entry *)tb__htab_find(&in->table, p->text, p->len);
}

/* Puts wildcard entry e in prefixes under its literal prefix. 0 or
 * TB_ENOMEM. */
static int prefix_add(tb__interest *in, tb__interest_entry *e)
{
    size_t n = tb__pattern_prefix(&e->pat, &e->depth);
    if (tb__htab_insert(&in->prefixes, &e->pnode, e->pat.text, n))
        return TB_ENOMEM;
    in->depths[e->depth]++;
    in->nwild++;
    return 0;
}

static void prefix_remove(tb__interest *in, tb__interest_entry *e)
{
    tb__htab_remove(&in->prefixes, &e->pnode);
    in->depths[e->depth]--;
    in->nwild--;
}

static tb__interest_entry *of_pnode(tb__hnode *n)
{
    return n ? (tb__interest_entry *)((char *)n -
                                      offsetof(tb__interest_entry, pnode))
             : NULL;
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
        } else if (prefix_add(in, e)) {
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
            prefix_remove(in, e);
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
            for (tb__hnode *h = tb__htab_find(&in->prefixes, n->s, len);
                 h && !hit; h = tb__htab_next_same(h))
                hit = tb__pattern_match_split(&of_pnode(h)->pat, n);
        }
    }
    pthread_mutex_unlock(&in->mu);
    return hit;
}
