/* fuzz_json.c - JSON from outside (service/json.c): tb__json_loadb with
 * each flag set the service uses and a depth limit from the first byte;
 * what it accepts nests no deeper than the limit and dumps back to JSON
 * that parses to the same value. */
#include <jansson.h>

#include "fuzz.h"
#include "json.h"

/* The nesting depth of v: a scalar 0, "[]" 1. */
static int depth(json_t *v)
{
    int d = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            int de = depth(e);
            d = de > d ? de : d;
        }
        return d + 1;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e)
        {
            int de = depth(e);
            d = de > d ? de : d;
        }
        return d + 1;
    }
    return 0;
}

/* The flag sets of the callers: envelopes and messages, event data, API
 * bodies and kind arguments, websocket messages. */
static const size_t flag_sets[] = {
    JSON_ALLOW_NUL,
    JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES,
    JSON_REJECT_DUPLICATES,
    JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
    JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int max_depth = data[0] % 80;
    size_t flags = flag_sets[(data[0] / 80) % 3 + (data[0] >= 240 ? 3 : 0)];
    char *text = fuzz_cstr(data + 1, size - 1);
    size_t len = size - 1;

    int deep = tb__json_too_deep(text, len, max_depth);
    json_error_t err;
    json_t *v = tb__json_loadb(text, len, flags, max_depth, &err);
    FUZZ_CHECK(memchr(err.text, '\0', sizeof err.text) != NULL);
    if (deep) {
        FUZZ_CHECK(v == NULL);
        FUZZ_CHECK(err.position >= 0 && (size_t)err.position < len);
        FUZZ_CHECK(strchr("[{", text[err.position]) != NULL);
    }
    if (v) {
        FUZZ_CHECK(depth(v) <= max_depth);
        char *dumped = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        FUZZ_CHECK(dumped != NULL);
        FUZZ_CHECK(!tb__json_too_deep(dumped, strlen(dumped), max_depth));
        json_t *again = tb__json_loadb(
            dumped, strlen(dumped), flags | JSON_DECODE_ANY, max_depth, NULL);
        FUZZ_CHECK(again != NULL);
        FUZZ_CHECK(json_equal(v, again));
        json_decref(again);
        free(dumped);
        json_decref(v);
    }
    free(text);
    return 0;
}
