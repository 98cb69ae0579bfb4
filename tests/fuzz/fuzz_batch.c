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

#define FLAGS (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL)

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

/* The same item as the parser's: name, and data as it carries it. */
static int same_item(const tb_event_item *it, json_t *o)
{
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name) || strcmp(json_string_value(name), it->name))
        return 0;
    const char *d;
    size_t len;
    char *owned;
    FUZZ_CHECK(
        tb__json_event_data(json_object_get(o, "data"), &d, &len, &owned) == 0);
    int same = len == it->len && memcmp(d, it->data, len) == 0;
    free(owned);
    return same;
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

    if (fmt == TB__BATCH_ARRAY) {
        /* Against jansson on the whole body: the array's elements nest
         * one level deeper than the items. */
        json_t *all = tb__json_loadb(body, len, FLAGS, max_depth + 1, NULL);
        if (rc == 0) {
            FUZZ_CHECK(json_is_array(all));
            FUZZ_CHECK(json_array_size(all) == b.n);
            for (size_t i = 0; i < b.n; i++)
                FUZZ_CHECK(same_item(&b.items[i], json_array_get(all, i)));
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
