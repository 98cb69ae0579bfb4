/* test_resp.c - unit tests for service/resp.c: the replies it reads, the
 * ones it waits for more of, the ones it refuses (each bound at its edge),
 * and the commands it writes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

/* Parses the whole of s (n bytes), which must be one reply. */
static tb__resp whole(const char *s, size_t n)
{
    tb__resp r;
    int rc = tb__resp_parse(s, n, &r);
    if (rc != (int)n)
        fail_msg("\"%.*s\": took %d of %zu bytes", (int)n, s, rc, n);
    /* Every shorter prefix is incomplete, never wrong. */
    for (size_t k = 0; k < n; k++) {
        tb__resp p;
        int prc = tb__resp_parse(s, k, &p);
        if (prc != 0)
            fail_msg("\"%.*s\" cut at %zu: %d, want 0", (int)n, s, k, prc);
    }
    return r;
}

#define WHOLE(lit) whole(lit, sizeof lit - 1)

static void refused(const char *s, size_t n)
{
    tb__resp r;
    int rc = tb__resp_parse(s, n, &r);
    if (rc != -1)
        fail_msg("\"%.*s\": %d, want -1", (int)(n > 60 ? 60 : n), s, rc);
}

#define REFUSED(lit) refused(lit, sizeof lit - 1)

static void test_values(void **state)
{
    (void)state;
    tb__resp r = WHOLE("+OK\r\n");
    assert_int_equal(r.v.type, '+');
    assert_true(tb__resp_is(&r.v, "ok"));
    r = WHOLE("-NOAUTH Authentication required.\r\n");
    assert_int_equal(r.v.type, '-');
    assert_int_equal(r.v.len, strlen("NOAUTH Authentication required."));
    assert_false(tb__resp_is(&r.v, "NOAUTH Authentication required."));
    r = WHOLE(":-42\r\n");
    assert_int_equal(r.v.type, ':');
    assert_int_equal(r.v.num, -42);
    r = WHOLE("$5\r\na\r\n\0b\r\n");
    assert_int_equal(r.v.type, '$');
    assert_int_equal(r.v.len, 5);
    assert_memory_equal(r.v.str, "a\r\n\0b", 5);
    r = WHOLE("$0\r\n\r\n");
    assert_int_equal(r.v.type, '$');
    assert_int_equal(r.v.len, 0);
    r = WHOLE("$-1\r\n");
    assert_int_equal(r.v.type, '_');
    r = WHOLE("*-1\r\n");
    assert_int_equal(r.v.type, '_');
}

static void test_arrays(void **state)
{
    (void)state;
    tb__resp r = WHOLE("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n");
    assert_int_equal(r.v.type, '*');
    assert_int_equal(r.n, 2);
    assert_true(tb__resp_is(&r.el[0], "127.0.0.1"));
    assert_true(tb__resp_is(&r.el[1], "6380"));
    r = WHOLE("*3\r\n$10\r\npsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n");
    assert_int_equal(r.n, 3);
    assert_int_equal(r.el[2].type, ':');
    assert_int_equal(r.el[2].num, 1);
    r = WHOLE("*0\r\n");
    assert_int_equal(r.v.type, '*');
    assert_int_equal(r.n, 0);
    r = WHOLE("*3\r\n$-1\r\n+x\r\n-e\r\n");
    assert_int_equal(r.el[0].type, '_');
    assert_int_equal(r.el[2].type, '-');

    /* Two replies in a row: the first one alone is taken. */
    tb__resp two;
    const char both[] = "+a\r\n+b\r\n";
    assert_int_equal(tb__resp_parse(both, sizeof both - 1, &two), 4);
    assert_true(tb__resp_is(&two.v, "a"));
}

static void test_refused(void **state)
{
    (void)state;
    REFUSED("?x\r\n");
    REFUSED("\r\n");
    REFUSED("+a\rb\r\n");
    REFUSED("+a\x01\r\n");
    REFUSED(":\r\n");
    REFUSED(":12a\r\n");
    REFUSED(":+1\r\n");
    REFUSED(":1234567890123456789\r\n"); /* 19 digits */
    REFUSED("$-2\r\n");
    REFUSED("$x\r\n");
    REFUSED("$3\r\nabcd\r\n");
    REFUSED("$3\r\nab\r\n\r\n");
    REFUSED("*-2\r\n");
    REFUSED("*1\r\n*1\r\n:1\r\n"); /* nested */
    REFUSED("*2\r\n:1\r\n?\r\n");
    REFUSED("*x\r\n");
}

static void test_bounds(void **state)
{
    (void)state;
    char buf[TB__RESP_REPLY_MAX + 64];
    tb__resp r;
    /* Strings of TB__RESP_STRING_MAX bytes, not one more. */
    int n = sprintf(buf, "$%d\r\n", TB__RESP_STRING_MAX);
    memset(buf + n, 'x', TB__RESP_STRING_MAX);
    memcpy(buf + n + TB__RESP_STRING_MAX, "\r\n", 2);
    assert_int_equal(
        tb__resp_parse(buf, (size_t)n + TB__RESP_STRING_MAX + 2, &r),
        n + TB__RESP_STRING_MAX + 2);
    n = sprintf(buf, "$%d\r\n", TB__RESP_STRING_MAX + 1);
    refused(buf, (size_t)n);
    buf[0] = '+';
    memset(buf + 1, 'y', TB__RESP_STRING_MAX);
    memcpy(buf + 1 + TB__RESP_STRING_MAX, "\r\n", 2);
    assert_int_equal(tb__resp_parse(buf, TB__RESP_STRING_MAX + 3, &r),
                     TB__RESP_STRING_MAX + 3);
    memset(buf + 1, 'y', TB__RESP_STRING_MAX + 1);
    memcpy(buf + 2 + TB__RESP_STRING_MAX, "\r\n", 2);
    refused(buf, TB__RESP_STRING_MAX + 4);
    /* A simple string that never ends is refused once it is too long. */
    memset(buf + 1, 'z', TB__RESP_STRING_MAX + 40);
    refused(buf, TB__RESP_STRING_MAX + 40);

    /* Arrays of TB__RESP_ELEMS_MAX, not one more. */
    n = sprintf(buf, "*%d\r\n", TB__RESP_ELEMS_MAX);
    for (int i = 0; i < TB__RESP_ELEMS_MAX; i++)
        n += sprintf(buf + n, ":%d\r\n", i);
    assert_int_equal(tb__resp_parse(buf, (size_t)n, &r), n);
    assert_int_equal(r.n, TB__RESP_ELEMS_MAX);
    assert_int_equal(r.el[TB__RESP_ELEMS_MAX - 1].num, TB__RESP_ELEMS_MAX - 1);
    n = sprintf(buf, "*%d\r\n", TB__RESP_ELEMS_MAX + 1);
    refused(buf, (size_t)n);

    /* A buffer of TB__RESP_REPLY_MAX bytes without a whole reply: too
     * much, since every reply we take fits in less. */
    n = sprintf(buf, "*%d\r\n", TB__RESP_ELEMS_MAX);
    for (int i = 0; n + 1100 < TB__RESP_REPLY_MAX; i++) {
        n += sprintf(buf + n, "$%d\r\n", TB__RESP_STRING_MAX);
        memset(buf + n, 'q', TB__RESP_STRING_MAX);
        n += TB__RESP_STRING_MAX;
        n += sprintf(buf + n, "\r\n");
    }
    n += sprintf(buf + n, "$%d\r\n", TB__RESP_STRING_MAX); /* the 8th */
    assert_int_equal(tb__resp_parse(buf, (size_t)n, &r), 0);
    memset(buf + n, 'q', sizeof buf - (size_t)n);
    refused(buf, TB__RESP_REPLY_MAX);
    refused(buf, sizeof buf);

    assert_int_equal(tb__resp_parse(NULL, 0, &r), -1);
    assert_int_equal(tb__resp_parse("+a\r\n", 4, NULL), -1);
}

static void test_command(void **state)
{
    (void)state;
    char buf[128];
    const char *argv[] = {"SENTINEL", "get-master-addr-by-name", "m\r\n"};
    size_t lens[] = {8, 23, 3};
    int n = tb__resp_command(buf, sizeof buf, 3, argv, lens);
    const char want[] = "*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-"
                        "name\r\n$3\r\nm\r\n\r\n";
    assert_int_equal(n, sizeof want - 1);
    assert_memory_equal(buf, want, sizeof want - 1);
    /* Read back as an array of bulk strings. */
    tb__resp r;
    assert_int_equal(tb__resp_parse(buf, (size_t)n, &r), n);
    assert_int_equal(r.n, 3);
    assert_true(tb__resp_is(&r.el[2], "m\r\n"));
    /* Too small, at every size: -1, never an overrun. */
    for (size_t size = 0; size < sizeof want; size++) {
        char small[sizeof want + 8];
        memset(small, 'Z', sizeof small);
        assert_int_equal(tb__resp_command(small, size, 3, argv, lens), -1);
        assert_int_equal(small[size], 'Z');
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),  cmocka_unit_test(test_arrays),
        cmocka_unit_test(test_refused), cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_command),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
