/* test_api_sse.c - unit tests for service/api_sse.c's SSE framing
 * (tb__sse_frame): the fields of an event, the id line only for a clean
 * position, data split at every kind of line end, and the measuring call.
 * The endpoint itself runs in sse_suite.py. */
#include "harness.h"

#include "api.h"

/* The frame of (pos, name, data) as a new string; checks that the
 * measuring call (out NULL) gives the same length. */
static char *frame(const char *pos, const char *name, const char *data,
                   size_t len)
{
    size_t need = tb__sse_frame(NULL, 0, pos, name, data, len);
    char *out = malloc(need + 1);
    assert_non_null(out);
    memset(out, 'X', need + 1);
    assert_int_equal(tb__sse_frame(out, need + 1, pos, name, data, len), need);
    assert_int_equal(out[need], '\0');
    return out;
}

static void expect(const char *pos, const char *name, const char *data,
                   const char *want)
{
    char *got = frame(pos, name, data, strlen(data));
    assert_int_equal(strlen(got), strlen(want));
    if (strcmp(got, want) != 0)
        fail_msg("frame of %s: \"%s\", want \"%s\"", data, got, want);
    free(got);
}

static void test_fields(void **state)
{
    (void)state;
    expect(NULL, "a.b", "{\"x\":1}", "event: a.b\ndata: {\"x\":1}\n\n");
    expect("", "a.b", "{}", "event: a.b\ndata: {}\n\n");
    expect("1a2b-7", "a.b", "{}", "id: 1a2b-7\nevent: a.b\ndata: {}\n\n");
    /* A position with a line end in it would start a field of its own:
     * left out. */
    expect("7\nevent: x", "a.b", "{}", "event: a.b\ndata: {}\n\n");
    expect("7\r", "a.b", "{}", "event: a.b\ndata: {}\n\n");
}

static void test_lines(void **state)
{
    (void)state;
    expect(NULL, "n", "", "event: n\ndata: \n\n");
    expect(NULL, "n", "a\nb", "event: n\ndata: a\ndata: b\n\n");
    expect(NULL, "n", "a\r\nb", "event: n\ndata: a\ndata: b\n\n");
    expect(NULL, "n", "a\rb", "event: n\ndata: a\ndata: b\n\n");
    expect(NULL, "n", "a\n\nb", "event: n\ndata: a\ndata: \ndata: b\n\n");
    expect(NULL, "n", "a\r\r\nb", "event: n\ndata: a\ndata: \ndata: b\n\n");
    expect(NULL, "n", "a\n", "event: n\ndata: a\ndata: \n\n");
    expect(NULL, "n", "\n", "event: n\ndata: \ndata: \n\n");
    /* NUL bytes are data like any other: the length says where it ends. */
    char *got = frame(NULL, "n", "a\0b", 3);
    assert_memory_equal(got, "event: n\ndata: a\0b\n\n", 20);
    free(got);
}

static void test_short_buffer(void **state)
{
    (void)state;
    const char *want = "event: a.b\ndata: {}\n\n";
    char out[8];
    memset(out, 'X', sizeof out);
    /* Too small: the length still says how much is needed, and nothing is
     * written past the buffer. */
    assert_int_equal(tb__sse_frame(out, sizeof out, NULL, "a.b", "{}", 2),
                     strlen(want));
    assert_memory_equal(out, want, 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_short_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
