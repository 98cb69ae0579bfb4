/* fuzz_batch.c - the body of POST /events (service/batch.c): a JSON array
 * or NDJSON of {"name","data"} items. What it accepts is within the limits
 * and valid item by item, and (for arrays) is what jansson reads from the
 * whole body; a body jansson reads as an array within the limits is never
 * refused as malformed; a refusal names a known code and an item in range. */
#include <jansson.h>

#include "batch.h"
#include "fuzz.h"
#include "envelope.h"
#include "json.h"

/* The parser's (batch.c): integers as reals, so that one beyond int64 is
 * JSON as it is there. */
#define FLAGS                                                                  \
    (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL |               \
     JSON_DECODE_INT_AS_REAL)

static const char *const codes[] = {"bad_batch", "bad_json",  "bad_item",
                                    "bad_name",  "too_large", "too_many_events",
                                    "internal"};

static int known_code(const char *c)
{
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (!strcmp(c, codes[i]))
            return 1;
    return 0;
}

/* The same item as the parser's: name, and data as it carries it (a
 * string's text, null or none empty, else bytes of the body that jansson
 * reads as the same value). */
static int same_item(const tb_event_item *it, json_t *o, const char *body,
                     size_t len)
{
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name) || strcmp(json_string_value(name), it->name))
        return 0;
    json_t *data = json_object_get(o, "data");
    if (json_is_string(data))
        return it->len == json_string_length(data) &&
               memcmp(it->data, json_string_value(data), it->len) == 0;
    if (!data || json_is_null(data))
        return it->len == 0;
    const char *d = it->data;
    if (d < body || d + it->len > body + len)
        return 0; /* not the bytes sent */
    json_t *v = json_loadb(d, it->len, FLAGS, NULL);
    int same = json_equal(v, data);
    json_decref(v);
    return same;
}

/* NDJSON against jansson line by line (same flags and depth): what is
 * accepted is every non-blank line's object; a refusal of an item names
 * its line and index, every line before it is an item jansson reads, and
 * bad_json is what jansson refuses. */
static void check_ndjson(const char *body, size_t len, int rc,
                         const tb__batch *b, const tb__batch_err *e,
                         int max_depth)
{
    size_t bom = tb__batch_bom(body, len), k = 0, line = 0;
    for (size_t i = bom; i <= len;) {
        line++;
        const char *nl = memchr(body + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - body) : len;
        size_t j = i;
        while (j < end &&
               (body[j] == ' ' || body[j] == '\t' || body[j] == '\r'))
            j++;
        if (j < end) {
            json_t *o =
                tb__json_loadb(body + i, end - i, FLAGS, max_depth, NULL);
            if (rc == 0) {
                FUZZ_CHECK(k < b->n);
                FUZZ_CHECK(same_item(&b->items[k], o, body, len));
            } else if (e->index != SIZE_MAX &&
                       strcmp(e->code, "internal") != 0) {
                if (line == e->line) {
                    FUZZ_CHECK(e->index == k);
                    if (!o)
                        FUZZ_CHECK(!strcmp(e->code, "bad_json") ||
                                   !strcmp(e->code, "too_large") ||
                                   !strcmp(e->code, "too_many_events"));
                    else
                        FUZZ_CHECK(strcmp(e->code, "bad_json") != 0);
                    json_decref(o);
                    return;
                }
                FUZZ_CHECK(line < e->line && json_is_object(o));
            }
            json_decref(o);
            k++;
        }
        if (!nl)
            break;
        i = end + 1;
    }
    if (rc == 0)
        FUZZ_CHECK(k == b->n);
    else if (e->index != SIZE_MAX && strcmp(e->code, "internal") != 0)
        FUZZ_CHECK(0); /* the line refused is one of the body's */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    fuzz_quiet_logs();
    /* The first byte: format, event count limit (1..16), data size limit
     * and depth limit. */
    tb__batch_format fmt = data[0] & 1 ? TB__BATCH_NDJSON : TB__BATCH_ARRAY;
    size_t max_events = 1 + ((data[0] >> 1) & 15);
    size_t max_size = data[0] & 32 ? 16 : 1 << 20;
    int max_depth = data[0] & 64 ? 3 : 32;
    char *body = fuzz_cstr(data + 1, size - 1);
    size_t len = size - 1;

    tb__batch b;
    tb__batch_err e;
    int rc = tb__batch_parse(body, len, fmt, max_events, max_size, max_depth,
                             &b, &e);
    if (rc == 0) {
        FUZZ_CHECK(b.n <= max_events);
        for (size_t i = 0; i < b.n; i++) {
            const tb_event_item *it = &b.items[i];
            FUZZ_CHECK(tb_event_name_valid(it->name) == 0);
            FUZZ_CHECK(it->len <= max_size);
            FUZZ_CHECK(tb__utf8_valid(it->data, it->len));
        }
    } else {
        FUZZ_CHECK(rc == TB_EINVAL || rc == TB_ENOMEM);
        FUZZ_CHECK(b.n == 0 && b.items == NULL);
        FUZZ_CHECK(known_code(e.code));
        FUZZ_CHECK(e.status == 400 || e.status == 413 || e.status == 500);
        FUZZ_CHECK(memchr(e.message, '\0', sizeof e.message) != NULL);
        FUZZ_CHECK(e.message[0] != '\0');
        FUZZ_CHECK(e.index == SIZE_MAX || e.index <= max_events);
        FUZZ_CHECK(fmt == TB__BATCH_NDJSON || e.line == 0);
    }

    if (fmt == TB__BATCH_NDJSON)
        check_ndjson(body, len, rc, &b, &e, max_depth);
    if (fmt == TB__BATCH_ARRAY) {
        /* Against jansson on the whole body: the array's elements nest
         * one level deeper than the items. */
        size_t bom = tb__batch_bom(body, len);
        json_t *all =
            tb__json_loadb(body + bom, len - bom, FLAGS, max_depth + 1, NULL);
        if (rc == 0) {
            FUZZ_CHECK(json_is_array(all));
            FUZZ_CHECK(json_array_size(all) == b.n);
            for (size_t i = 0; i < b.n; i++)
                FUZZ_CHECK(
                    same_item(&b.items[i], json_array_get(all, i), body, len));
        } else if (json_is_array(all) && json_array_size(all) <= max_events) {
            /* Well-formed: only an item's content may be refused. */
            FUZZ_CHECK(strcmp(e.code, "bad_batch") != 0);
            FUZZ_CHECK(strcmp(e.code, "bad_json") != 0);
        }
        json_decref(all);
    }
    tb__batch_free(&b);
    free(body);
    return 0;
}
