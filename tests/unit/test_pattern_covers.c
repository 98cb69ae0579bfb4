/* test_pattern_covers.c - unit tests for tb__pattern_covers
 * (service/pattern.c): whether every name one pattern matches is matched
 * by another, as client tokens' claims are checked; a table, and the
 * definition itself over every small pattern. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "pattern.h"
#include "taskbus/taskbus.h"

static int covers(const char *allow, const char *want)
{
    tb__pattern a, w;
    assert_int_equal(tb__pattern_compile(&a, allow), 0);
    assert_int_equal(tb__pattern_compile(&w, want), 0);
    return tb__pattern_covers(&a, &w);
}

static void test_covers_table(void **state)
{
    (void)state;
    static const struct {
        const char *allow, *want;
        int covers;
    } cases[] = {
        {"order.*", "order.*", 1},
        {"order.*", "order.<id>", 1},
        {"order.*", "order.created", 1},
        {"order.<id>", "order.*", 1}, /* a param restricts nothing */
        {"order.<id>", "order.<other>", 1},
        {"order.*", "*.created", 0},
        {"order.*", "order.*.x", 0},
        {"order.*", "order", 0},
        {"order.*", "*.*", 0},
        {"order.*", "orders.created", 0},
        {"order.*", "orde.created", 0},
        {"*.*", "order.created", 1},
        {"*.*", "a.*", 1},
        {"*.*", "a.b.c", 0},
        {"*", "a", 1},
        {"*", "a.b", 0},
        {"a.b", "a.b", 1},
        {"a.b", "a.*", 0},
        {"a.b", "a.<x>", 0},
        {"chat.<room>", "chat.lobby", 1},
        {"chat.lobby", "chat.<room>", 0},
        {"a.*.c", "a.b.c", 1},
        {"a.*.c", "a.b.d", 0},
        {"a.*.c", "a.*.c", 1},
        {"a.*.c", "*.b.c", 0},
        {"A.b", "a.b", 0}, /* names are case-sensitive */
        /* ">" (one or more segments): a client token's claim "orders.>"
         * lets it subscribe to anything under orders., not to more */
        {"orders.>", "orders.a.b", 1},
        {"orders.>", "orders.a", 1},
        {"orders.>", "orders.>", 1},
        {"orders.>", "orders.*", 1},
        {"orders.>", "orders.*.>", 1},
        {"orders.>", "orders.<id>.x.y.z", 1},
        {"orders.>", ">", 0},
        {"orders.>", "orders", 0},
        {"orders.>", "*.>", 0},
        {"orders.>", "*.a", 0},
        {"orders.>", "order.a", 0},
        {"orders.*", "orders.>", 0}, /* ">" spans more than one */
        {"orders.*.*", "orders.>", 0},
        {"orders.*.>", "orders.>", 0}, /* "orders.a" is not covered */
        {"orders.*.>", "orders.a.>", 1},
        {"orders.*.>", "orders.a.b", 1},
        {">", ">", 1},
        {">", "a", 1},
        {">", "*.*.*.*.*.*.*.*", 1},
        {">", "a.>", 1},
        {"*", ">", 0},
        {"a.b.c.d.e.f.g.h", ">", 0},
        {"*.>", ">", 0}, /* ">" matches one-segment names too */
        {"*.>", "a.>", 1},
        {"a.b.c.d.e.f.g.>", "a.b.c.d.e.f.g.h", 1},
        {"a.b.c.d.e.f.g.>", "a.b.c.d.e.f.g.>", 1},
        {"a.b.c.d.e.f.g.>", "a.b.c.d.e.f.>", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (covers(cases[i].allow, cases[i].want) != cases[i].covers)
            fail_msg("covers(\"%s\", \"%s\") != %d", cases[i].allow,
                     cases[i].want, cases[i].covers);
}

/* Against the definition, on every valid pattern of 1..3 segments from
 * {a, b, *, >}: allow covers want exactly when each name that want matches,
 * from segments {a, b, c} ("c" standing for any literal neither uses), is
 * matched by allow. Names of 1..4 segments suffice: a pattern here has at
 * most 3, so a name of 4 stands for every longer one. */
static void test_covers_by_definition(void **state)
{
    (void)state;
    static const char *const pseg[] = {"a", "b", "*", ">"};
    static const char *const nseg[] = {"a", "b", "c"};
    char pats[84][8];
    int np = 0, ntail = 0;
    for (int len = 1; len <= 3; len++) {
        int count = len == 1 ? 4 : len == 2 ? 16 : 64;
        for (int k = 0; k < count; k++) {
            int d0 = k % 4, d1 = k / 4 % 4, d2 = k / 16;
            snprintf(pats[np], sizeof pats[0], "%s%s%s%s%s", pseg[d0],
                     len > 1 ? "." : "", len > 1 ? pseg[d1] : "",
                     len > 2 ? "." : "", len > 2 ? pseg[d2] : "");
            if (tb_pattern_valid(pats[np]) == 0) {
                ntail += strchr(pats[np], '>') != NULL;
                np++;
            }
        }
    }
    assert_int_equal(np, 4 + 12 + 36); /* ">" only last */
    assert_int_equal(ntail, 1 + 3 + 9);
    static char names[120][8];
    int nn = 0;
    for (int len = 1; len <= 4; len++) {
        int count = len == 1 ? 3 : len == 2 ? 9 : len == 3 ? 27 : 81;
        for (int k = 0; k < count; k++) {
            int d[4] = {k % 3, k / 3 % 3, k / 9 % 3, k / 27};
            char *o = names[nn++];
            o[0] = '\0';
            for (int i = 0; i < len; i++) {
                if (i)
                    strcat(o, ".");
                strcat(o, nseg[d[i]]);
            }
        }
    }
    assert_int_equal(nn, 120);
    int yes = 0, yes_tail = 0;
    for (int i = 0; i < np; i++)
        for (int j = 0; j < np; j++) {
            int want = 1;
            for (int k = 0; k < nn && want; k++)
                if (tb_pattern_match(pats[j], names[k]) &&
                    !tb_pattern_match(pats[i], names[k]))
                    want = 0;
            if (covers(pats[i], pats[j]) != want)
                fail_msg("covers(\"%s\", \"%s\") != %d", pats[i], pats[j],
                         want);
            yes += want;
            yes_tail += want && strchr(pats[i], '>') && i != j;
        }
    assert_true(yes > np); /* not only each pattern itself */
    assert_true(yes_tail > ntail);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_covers_table),
        cmocka_unit_test(test_covers_by_definition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
