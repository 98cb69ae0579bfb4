/* htab.h - an intrusive, chained hash table keyed by strings (private). */
#ifndef TASKBUS_HTAB_H
#define TASKBUS_HTAB_H

#include <stddef.h>
#include <stdint.h>

/* Embed a tb__hnode in the element. The table never allocates elements and
 * never owns keys: key points into the element and must stay valid and
 * unchanged while it is in the table. Not thread-safe. Several elements may
 * share a key; tb__htab_find returns the one inserted last, and the others
 * follow it through tb__htab_next_same. */
typedef struct tb__hnode {
    struct tb__hnode *next;
    uint64_t hash;
    const char *key;
    size_t klen;
} tb__hnode;

typedef struct tb__htab {
    tb__hnode **buckets;
    size_t nbuckets; /* a power of two, or 0 before the first insert */
    size_t count;
} tb__htab;

void tb__htab_init(tb__htab *t);
/* Frees the bucket array only (elements are the caller's). */
void tb__htab_destroy(tb__htab *t);
/* Inserts n under key (klen bytes). Returns 0 or TB_ENOMEM. */
int tb__htab_insert(tb__htab *t, tb__hnode *n, const char *key, size_t klen);
/* The newest element with that key, or NULL. */
tb__hnode *tb__htab_find(const tb__htab *t, const char *key, size_t klen);
/* The next-older element after n with n's key, or NULL. */
tb__hnode *tb__htab_next_same(const tb__hnode *n);
/* Unlinks n, which must be in t. */
void tb__htab_remove(tb__htab *t, tb__hnode *n);

#endif /* TASKBUS_HTAB_H */
