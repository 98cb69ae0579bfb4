/* htab.c - an intrusive, chained hash table keyed by strings. */
#include "htab.h"

#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"
#include "pattern.h"

void tb__htab_init(tb__htab *t)
{
    t->buckets = NULL;
    t->nbuckets = 0;
    t->count = 0;
}

void tb__htab_destroy(tb__htab *t)
{
    free(t->buckets);
    tb__htab_init(t);
}

static int grow(tb__htab *t)
{
    size_t nb = t->nbuckets ? t->nbuckets * 2 : 64;
    tb__hnode **b = calloc(nb, sizeof *b);
    if (!b)
        return TB_ENOMEM;
    /* Re-insert oldest-first within each chain is not needed for
     * correctness, but keeping same-key elements newest-first is: walk each
     * old chain and append to the tail of the new chain to keep order. */
    for (size_t i = 0; i < t->nbuckets; i++) {
        tb__hnode *n = t->buckets[i];
        while (n) {
            tb__hnode *next = n->next;
            tb__hnode **pp = &b[n->hash & (nb - 1)];
            while (*pp)
                pp = &(*pp)->next;
            n->next = NULL;
            *pp = n;
            n = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
    return 0;
}

int tb__htab_insert(tb__htab *t, tb__hnode *n, const char *key, size_t klen)
{
    if (t->count >= t->nbuckets && grow(t) != 0)
        return TB_ENOMEM;
    n->hash = tb__hash_str(key, klen);
    n->key = key;
    n->klen = klen;
    tb__hnode **head = &t->buckets[n->hash & (t->nbuckets - 1)];
    n->next = *head;
    *head = n;
    t->count++;
    return 0;
}

static int same(const tb__hnode *n, uint64_t h, const char *key, size_t klen)
{
    return n->hash == h && n->klen == klen && memcmp(n->key, key, klen) == 0;
}

tb__hnode *tb__htab_find(const tb__htab *t, const char *key, size_t klen)
{
    if (!t->nbuckets)
        return NULL;
    uint64_t h = tb__hash_str(key, klen);
    for (tb__hnode *n = t->buckets[h & (t->nbuckets - 1)]; n; n = n->next)
        if (same(n, h, key, klen))
            return n;
    return NULL;
}

tb__hnode *tb__htab_next_same(const tb__hnode *n)
{
    for (tb__hnode *m = n->next; m; m = m->next)
        if (same(m, n->hash, n->key, n->klen))
            return m;
    return NULL;
}

void tb__htab_remove(tb__htab *t, tb__hnode *n)
{
    tb__hnode **pp = &t->buckets[n->hash & (t->nbuckets - 1)];
    while (*pp != n)
        pp = &(*pp)->next;
    *pp = n->next;
    n->next = NULL;
    t->count--;
}
