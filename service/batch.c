/* batch.c - parsing the body of POST /events: {"name","data"} items as a
 * JSON array or NDJSON, each checked before any is dispatched. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "json.h"

#define ITEM_FLAGS (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL)

static int fail(tb__batch_err *err, int status, const char *code, size_t index,
                size_t line, const char *fmt, ...)
{
    err->status = status;
    err->code = code;
    err->index = index;
    err->line = line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return status == 500 ? TB_ENOMEM : TB_EINVAL;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t skip_blanks(const char *s, size_t i, size_t len)
{
    while (i < len && is_blank(s[i]))
        i++;
    return i;
}

/* Where the array element starting at i ends: the first ',' or closing
 * bracket outside strings at its own level, or len. Only brackets and
 * strings are followed; the parser judges the element's text. */
static size_t element_end(const char *s, size_t i, size_t len)
{
    size_t depth = 0;
    int in_str = 0;
    for (; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            depth++;
        } else if (c == ']' || c == '}') {
            if (depth == 0)
                return i;
            depth--;
        } else if (c == ',' && depth == 0) {
            return i;
        }
    }
    return len;
}

static int grow(tb__batch *b)
{
    if (b->n < b->cap)
        return 0;
    size_t cap = b->cap ? 2 * b->cap : 16;
    tb_event_item *items = realloc(b->items, cap * sizeof *items);
    if (items)
        b->items = items;
    json_t **objs = items ? realloc(b->objs, cap * sizeof *objs) : NULL;
    if (objs)
        b->objs = objs;
    char **texts = objs ? realloc(b->texts, cap * sizeof *texts) : NULL;
    if (texts)
        b->texts = texts;
    if (!texts)
        return TB_ENOMEM;
    b->cap = cap;
    return 0;
}

typedef struct limits {
    size_t max_events, max_event_size;
    int max_depth;
} limits;

/* Refuses item k: one past the limit. */
static int too_many(const limits *lim, size_t k, size_t line,
                    tb__batch_err *err)
{
    return fail(err, 413, "too_many_events", k, line,
                "a batch carries at most %zu events (core.batch_max_events); "
                "split it",
                lim->max_events);
}

/* Parses one item's text and appends it to b. */
static int add_item(tb__batch *b, const char *text, size_t n, const limits *lim,
                    size_t line, tb__batch_err *err)
{
    size_t k = b->n;
    if (k >= lim->max_events)
        return too_many(lim, k, line, err);
    if (grow(b))
        return fail(err, 500, "internal", k, line, "out of memory");
    json_error_t je;
    json_t *o = tb__json_loadb(text, n, ITEM_FLAGS, lim->max_depth, &je);
    if (!o)
        return fail(err, 400, "bad_json", k, line, "item %zu is not JSON: %s",
                    k, je.text);
    b->objs[k] = o;
    b->texts[k] = NULL;
    b->n++; /* from here on, freed with b */
    if (!json_is_object(o))
        return fail(err, 400, "bad_item", k, line,
                    "item %zu is not an object {\"name\": ..., \"data\": "
                    "...}",
                    k);
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        if (strcmp(key, "name") != 0 && strcmp(key, "data") != 0)
            return fail(err, 400, "bad_item", k, line,
                        "item %zu has a member \"%.64s\": an item has only "
                        "\"name\" and \"data\"",
                        k, key);
    }
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name))
        return fail(err, 400, "bad_item", k, line,
                    "item %zu has no \"name\" string (the event's name)", k);
    const char *nm = json_string_value(name);
    if (strlen(nm) != json_string_length(name) || tb_event_name_valid(nm))
        return fail(err, 400, "bad_name", k, line,
                    "item %zu: \"%.128s\" is not a valid event name (1..%d "
                    "dot-separated segments of [A-Za-z0-9_-], at most %d "
                    "bytes)",
                    k, nm, TB_EVENT_SEGMENTS_MAX, TB_EVENT_NAME_MAX);
    json_t *data = json_object_get(o, "data");
    const char *d;
    size_t len;
    if (tb__json_event_data(data, &d, &len, &b->texts[k]))
        return fail(err, 500, "internal", k, line, "out of memory");
    if (len > lim->max_event_size)
        return fail(err, 413, "too_large", k, line,
                    "item %zu: its data is %zu bytes; max_event_size is %zu", k,
                    len, lim->max_event_size);
    b->items[k] = (tb_event_item){nm, d, len};
    return 0;
}

static int parse_array(tb__batch *b, const char *s, size_t len,
                       const limits *lim, tb__batch_err *err)
{
    size_t i = skip_blanks(s, 0, len);
    if (i == len || s[i] != '[')
        return fail(err, 400, "bad_batch", SIZE_MAX, 0,
                    "the body is not a JSON array of {\"name\", \"data\"} "
                    "objects (for one object a line, send Content-Type: "
                    "application/x-ndjson)");
    i = skip_blanks(s, i + 1, len);
    if (i < len && s[i] == ']') {
        i++;
    } else {
        for (;;) {
            /* Before looking for its end: a huge array stops here. */
            if (b->n >= lim->max_events)
                return too_many(lim, b->n, 0, err);
            size_t end = element_end(s, i, len);
            if (end == len)
                return fail(err, 400, "bad_json", b->n, 0,
                            "item %zu: the array ends before its ']'", b->n);
            int rc = add_item(b, s + i, end - i, lim, 0, err);
            if (rc)
                return rc;
            if (s[end] == ']') {
                i = end + 1;
                break;
            }
            if (s[end] == '}')
                return fail(err, 400, "bad_json", b->n - 1, 0,
                            "item %zu: an unexpected '}' follows it", b->n - 1);
            i = end + 1; /* past ',' */
        }
    }
    if (skip_blanks(s, i, len) != len)
        return fail(err, 400, "bad_batch", SIZE_MAX, 0,
                    "the body goes on after the array's ']'");
    return 0;
}

static int parse_ndjson(tb__batch *b, const char *s, size_t len,
                        const limits *lim, tb__batch_err *err)
{
    size_t line = 0;
    for (size_t i = 0; i < len;) {
        line++;
        const char *nl = memchr(s + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - s) : len;
        if (skip_blanks(s, i, end) < end) {
            int rc = add_item(b, s + i, end - i, lim, line, err);
            if (rc)
                return rc;
        }
        i = end + 1;
    }
    return 0;
}

int tb__batch_parse(const char *body, size_t len, tb__batch_format fmt,
                    size_t max_events, size_t max_event_size, int max_depth,
                    tb__batch *out, tb__batch_err *err)
{
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    limits lim = {max_events, max_event_size, max_depth};
    if (!body)
        body = "";
    int rc = fmt == TB__BATCH_NDJSON ? parse_ndjson(out, body, len, &lim, err)
                                     : parse_array(out, body, len, &lim, err);
    if (rc)
        tb__batch_free(out);
    return rc;
}

void tb__batch_free(tb__batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        json_decref(b->objs[i]);
        free(b->texts[i]);
    }
    free(b->items);
    free(b->objs);
    free(b->texts);
    memset(b, 0, sizeof *b);
}
