/* fuzz_envelope_diff.c - the envelope's fast path (service/envelope_scan.c)
 * against jansson (issue 13 point 5): every input is decoded both ways and
 * must give the same code, the same reason and the same event (as is, as
 * the value of an envelope's data, and inside its data string); every event
 * so decoded, and the input itself taken as an event's data, is encoded
 * both ways and must give the same bytes.
 *
 * Input, two modes chosen by byte 1:
 *  - raw (byte 1 & 7 == 3, as '{' and '[' are: the seed corpus's envelopes
 *    stay raw): byte 0 picks max_event_size (low 3 bits), json_max_depth
 *    (next 2 bits), the hops and pos of the data-as-event (top 3 bits);
 *    the rest is a message received on the channel of event "fuzz.event";
 *  - structured (the other 7/8): bytes 2.. drive a generator of envelopes
 *    (generate() below: members, their order, blanks, each member's value
 *    from a table of usual and edge values, a duplicate or unknown member,
 *    trailing bytes, data from the remaining bytes) whose decodes are
 *    counted per feature; a run of FLOOR_MIN_DECODES or more fails at exit
 *    when the scanner took less than a feature's floor. */
#include <jansson.h>
#include <unistd.h>

#include "envelope.h"
#include "envelope_scan.h"
#include "fuzz.h"
#include "internal.h"

#define NAME "fuzz.event"

static const size_t max_sizes[] = {1 << 20, 0, 1, 16, 128, 1024, 4096, 200};
static const int depths[] = {0 /* the default */, 1, 2, 3};

static tb_app *apps[4];

/* Inputs seen, and those the scanner took: a campaign whose inputs never
 * reach the fast path proves nothing. Printed at exit when
 * FUZZ_DIFF_STATS is set (docs/FUZZING.md). */
static unsigned long long n_inputs, n_scanned, n_fast_encoded;
static unsigned long long n_structured, n_structured_fast;

static void print_stats(void)
{
    fprintf(stderr,
            "fuzz_envelope_diff: %llu inputs (%llu structured, 1 decode "
            "each; raw ones 3), %llu decodes and %llu encodes by the fast "
            "path\n",
            n_inputs, n_structured, n_scanned, n_fast_encoded);
}

static void same_event(const tb_event *a, const tb_event *b, int fresh)
{
    FUZZ_CHECK(strcmp(a->name, b->name) == 0);
    FUZZ_CHECK(a->len == b->len && memcmp(a->data, b->data, a->len) == 0);
    FUZZ_CHECK(a->data[a->len] == '\0' && b->data[b->len] == '\0');
    FUZZ_CHECK(strcmp(a->origin, b->origin) == 0);
    FUZZ_CHECK(a->hops == b->hops);
    FUZZ_CHECK(a->seq == b->seq && strcmp(a->pos, b->pos) == 0);
    if (!fresh) { /* else both made a fresh id and took the time */
        FUZZ_CHECK(strcmp(a->id, b->id) == 0);
        FUZZ_CHECK(a->ts_us == b->ts_us);
    }
}

/* Encodes ev with the fast path first and with jansson only: the same code
 * and the same bytes. */
static void same_encoding(const tb_event *ev)
{
    char *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    char *w = NULL;
    size_t wlen;
    if (tb__envelope_write(ev, &w, &wlen) == 1)
        n_fast_encoded++;
    free(w);
    int ra = tb__envelope_encode(ev, &a, &alen);
    int rb = tb__envelope_encode_jansson(ev, &b, &blen);
    FUZZ_CHECK(ra == rb);
    if (ra == 0) {
        FUZZ_CHECK(alen == blen && memcmp(a, b, alen) == 0);
        FUZZ_CHECK(a[alen] == '\0');
    } else {
        FUZZ_CHECK(a == NULL && b == NULL);
    }
    free(a);
    free(b);
}

/* Decodes msg both ways: the same code, reason and event; then encodes
 * that event both ways: the same bytes. */
static int decode_both(tb_app *app, const char *msg, size_t len,
                       size_t max_size)
{
    tb__envelope_view v;
    int scanned = tb__envelope_scan(msg, len, NAME, max_size,
                                    app->cfg.core.json_max_depth, &v);
    n_scanned += scanned;
    tb_event *a = NULL, *b = NULL;
    const char *wa = NULL, *wb = NULL;
    int ra = tb__envelope_decode(app, NAME, msg, len, max_size, &a, &wa);
    int rb =
        tb__envelope_decode_jansson(app, NAME, msg, len, max_size, &b, &wb);
    FUZZ_CHECK(ra == rb);
    FUZZ_CHECK((wa == NULL) == (wb == NULL));
    FUZZ_CHECK(!wa || strcmp(wa, wb) == 0);
    /* What the scanner takes, jansson accepts (an escaped data string may
     * still turn out too large once decoded: the same refusal). */
    FUZZ_CHECK(!scanned || rb == 0 || rb == TB_EMSGSIZE);
    if (ra == 0) {
        same_event(a, b, !scanned);
        same_encoding(a);
    }
    tb_event_unref(a);
    tb_event_unref(b);
    return scanned;
}

/* ------------------------------------------------- the structured mode */

/* Structured inputs: the bytes after the selector drive a generator of
 * envelopes, so that most decodes reach the scanner and every member's
 * order, blanks and edge values are tried (a mutated whole message
 * rarely stays an envelope). */

/* What a generated message has; counted per decode, with how many of
 * those the scanner took. */
enum {
    F_ORDER,   /* members not in the writer's order */
    F_BLANKS,  /* a blank at some token boundary */
    F_NAME,    /* a name member */
    F_ORIGIN,  /* an origin member */
    F_HOPS,    /* a hops member */
    F_POS,     /* a pos member */
    F_LIMIT,   /* a value at its limit (id, origin, ts, hops, pos, data) */
    F_STRING,  /* data a string without escapes */
    F_ESCAPED, /* data a string with escapes */
    F_NUL,     /* data holding "\u0000" */
    F_JSON,    /* data an object or array in jansson's compact form */
    F_NULL,    /* data null */
    F_EDGE,    /* one member's value from its edge table (may be refused) */
    F_EXTRA,   /* a duplicate or unknown member */
    F_TRAIL,   /* bytes after the closing brace */
    F_COUNT
};

static const char *const feature_names[F_COUNT] = {
    "order",   "blanks", "name", "origin", "hops", "pos",   "limit", "string",
    "escaped", "nul",    "json", "null",   "edge", "extra", "trail"};

/* The least share of a feature's decodes the scanner must take over a
 * run of at least FLOOR_MIN_DECODES structured decodes (0: not checked:
 * those inputs are meant to go to jansson). Set at about a third of what
 * a 20-second run gave (13 % for string, whose bytes are quoted raw, 31
 * to 68 % for the others), so that a long campaign whose corpus drifts
 * passes and a scanner that stops taking a feature fails. */
static const double feature_floor[F_COUNT] = {
    [F_ORDER] = 0.1,   [F_BLANKS] = 0.1, [F_NAME] = 0.1,  [F_ORIGIN] = 0.1,
    [F_HOPS] = 0.1,    [F_POS] = 0.1,    [F_LIMIT] = 0.1, [F_STRING] = 0.04,
    [F_ESCAPED] = 0.1, [F_NUL] = 0.1,    [F_JSON] = 0.1,  [F_NULL] = 0.1,
};
#define FLOOR_MIN_DECODES 20000

static unsigned long long feat_seen[F_COUNT], feat_fast[F_COUNT];

/* A blank at a token boundary, from a generator seeded by the input. */
static void put_blank(fuzz_buf *b, uint32_t *rng, unsigned *feat)
{
    static const char *const blank[] = {"", " ", "\t", "\r\n"};
    if (!*rng)
        return;
    *rng = *rng * 1103515245u + 12345u;
    unsigned k = (*rng >> 16) & 7;
    if (k < 4)
        return; /* half the boundaries stay tight */
    fuzz_put_s(b, blank[k - 4]);
    if (k > 4)
        *feat |= 1u << F_BLANKS;
}

/* A value from one of two tables: the usual (taskbus writes it; LIMIT
 * marks the entries at a limit) and the edge (past a limit, escaped,
 * another type: jansson decides). */
typedef struct value {
    const char *text;
    int limit;
} value;

#define A10 "aaaaaaaaaa"
static const value id_ok[] = {{"\"i1-1\"", 0},
                              {"\"0123456789abcdef-42\"", 0},
                              {"\"" A10 A10 A10 "aaaaaaaaa\"", 1}, /* 39 */
                              {"\"a b~!\"", 0},
                              {"\"x\"", 1}};
static const value id_edge[] = {
    {"\"" A10 A10 A10 A10 "\"", 0}, /* 40 bytes: too long */
    {"\"\"", 0},
    {"\"i\\u0041\"", 0},
    {"\"i\\u0000\"", 0},
    {"\"i\x7f\"", 0},
    {"\"\xc3\xa9\"", 0},
    {"\"i\\/1\"", 0},
    {"17", 0},
    {"null", 0}};
static const value name_ok[] = {{"\"" NAME "\"", 0}};
static const value name_edge[] = {{"\"other\"", 0},
                                  {"\"fuzz\\u002eevent\"", 0},
                                  {"\"\"", 0},
                                  {"null", 0},
                                  {"\"" NAME "\\u0000\"", 0}};
static const value ts_ok[] = {{"1700000000000000", 0},
                              {"1", 1},
                              {"999999999999999999", 1}, /* 18 digits */
                              {"42", 0}};
static const value ts_edge[] = {{"0", 0},
                                {"1000000000000000000", 0},
                                {"9223372036854775807", 0},
                                {"9223372036854775808", 0},
                                {"-1", 0},
                                {"-0", 0},
                                {"1.5", 0},
                                {"1e3", 0},
                                {"\"1\"", 0},
                                {"01", 0},
                                {"null", 0}};
static const value origin_ok[] = {
    {"\"i1/0\"", 0},
    {"\"" A10 A10 A10 A10 "aaaaaaa\"", 1}, /* 47 */
    {"\"\"", 1},
    {"\"external\"", 0}};
static const value origin_edge[] = {
    {"\"" A10 A10 A10 A10 "aaaaaaaa\"", 0}, /* 48: too long */
    {"\"i1\\/0\"", 0},
    {"\"\\u0000\"", 0},
    {"\"i1\\n\"", 0},
    {"5", 0}};
static const value hops_ok[] = {{"1", 0}, {"3", 0}, {"255", 1}, {"0", 1}};
static const value hops_edge[] = {
    {"256", 0},   {"-1", 0}, {"-0", 0},  {"1.0", 0},
    {"\"1\"", 0}, {"01", 0}, {"1e0", 0}, {"99999999999999999999", 0}};
static const value pos_ok[] = {
    {"\"0123abcd-1\"", 0},
    {"\"0123456789abcdef-9007199254740991\"", 1}, /* 16 hex, SEQ_MAX */
    {"\"0123abcd-42\"", 0}};
static const value pos_edge[] = {{"\"0123abc-1\"", 0},           /* 7 hex */
                                 {"\"0123456789abcdef0-1\"", 0}, /* 17 hex */
                                 {"\"0123456789abcdef-9007199254740992\"", 0},
                                 {"\"0123abcd-0\"", 0},
                                 {"\"0123ABCD-1\"", 0},
                                 {"\"0123abcd-01\"", 0},
                                 {"\"0123abcd\\u002d1\"", 0},
                                 {"\"\"", 0},
                                 {"7", 0}};

enum {
    M_ID,
    M_NAME,
    M_DATA,
    M_TS,
    M_ORIGIN,
    M_HOPS,
    M_POS,
    M_N
};

/* A member's two tables, and the feature its presence is. */
typedef struct member_values {
    const value *ok, *edge;
    size_t nok, nedge;
    unsigned feature;
} member_values;

#define TABLES(ok, edge, f)                                                    \
    {                                                                          \
        ok, edge, sizeof ok / sizeof *ok, sizeof edge / sizeof *edge, f        \
    }
static const member_values tables[M_N] = {
    [M_ID] = TABLES(id_ok, id_edge, 0),
    [M_NAME] = TABLES(name_ok, name_edge, 1u << F_NAME),
    [M_TS] = TABLES(ts_ok, ts_edge, 0),
    [M_ORIGIN] = TABLES(origin_ok, origin_edge, 1u << F_ORIGIN),
    [M_HOPS] = TABLES(hops_ok, hops_edge, 1u << F_HOPS),
    [M_POS] = TABLES(pos_ok, pos_edge, 1u << F_POS),
};
static const char *const member_key[M_N] = {"id",     "name", "data", "ts",
                                            "origin", "hops", "pos"};

/* data from the rest of the input, in one of five forms. Sets *feat and
 * *datalen (the event's data size if the envelope is taken). */
static void put_data(fuzz_buf *b, fuzz_reader *r, int edge, int depth,
                     unsigned *feat, size_t *datalen)
{
    unsigned form = fuzz_take(r) % (edge ? 5 : 4);
    const char *rest = (const char *)r->p;
    size_t n = (size_t)(r->end - r->p);
    r->p = r->end;
    json_t *j = NULL;
    switch (form) {
    case 0: /* quoted as they are: a plain string when they may be one */
        fuzz_put_s(b, "\"");
        fuzz_put_n(b, rest, n);
        fuzz_put_s(b, "\"");
        *feat |= 1u << F_STRING;
        *datalen = n;
        return;
    case 1: /* a string as jansson writes it: escapes, "\u0000" */
        j = json_stringn_nocheck(rest, n);
        *feat |= 1u << (memchr(rest, 0, n) ? F_NUL : F_ESCAPED);
        *datalen = n;
        break;
    case 2: /* compact JSON: the bytes if they parse, else made into some */
        j = json_loadb(rest, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (j && !json_is_object(j) && !json_is_array(j)) {
            j = json_pack("[o]", j);
        } else if (!j) {
            json_t *s = json_stringn_nocheck(rest, n);
            j = depth ? json_pack("{s:o,s:[i,b,n,{}]}", "k", s, "n",
                                  (json_int_t)n, 1)
                      : json_pack("[o,i]", s, (json_int_t)n);
        }
        *feat |= 1u << F_JSON;
        break;
    case 3:
        fuzz_put_s(b, "null");
        *feat |= 1u << F_NULL;
        *datalen = 0;
        return;
    default: /* the bytes as they are */
        fuzz_put_n(b, rest, n);
        *datalen = n;
        return;
    }
    FUZZ_CHECK(j != NULL);
    char *t = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    if (!t) { /* not UTF-8: jansson refuses to dump it */
        fuzz_put_s(b, "\"\"");
        *datalen = 0;
        return;
    }
    fuzz_put_s(b, t);
    if (form == 2)
        *datalen = strlen(t);
    free(t);
}

/* Builds a message from r; returns the feature bits, *max_size (which
 * may be data's exact size or one less) and *depth_i (the app). */
static unsigned generate(fuzz_buf *b, fuzz_reader *r, size_t *max_size,
                         int *depth_i)
{
    unsigned feat = 0;
    unsigned present = fuzz_take(r);
    unsigned edge_member = fuzz_take(r) % 16; /* >= M_N: none */
    unsigned extra = fuzz_take(r) % 16;       /* 0: duplicate, 1: unknown */
    unsigned trail = fuzz_take(r) % 16;       /* 0..2: trailing bytes */
    unsigned limit_sel = fuzz_take(r) % 8;    /* 0: data at max_size, 1: past */
    *depth_i = fuzz_take(r) % 8;
    if (*depth_i >= 4)
        *depth_i = 0;
    uint32_t rng = fuzz_take(r);
    rng = rng << 8 | fuzz_take(r);

    int order[M_N], n = 0;
    order[n++] = M_ID;
    if (present & 1)
        order[n++] = M_NAME;
    order[n++] = M_DATA;
    order[n++] = M_TS;
    if (present & 2)
        order[n++] = M_ORIGIN;
    if (present & 4)
        order[n++] = M_HOPS;
    if (present & 8)
        order[n++] = M_POS;
    /* A permutation by its index in the Lehmer code (two bytes: 0..n!-1
     * mod 65536); 0 is the writer's order, half the inputs keep it. */
    unsigned perm = fuzz_take(r);
    perm = perm & 1 ? (perm << 8 | fuzz_take(r)) >> 1 : 0;
    for (int i = 0; i < n - 1 && perm; i++) {
        int k = (int)(perm % (unsigned)(n - i));
        perm /= (unsigned)(n - i);
        int m = order[i + k];
        memmove(&order[i + 1], &order[i], (size_t)k * sizeof *order);
        order[i] = m;
        if (k)
            feat |= 1u << F_ORDER;
    }
    unsigned picks[M_N];
    for (int i = 0; i < M_N; i++)
        picks[i] = fuzz_take(r);
    if (edge_member < M_N)
        feat |= 1u << F_EDGE;
    if (extra < 2 || trail < 3)
        feat |= 1u << (extra < 2 ? F_EXTRA : F_TRAIL);

    size_t datalen = 0;
    put_blank(b, &rng, &feat);
    fuzz_put_s(b, "{");
    for (int i = 0; i <= n; i++) {
        int m;
        if (i == n) { /* the extra member goes last */
            if (extra >= 2)
                break;
            m = extra == 0 ? order[picks[0] % (unsigned)n] : -1;
        } else {
            m = order[i];
        }
        if (i)
            fuzz_put_s(b, ",");
        put_blank(b, &rng, &feat);
        fuzz_put_s(b, "\"");
        fuzz_put_s(b, m < 0 ? "extra" : member_key[m]);
        fuzz_put_s(b, "\"");
        put_blank(b, &rng, &feat);
        fuzz_put_s(b, ":");
        put_blank(b, &rng, &feat);
        int edge = m == (int)edge_member;
        unsigned k = picks[m < 0 ? 0 : m];
        const value *v = NULL;
        if (m == M_DATA && i < n) {
            put_data(b, r, edge, depths[*depth_i] != 1, &feat, &datalen);
        } else if (m < 0 || m == M_DATA) { /* unknown, or data repeated */
            fuzz_put_s(b, "{\"a\":[1,\"x\"]}");
        } else {
            const member_values *t = &tables[m];
            v = edge ? &t->edge[k % t->nedge] : &t->ok[k % t->nok];
            feat |= t->feature;
        }
        if (v) {
            fuzz_put_s(b, v->text);
            if (v->limit && !edge)
                feat |= 1u << F_LIMIT;
        }
        put_blank(b, &rng, &feat);
    }
    fuzz_put_s(b, "}");
    put_blank(b, &rng, &feat);
    static const char *const trailing[] = {"x", "}", "\0"};
    if (trail < 3)
        fuzz_put_n(b, trailing[trail],
                   trail == 2 ? 1 : strlen(trailing[trail]));
    *max_size = 1 << 20;
    if (limit_sel < 2 && datalen >= limit_sel) {
        *max_size = datalen - limit_sel;
        if (limit_sel == 0)
            feat |= 1u << F_LIMIT;
    }
    return feat;
}

static void print_features(void)
{
    fprintf(stderr,
            "fuzz_envelope_diff: %llu structured decodes, %llu (%.1f %%) by "
            "the fast path\n",
            n_structured, n_structured_fast,
            n_structured
                ? 100.0 * (double)n_structured_fast / (double)n_structured
                : 0.0);
    for (int f = 0; f < F_COUNT; f++)
        fprintf(stderr,
                "  %-8s %10llu decodes, %10llu fast (%5.1f %%), floor "
                "%.0f %%\n",
                feature_names[f], feat_seen[f], feat_fast[f],
                feat_seen[f]
                    ? 100.0 * (double)feat_fast[f] / (double)feat_seen[f]
                    : 0.0,
                100 * feature_floor[f]);
}

/* At exit: a run long enough for shares to mean something fails when a
 * feature's decodes reach the scanner less often than its floor. */
static void check_floors(void)
{
    if (getenv("FUZZ_DIFF_STATS"))
        print_features();
    if (n_structured < FLOOR_MIN_DECODES)
        return;
    for (int f = 0; f < F_COUNT; f++) {
        if (feature_floor[f] > 0 &&
            (double)feat_fast[f] < feature_floor[f] * (double)feat_seen[f]) {
            fprintf(stderr, "fuzz_envelope_diff: feature %s below its floor\n",
                    feature_names[f]);
            print_features();
            fflush(stderr);
            _exit(1);
        }
    }
}

/* A generated message, decoded both ways from a buffer of exactly its
 * size; its features counted. */
static void structured(const uint8_t *data, size_t size)
{
    fuzz_reader r = {data + 2, data + size};
    fuzz_buf b = {0};
    size_t max_size;
    int depth_i;
    unsigned feat = generate(&b, &r, &max_size, &depth_i);
    char *msg = malloc(b.n ? b.n : 1);
    FUZZ_CHECK(msg != NULL);
    memcpy(msg, b.s, b.n);
    free(b.s);
    int fast = decode_both(apps[depth_i], msg, b.n, max_size);
    free(msg);
    n_structured++;
    n_structured_fast += (unsigned)fast;
    for (int f = 0; f < F_COUNT; f++) {
        if (feat & 1u << f) {
            feat_seen[f]++;
            feat_fast[f] += (unsigned)fast;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!apps[0]) {
        fuzz_quiet_logs();
        for (size_t i = 0; i < sizeof apps / sizeof *apps; i++) {
            tb_app_config cfg;
            tb_app_config_init(&cfg);
            cfg.core.json_max_depth = depths[i];
            apps[i] = fuzz_stopped_app(&cfg, NULL);
        }
        if (getenv("FUZZ_DIFF_STATS"))
            atexit(print_stats);
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
    size_t max_size = max_sizes[sel & 7];
    tb_app *app = apps[(sel >> 3) & 3];
    /* Exactly the message's bytes: neither side may read past them. */
    size_t len = size - 1;
    char *msg = malloc(len ? len : 1);
    FUZZ_CHECK(msg != NULL);
    memcpy(msg, data + 1, len);

    decode_both(app, msg, len, max_size);
    /* The same bytes as the value of data, and inside its string: most
     * mutations of a whole message leave no envelope, these keep one. */
    static const char head[] = "{\"id\":\"i1-1\",\"name\":\"" NAME
                               "\",\"ts\":1700000000000000,\"data\":";
    static const char tail[] = ",\"origin\":\"i1/0\"}";
    size_t wlen = sizeof head - 1 + len + 2 + sizeof tail - 1;
    char *wrapped = malloc(wlen);
    FUZZ_CHECK(wrapped != NULL);
    for (int quoted = 0; quoted < 2; quoted++) {
        char *o = wrapped;
        memcpy(o, head, sizeof head - 1);
        o += sizeof head - 1;
        if (quoted)
            *o++ = '"';
        memcpy(o, msg, len);
        o += len;
        if (quoted)
            *o++ = '"';
        memcpy(o, tail, sizeof tail - 1);
        o += sizeof tail - 1;
        decode_both(app, wrapped, (size_t)(o - wrapped), max_size);
    }
    free(wrapped);

    /* The message as an event's data: what the publishing side sends. */
    tb_event *ev = tb__event_new(app, NAME, msg, len, "fuzz-1", "i1/0",
                                 INT64_C(1700000000000000));
    FUZZ_CHECK(ev != NULL);
    ev->hops = (sel >> 5) & 1 ? 3 : 0;
    if ((sel >> 6) & 1)
        tb__event_set_pos(ev, "0123abcd", 42);
    if (sel >> 7) /* ids and origins are escaped as well */
        snprintf(ev->origin, sizeof ev->origin, "%s", "\"o\\\x01\x7f");
    same_encoding(ev);
    tb_event_unref(ev);
    free(msg);
    return 0;
}
