/* test_http_head.c - unit tests for service/http_head.c (the front's
 * framing: head ends, framing headers, chunked bodies). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "http_head.h"

static size_t end_of(const char *s)
{
    return tb__http_head_end(s, strlen(s));
}

static void test_head_end(void **state)
{
    (void)state;
    assert_int_equal(end_of("GET / HTTP/1.1\r\nHost: t\r\n\r\nBODY"), 27);
    assert_int_equal(end_of("GET / HTTP/1.1\nHost: t\n\nBODY"), 24);
    /* LF CR LF ends no head for civetweb: not for the front either. */
    assert_int_equal(end_of("GET / HTTP/1.1\r\nHost: t\n\r\n"), 0);
    assert_int_equal(end_of("GET / HTTP/1.1\n\r\nX: 1\r\n\r\n"), 25);
    assert_int_equal(end_of("GET / HTTP/1.1\r\nHost: t\r\n\n"), 26);
    assert_int_equal(end_of("GET / HTTP/1.1\r\nHost: t\r\n\r"), 0);
    assert_int_equal(end_of("GET / HTTP/1.1\r\nHost: t\r\n"), 0);
    assert_int_equal(end_of(""), 0);
}

/* Searched a piece at a time from where the last search stopped: the
 * same ends as one search of the whole. */
static void test_head_end_from(void **state)
{
    (void)state;
    static const char *const heads[] = {
        "GET / HTTP/1.1\r\nHost: t\r\n\r\nBODY",
        "GET / HTTP/1.1\nHost: t\n\nBODY",
        "GET / HTTP/1.1\r\nHost: t\r\n\nX",
        "GET / HTTP/1.1\n\r\nX: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\n\r\n",
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        size_t len = strlen(heads[i]), whole = end_of(heads[i]);
        for (size_t step = 1; step <= 5; step++) {
            size_t from = 0, got = 0;
            for (size_t have = step; !got; have += step) {
                if (have > len)
                    have = len;
                got = tb__http_head_end_from(heads[i], have, from);
                from = have;
                if (have == len)
                    break;
            }
            assert_int_equal(got, whole);
        }
    }
}

static tb__http_head parse(const char *s, int request)
{
    tb__http_head h;
    tb__http_head_parse(s, end_of(s), request, &h);
    return h;
}

static void test_request_framing(void **state)
{
    (void)state;
    tb__http_head h =
        parse("POST /e HTTP/1.1\r\nContent-Length: 12\r\n\r\n", 1);
    assert_false(h.bad);
    assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_LENGTH);
    assert_int_equal(h.length, 12);
    assert_true(h.keep_alive);
    h = parse("POST /e HTTP/1.1\r\ntransfer-encoding:  Chunked \r\n\r\n", 1);
    assert_false(h.bad);
    assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_CHUNKED);
    h = parse("GET / HTTP/1.1\r\n\r\n", 1);
    assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_NONE);
    h = parse("GET / HTTP/1.0\r\n\r\n", 1);
    assert_false(h.keep_alive);
    h = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 1);
    assert_true(h.keep_alive);
    h = parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n", 1);
    assert_false(h.keep_alive);
    h = parse("HEAD / HTTP/1.1\r\n\r\n", 1);
    assert_true(h.method_head);
}

/* What the server would refuse or read differently: bad, no body
 * relayed. */
static void test_request_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: "
        "chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
        "chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        "POST / HTTP/1.1\r\n: nameless\r\n\r\n",
        "GARBAGE\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tb__http_head h = parse(bad[i], 1);
        assert_true(h.bad);
        assert_false(h.keep_alive);
        assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_NONE);
    }
    /* 63 header lines pass, 64 do not (civetweb reads 64 at most). */
    char buf[4096];
    for (int n = 63; n <= 64; n++) {
        size_t off = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\n");
        for (int i = 0; i < n; i++)
            off +=
                (size_t)snprintf(buf + off, sizeof buf - off, "X%d: v\r\n", i);
        snprintf(buf + off, sizeof buf - off, "\r\n");
        assert_int_equal(parse(buf, 1).bad, n > TB__HTTP_HEAD_LINES_MAX);
    }
}

/* Heads civetweb may frame apart from the front: refused by the front
 * itself (reject, which implies bad). */
static void test_request_reject(void **state)
{
    (void)state;
    /* Each with the kind that gives civetweb's own code (bad_header for
     * LINES, bad_request for BYTES: a byte civetweb takes for a control
     * byte, HTAB in a name among them). */
    static const struct {
        const char *head;
        int kind;
    } bad[] = {
        {"POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
         TB__HTTP_REJECT_LINES},
        {"POST / HTTP/1.1\r\nContent-Length\t: 5\r\n\r\n",
         TB__HTTP_REJECT_BYTES},
        {"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
         TB__HTTP_REJECT_LINES},
        {"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", TB__HTTP_REJECT_LINES},
        {"GET / HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n", TB__HTTP_REJECT_BYTES},
        {"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", TB__HTTP_REJECT_BYTES},
        {"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", TB__HTTP_REJECT_BYTES},
        {"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", TB__HTTP_REJECT_BYTES},
        {"GET /\x1b HTTP/1.1\r\n\r\n", TB__HTTP_REJECT_BYTES},
        /* LF CR LF inside civetweb's head: a header after it */
        {"POST / HTTP/1.1\n\r\nContent-Length: 5\r\n\r\n",
         TB__HTTP_REJECT_LINES},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tb__http_head h;
        size_t len = strlen(bad[i].head);
        assert_int_equal(tb__http_head_end(bad[i].head, len), len);
        tb__http_head_parse(bad[i].head, len, 1, &h);
        assert_int_equal(h.reject, bad[i].kind);
        assert_true(h.bad);
        assert_false(h.keep_alive);
        assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_NONE);
    }
    static const char nul[] = "GET / HTTP/1.1\r\nX\0: a\r\n\r\n";
    tb__http_head h;
    tb__http_head_parse(nul, sizeof nul - 1, 1, &h);
    assert_true(h.reject);
    /* Safe to send twice: GET, HEAD, OPTIONS only. */
    assert_true(parse("OPTIONS * HTTP/1.1\r\n\r\n", 1).method_safe);
    assert_true(parse("HEAD / HTTP/1.1\r\n\r\n", 1).method_safe);
    assert_true(parse("GET / HTTP/1.1\r\n\r\n", 1).method_safe);
    assert_false(parse("POST / HTTP/1.1\r\n\r\n", 1).method_safe);
    assert_false(parse("DELETE /tasks/1 HTTP/1.1\r\n\r\n", 1).method_safe);
    assert_false(parse("PUT / HTTP/1.1\r\n\r\n", 1).method_safe);
    /* HTAB inside a value, blanks after the colon: fine. */
    h = parse("POST / HTTP/1.1\r\nContent-Length:\t5 \r\nX: a\tb\r\n\r\n", 1);
    assert_false(h.reject);
    assert_false(h.bad);
    assert_int_equal(h.length, 5);
}

static void test_upgrade(void **state)
{
    (void)state;
    const char *ws = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: "
                     "keep-alive, Upgrade\r\nSec-WebSocket-Key: "
                     "dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_true(parse(ws, 1).upgrade);
    /* Not the server's idea of a handshake: an ordinary request. */
    assert_false(parse("POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: "
                       "Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n",
                       1)
                     .upgrade);
    assert_false(parse("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: "
                       "Upgrade\r\n\r\n",
                       1)
                     .upgrade);
}

static void test_response(void **state)
{
    (void)state;
    tb__http_head h = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 0);
    assert_int_equal(h.status, 200);
    assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_LENGTH);
    assert_int_equal(tb__http_body_kind(&h, 1), TB__HTTP_BODY_NONE);
    h = parse("HTTP/1.1 204 No Content\r\n\r\n", 0);
    assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_NONE);
    h = parse("HTTP/1.1 200 OK\r\n\r\n", 0);
    assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_CLOSE);
    h = parse("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n"
              "Connection: close\r\n\r\n",
              0);
    assert_false(h.keep_alive);
    h = parse("HTTP/1.1 101 Switching Protocols\r\n\r\n", 0);
    assert_true(h.upgrade);
    assert_int_equal(tb__http_body_kind(&h, 0), TB__HTTP_BODY_NONE);
    h = parse("HTTP/1.1 100 Continue\r\n\r\n", 0);
    assert_int_equal(h.status, 100);
    assert_true(parse("HTTP/1.1 2000 OK\r\n\r\n", 0).bad);
    assert_true(parse("HTTP/1.1 20\r\n\r\n", 0).bad);
}

/* Feeds s whole, then a byte at a time: the same end. */
static long feed(const char *s, size_t step, int *done)
{
    tb__http_chunks c;
    memset(&c, 0, sizeof c);
    size_t off = 0, len = strlen(s);
    *done = 0;
    while (off < len && !*done) {
        size_t n = len - off < step ? len - off : step;
        long used = tb__http_chunks_feed(&c, s + off, n, done);
        if (used < 0)
            return -1;
        off += (size_t)used;
    }
    return (long)off;
}

static void test_chunks(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        long end; /* -1: malformed; else where the body ends */
        int done;
    } cases[] = {
        {"3\r\nabc\r\n0\r\n\r\nNEXT", 13, 1},
        {"3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\n", 38, 1},
        {"3\nabc\n0\n\n", 9, 1},
        {"3\r\nabc\r\n0\r\n", 11, 0}, /* the trailer's end to come */
        {"3\r\nabcX\r\n", -1, 0},
        {"g\r\n", -1, 0},
        {"\r\n", -1, 0},
        {"1000000000000000\r\n", -1, 0}, /* over 2^60 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t step = 1; step <= 64; step *= 4) {
            int done;
            long end = feed(cases[i].body, step, &done);
            assert_int_equal(end, cases[i].end);
            if (end >= 0)
                assert_int_equal(done, cases[i].done);
        }
    }
    /* Extensions and trailers are noted: civetweb closes after them. */
    static const struct {
        const char *body;
        int extras;
    } ex[] = {
        {"3\r\nabc\r\n0\r\n\r\n", 0},
        {"3 \r\nabc\r\n0\r\n\r\n", 0},
        {"3;x=y\r\nabc\r\n0\r\n\r\n", 1},
        {"3\r\nabc\r\n0\r\nT: 1\r\n\r\n", 1},
    };
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        tb__http_chunks c;
        memset(&c, 0, sizeof c);
        int d;
        tb__http_chunks_feed(&c, ex[i].body, strlen(ex[i].body), &d);
        assert_true(d);
        assert_int_equal(c.extras, ex[i].extras);
    }
    /* A size line or trailers past their bounds are malformed. */
    char buf[TB__HTTP_TRAILER_MAX + 64];
    memset(buf, '0', TB__HTTP_CHUNK_LINE_MAX + 1);
    strcpy(buf + TB__HTTP_CHUNK_LINE_MAX + 1, "\r\n");
    int done;
    assert_int_equal(feed(buf, 4096, &done), -1);
    strcpy(buf, "0\r\n");
    memset(buf + 3, 'x', TB__HTTP_TRAILER_MAX);
    buf[3 + TB__HTTP_TRAILER_MAX] = '\0';
    assert_int_equal(feed(buf, 4096, &done), 3 + TB__HTTP_TRAILER_MAX);
    strcpy(buf + 3 + TB__HTTP_TRAILER_MAX, "x");
    assert_int_equal(feed(buf, 4096, &done), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_end),
        cmocka_unit_test(test_head_end_from),
        cmocka_unit_test(test_request_framing),
        cmocka_unit_test(test_request_bad),
        cmocka_unit_test(test_request_reject),
        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
