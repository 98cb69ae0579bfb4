/* batch.h - the body of POST /events: a batch of {"name","data"} items. */
#ifndef TASKBUS_BATCH_H
#define TASKBUS_BATCH_H

#include <stddef.h>

#include <jansson.h>

#include "taskbus/taskbus.h"

typedef enum tb__batch_format {
    TB__BATCH_ARRAY,  /* application/json: [{"name","data"}, ...] */
    TB__BATCH_NDJSON, /* application/x-ndjson: one object a line */
} tb__batch_format;

/* A parsed batch: items[i].name (and a string's text) point into what the
 * batch owns, other data into the body parsed. */
typedef struct tb__batch {
    tb_event_item *items;
    size_t *lines; /* each item's NDJSON line (from 1), 0 in an array */
    size_t n;
    char **owned; /* each item's name, then its string data's text */
    size_t cap;
    size_t fast; /* items read by the scanner, not jansson (for tests) */
} tb__batch;

/* Why a body was refused: an HTTP status, a stable code, a message, and
 * the item at fault (index: its number among the items, from 0; line: its
 * NDJSON line, from 1, else 0), or index SIZE_MAX when the body as a
 * whole is at fault. */
typedef struct tb__batch_err {
    int status;
    const char *code;
    size_t index;
    size_t line;
    char message[256];
} tb__batch_err;

/* Parses body (len bytes, from outside: anything) into *out. Each item is
 * a JSON object {"name": "<event name>", "data": <any>} (no other member;
 * "data" optional). Its data: a string is carried as its text (as a
 * websocket dispatch's), null or no "data" as empty, anything else as its
 * bytes exactly as sent (as POST /events/{name} carries its body: 1.10
 * stays 1.10), and max_event_size counts those bytes. A leading UTF-8 BOM
 * is skipped. An item nests at most max_depth levels (so its data
 * max_depth - 1, what single events carry as JSON). NDJSON: one item a
 * line ("\n" or "\r\n"); lines of blanks only are skipped and not counted
 * as items. At most max_events items (else 413 too_many_events, found
 * before the rest is parsed), each with at most max_event_size bytes of
 * data (413 too_large).
 *
 * 0 and *out filled (free it with tb__batch_free; its data points into
 * body, which must outlive it), or TB_EINVAL with *err
 * filled and *out empty; TB_ENOMEM (err says so: 500 internal). */
int tb__batch_parse(const char *body, size_t len, tb__batch_format fmt,
                    size_t max_events, size_t max_event_size, int max_depth,
                    tb__batch *out, tb__batch_err *err);

/* 3 when body starts with a UTF-8 byte order mark (EF BB BF), else 0:
 * what the parser and the format sniffers skip. */
size_t tb__batch_bom(const char *body, size_t len);

/* Tests only: 0 sends every item to jansson, as before the scanner of the
 * common item; 1 (the default) scans it first. Not thread-safe: set it
 * before any parse. */
void tb__batch_set_fast_path(int on);

/* Frees what b holds and empties it; a zeroed or emptied b is fine. */
void tb__batch_free(tb__batch *b);

#endif /* TASKBUS_BATCH_H */
