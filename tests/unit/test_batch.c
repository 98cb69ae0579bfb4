/* test_batch.c - unit tests for service/batch.c: the body of POST /events
 * as a JSON array and as NDJSON, its limits at their edges, and the item
 * each refusal names. */
#include "harness.h"

#include <stdint.h>

#include "batch.h"

#define DEPTH 8

static int parse(const char *body, tb__batch_format fmt, size_t max_events,
                 tb__batch *b, tb__batch_err *e)
{
    return tb__batch_parse(body, strlen(body), fmt, max_events, 64, DEPTH, b,
                           e);
}

static void item_is(const tb__batch *b, size_t i, const char *name,
                    const char *data)
{
    assert_true(i < b->n);
    assert_string_equal(b->items[i].name, name);
    assert_int_equal(b->items[i].len, strlen(data));
    assert_memory_equal(b->items[i].data, data, strlen(data));
}

static void refused(const char *body, tb__batch_format fmt, int status,
                    const char *code, size_t index)
{
    tb__batch b;
    tb__batch_err e;
    assert_rc(parse(body, fmt, 10, &b, &e), TB_EINVAL);
    if (e.status != status || strcmp(e.code, code) != 0 || e.index != index)
        fail_msg("%s: got %d %s index %zu (%s), want %d %s %zu", body, e.status,
                 e.code, e.index, e.message, status, code, index);
    assert_int_equal(b.n, 0);
    assert_null(b.items);
}

static void test_array(void **state)
{
    (void)state;
    tb__batch b;
    tb__batch_err e;
    assert_rc(parse(" [ {\"name\":\"a.b\",\"data\":{\"x\": [1, 2]}},\n"
                    "{\"data\":\"t\\u0000x\",\"name\":\"c\"}, {\"name\":\"d\"},"
                    "{\"name\":\"e\",\"data\":null},{\"name\":\"f\",\"data\":"
                    "42}, {\"name\":\"g\",\"data\":\"],}\"} ]\r\n",
                    TB__BATCH_ARRAY, 10, &b, &e),
              0);
    assert_int_equal(b.n, 6);
    item_is(&b, 0, "a.b", "{\"x\": [1, 2]}"); /* as sent */
    assert_string_equal(b.items[1].name, "c");
    assert_int_equal(b.items[1].len, 3);
    assert_memory_equal(b.items[1].data, "t\0x", 3);
    item_is(&b, 2, "d", "");
    item_is(&b, 3, "e", "");
    item_is(&b, 4, "f", "42");
    item_is(&b, 5, "g", "],}");
    tb__batch_free(&b);
    tb__batch_free(&b); /* emptied: a no-op */

    assert_rc(parse("[]", TB__BATCH_ARRAY, 10, &b, &e), 0);
    assert_int_equal(b.n, 0);
    tb__batch_free(&b);
}

static void test_ndjson(void **state)
{
    (void)state;
    tb__batch b;
    tb__batch_err e;
    assert_rc(parse("\n{\"name\":\"a\",\"data\":[1]}\r\n  \n\t\r\n"
                    "{\"name\":\"b\",\"data\":\"x\\ny\"}",
                    TB__BATCH_NDJSON, 10, &b, &e),
              0);
    assert_int_equal(b.n, 2);
    item_is(&b, 0, "a", "[1]");
    item_is(&b, 1, "b", "x\ny");
    tb__batch_free(&b);
    assert_rc(parse("", TB__BATCH_NDJSON, 10, &b, &e), 0);
    assert_int_equal(b.n, 0);
    /* The line of the bad item counts blank lines; its index does not. */
    assert_rc(parse("{\"name\":\"a\"}\n\n{\"name\":\"a..b\"}\n",
                    TB__BATCH_NDJSON, 10, &b, &e),
              TB_EINVAL);
    assert_string_equal(e.code, "bad_name");
    assert_int_equal(e.index, 1);
    assert_int_equal(e.line, 3);
    /* Two objects on one line are not one item. */
    refused("{\"name\":\"a\"}{\"name\":\"b\"}", TB__BATCH_NDJSON, 400,
            "bad_json", 0);
}

static void test_bad_items(void **state)
{
    (void)state;
    const tb__batch_format A = TB__BATCH_ARRAY;
    refused("{\"name\":\"a\"}", A, 400, "bad_batch", SIZE_MAX);
    refused("", A, 400, "bad_batch", SIZE_MAX);
    refused("[{\"name\":\"a\"}] x", A, 400, "bad_batch", SIZE_MAX);
    refused("[{\"name\":\"a\"}][]", A, 400, "bad_batch", SIZE_MAX);
    refused("[{\"name\":\"a\"},", A, 400, "bad_json", 1);
    refused("[{\"name\":\"a\"", A, 400, "bad_json", 0);
    refused("[{\"name\":\"a\"},]", A, 400, "bad_json", 1);
    refused("[,{\"name\":\"a\"}]", A, 400, "bad_json", 0);
    refused("[{\"name\":\"a\"}}]", A, 400, "bad_json", 0);
    refused("[{\"name\":\"a\"},{\"name\":\"b\"]", A, 400, "bad_json", 1);
    refused("[{\"name\":\"a\"},{\"name\":\"b\\\"}]", A, 400, "bad_json", 1);
    refused("[{\"name\":\"a\"},1]", A, 400, "bad_item", 1);
    refused("[{\"name\":\"a\"},[]]", A, 400, "bad_item", 1);
    refused("[{\"name\":\"a\"},{\"data\":1}]", A, 400, "bad_item", 1);
    refused("[{\"name\":1}]", A, 400, "bad_item", 0);
    refused("[{\"name\":\"a\",\"event\":\"b\"}]", A, 400, "bad_item", 0);
    refused("[{\"name\":\"a\",\"name\":\"b\"}]", A, 400, "bad_json", 0);
    refused("[{\"name\":\"\"}]", A, 400, "bad_name", 0);
    refused("[{\"name\":\"a\"},{\"name\":\"a b\"}]", A, 400, "bad_name", 1);
    refused("[{\"name\":\"a\\u0000b\"}]", A, 400, "bad_name", 0);
    refused("[{\"name\":\"a\",\"data\":\"\xff\"}]", A, 400, "bad_json", 0);
    refused("[{\"name\":\"a\",\"data\":01}]", A, 400, "bad_json", 0);
}

/* Data other than a string is carried as the bytes sent, as POST
 * /events/{name} carries its body: no number re-encoded, no space
 * dropped, and max_event_size (64 here) counts those bytes. */
static void test_data_as_sent(void **state)
{
    (void)state;
    tb__batch b;
    tb__batch_err e;
    assert_rc(parse("[{\"name\":\"a\",\"data\":{\"p\":1.1}},"
                    "{\"name\":\"b\",\"data\": 1e2 },"
                    "{\"name\":\"c\",\"data\":18446744073709551615},"
                    "{\"data\":[ 1 ,\n\t{ \"k\" : 2.50 } ],\"name\":\"d\"},"
                    "{\"name\":\"e\",\"data\":-0.0}]",
                    TB__BATCH_ARRAY, 10, &b, &e),
              0);
    assert_int_equal(b.n, 5);
    item_is(&b, 0, "a", "{\"p\":1.1}");
    item_is(&b, 1, "b", "1e2");
    item_is(&b, 2, "c", "18446744073709551615");
    item_is(&b, 3, "d", "[ 1 ,\n\t{ \"k\" : 2.50 } ]");
    item_is(&b, 4, "e", "-0.0");
    tb__batch_free(&b);
    assert_rc(parse("{\"name\":\"a\",\"data\":{\"p\": 1E+2}}\r\n",
                    TB__BATCH_NDJSON, 10, &b, &e),
              0);
    item_is(&b, 0, "a", "{\"p\": 1E+2}");
    tb__batch_free(&b);

    /* At the edge: 64 bytes as sent (spaces included) pass, 65 do not,
     * though the compact form of both is far smaller. */
    char body[256], data[80];
    memset(data, ' ', sizeof data);
    data[0] = '[';
    data[1] = '1';
    data[63] = ']';
    data[64] = '\0';
    snprintf(body, sizeof body, "[{\"name\":\"a\",\"data\":%s}]", data);
    assert_rc(parse(body, TB__BATCH_ARRAY, 10, &b, &e), 0);
    assert_int_equal(b.items[0].len, 64);
    tb__batch_free(&b);
    data[63] = ' ';
    data[64] = ']';
    data[65] = '\0';
    snprintf(body, sizeof body,
             "[{\"name\":\"a\"},{\"name\":\"a\",\"data\":%s}]", data);
    refused(body, TB__BATCH_ARRAY, 413, "too_large", 1);
    /* Escaped, the member is still "data". */
    assert_rc(parse("[{\"name\":\"a\",\"d\\u0061ta\":[ 2 ]}]", TB__BATCH_ARRAY,
                    10, &b, &e),
              0);
    item_is(&b, 0, "a", "[ 2 ]");
    tb__batch_free(&b);
}

/* A UTF-8 byte order mark before the body is skipped, in both formats;
 * elsewhere it is no blank. */
static void test_bom(void **state)
{
    (void)state;
    tb__batch b;
    tb__batch_err e;
    assert_rc(parse("\xEF\xBB\xBF[{\"name\":\"a\",\"data\":1}]",
                    TB__BATCH_ARRAY, 10, &b, &e),
              0);
    item_is(&b, 0, "a", "1");
    tb__batch_free(&b);
    assert_rc(parse("\xEF\xBB\xBF{\"name\":\"a\"}\n{\"name\":\"b\"}",
                    TB__BATCH_NDJSON, 10, &b, &e),
              0);
    assert_int_equal(b.n, 2);
    tb__batch_free(&b);
    refused("[{\"name\":\"a\"},\xEF\xBB\xBF{\"name\":\"b\"}]", TB__BATCH_ARRAY,
            400, "bad_json", 1);
}

/* A batch of a flat item, then one that nests depth levels (its object
 * and data arrays). */
static char *item_of_depth(int depth)
{
    char *s = malloc(64 + 2 * (size_t)depth);
    assert_non_null(s);
    strcpy(s, "[{\"name\":\"a\"},{\"name\":\"b\",\"data\":");
    for (int i = 1; i < depth; i++)
        strcat(s, "[");
    strcat(s, "1");
    for (int i = 1; i < depth; i++)
        strcat(s, "]");
    strcat(s, "}]");
    return s;
}

static void test_limits_at_their_edge(void **state)
{
    (void)state;
    tb__batch b;
    tb__batch_err e;
    /* max_events: 3 pass, the 4th is refused before it is parsed. */
    assert_rc(parse("[{\"name\":\"a\"},{\"name\":\"a\"},{\"name\":\"a\"}]",
                    TB__BATCH_ARRAY, 3, &b, &e),
              0);
    assert_int_equal(b.n, 3);
    tb__batch_free(&b);
    assert_rc(parse("[{\"name\":\"a\"},{\"name\":\"a\"},{\"name\":\"a\"},"
                    "garbage",
                    TB__BATCH_ARRAY, 3, &b, &e),
              TB_EINVAL);
    assert_int_equal(e.status, 413);
    assert_string_equal(e.code, "too_many_events");
    assert_int_equal(e.index, 3);
    assert_rc(parse("{\"name\":\"a\"}\n{\"name\":\"a\"}\n\n{\"name\":\"a\"}",
                    TB__BATCH_NDJSON, 2, &b, &e),
              TB_EINVAL);
    assert_string_equal(e.code, "too_many_events");
    assert_int_equal(e.line, 4);

    /* null is carried as empty: within any max_event_size, on either
     * path (jansson's once refused it under 4 bytes). */
    const char *nul = "[{\"name\":\"a\",\"data\": null}]";
    for (int fast = 0; fast < 2; fast++) {
        tb__batch_set_fast_path(fast);
        assert_rc(tb__batch_parse(nul, strlen(nul), TB__BATCH_ARRAY, 1, 1,
                                  DEPTH, &b, &e),
                  0);
        item_is(&b, 0, "a", "");
        tb__batch_free(&b);
    }

    /* max_event_size (64 here): of the data as carried. */
    char body[256];
    snprintf(body, sizeof body, "[{\"name\":\"a\",\"data\":\"%064d\"}]", 0);
    assert_rc(parse(body, TB__BATCH_ARRAY, 10, &b, &e), 0);
    tb__batch_free(&b);
    snprintf(body, sizeof body,
             "[{\"name\":\"a\"},{\"name\":\"a\",\"data\":\"%065d\"}]", 0);
    refused(body, TB__BATCH_ARRAY, 413, "too_large", 1);
    snprintf(body, sizeof body, "[{\"name\":\"a\",\"data\":[\"%060d\"]}]", 0);
    assert_rc(parse(body, TB__BATCH_ARRAY, 10, &b, &e), 0); /* 64 bytes */
    tb__batch_free(&b);
    snprintf(body, sizeof body, "[{\"name\":\"a\",\"data\":[\"%061d\"]}]", 0);
    refused(body, TB__BATCH_ARRAY, 413, "too_large", 0);

    /* Depth: an item nests DEPTH levels at most, its object included. */
    char *ok = item_of_depth(DEPTH), *deep = item_of_depth(DEPTH + 1);
    assert_rc(parse(ok, TB__BATCH_ARRAY, 10, &b, &e), 0);
    tb__batch_free(&b);
    refused(deep, TB__BATCH_ARRAY, 400, "bad_json", 1);
    free(ok);
    free(deep);
}

/* A huge array of tiny items: linear, and the count limit stops it. */
static void test_many_items(void **state)
{
    (void)state;
    size_t n = 100000;
    char *body = malloc(n * 14 + 3);
    assert_non_null(body);
    size_t o = 0;
    body[o++] = '[';
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(body + o, "%s{\"name\":\"a\"}", i ? "," : "");
    body[o++] = ']';
    body[o] = '\0';
    tb__batch b;
    tb__batch_err e;
    assert_rc(tb__batch_parse(body, o, TB__BATCH_ARRAY, n, 64, DEPTH, &b, &e),
              0);
    assert_int_equal(b.n, n);
    tb__batch_free(&b);
    assert_rc(
        tb__batch_parse(body, o, TB__BATCH_ARRAY, n - 1, 64, DEPTH, &b, &e),
        TB_EINVAL);
    assert_int_equal(e.index, n - 1);
    free(body);
}

/* Parses body with the scanner on and off: the same outcome (code, status,
 * index, line, message; items' names and data). Returns the items the
 * scanner took (0 when refused), the parse left in *b (free it). */
static size_t both(const char *body, tb__batch_format fmt, tb__batch *b,
                   tb__batch_err *e)
{
    tb__batch j;
    tb__batch_err je;
    tb__batch_set_fast_path(0);
    int jrc = parse(body, fmt, 10, &j, &je);
    tb__batch_set_fast_path(1);
    int rc = parse(body, fmt, 10, b, e);
    assert_int_equal(rc, jrc);
    assert_int_equal(j.fast, 0);
    if (rc) {
        assert_int_equal(e->status, je.status);
        assert_string_equal(e->code, je.code);
        assert_int_equal(e->index, je.index);
        assert_int_equal(e->line, je.line);
        assert_string_equal(e->message, je.message);
        return 0;
    }
    assert_int_equal(b->n, j.n);
    for (size_t i = 0; i < b->n; i++) {
        assert_string_equal(b->items[i].name, j.items[i].name);
        assert_int_equal(b->items[i].len, j.items[i].len);
        assert_memory_equal(b->items[i].data, j.items[i].data, j.items[i].len);
    }
    tb__batch_free(&j);
    return b->fast;
}

/* The item taken by the scanner (fast) or by jansson: accepted, one item
 * named name with data. */
static void one_item(const char *body, size_t fast, const char *name,
                     const char *data)
{
    tb__batch b;
    tb__batch_err e;
    size_t got = both(body, TB__BATCH_NDJSON, &b, &e);
    if (b.n != 1)
        fail_msg("%s: refused, %d %s (%s)", body, e.status, e.code, e.message);
    if (got != fast)
        fail_msg("%s: %s, want %s", body, got ? "scanned" : "jansson's",
                 fast ? "scanned" : "jansson's");
    item_is(&b, 0, name, data);
    tb__batch_free(&b);
}

/* Refused the same way with the scanner on and off. */
static void both_refuse(const char *body, int status, const char *code)
{
    tb__batch b;
    tb__batch_err e;
    both(body, TB__BATCH_NDJSON, &b, &e);
    if (b.n || e.status != status || strcmp(e.code, code) != 0)
        fail_msg("%s: got %zu items, %d %s, want %d %s", body, b.n, e.status,
                 e.code ? e.code : "-", status, code);
    assert_int_equal(e.index, 1);
    assert_int_equal(e.line, 2);
}

/* The scanner of the common item (issue 13 point 7): what it takes, and
 * that everything else, refusals included, is jansson's as before. */
static void test_fast_path(void **state)
{
    (void)state;
    /* Either order, blanks between the item's tokens, each data form. */
    one_item("{\"name\":\"a.b\",\"data\":{\"x\":[1,-2,true,null]}}", 1, "a.b",
             "{\"x\":[1,-2,true,null]}");
    one_item("{\"data\":\"t x\",\"name\":\"c\"}", 1, "c", "t x");
    one_item(" \t{ \"name\" :\t\"a\" ,\r \"data\" : null } \r", 1, "a", "");
    one_item("{\"data\" : 42 , \"name\":\"a-1.b_2\"}", 1, "a-1.b_2", "42");
    one_item("{\"name\":\"a\",\"data\":\"\xc3\xa9\"}", 1, "a", "\xc3\xa9");
    one_item("{\"name\":\"a\",\"data\":[\"\\u0000\\n\"]}", 1, "a",
             "[\"\\u0000\\n\"]");
    /* Escapes, blanks inside data, reals, other types: jansson's. */
    one_item("{\"name\":\"a\",\"data\":\"x\\ny\"}", 0, "a", "x\ny");
    one_item("{\"name\":\"\\u0061\",\"data\":1}", 0, "a", "1");
    one_item("{\"n\\u0061me\":\"a\",\"data\":1}", 0, "a", "1");
    one_item("{\"name\":\"a\",\"data\":{\"x\": 1}}", 0, "a", "{\"x\": 1}");
    one_item("{\"name\":\"a\",\"data\":1.5}", 0, "a", "1.5");
    one_item("{\"name\":\"a\",\"data\":-0}", 0, "a", "-0");
    one_item("{\"name\":\"a\"}", 0, "a", "");

    /* A batch of common items is all scanned, in both formats. */
    tb__batch b;
    tb__batch_err e;
    assert_int_equal(both("[{\"name\":\"a\",\"data\":1}, {\"data\":[],"
                          "\"name\":\"b\"}\n,{\"name\":\"c\",\"data\":\"]\"}]",
                          TB__BATCH_ARRAY, &b, &e),
                     3);
    item_is(&b, 2, "c", "]");
    tb__batch_free(&b);
    assert_int_equal(both("{\"name\":\"a\",\"data\":1}\r\n\n"
                          "{\"name\":\"b\",\"data\":{}}",
                          TB__BATCH_NDJSON, &b, &e),
                     2);
    tb__batch_free(&b);

    /* A member twice, or another member: refused as before (line 2). */
    const char *ok = "{\"name\":\"a\",\"data\":1}\n";
    char body[512];
#define REFUSED(item, status, code)                                            \
    do {                                                                       \
        snprintf(body, sizeof body, "%s%s", ok, item);                         \
        both_refuse(body, status, code);                                       \
    } while (0)
    REFUSED("{\"name\":\"a\",\"data\":1,\"data\":2}", 400, "bad_json");
    REFUSED("{\"name\":\"a\",\"name\":\"b\",\"data\":2}", 400, "bad_json");
    REFUSED("{\"name\":\"a\",\"data\":1,\"x\":2}", 400, "bad_item");
    REFUSED("{\"x\":0,\"name\":\"a\",\"data\":1}", 400, "bad_item");
    REFUSED("{\"name\":\"a\",\"data\":1} x", 400, "bad_json");
    REFUSED("{\"name\":\"a\",\"data\":1,}", 400, "bad_json");
    REFUSED("{\"name\":\"a\",\"data\":{\"k\":1,\"k\":2}}", 400, "bad_json");
    /* A bad name is jansson's 400, whatever the scanner saw. */
    REFUSED("{\"name\":\"a..b\",\"data\":1}", 400, "bad_name");
    REFUSED("{\"name\":\"a b\",\"data\":1}", 400, "bad_name");
    REFUSED("{\"name\":\"\",\"data\":1}", 400, "bad_name");
    REFUSED("{\"name\":\"a\\u0000\",\"data\":1}", 400, "bad_name");
    char name[TB_EVENT_NAME_MAX + 2];
    memset(name, 'n', sizeof name - 1);
    name[TB_EVENT_NAME_MAX + 1] = '\0';
    snprintf(body, sizeof body, "%s{\"name\":\"%s\",\"data\":1}", ok, name);
    both_refuse(body, 400, "bad_name");
    name[TB_EVENT_NAME_MAX] = '\0'; /* at the limit: taken */
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"data\":1}", name);
    one_item(body, 1, name, "1");

    /* max_event_size (64 here): a string and a value at it, one over. */
    char want[80];
    snprintf(want, sizeof want, "%064d", 0);
    snprintf(body, sizeof body, "{\"name\":\"a\",\"data\":\"%s\"}", want);
    one_item(body, 1, "a", want);
    REFUSED("{\"name\":\"a\",\"data\":\"0000000000000000000000000000000000000"
            "0000000000000000000000000000\"}",
            413, "too_large");
    snprintf(body, sizeof body, "{\"name\":\"a\",\"data\":[\"%060d\"]}", 0);
    snprintf(want, sizeof want, "[\"%060d\"]", 0);
    one_item(body, 1, "a", want);
    REFUSED("{\"name\":\"a\",\"data\":[\"00000000000000000000000000000000000"
            "00000000000000000000000000\"]}",
            413, "too_large");

    /* json_max_depth (DEPTH): the item is one level, data DEPTH - 1 (the
     * batch's first item has no data: jansson's, the second scanned). */
    char *at = item_of_depth(DEPTH), *over = item_of_depth(DEPTH + 1);
    assert_int_equal(both(at, TB__BATCH_ARRAY, &b, &e), 1);
    tb__batch_free(&b);
    assert_int_equal(both(over, TB__BATCH_ARRAY, &b, &e), 0);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.code, "bad_json");
    assert_int_equal(e.index, 1);
    free(at);
    free(over);
#undef REFUSED
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_array),
        cmocka_unit_test(test_ndjson),
        cmocka_unit_test(test_bad_items),
        cmocka_unit_test(test_limits_at_their_edge),
        cmocka_unit_test(test_data_as_sent),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_many_items),
        cmocka_unit_test(test_fast_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
