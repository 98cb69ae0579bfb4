/* batch.c - parsing the body of POST /events: {"name","data"} items as a
 * JSON array or NDJSON, each checked before any is dispatched. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "envelope_scan.h"
#include "json.h"

/* Integers as reals: jansson only checks them (the data is carried as
 * sent), and a JSON integer beyond int64 is still JSON. */
#define ITEM_FLAGS                                                             \
    (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL |               \
     JSON_DECODE_INT_AS_REAL)

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

static const char *blanks(const char *p, const char *end)
{
    while (p < end && is_blank(*p))
        p++;
    return p;
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
    size_t *lines = items ? realloc(b->lines, cap * sizeof *lines) : NULL;
    if (lines)
        b->lines = lines;
    char **owned = lines ? realloc(b->owned, cap * sizeof *owned) : NULL;
    if (owned)
        b->owned = owned;
    if (!owned)
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

/* Past the string that opens at s[i] ('"'), or len when it is not closed. */
static size_t string_end(const char *s, size_t i, size_t len)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* The byte range of an item's "data" value as sent: what jansson will
 * then validate, found by following strings and brackets only. */
typedef struct member {
    size_t at, len;
    int found;
} member;

/* Whether the key text (quotes included) is "data"; an escaped spelling
 * is decoded (keys are short: the name's limit bounds a valid one). */
static int key_is_data(const char *k, size_t n)
{
    if (n == 6 && !memcmp(k, "\"data\"", 6))
        return 1;
    if (!memchr(k, '\\', n) || n > 64)
        return 0;
    json_t *v = json_loadb(k, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    int is = json_is_string(v) && json_string_length(v) == 4 &&
             !memcmp(json_string_value(v), "data", 4);
    json_decref(v);
    return is;
}

/* Finds the "data" member's value in the object text s[0..len): 0, or -1
 * when the text is not shaped as an object (jansson then says why). */
static int find_data(const char *s, size_t len, member *m)
{
    memset(m, 0, sizeof *m);
    size_t i = skip_blanks(s, 0, len);
    if (i == len || s[i] != '{')
        return -1;
    i = skip_blanks(s, i + 1, len);
    if (i < len && s[i] == '}')
        return 0;
    while (i < len && s[i] == '"') {
        size_t k = i, kend = string_end(s, i, len);
        i = skip_blanks(s, kend, len);
        if (i == len || s[i] != ':')
            return -1;
        size_t v = skip_blanks(s, i + 1, len);
        size_t vend = element_end(s, v, len);
        if (vend == len)
            return -1;
        size_t t = vend;
        while (t > v && is_blank(s[t - 1]))
            t--;
        if (key_is_data(s + k, kend - k)) {
            m->at = v;
            m->len = t - v;
            m->found = 1;
        }
        if (s[vend] == '}')
            return 0;
        if (s[vend] != ',')
            return -1;
        i = skip_blanks(s, vend + 1, len);
    }
    return -1;
}

/* Off only in tests (tb__batch_set_fast_path): the fuzz target compares
 * the two paths on the same bodies. */
static int fast_path = 1;

void tb__batch_set_fast_path(int on)
{
    fast_path = on;
}

/* An item the scanner took: spans of the item's text. */
typedef struct fast_item {
    const char *name, *data;
    size_t nlen, dlen;
    int data_string; /* data a string: its bytes are its text */
} fast_item;

/* The members of the common item, one bit each. */
enum {
    F_NAME = 1,
    F_DATA = 2
};

/* The item's "data" value at *pp: null, a string without escapes, or what
 * tb__scan_value takes (the item is one level: data may nest max_depth - 1
 * more), within max_event_size. Moves *pp past it. */
static int fast_data(const char **pp, const char *end, const limits *lim,
                     fast_item *it)
{
    const char *p = *pp, *q;
    if (p == end)
        return 0;
    if (*p == '"') {
        if (!(q = tb__scan_plain_string(p + 1, end)))
            return 0;
        it->data = p + 1;
        it->dlen = (size_t)(q - p - 1);
        it->data_string = 1;
        q++;
    } else if (*p == 'n') {
        if (end - p < 4 || memcmp(p, "null", 4) != 0)
            return 0;
        it->data = "";
        it->dlen = 0;
        q = p + 4;
    } else {
        if (!(q = tb__scan_value(p, end, lim->max_depth - 1)))
            return 0;
        it->data = p;
        it->dlen = (size_t)(q - p);
    }
    if (it->dlen > lim->max_event_size)
        return 0;
    *pp = q;
    return 1;
}

/* Scans the common item {"name":"<plain>","data":<value>} in text[0..n):
 * both members once, in either order, no other, blanks between tokens, the
 * name a string without escapes of at most TB_EVENT_NAME_MAX bytes (the
 * caller checks it is a valid name). 1 with *it filled when jansson would
 * read the same name and data from it, 0 for anything else (valid or
 * not): then jansson decides and gives the reasons. Allocates nothing. */
static int fast_scan(const char *text, size_t n, const limits *lim,
                     fast_item *it)
{
    const char *p = text, *end = text + n;
    if (lim->max_depth < 1)
        return 0;
    memset(it, 0, sizeof *it);
    p = blanks(p, end);
    if (p == end || *p != '{')
        return 0;
    p++;
    int seen = 0;
    for (;;) {
        p = blanks(p, end);
        if (p == end || *p != '"')
            return 0;
        const char *k = p + 1, *q = tb__scan_plain_string(k, end);
        if (!q)
            return 0;
        size_t kn = (size_t)(q - k);
        int bit = kn == 4 && !memcmp(k, "name", 4)   ? F_NAME
                  : kn == 4 && !memcmp(k, "data", 4) ? F_DATA
                                                     : 0;
        if (!bit || (seen & bit))
            return 0;
        seen |= bit;
        p = blanks(q + 1, end);
        if (p == end || *p != ':')
            return 0;
        p = blanks(p + 1, end);
        if (bit == F_NAME) {
            if (p == end || *p != '"' ||
                !(q = tb__scan_plain_string(p + 1, end)) ||
                (size_t)(q - p - 1) > TB_EVENT_NAME_MAX)
                return 0;
            it->name = p + 1;
            it->nlen = (size_t)(q - p - 1);
            p = q + 1;
        } else if (!fast_data(&p, end, lim, it)) {
            return 0;
        }
        p = blanks(p, end);
        if (p == end)
            return 0;
        if (*p == '}')
            break;
        if (*p != ',')
            return 0;
        p++;
    }
    return seen == (F_NAME | F_DATA) && blanks(p + 1, end) == end;
}

/* Appends the item the scanner took, as add_item would: 1 when done, 0
 * when its name is not valid (then jansson's path refuses it), or
 * TB_ENOMEM. */
static int add_fast(tb__batch *b, const fast_item *it, size_t line)
{
    size_t sl = it->data_string ? it->dlen + 1 : 0;
    char *own = malloc(it->nlen + 1 + sl);
    if (!own)
        return TB_ENOMEM;
    memcpy(own, it->name, it->nlen);
    own[it->nlen] = '\0';
    if (tb_event_name_valid(own)) {
        free(own);
        return 0;
    }
    const char *d = it->data;
    if (it->data_string) {
        memcpy(own + it->nlen + 1, it->data, it->dlen);
        own[it->nlen + 1 + it->dlen] = '\0';
        d = own + it->nlen + 1;
    }
    size_t k = b->n;
    b->owned[k] = own;
    b->lines[k] = line;
    b->items[k] = (tb_event_item){own, d, it->dlen};
    b->n++;
    b->fast++;
    return 1;
}

/* Parses one item's text and appends it to b. jansson checks the item
 * (its tree dropped before the next item), but the data carried is the
 * value's bytes as sent, as POST /events/{name} carries its body: no
 * re-encoding changes a number or drops a space. */
static int add_item(tb__batch *b, const char *text, size_t n, const limits *lim,
                    size_t line, tb__batch_err *err)
{
    size_t k = b->n;
    if (k >= lim->max_events)
        return too_many(lim, k, line, err);
    if (grow(b))
        return fail(err, 500, "internal", k, line, "out of memory");
    /* The common item without jansson (issue 13 point 7): anything the
     * scanner does not take, refusals included, goes on below. */
    fast_item fi;
    if (fast_path && fast_scan(text, n, lim, &fi)) {
        int rc = add_fast(b, &fi, line);
        if (rc == 1)
            return 0;
        if (rc)
            return fail(err, 500, "internal", k, line, "out of memory");
    }
    member dm;
    int shaped = find_data(text, n, &dm) == 0;
    /* Before jansson builds a tree of it: a value other than a string
     * is carried as sent, so its size is known now (null as empty). */
    if (shaped && dm.found && text[dm.at] != '"' &&
        dm.len > lim->max_event_size &&
        !(dm.len == 4 && !memcmp(text + dm.at, "null", 4)))
        return fail(err, 413, "too_large", k, line,
                    "item %zu: its data is %zu bytes; max_event_size is %zu", k,
                    dm.len, lim->max_event_size);
    json_error_t je;
    json_t *o = tb__json_loadb(text, n, ITEM_FLAGS, lim->max_depth, &je);
    if (!o)
        return fail(err, 400, "bad_json", k, line, "item %zu is not JSON: %s",
                    k, je.text);
    int rc = 0;
    const char *key;
    json_t *v;
    if (!json_is_object(o) || !shaped) {
        rc =
            fail(err, 400, "bad_item", k, line,
                 "item %zu is not an object {\"name\": ..., \"data\": ...}", k);
        goto out;
    }
    json_object_foreach(o, key, v)
    {
        if (strcmp(key, "name") != 0 && strcmp(key, "data") != 0) {
            rc = fail(err, 400, "bad_item", k, line,
                      "item %zu has a member \"%.64s\": an item has only "
                      "\"name\" and \"data\"",
                      k, key);
            goto out;
        }
    }
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name)) {
        rc = fail(err, 400, "bad_item", k, line,
                  "item %zu has no \"name\" string (the event's name)", k);
        goto out;
    }
    const char *nm = json_string_value(name);
    size_t nlen = json_string_length(name);
    if (strlen(nm) != nlen || tb_event_name_valid(nm)) {
        rc = fail(err, 400, "bad_name", k, line,
                  "item %zu: \"%.128s\" is not a valid event name (1..%d "
                  "dot-separated segments of [A-Za-z0-9_-], at most %d "
                  "bytes)",
                  k, nm, TB_EVENT_SEGMENTS_MAX, TB_EVENT_NAME_MAX);
        goto out;
    }
    /* A string is carried as its text (as a websocket dispatch's), null
     * or none as empty, anything else as its bytes in the body. */
    json_t *data = json_object_get(o, "data");
    const char *d = "";
    size_t len = 0;
    if (json_is_string(data)) {
        d = json_string_value(data);
        len = json_string_length(data);
    } else if (data && !json_is_null(data)) {
        d = text + dm.at;
        len = dm.len;
    }
    if (len > lim->max_event_size) {
        rc = fail(err, 413, "too_large", k, line,
                  "item %zu: its data is %zu bytes; max_event_size is %zu", k,
                  len, lim->max_event_size);
        goto out;
    }
    /* The name, and a string's text, outlive the tree: one block. */
    size_t sl = json_is_string(data) ? len : 0;
    char *own = malloc(nlen + 1 + sl + 1);
    if (!own) {
        rc = fail(err, 500, "internal", k, line, "out of memory");
        goto out;
    }
    memcpy(own, nm, nlen + 1);
    if (sl || json_is_string(data)) {
        memcpy(own + nlen + 1, d, sl);
        own[nlen + 1 + sl] = '\0';
        d = own + nlen + 1;
    }
    b->owned[k] = own;
    b->lines[k] = line;
    b->items[k] = (tb_event_item){own, d, len};
    b->n++;
out:
    json_decref(o);
    return rc;
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
    size_t bom = tb__batch_bom(body, len);
    body += bom;
    len -= bom;
    int rc = fmt == TB__BATCH_NDJSON ? parse_ndjson(out, body, len, &lim, err)
                                     : parse_array(out, body, len, &lim, err);
    if (rc)
        tb__batch_free(out);
    return rc;
}

void tb__batch_free(tb__batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->owned[i]);
    free(b->items);
    free(b->lines);
    free(b->owned);
    memset(b, 0, sizeof *b);
}

size_t tb__batch_bom(const char *body, size_t len)
{
    return len >= 3 && !memcmp(body, "\xEF\xBB\xBF", 3) ? 3 : 0;
}
