/* fuzz_batch_diff.c - the batch body's item scanner (service/batch.c's
 * fast path) against jansson (issue 13 point 7): every body is parsed with
 * the scanner on and with it off and must give the same outcome: the same
 * code, and either the same items (names, data bytes and lengths, NDJSON
 * lines) or the same refusal (status, code, index, line, message).
 *
 * Input, two modes chosen by byte 1:
 *  - raw (byte 1 & 7 == 3, as '{' and '[' are: the seed corpus's bodies
 *    stay raw): byte 0 picks the format (bit 0), max_events (bits 1-2),
 *    max_event_size (bits 3-4) and json_max_depth (bits 5-6); the rest is
 *    the body;
 *  - structured (the other 7/8): bytes 2.. drive a generator of bodies
 *    (generate() below): 1 to 8 items, each with its members in either
 *    order, blanks, a name and data from tables of usual and edge values
 *    or the input's bytes, sometimes a duplicate or unknown member or
 *    trailing bytes; an array or NDJSON; max_event_size at or just under
 *    the largest data. Each item is also parsed alone (both ways), which
 *    says whether the scanner took it; items are counted per feature, and
 *    a run of FLOOR_MIN_ITEMS or more fails at exit when the scanner took
 *    less than a feature's floor. */
#include <jansson.h>
#include <unistd.h>

#include "batch.h"
#include "fuzz.h"

static const size_t max_events_sel[] = {1000, 1, 3, 8};
static const size_t max_sizes[] = {1 << 20, 0, 16, 128};
static const int depths[] = {64, 1, 2, 3};

/* Inputs seen, items parsed alone, and those the scanner took: a
 * campaign whose inputs never reach the fast path proves nothing. */
static unsigned long long n_inputs, n_structured, n_bodies_ok, n_items,
    n_items_fast;

/* Parses body both ways; FUZZ_CHECKs the same outcome. Returns the items
 * the scanner took (0 when refused). */
static size_t parse_both(const char *body, size_t len, tb__batch_format fmt,
                         size_t max_events, size_t max_size, int depth)
{
    tb__batch a, j;
    tb__batch_err ae, je;
    tb__batch_set_fast_path(1);
    int ra =
        tb__batch_parse(body, len, fmt, max_events, max_size, depth, &a, &ae);
    tb__batch_set_fast_path(0);
    int rj =
        tb__batch_parse(body, len, fmt, max_events, max_size, depth, &j, &je);
    tb__batch_set_fast_path(1);
    if (ra != rj || (ra && strcmp(ae.message, je.message) != 0)) {
        /* The body, for the report: structured ones exist nowhere else. */
        fprintf(stderr,
                "fuzz_batch_diff: %s, max_events %zu, size %zu, "
                "depth %d: scanner %d (%s), jansson %d (%s); body:\n",
                fmt == TB__BATCH_NDJSON ? "ndjson" : "array", max_events,
                max_size, depth, ra, ra ? ae.message : "-", rj,
                rj ? je.message : "-");
        fwrite(body, 1, len, stderr);
        fputc('\n', stderr);
    }
    FUZZ_CHECK(ra == rj);
    FUZZ_CHECK(j.fast == 0);
    size_t fast = a.fast;
    if (ra == 0) {
        FUZZ_CHECK(a.n == j.n && a.fast <= a.n);
        for (size_t i = 0; i < a.n; i++) {
            const tb_event_item *x = &a.items[i], *y = &j.items[i];
            FUZZ_CHECK(strcmp(x->name, y->name) == 0);
            FUZZ_CHECK(x->len == y->len);
            FUZZ_CHECK(memcmp(x->data, y->data, x->len) == 0);
            FUZZ_CHECK(a.lines[i] == j.lines[i]);
        }
    } else {
        FUZZ_CHECK(a.n == 0 && a.fast == 0);
        FUZZ_CHECK(ae.status == je.status);
        FUZZ_CHECK(strcmp(ae.code, je.code) == 0);
        FUZZ_CHECK(ae.index == je.index && ae.line == je.line);
        FUZZ_CHECK(strcmp(ae.message, je.message) == 0);
    }
    tb__batch_free(&a);
    tb__batch_free(&j);
    return fast;
}

/* ------------------------------------------------- the structured mode */

/* What a generated item has; counted per item parsed alone, with how many
 * of those the scanner took. */
enum {
    F_ORDER,    /* "data" before "name" */
    F_BLANKS,   /* a blank at some token boundary of the item */
    F_LONGNAME, /* a 200-byte name */
    F_ATSIZE,   /* data of exactly max_event_size */
    F_STRING,   /* data: the input's bytes (at least one) quoted as they are */
    F_PLAIN,    /* data: printable ASCII (at least one byte), quoted */
    F_ESCAPED,  /* data: a string escaped by jansson (jansson's) */
    F_JSON,     /* data: jansson's compact dump of an object or array */
    F_SCALAR,   /* data: an integer, true or false */
    F_NULL,     /* data: null */
    F_LOOSE,    /* data: JSON with blanks or reals (jansson's) */
    F_RAW,      /* data: the input's bytes as they are */
    F_EDGE,     /* a name from the edge table (escaped, invalid, other type) */
    F_EXTRA,    /* a duplicate or unknown member, or no data */
    F_TRAIL,    /* bytes after the item's closing brace */
    F_DUPKEY,   /* data: an object with a key twice */
    F_COUNT
};

static const char *const feature_names[F_COUNT] = {
    "order",   "blanks", "longname", "atsize", "string", "plain",
    "escaped", "json",   "scalar",   "null",   "loose",  "raw",
    "edge",    "extra",  "trail",    "dupkey"};

/* The least share of a feature's items the scanner must take over a run
 * of at least FLOOR_MIN_ITEMS items (0: not checked, those items are
 * meant for jansson). About a third of what a first 60-second run gave
 * (7 % for the input's bytes quoted raw, 32 to 76 % for the others), so
 * that a drifting corpus passes and a scanner that stops
 * taking a feature fails. */
static const double feature_floor[F_COUNT] = {
    [F_ORDER] = 0.1,  [F_BLANKS] = 0.1,  [F_LONGNAME] = 0.15,
    [F_ATSIZE] = 0.1, [F_STRING] = 0.02, [F_PLAIN] = 0.25,
    [F_JSON] = 0.25,  [F_SCALAR] = 0.2,  [F_NULL] = 0.25,
};
#define FLOOR_MIN_ITEMS 20000

static unsigned long long feat_seen[F_COUNT], feat_fast[F_COUNT];

/* A blank at a token boundary, from a generator seeded by the input; no
 * newline inside an NDJSON item. */
static void put_blank(fuzz_buf *b, uint32_t *rng, int ndjson, unsigned *feat)
{
    static const char *const blank[] = {" ", "\t", "\r", "\r\n"};
    if (!*rng)
        return;
    *rng = *rng * 1103515245u + 12345u;
    unsigned k = (*rng >> 16) & 7;
    if (k < 4 || (ndjson && k == 7))
        return; /* half the boundaries stay tight */
    fuzz_put_s(b, blank[k - 4]);
    *feat |= 1u << F_BLANKS;
}

#define A10 "aaaaaaaaaa"
#define A50 A10 A10 A10 A10 A10
static const char *const name_ok[] = {"\"a\"", "\"a.b\"", "\"bench.p3.e\"",
                                      "\"A-z_0.9\"",
                                      "\"" A50 A50 A50 A50 "\""}; /* 200 */
static const char *const name_edge[] = {
    "\"" A50 A50 A50 A50 "a\"", /* 201 bytes */
    "\"\"",
    "\"a..b\"",
    "\"a b\"",
    "\"a.*\"",
    "\"\\u0061\"",
    "\"a\\u0000\"",
    "\"\xc3\xa9\"",
    "\"a.b.c.d.e.f.g.h.i\"", /* 9 segments */
    "1",
    "null",
    "[\"a\"]"};
static const char *const loose[] = {"{\"a\": 1}",
                                    "[1, 2]",
                                    "1.5",
                                    "-0",
                                    "1e3",
                                    "{\"a\":1.0}",
                                    "[ ]",
                                    "18446744073709551616",
                                    "{\"a\":\"\\/\"}",
                                    "{\"\\u0061\":1}"};
static const char *const scalars[] = {"0",
                                      "-1",
                                      "42",
                                      "true",
                                      "false",
                                      "999999999999999999",
                                      "1000000000000000000"};

/* data from n of the input's bytes, in one of eight forms. Sets *feat and
 * returns the size it is carried as (if the item is taken). */
static size_t put_data(fuzz_buf *b, fuzz_reader *r, unsigned *feat)
{
    unsigned form = fuzz_take(r) % 8;
    size_t n = fuzz_take(r) % 48;
    if (n > (size_t)(r->end - r->p))
        n = (size_t)(r->end - r->p);
    const char *rest = (const char *)r->p;
    r->p += n;
    json_t *j = NULL;
    size_t len = n;
    switch (form) {
    case 0: /* quoted as they are: a plain string when they may be one */
        fuzz_put_s(b, "\"");
        fuzz_put_n(b, rest, n);
        fuzz_put_s(b, "\"");
        if (n) /* "" is taken whatever the string scan does */
            *feat |= 1u << F_STRING;
        return n;
    case 1: /* made printable, quotes and backslashes excepted: plain */
        fuzz_put_s(b, "\"");
        for (size_t i = 0; i < n; i++) {
            char c = (char)(' ' + (unsigned char)rest[i] % 95);
            fuzz_put_n(b, c == '"' || c == '\\' ? "_" : &c, 1);
        }
        fuzz_put_s(b, "\"");
        if (n)
            *feat |= 1u << F_PLAIN;
        return n;
    case 2: /* a string as jansson writes it: escapes, "\u0000" */
        j = json_stringn_nocheck(rest, n);
        *feat |= 1u << F_ESCAPED;
        break;
    case 3: /* compact JSON: the bytes if they parse, else made into some */
        j = json_loadb(rest, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (j && !json_is_object(j) && !json_is_array(j)) {
            j = json_pack("[o]", j);
        } else if (!j) {
            json_t *s = json_stringn_nocheck(rest, n);
            j = n & 1 ? json_pack("{s:o,s:[i,b,n,{}]}", "k", s, "n",
                                  (json_int_t)n, 1)
                      : json_pack("[o,i]", s, (json_int_t)n);
        }
        *feat |= 1u << F_JSON;
        break;
    case 4:
        fuzz_put_s(b, scalars[n % (sizeof scalars / sizeof *scalars)]);
        *feat |= 1u << F_SCALAR;
        return strlen(scalars[n % (sizeof scalars / sizeof *scalars)]);
    case 5:
        fuzz_put_s(b, "null");
        *feat |= 1u << F_NULL;
        return 0;
    case 6:
        fuzz_put_s(b, loose[n % (sizeof loose / sizeof *loose)]);
        *feat |= 1u << F_LOOSE;
        return strlen(loose[n % (sizeof loose / sizeof *loose)]);
    default: /* the bytes as they are */
        fuzz_put_n(b, rest, n);
        *feat |= 1u << F_RAW;
        return n;
    }
    FUZZ_CHECK(j != NULL);
    char *t = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    /* One compact object in three gets a key twice, at its top or one
     * level down (jansson's load without JSON_REJECT_DUPLICATES above
     * keeps only the last, so only this makes them): refused by both. */
    int dup = form == 3 && t && n % 3 == 1;
    json_decref(j);
    if (!t) { /* not UTF-8: jansson refuses to dump it */
        fuzz_put_s(b, "\"\"");
        return 0;
    }
    if (dup) {
        fuzz_put_s(b,
                   t[0] == '{' ? "{\"d\":0,\"d\":1" : "[{\"d\":[],\"d\":{}}");
        if (strcmp(t, "{}") != 0 && strcmp(t, "[]") != 0)
            fuzz_put_s(b, ",");
        fuzz_put_s(b, t + 1);
        *feat |= 1u << F_DUPKEY;
        free(t);
        return 0; /* its size: not the point */
    }
    fuzz_put_s(b, t);
    if (form == 3)
        len = strlen(t);
    free(t);
    return len;
}

#define ITEMS_MAX 8

/* A generated item: where it is in the body, its data's size, features. */
typedef struct gen_item {
    size_t at, len, datalen;
    unsigned feat;
} gen_item;

/* Appends one item to b from r. */
static void generate_item(fuzz_buf *b, fuzz_reader *r, int ndjson, gen_item *it)
{
    /* 0 (the input run out) picks the common item. */
    unsigned sel = fuzz_take(r);
    unsigned extra = 15 - fuzz_take(r) % 16; /* 0: a duplicate, 1: an unknown
                                           member, 2: no data */
    unsigned trail = 15 - fuzz_take(r) % 16; /* 0..1: trailing bytes */
    unsigned pick = fuzz_take(r);
    uint32_t rng = fuzz_take(r);
    rng = rng << 8 | fuzz_take(r);
    unsigned feat = 0;
    int data_first = sel & 1, edge = (sel & 14) == 14;
    if (data_first)
        feat |= 1u << F_ORDER;
    it->at = b->n;
    put_blank(b, &rng, ndjson, &feat);
    fuzz_put_s(b, "{");
    int written = 0;
    for (int m = 0; m < 3; m++) {
        int is_data = (m == 0) == data_first;
        if (m == 2) { /* the extra member, last */
            if (extra > 1)
                break;
            is_data = extra == 0 && (pick & 1);
        }
        if (m < 2 && is_data && extra == 2)
            continue; /* no data member */
        if (written++)
            fuzz_put_s(b, ",");
        put_blank(b, &rng, ndjson, &feat);
        fuzz_put_s(b, m == 2 && extra == 1 ? "\"other\""
                      : is_data            ? "\"data\""
                                           : "\"name\"");
        put_blank(b, &rng, ndjson, &feat);
        fuzz_put_s(b, ":");
        put_blank(b, &rng, ndjson, &feat);
        if (m == 2) {
            fuzz_put_s(b, "\"x\"");
        } else if (is_data) {
            it->datalen = put_data(b, r, &feat);
        } else if (edge) {
            fuzz_put_s(
                b, name_edge[pick % (sizeof name_edge / sizeof *name_edge)]);
            feat |= 1u << F_EDGE;
        } else {
            unsigned k = pick % (sizeof name_ok / sizeof *name_ok);
            fuzz_put_s(b, name_ok[k]);
            if (k == 4)
                feat |= 1u << F_LONGNAME;
        }
        put_blank(b, &rng, ndjson, &feat);
    }
    fuzz_put_s(b, "}");
    put_blank(b, &rng, ndjson, &feat);
    if (extra <= 2)
        feat |= 1u << F_EXTRA;
    if (trail < 2) {
        fuzz_put_s(b, trail ? "x" : "}");
        feat |= 1u << F_TRAIL;
    }
    it->len = b->n - it->at;
    it->feat = feat;
}

/* Builds a body from r: its items in *items (*n), its format, and the
 * limits it is parsed with. */
static void generate(fuzz_buf *b, fuzz_reader *r, gen_item *items, size_t *n,
                     tb__batch_format *fmt, size_t *max_size, int *depth)
{
    unsigned head = fuzz_take(r);
    *n = 1 + head % ITEMS_MAX;
    *fmt = head & 8 ? TB__BATCH_NDJSON : TB__BATCH_ARRAY;
    unsigned limit_sel = (head >> 4) % 4; /* 0: at the largest, 1: under */
    *depth = depths[(head >> 6) == 3 ? fuzz_take(r) % 4 : 0];
    int ndjson = *fmt == TB__BATCH_NDJSON;
    if (!ndjson)
        fuzz_put_s(b, "[");
    for (size_t i = 0; i < *n; i++) {
        if (i)
            fuzz_put_s(b, ndjson ? (fuzz_take(r) & 1 ? "\r\n" : "\n") : ",");
        if (ndjson && (fuzz_take(r) & 7) == 0)
            fuzz_put_s(b, "  \n"); /* a blank line */
        generate_item(b, r, ndjson, &items[i]);
    }
    if (!ndjson)
        fuzz_put_s(b, "]");
    size_t largest = 0;
    for (size_t i = 0; i < *n; i++)
        if (items[i].datalen > largest)
            largest = items[i].datalen;
    *max_size = 1 << 20;
    if (limit_sel < 2 && largest >= limit_sel) {
        *max_size = largest - limit_sel;
        for (size_t i = 0; i < *n && limit_sel == 0; i++)
            if (items[i].datalen == largest)
                items[i].feat |= 1u << F_ATSIZE;
    }
}

static void print_features(void)
{
    fprintf(stderr,
            "fuzz_batch_diff: %llu inputs (%llu structured: %llu bodies with "
            "items by the fast path); %llu items parsed alone, %llu (%.1f "
            "%%) by the fast path\n",
            n_inputs, n_structured, n_bodies_ok, n_items, n_items_fast,
            n_items ? 100.0 * (double)n_items_fast / (double)n_items : 0.0);
    for (int f = 0; f < F_COUNT; f++)
        fprintf(stderr,
                "  %-8s %10llu items, %10llu fast (%5.1f %%), floor %.0f %%\n",
                feature_names[f], feat_seen[f], feat_fast[f],
                feat_seen[f]
                    ? 100.0 * (double)feat_fast[f] / (double)feat_seen[f]
                    : 0.0,
                100 * feature_floor[f]);
}

/* At exit: a run long enough for shares to mean something fails when a
 * feature's items reach the scanner less often than its floor. */
static void check_floors(void)
{
    if (getenv("FUZZ_DIFF_STATS"))
        print_features();
    if (n_items < FLOOR_MIN_ITEMS)
        return;
    for (int f = 0; f < F_COUNT; f++) {
        if (feature_floor[f] > 0 &&
            (double)feat_fast[f] < feature_floor[f] * (double)feat_seen[f]) {
            fprintf(stderr, "fuzz_batch_diff: feature %s below its floor\n",
                    feature_names[f]);
            print_features();
            fflush(stderr);
            _exit(1);
        }
    }
}

/* A generated body parsed both ways from a buffer of exactly its size;
 * then each item alone, as a one-item array, to count its features. */
static void structured(const uint8_t *data, size_t size)
{
    fuzz_reader r = {data + 2, data + size};
    fuzz_buf b = {0};
    gen_item items[ITEMS_MAX];
    memset(items, 0, sizeof items);
    size_t n, max_size;
    tb__batch_format fmt;
    int depth;
    generate(&b, &r, items, &n, &fmt, &max_size, &depth);
    size_t max_events = data[0] & 1 ? n : 1000; /* at the count limit */
    /* One body in eight begins with a UTF-8 byte-order mark (both paths
     * skip it; raw mode's selector byte can never be its first byte). */
    size_t bom = (data[0] & 0xE) == 0xE ? 3 : 0;
    char *body = malloc(b.n + bom ? b.n + bom : 1);
    FUZZ_CHECK(body != NULL);
    memcpy(body, "\xEF\xBB\xBF", bom);
    memcpy(body + bom, b.s, b.n);
    n_bodies_ok +=
        parse_both(body, b.n + bom, fmt, max_events, max_size, depth) > 0;
    free(body);
    n_structured++;
    for (size_t i = 0; i < n; i++) {
        char *one = malloc(items[i].len + 2);
        FUZZ_CHECK(one != NULL);
        one[0] = '[';
        memcpy(one + 1, b.s + items[i].at, items[i].len);
        one[items[i].len + 1] = ']';
        size_t fast = parse_both(one, items[i].len + 2, TB__BATCH_ARRAY, 1,
                                 max_size, depth);
        free(one);
        n_items++;
        n_items_fast += fast;
        for (int f = 0; f < F_COUNT; f++) {
            if (items[i].feat & 1u << f) {
                feat_seen[f]++;
                feat_fast[f] += fast;
            }
        }
    }
    free(b.s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        once = 1;
        fuzz_quiet_logs();
        atexit(check_floors);
    }
    if (size < 1)
        return 0;
    n_inputs++;
    if (size >= 2 && (data[1] & 7) != 3) {
        structured(data, size);
        return 0;
    }
    unsigned sel = data[0];
    tb__batch_format fmt = sel & 1 ? TB__BATCH_NDJSON : TB__BATCH_ARRAY;
    /* Exactly the body's bytes: neither path may read past them. */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    FUZZ_CHECK(body != NULL);
    memcpy(body, data + 1, len);
    parse_both(body, len, fmt, max_events_sel[(sel >> 1) & 3],
               max_sizes[(sel >> 3) & 3], depths[(sel >> 5) & 3]);
    free(body);
    return 0;
}
