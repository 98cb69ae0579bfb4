/* test_envelope.c - unit tests for service/envelope.c and envelope_scan.c:
 * round trips through the JSON envelope, the fast path taken for taskbus's
 * own envelopes, raw messages, malformed and oversize messages, the
 * UTF-8 check, and a deterministic fuzz of the decoder. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "envelope.h"
#include "envelope_scan.h"
#include "history.h"
#include "internal.h"
#include "taskbus/taskbus.h"

#define NAME "orders.created"
#define MAX (1024 * 1024)

static tb_app *app; /* made in setup, never run */

static int setup(void **state)
{
    (void)state;
    int err = 0;
    tb_log_set_level(TB_LOG_OFF);
    app = tb_app_new(NULL, &err);
    return app ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tb_app_free(app);
    return 0;
}

static tb_event *new_event(const char *data, size_t len)
{
    tb_event *ev = tb__event_new(app, NAME, data, len, NULL, NULL, 0);
    assert_non_null(ev);
    return ev;
}

/* Decodes msg (a C string) on channel NAME with max_size MAX. */
static int decode_str(const char *msg, tb_event **ev, const char **why)
{
    return tb__envelope_decode(app, NAME, msg, strlen(msg), MAX, ev, why);
}

static void assert_data(const tb_event *ev, const char *want, size_t wantlen)
{
    size_t len;
    const char *data = tb_event_data(ev, &len);
    assert_int_equal(len, wantlen);
    assert_memory_equal(data, want, wantlen);
    assert_int_equal(data[len], '\0');
}

/* Encodes data, checks that the wire holds it as want_type, decodes it and
 * checks that everything came back, data as want. */
static void round_trip(const char *data, size_t len, json_type want_type,
                       const char *want, size_t wantlen)
{
    tb_event *ev = new_event(data, len);
    char *wire = NULL;
    size_t wirelen = 0;
    assert_int_equal(tb__envelope_encode(ev, &wire, &wirelen), 0);
    assert_non_null(wire);
    assert_int_equal(strlen(wire), wirelen);

    json_t *root = json_loadb(wire, wirelen, JSON_ALLOW_NUL, NULL);
    assert_non_null(root);
    assert_int_equal(json_typeof(json_object_get(root, "data")), want_type);
    json_decref(root);

    tb_event *got = NULL;
    const char *why = NULL;
    assert_int_equal(
        tb__envelope_decode(app, NAME, wire, wirelen, MAX, &got, &why), 0);
    assert_non_null(got);
    assert_string_equal(tb_event_id(got), tb_event_id(ev));
    assert_string_equal(tb_event_name(got), NAME);
    assert_data(got, want, wantlen);
    assert_int_equal(tb_event_ts_us(got), tb_event_ts_us(ev));
    assert_string_equal(tb_event_origin(got), tb_event_origin(ev));
    tb_event_unref(got);
    tb_event_unref(ev);
    free(wire);
}

static void round_trip_same(const char *data, json_type want_type)
{
    round_trip(data, strlen(data), want_type, data, strlen(data));
}

/* ---------------------------------------------------------------- encode */

/* The exact bytes: besides the documented format, the Redis bus relies on an
 * envelope starting with {"id":"<id> to recognise its own events without
 * decoding them. */
static void test_wire_format(void **state)
{
    (void)state;
    tb_event *ev = tb__event_new(app, "a.b", "hi", 2, "id-1", "inst/0", 123);
    assert_non_null(ev);
    char *wire;
    size_t len;
    assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
    assert_string_equal(wire,
                        "{\"id\":\"id-1\",\"name\":\"a.b\",\"data\":\"hi\","
                        "\"ts\":123,\"origin\":\"inst/0\"}");
    free(wire);
    tb_event_unref(ev);

    ev = tb__event_new(app, "a.b", "[1, 2]", 6, "id-2", "inst/1", 5);
    assert_non_null(ev);
    assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
    assert_string_equal(wire,
                        "{\"id\":\"id-2\",\"name\":\"a.b\",\"data\":[1,2],"
                        "\"ts\":5,\"origin\":\"inst/1\"}");
    free(wire);
    tb_event_unref(ev);
}

static void test_encode_invalid_utf8(void **state)
{
    (void)state;
    static const char *bad[] = {"\xff", "a\xc3", "\xed\xa0\x80", "\xc0\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tb_event *ev = new_event(bad[i], strlen(bad[i]));
        char *wire = (char *)1;
        size_t len = 1;
        assert_int_equal(tb__envelope_encode(ev, &wire, &len), TB_EINVAL);
        assert_null(wire);
        assert_int_equal(len, 0);
        tb_event_unref(ev);
    }
}

/* ---------------------------------------------------------------- round trip
 */

static void test_round_trip_text(void **state)
{
    (void)state;
    round_trip_same("hello world", JSON_STRING);
    round_trip_same("42", JSON_STRING);
    round_trip_same("true", JSON_STRING);
    round_trip_same("\"quoted\"", JSON_STRING);
    round_trip(NULL, 0, JSON_STRING, "", 0);
}

static void test_round_trip_json(void **state)
{
    (void)state;
    static const char obj[] =
        " {\n \"a\" : 1 , \"b\" : [true, null, \"x\"] }\n";
    static const char cobj[] = "{\"a\":1,\"b\":[true,null,\"x\"]}";
    round_trip(obj, strlen(obj), JSON_OBJECT, cobj, strlen(cobj));
    static const char arr[] = "[ 1, \"two\", {\"three\": 3} ]";
    static const char carr[] = "[1,\"two\",{\"three\":3}]";
    round_trip(arr, strlen(arr), JSON_ARRAY, carr, strlen(carr));
    round_trip_same("{}", JSON_OBJECT);
    round_trip_same("[]", JSON_ARRAY);
    /* A string escape that means NUL is valid JSON: it stays escaped. */
    round_trip_same("{\"a\":\"x\\u0000y\"}", JSON_OBJECT);
    round_trip_same("{\"\xc3\xa9t\xc3\xa9\":\"\xe2\x82\xac\"}", JSON_OBJECT);
}

static void test_round_trip_not_json(void **state)
{
    (void)state;
    /* Looks like JSON, is not: travels as a string, comes back as is. */
    round_trip_same("{not json", JSON_STRING);
    round_trip_same("{\"a\":1} trailing", JSON_STRING);
    round_trip_same("[1,2", JSON_STRING);
    round_trip_same("[1][2]", JSON_STRING);
    /* Valid JSON but a value jansson would change: kept as text. */
    round_trip_same("{\"a\":1,\"a\":2}", JSON_STRING);
    round_trip_same("[123456789012345678901234567890]", JSON_STRING);
}

static void test_round_trip_special_chars(void **state)
{
    (void)state;
    static const char s[] = "q\"uote \\back\\slash / \n\r\t\b\f \x01\x1f\x7f "
                            "\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \\u0041";
    round_trip_same(s, JSON_STRING);
    char all[128];
    for (int i = 1; i < 128; i++)
        all[i - 1] = (char)i;
    round_trip(all, 127, JSON_STRING, all, 127);
}

/* U+0000 is a character like any other (event data is any UTF-8): it
 * travels as \u0000 and comes back, the length kept. */
static void test_round_trip_nul(void **state)
{
    (void)state;
    round_trip("a\0b", 3, JSON_STRING, "a\0b", 3);
    round_trip("\0", 1, JSON_STRING, "\0", 1);
    static const char nuls[] = "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0x\0";
    round_trip(nuls, sizeof nuls - 1, JSON_STRING, nuls, sizeof nuls - 1);
    round_trip("caf\xc3\xa9\0", 6, JSON_STRING, "caf\xc3\xa9\0", 6);

    tb_event *ev = tb__event_new(app, "a.b", "a\0b", 3, "id-1", "inst/0", 1);
    assert_non_null(ev);
    char *wire;
    size_t len;
    assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
    assert_string_equal(wire, "{\"id\":\"id-1\",\"name\":\"a.b\",\"data\":"
                              "\"a\\u0000b\",\"ts\":1,\"origin\":\"inst/0\"}");
    free(wire);
    tb_event_unref(ev);
}

/* Large data, data that escapes to six times its size (past the encoder's
 * first guess at the wire size), and small data after both. */
static void test_round_trip_large(void **state)
{
    (void)state;
    size_t n = 100000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    round_trip(big, n, JSON_STRING, big, n);
    memset(big, 0x01, n); /* each one is "\u0001" on the wire */
    round_trip(big, n, JSON_STRING, big, n);
    size_t len = 0;
    big[len++] = '[';
    while (len < n - 2)
        len += (size_t)sprintf(big + len, "%s7", len > 1 ? "," : "");
    big[len++] = ']';
    round_trip(big, len, JSON_ARRAY, big, len);
    round_trip_same("small", JSON_STRING);
    round_trip_same("[\"small\"]", JSON_ARRAY);
    free(big);
}

/* ---------------------------------------------------------------- raw */

static void assert_raw(const char *msg)
{
    tb_event *ev = NULL;
    const char *why = NULL;
    int64_t before = tb__now_us();
    assert_int_equal(decode_str(msg, &ev, &why), 0);
    assert_non_null(ev);
    assert_null(why);
    assert_data(ev, msg, strlen(msg));
    assert_string_equal(tb_event_name(ev), NAME);
    assert_string_equal(tb_event_origin(ev), "external");
    assert_true(tb_event_id(ev)[0] != '\0');
    assert_true(tb_event_ts_us(ev) >= before);
    assert_true(tb_event_ts_us(ev) <= tb__now_us());
    tb_event_unref(ev);
}

static void test_raw_messages(void **state)
{
    (void)state;
    assert_raw("hello");
    assert_raw("");
    assert_raw("   ");
    assert_raw("42");
    assert_raw("\"a string\"");
    assert_raw("[1, 2, 3]");
    assert_raw("{\"a\": 1}");
    assert_raw("{\"data\": 1}");              /* no id or name */
    assert_raw("{\"id\": \"x\", \"ts\": 1}"); /* no data */
    assert_raw("  {\"user\": \"\xc3\xa9\"}");
}

static void test_raw_fresh_ids(void **state)
{
    (void)state;
    tb_event *a, *b;
    const char *why;
    assert_int_equal(decode_str("hello", &a, &why), 0);
    assert_int_equal(decode_str("hello", &b, &why), 0);
    assert_string_not_equal(tb_event_id(a), tb_event_id(b));
    tb_event_unref(a);
    tb_event_unref(b);
}

static void test_raw_not_text(void **state)
{
    (void)state;
    tb_event *ev = (tb_event *)1;
    const char *why = NULL;
    assert_int_equal(tb__envelope_decode(app, NAME, "a\xff", 2, MAX, &ev, &why),
                     TB_EPROTO);
    assert_null(ev);
    assert_non_null(why);
    assert_true(why[0] != '\0');
}

/* A foreign publisher's plain text holding U+0000 is delivered as it is,
 * and so is a data string holding "\u0000" in an envelope. */
static void test_decode_nul(void **state)
{
    (void)state;
    tb_event *ev = NULL;
    const char *why = NULL;
    assert_int_equal(tb__envelope_decode(app, NAME, "a\0b", 3, MAX, &ev, &why),
                     0);
    assert_data(ev, "a\0b", 3);
    tb_event_unref(ev);
    assert_int_equal(
        decode_str("{\"id\":\"a\",\"data\":\"x\\u0000y\"}", &ev, &why), 0);
    assert_string_equal(tb_event_id(ev), "a");
    assert_data(ev, "x\0y", 3);
    tb_event_unref(ev);
}

/* ---------------------------------------------------------------- envelope */

static void test_envelope_partial(void **state)
{
    (void)state;
    tb_event *ev;
    const char *why;
    /* No id: a fresh one. No ts: now. No origin: external. */
    int64_t before = tb__now_us();
    assert_int_equal(
        decode_str("{\"name\":\"" NAME "\",\"data\":\"x\"}", &ev, &why), 0);
    assert_data(ev, "x", 1);
    assert_true(tb_event_id(ev)[0] != '\0');
    assert_true(tb_event_ts_us(ev) >= before);
    assert_string_equal(tb_event_origin(ev), "external");
    tb_event_unref(ev);

    /* No name: the channel's. null data: empty. Unknown members: ignored. */
    assert_int_equal(decode_str("{\"id\":\"abc 1\",\"data\":null,\"ts\":7,"
                                "\"origin\":\"\",\"extra\":[1]}",
                                &ev, &why),
                     0);
    assert_data(ev, "", 0);
    assert_string_equal(tb_event_id(ev), "abc 1");
    assert_string_equal(tb_event_name(ev), NAME);
    assert_int_equal(tb_event_ts_us(ev), 7);
    assert_string_equal(tb_event_origin(ev), "");
    tb_event_unref(ev);

    /* The longest id and origin. */
    char msg[256];
    snprintf(msg, sizeof msg,
             "{\"id\":\"%039d\",\"data\":\"x\",\"origin\":\"%047d\"}", 0, 0);
    assert_int_equal(decode_str(msg, &ev, &why), 0);
    assert_int_equal(strlen(tb_event_id(ev)), 39);
    assert_int_equal(strlen(tb_event_origin(ev)), 47);
    tb_event_unref(ev);
}

static void assert_malformed(const char *msg)
{
    tb_event *ev = (tb_event *)1;
    const char *why = NULL;
    int rc = decode_str(msg, &ev, &why);
    if (rc != TB_EPROTO)
        fail_msg("%s: got %s, want EPROTO", msg, tb_err_name(rc));
    assert_null(ev);
    assert_non_null(why);
    assert_true(why[0] != '\0');
}

static void test_malformed(void **state)
{
    (void)state;
    assert_malformed("{");
    assert_malformed("{garbage");
    assert_malformed("  {\"id\":");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\"} trailing");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",}");
    assert_malformed("{\"id\":\"a\",\"data\":\"\xff\"}");
    /* id */
    assert_malformed("{\"id\":5,\"data\":\"x\"}");
    assert_malformed("{\"id\":null,\"data\":\"x\"}");
    assert_malformed("{\"id\":\"\",\"data\":\"x\"}");
    assert_malformed("{\"id\":\"0123456789012345678901234567890123456789\","
                     "\"data\":\"x\"}");
    assert_malformed("{\"id\":\"a\\nb\",\"data\":\"x\"}");
    assert_malformed("{\"id\":\"\xc3\xa9\",\"data\":\"x\"}");
    /* name */
    assert_malformed("{\"name\":\"other.event\",\"data\":\"x\"}");
    assert_malformed("{\"name\":\"" NAME ".x\",\"data\":\"x\"}");
    assert_malformed("{\"name\":\"orders\",\"data\":\"x\"}");
    assert_malformed("{\"name\":\"" NAME "\\u0000\",\"data\":\"x\"}");
    assert_malformed("{\"name\":7,\"data\":\"x\"}");
    /* data */
    assert_malformed("{\"id\":\"a\",\"data\":5}");
    assert_malformed("{\"id\":\"a\",\"data\":1.5}");
    assert_malformed("{\"id\":\"a\",\"data\":true}");
    assert_malformed("{\"id\":\"a\",\"data\":false}");
    /* ts */
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"ts\":\"123\"}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"ts\":1.5}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"ts\":-1}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"ts\":null}");
    /* origin */
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"origin\":"
                     "\"012345678901234567890123456789012345678901234567\"}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"origin\":5}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"origin\":\"a\\u0000\"}");
}

/* ---------------------------------------------------------------- size */

static int decode_max(const char *msg, size_t max, tb_event **ev)
{
    const char *why = NULL;
    int rc = tb__envelope_decode(app, NAME, msg, strlen(msg), max, ev, &why);
    if (rc == TB_EMSGSIZE)
        assert_true(why && why[0]);
    return rc;
}

static void test_oversize(void **state)
{
    (void)state;
    tb_event *ev;
    /* String data: its decoded length counts, not the escaped one. */
    static const char s[] = "{\"id\":\"a\",\"data\":\"\\u00e9\\\"cd\"}";
    assert_int_equal(decode_max(s, 4, &ev), TB_EMSGSIZE);
    assert_null(ev);
    assert_int_equal(decode_max(s, 5, &ev), 0);
    assert_data(ev, "\xc3\xa9\"cd", 5);
    tb_event_unref(ev);

    /* Object data: its compact length. */
    static const char o[] = "{\"id\":\"a\",\"data\":{ \"a\" : 1 }}";
    assert_int_equal(decode_max(o, 6, &ev), TB_EMSGSIZE);
    assert_int_equal(decode_max(o, 7, &ev), 0);
    assert_data(ev, "{\"a\":1}", 7);
    tb_event_unref(ev);

    /* Raw: the whole message. */
    assert_int_equal(decode_max("hello", 4, &ev), TB_EMSGSIZE);
    assert_int_equal(decode_max("hello", 5, &ev), 0);
    tb_event_unref(ev);
    assert_int_equal(decode_max("", 0, &ev), 0);
    tb_event_unref(ev);

    /* A large array (longer than any stack buffer) at and over the limit. */
    size_t n = 5000;
    char *arr = malloc(2 * n + 64);
    assert_non_null(arr);
    size_t len = (size_t)sprintf(arr, "{\"id\":\"big\",\"data\":[");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(arr + len, i ? ",%d" : "%d", (int)(i % 10));
    sprintf(arr + len, "]}");
    size_t want = 2 * n + 1; /* "[" + n digits + n-1 commas + "]" */
    assert_int_equal(decode_max(arr, want - 1, &ev), TB_EMSGSIZE);
    assert_int_equal(decode_max(arr, want, &ev), 0);
    size_t got;
    const char *data = tb_event_data(ev, &got);
    assert_int_equal(got, want);
    assert_memory_equal(data, "[0,1,2,3", 8);
    assert_memory_equal(data + want - 3, ",9]", 3);
    tb_event_unref(ev);
    free(arr);
}

/* ---------------------------------------------------------------- UTF-8 */

typedef struct {
    const char *s;
    size_t len;
} bytes;

#define B(lit)                                                                 \
    {                                                                          \
        lit, sizeof lit - 1                                                    \
    }

static void test_utf8_table(void **state)
{
    (void)state;
    static const bytes valid[] = {
        B(""),
        B("a"),
        B("plain ascii text that is longer than sixteen bytes ~"),
        B("\x7f"),
        B("\0"), /* U+0000: a character like any other */
        B("a\0b"),
        B("\xc3\xa9\0"),
        B("\xc2\x80"),         /* U+0080 */
        B("\xdf\xbf"),         /* U+07FF */
        B("\xe0\xa0\x80"),     /* U+0800 */
        B("\xe1\x80\x80"),     /* U+1000 */
        B("\xec\xbf\xbf"),     /* U+CFFF */
        B("\xed\x80\x80"),     /* U+D000 */
        B("\xed\x9f\xbf"),     /* U+D7FF, below the surrogates */
        B("\xee\x80\x80"),     /* U+E000, above them */
        B("\xef\xbf\xbf"),     /* U+FFFF */
        B("\xf0\x90\x80\x80"), /* U+10000 */
        B("\xf0\x9f\x98\x80"), /* U+1F600 */
        B("\xf3\xbf\xbf\xbf"), /* U+FFFFF */
        B("\xf4\x8f\xbf\xbf"), /* U+10FFFF */
        B("0123456789abcdef\xc3\xa9"
          "0123456789abcdef\xe2\x82\xac"),
        B("\xe4\xb8\xad\xe6\x96\x87\xe4\xb8\xad\xe6\x96\x87\xe4\xb8\xad\xe6"
          "\x96\x87\xe4\xb8\xad\xe6\x96\x87"),
    };
    static const bytes invalid[] = {
        B("\x80"), /* lone continuation */
        B("\xbf"),
        B("a\x80z"),
        B("\xc0\x80"),     /* overlong NUL */
        B("\xc0\xaf"),     /* overlong '/' */
        B("\xc1\xbf"),     /* overlong */
        B("\xe0\x80\x80"), /* overlong 3-byte */
        B("\xe0\x9f\xbf"),
        B("\xf0\x80\x80\x80"), /* overlong 4-byte */
        B("\xf0\x8f\xbf\xbf"),
        B("\xed\xa0\x80"),             /* U+D800 surrogate */
        B("\xed\xbf\xbf"),             /* U+DFFF */
        B("\xed\xa0\xbd\xed\xb8\x80"), /* a CESU-8 surrogate pair */
        B("\xf4\x90\x80\x80"),         /* U+110000 */
        B("\xf5\x80\x80\x80"),
        B("\xf7\xbf\xbf\xbf"),
        B("\xf8\x88\x80\x80\x80"), /* 5-byte form */
        B("\xfe"),
        B("\xff"),
        B("\xc2"), /* truncated */
        B("\xe2\x82"),
        B("\xf0\x9f\x98"),
        B("0123456789abcdef\xf0\x9f\x98"),
        B("\xc2\x41"), /* bad continuation */
        B("\xe2\x28\xa1"),
        B("\xe2\x82\x28"),
        B("\xf0\x9f\x28\x80"),
        B("\xf0\x9f\x98\x28"),
    };
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++)
        if (!tb__utf8_valid(valid[i].s, valid[i].len))
            fail_msg("valid[%zu] refused", i);
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        if (tb__utf8_valid(invalid[i].s, invalid[i].len))
            fail_msg("invalid[%zu] accepted", i);
    assert_true(tb__utf8_valid(NULL, 0));
    char nul16[40] = {0}; /* NULs through the 16-byte fast path */
    assert_true(tb__utf8_valid(nul16, sizeof nul16));
    nul16[37] = (char)0xff;
    assert_false(tb__utf8_valid(nul16, sizeof nul16));
}

/* A bad byte anywhere in a long ASCII buffer (inside and after the fast
 * path's 16-byte blocks) is found; a NUL anywhere is fine. */
static void test_utf8_positions(void **state)
{
    (void)state;
    char buf[80];
    for (size_t len = 1; len <= sizeof buf; len++) {
        memset(buf, 'x', sizeof buf);
        assert_true(tb__utf8_valid(buf, len));
        for (size_t i = 0; i < len; i++) {
            buf[i] = '\0';
            assert_true(tb__utf8_valid(buf, len));
            buf[i] = (char)0x80;
            assert_false(tb__utf8_valid(buf, len));
            buf[i] = (char)0xc3;
            assert_false(tb__utf8_valid(buf, len));
            buf[i] = 'x';
        }
        /* A valid 2-byte character at every position. */
        for (size_t i = 0; i + 1 < len; i++) {
            buf[i] = (char)0xc3;
            buf[i + 1] = (char)0xa9;
            assert_true(tb__utf8_valid(buf, len));
            buf[i] = buf[i + 1] = 'x';
        }
    }
}

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64*: deterministic, so a failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

/* A plain reference: decode each code point and check its range. */
static int utf8_reference(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (len - i < n)
            return 0;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n;
    }
    return 1;
}

static void test_utf8_against_reference(void **state)
{
    (void)state;
    static const unsigned char pool[] = {
        'a',  'z',  0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf,
        0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef,
        0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff, 0x80, 0xbf, 0xa9, 0x82};
    unsigned char buf[48];
    rng_state = 0x5eed1234abcdULL;
    for (int iter = 0; iter < 200000; iter++) {
        size_t len = rng() % sizeof buf;
        for (size_t i = 0; i < len; i++) {
            uint64_t r = rng();
            buf[i] = r % 3 == 0 ? (unsigned char)('a' + r % 26)
                                : pool[(r >> 8) % sizeof pool];
        }
        int want = utf8_reference(buf, len);
        if (tb__utf8_valid((const char *)buf, len) != want)
            fail_msg("iteration %d: utf8_valid != %d", iter, want);
    }
}

/* ---------------------------------------------------------------- fuzz */

static void check_decoded(const char *msg, size_t len, size_t max)
{
    tb_event *ev = NULL;
    const char *why = NULL;
    int rc = tb__envelope_decode(app, NAME, msg, len, max, &ev, &why);
    if (rc == 0) {
        assert_non_null(ev);
        size_t dlen;
        const char *data = tb_event_data(ev, &dlen);
        assert_true(dlen <= max);
        assert_true(tb__utf8_valid(data, dlen));
        assert_string_equal(tb_event_name(ev), NAME);
        size_t idlen = strlen(tb_event_id(ev));
        assert_true(idlen > 0 && idlen < TB_EVENT_ID_MAX);
        tb_event_unref(ev);
    } else {
        if (rc != TB_EPROTO && rc != TB_EMSGSIZE)
            fail_msg("decode returned %s", tb_err_name(rc));
        assert_null(ev);
        assert_true(why && why[0]);
    }
}

static void test_fuzz_decode(void **state)
{
    (void)state;
    static const char seed[] =
        "{\"id\":\"0123abcd-1\",\"name\":\"" NAME "\",\"data\":{\"k\":[1,"
        "\"v\\n\\u00e9\",null,true]},\"ts\":1700000000000000,"
        "\"origin\":\"0123456789abcdef/1\"}";
    static const char alphabet[] = "{}[]\":,\\ntu0123456789.-eE \t"
                                   "idnamedatatsorigin\xc3\xa9\xff";
    char buf[512];
    rng_state = 0xdecade1234ULL;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len;
        if (iter % 2 == 0) {
            /* Random bytes, half of them from a JSON-ish alphabet. */
            len = rng() % 96;
            for (size_t i = 0; i < len; i++) {
                uint64_t r = rng();
                buf[i] = r & 1 ? alphabet[(r >> 1) % (sizeof alphabet - 1)]
                               : (char)(r >> 8);
            }
            if (len && rng() % 2)
                buf[0] = '{';
        } else {
            /* A valid envelope with a few flips, inserts and deletes. */
            len = sizeof seed - 1;
            memcpy(buf, seed, len);
            int edits = 1 + (int)(rng() % 4);
            for (int e = 0; e < edits; e++) {
                uint64_t r = rng();
                size_t at = len ? (size_t)(r >> 8) % len : 0;
                char c = r & 16 ? alphabet[(r >> 32) % (sizeof alphabet - 1)]
                                : (char)(r >> 40);
                switch (r % 3) {
                case 0:
                    if (len)
                        buf[at] = c;
                    break;
                case 1:
                    if (len < sizeof buf) {
                        memmove(buf + at + 1, buf + at, len - at);
                        buf[at] = c;
                        len++;
                    }
                    break;
                default:
                    if (len) {
                        memmove(buf + at, buf + at + 1, len - at - 1);
                        len--;
                    }
                    break;
                }
            }
        }
        size_t max = rng() % 4 == 0 ? rng() % 32 : MAX;
        check_decoded(buf, len, max);
    }
    /* The seed itself decodes. */
    tb_event *ev;
    const char *why;
    assert_int_equal(decode_str(seed, &ev, &why), 0);
    assert_string_equal(tb_event_id(ev), "0123abcd-1");
    static const char want[] = "{\"k\":[1,\"v\\n\xc3\xa9\",null,true]}";
    assert_data(ev, want, sizeof want - 1);
    tb_event_unref(ev);
}

/* ---------------------------------------------------------------- depth */

/* depth nested arrays around 1, in a new malloc'd string. */
static char *nested_array(int depth)
{
    char *s = malloc((size_t)depth * 2 + 2);
    assert_non_null(s);
    memset(s, '[', (size_t)depth);
    s[depth] = '1';
    memset(s + depth + 1, ']', (size_t)depth);
    s[2 * depth + 1] = '\0';
    return s;
}

/* Data as deep as the envelope leaves room for travels as JSON; one level
 * more travels as a string; both come back byte for byte. Thousands of
 * levels (what crashed a worker's stack) are just text. */
static void test_depth_of_data(void **state)
{
    (void)state;
    int max = tb_app_get_config(app)->core.json_max_depth;
    char *fits = nested_array(max - 1);
    round_trip_same(fits, JSON_ARRAY);
    char *over = nested_array(max);
    round_trip_same(over, JSON_STRING);
    char *hostile = nested_array(3000);
    round_trip_same(hostile, JSON_STRING);
    free(fits);
    free(over);
    free(hostile);
}

/* A message from Redis nested deeper than json_max_depth is refused before
 * it is parsed; a plain PUBLISH of thousands of brackets is raw text. */
static void test_depth_of_messages(void **state)
{
    (void)state;
    int max = tb_app_get_config(app)->core.json_max_depth;
    char msg[4096];
    char *data = nested_array(max - 1);
    snprintf(msg, sizeof msg, "{\"id\":\"a\",\"data\":%s}", data);
    tb_event *ev = NULL;
    const char *why = NULL;
    assert_int_equal(decode_str(msg, &ev, &why), 0);
    assert_data(ev, data, strlen(data));
    tb_event_unref(ev);
    free(data);

    data = nested_array(max);
    snprintf(msg, sizeof msg, "{\"id\":\"a\",\"data\":%s}", data);
    ev = NULL;
    assert_int_equal(decode_str(msg, &ev, &why), TB_EPROTO);
    assert_null(ev);
    assert_non_null(strstr(why, "json_max_depth"));
    free(data);

    char *hostile = nested_array(3000);
    assert_int_equal(decode_str(hostile, &ev, &why), 0); /* raw text */
    assert_data(ev, hostile, strlen(hostile));
    tb_event_unref(ev);
    char *obj = malloc(3000 * 6 + 8);
    size_t n = 0;
    for (int i = 0; i < 3000; i++)
        n += (size_t)sprintf(obj + n, "{\"a\":");
    obj[n++] = '1';
    memset(obj + n, '}', 3000);
    obj[n + 3000] = '\0';
    assert_int_equal(decode_str(obj, &ev, &why), TB_EPROTO);
    free(obj);
    free(hostile);
}

/* ---------------------------------------------------------------- hops */

static void test_hops(void **state)
{
    (void)state;
    tb_event *ev = tb__event_new(app, "a.b", "hi", 2, "id-1", "inst/0", 123);
    assert_non_null(ev);
    char *wire;
    size_t len;
    /* A direct dispatch has none on the wire (the format is unchanged). */
    assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
    assert_null(strstr(wire, "hops"));
    free(wire);
    ev->hops = 3;
    assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
    assert_string_equal(wire,
                        "{\"id\":\"id-1\",\"name\":\"a.b\",\"data\":\"hi\","
                        "\"ts\":123,\"origin\":\"inst/0\",\"hops\":3}");
    tb_event *got = NULL;
    assert_int_equal(
        tb__envelope_decode(app, "a.b", wire, len, MAX, &got, NULL), 0);
    assert_int_equal(tb_event_hops(got), 3);
    tb_event_unref(got);
    free(wire);
    /* The thread's template does not keep it for the next event. */
    ev->hops = 0;
    assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
    assert_null(strstr(wire, "hops"));
    free(wire);
    tb_event_unref(ev);

    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"hops\":-1}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"hops\":256}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"hops\":\"1\"}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"hops\":1.5}");
}

/* ---------------------------------------------------------------- pos */

static void test_pos(void **state)
{
    (void)state;
    tb_event *ev = tb__event_new(app, "a.b", "hi", 2, "id-1", "inst/0", 123);
    assert_non_null(ev);
    assert_string_equal(tb_event_pos(ev), "");
    /* Last member, as the publish script appends it. */
    tb__event_set_pos(ev, "0123abcd", 7);
    char *wire;
    size_t len;
    assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
    assert_string_equal(
        wire, "{\"id\":\"id-1\",\"name\":\"a.b\",\"data\":\"hi\","
              "\"ts\":123,\"origin\":\"inst/0\",\"pos\":\"0123abcd-7\"}");
    tb_event *got = NULL;
    assert_int_equal(
        tb__envelope_decode(app, "a.b", wire, len, MAX, &got, NULL), 0);
    assert_string_equal(tb_event_pos(got), "0123abcd-7");
    assert_int_equal(got->seq, 7);
    tb_event_unref(got);
    free(wire);
    tb_event_unref(ev);
    /* The template does not keep it for the next event. */
    ev = tb__event_new(app, "a.b", "hi", 2, "id-2", "inst/0", 123);
    assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
    assert_null(strstr(wire, "pos"));
    free(wire);
    tb_event_unref(ev);

    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"pos\":7}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"pos\":\"\"}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"pos\":\"0123abcd-0\"}");
    assert_malformed("{\"id\":\"a\",\"data\":\"x\",\"pos\":\"0123ABCD-1\"}");
    assert_malformed(
        "{\"id\":\"a\",\"data\":\"x\",\"pos\":\"0123abcd-1\\u0000\"}");
}

/* What taskbus writes, the scanner reads without jansson (the Redis bus's
 * hot path, issue 13), giving the event that was sent; what it does not
 * take is jansson's. */
static void test_fast_path(void **state)
{
    (void)state;
    static const char *datas[] = {
        "plain text", "tab\there \"quoted\" \u00e9",
        "{\"a\":[1,-2,true,null],\"b\":{}}", "",
        /* the same key at two levels: no duplicate */
        "{\"a\":{\"b\":1},\"b\":{\"a\":[{\"a\":0}]}}"};
    for (size_t i = 0; i < sizeof datas / sizeof *datas; i++) {
        tb_event *ev = tb__event_new(app, NAME, datas[i], strlen(datas[i]),
                                     "id-9", "inst/0", 77);
        assert_non_null(ev);
        ev->hops = 3;
        tb__event_set_pos(ev, "0123abcd", 5);
        char *wire;
        size_t len;
        assert_int_equal(tb__envelope_encode(ev, &wire, &len), 0);
        /* Written by the fast writer, not handed to jansson. */
        char *fast;
        size_t fastlen;
        assert_int_equal(tb__envelope_write(ev, &fast, &fastlen), 1);
        assert_int_equal(fastlen, len);
        assert_memory_equal(fast, wire, len);
        free(fast);
        tb__envelope_view v;
        assert_int_equal(tb__envelope_scan(wire, len, NAME, MAX, 64, &v), 1);
        tb_event *back = NULL;
        assert_int_equal(decode_str(wire, &back, NULL), 0);
        assert_data(back, datas[i], strlen(datas[i]));
        assert_string_equal(back->id, "id-9");
        assert_string_equal(back->origin, "inst/0");
        assert_int_equal(back->ts_us, 77);
        assert_int_equal(back->hops, 3);
        assert_string_equal(back->pos, "0123abcd-5");
        free(wire);
        tb_event_unref(back);
        tb_event_unref(ev);
    }
    /* Valid, but for jansson: an unknown member, a duplicate, a real, a
     * spelling jansson would change, another channel's name. */
    static const char *others[] = {
        "{\"id\":\"a\",\"data\":\"x\",\"ts\":1,\"extra\":1}",
        "{\"id\":\"a\",\"id\":\"b\",\"data\":\"x\",\"ts\":1}",
        "{\"id\":\"a\",\"data\":[1.5],\"ts\":1}",
        "{\"id\":\"a\",\"data\":[\"\\/\"],\"ts\":1}",
        "{\"id\":\"a\",\"data\":{\"k\":1,\"k\":2},\"ts\":1}",
        "{\"id\":\"a\",\"name\":\"other\",\"data\":\"x\",\"ts\":1}",
    };
    for (size_t i = 0; i < sizeof others / sizeof *others; i++) {
        tb__envelope_view v;
        assert_int_equal(
            tb__envelope_scan(others[i], strlen(others[i]), NAME, MAX, 64, &v),
            0);
    }
    /* JSON data the writer declines (jansson would dump it otherwise: a
     * leading blank, a real, an escaped '/'): jansson writes it. */
    static const char *declined[] = {" {}", "[1.5]", "[\"\\/\"]"};
    for (size_t i = 0; i < sizeof declined / sizeof *declined; i++) {
        tb_event *ev = tb__event_new(app, NAME, declined[i],
                                     strlen(declined[i]), "id-9", "inst/0", 77);
        assert_non_null(ev);
        char *out = NULL;
        size_t len;
        assert_int_equal(tb__envelope_write(ev, &out, &len), 0);
        assert_null(out);
        assert_int_equal(tb__envelope_encode(ev, &out, &len), 0);
        free(out);
        tb_event_unref(ev);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_format),
        cmocka_unit_test(test_fast_path),
        cmocka_unit_test(test_encode_invalid_utf8),
        cmocka_unit_test(test_round_trip_text),
        cmocka_unit_test(test_round_trip_json),
        cmocka_unit_test(test_round_trip_not_json),
        cmocka_unit_test(test_round_trip_special_chars),
        cmocka_unit_test(test_round_trip_nul),
        cmocka_unit_test(test_round_trip_large),
        cmocka_unit_test(test_raw_messages),
        cmocka_unit_test(test_raw_fresh_ids),
        cmocka_unit_test(test_raw_not_text),
        cmocka_unit_test(test_decode_nul),
        cmocka_unit_test(test_envelope_partial),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_utf8_table),
        cmocka_unit_test(test_utf8_positions),
        cmocka_unit_test(test_utf8_against_reference),
        cmocka_unit_test(test_fuzz_decode),
        cmocka_unit_test(test_depth_of_data),
        cmocka_unit_test(test_depth_of_messages),
        cmocka_unit_test(test_hops),
        cmocka_unit_test(test_pos),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
