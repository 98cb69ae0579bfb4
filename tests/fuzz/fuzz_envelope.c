/* fuzz_envelope.c - the envelope events travel in on Redis
 * (service/envelope.c): the first byte picks max_event_size, the rest is a
 * message received on the channel of event "fuzz.event". What decodes must
 * encode, and decode again to the same event; data that is JSON text may
 * come back in compact form, and then stays so. */
#include "envelope.h"
#include "fuzz.h"
#include "internal.h"

#define NAME "fuzz.event"

static const size_t max_sizes[] = {1 << 20, 0, 1, 16, 1024, 4096};

/* 1 if the data starts like a JSON object or array (after blanks): the
 * encoder sends such data as JSON, which may change its spelling. */
static int json_like(const char *d, size_t len)
{
    size_t i = 0;
    while (i < len && strchr(" \t\r\n", d[i]) && d[i])
        i++;
    return i < len && (d[i] == '{' || d[i] == '[');
}

/* Encodes ev and decodes the result; returns the decode's code. */
static int round_trip(tb_app *app, const tb_event *ev, size_t max_size,
                      tb_event **out)
{
    char *msg;
    size_t len;
    FUZZ_CHECK(tb__envelope_encode(ev, &msg, &len) == 0);
    FUZZ_CHECK(strlen(msg) == len);
    const char *why = NULL;
    int rc = tb__envelope_decode(app, NAME, msg, len, max_size, out, &why);
    free(msg);
    FUZZ_CHECK(rc == 0 || rc == TB_EMSGSIZE);
    FUZZ_CHECK(rc == 0 ? why == NULL : why != NULL);
    return rc;
}

static int same_data(const tb_event *a, const tb_event *b)
{
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tb_app *app;
    if (!app) {
        fuzz_quiet_logs();
        app = fuzz_stopped_app(NULL, NULL);
    }
    if (size < 1)
        return 0;
    size_t max_size =
        max_sizes[data[0] % (sizeof max_sizes / sizeof *max_sizes)];
    /* Exactly the message's bytes: the decoder must not read past them. */
    size_t len = size - 1;
    char *msg = malloc(len ? len : 1);
    FUZZ_CHECK(msg != NULL);
    memcpy(msg, data + 1, len);

    tb_event *ev = NULL;
    const char *why = NULL;
    int rc = tb__envelope_decode(app, NAME, msg, len, max_size, &ev, &why);
    FUZZ_CHECK(rc == 0 || rc == TB_EPROTO || rc == TB_EMSGSIZE);
    FUZZ_CHECK(rc == 0 ? ev != NULL && why == NULL : ev == NULL && why);
    if (rc == 0) {
        FUZZ_CHECK(strcmp(tb_event_name(ev), NAME) == 0);
        FUZZ_CHECK(ev->len <= max_size);
        FUZZ_CHECK(ev->data[ev->len] == '\0');
        FUZZ_CHECK(tb__utf8_valid(ev->data, ev->len));
        FUZZ_CHECK(ev->id[0] && strlen(ev->id) < TB_EVENT_ID_MAX);
        FUZZ_CHECK(ev->ts_us >= 0 && ev->hops >= 0 && ev->hops <= 255);

        tb_event *back = NULL;
        int brc = round_trip(app, ev, max_size, &back);
        /* Compact JSON may be longer than what was sent (0.1 comes back
         * as 0.10000000000000001): over the limit then, but only then. */
        FUZZ_CHECK(brc == 0 || json_like(ev->data, ev->len));
        if (brc == 0) {
            FUZZ_CHECK(strcmp(back->id, ev->id) == 0);
            FUZZ_CHECK(strcmp(back->origin, ev->origin) == 0);
            FUZZ_CHECK(back->ts_us == ev->ts_us && back->hops == ev->hops);
            if (!same_data(ev, back)) {
                FUZZ_CHECK(json_like(ev->data, ev->len));
                tb_event *third = NULL;
                FUZZ_CHECK(round_trip(app, back, max_size, &third) == 0);
                FUZZ_CHECK(same_data(back, third));
                tb_event_unref(third);
            }
            tb_event_unref(back);
        }
        tb_event_unref(ev);
    }
    free(msg);
    return 0;
}
