/* fuzz_envelope_diff.c - the envelope's fast path (service/envelope_scan.c)
 * against jansson (issue 13 point 5): every input is decoded both ways and
 * must give the same code, the same reason and the same event (as is, as
 * the value of an envelope's data, and inside its data string); every event
 * so decoded, and the input itself taken as an event's data, is encoded
 * both ways and must give the same bytes.
 *
 * Input: byte 0 picks max_event_size (low 3 bits), json_max_depth (next 2
 * bits), the hops and pos of the data-as-event (top 3 bits); the rest is a
 * message received on the channel of event "fuzz.event". */
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

static void print_stats(void)
{
    fprintf(stderr,
            "fuzz_envelope_diff: %llu inputs (3 decodes each), %llu "
            "decodes and %llu encodes by the fast path\n",
            n_inputs, n_scanned, n_fast_encoded);
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
static void decode_both(tb_app *app, const char *msg, size_t len,
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
    }
    if (size < 1)
        return 0;
    n_inputs++;
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
