/* test_pattern.c - unit tests for service/pattern.c (names, patterns,
 * matching, params, the compiled form and the string hash). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pattern.h"
#include "taskbus/taskbus.h"

/* A string of n copies of c (n < sizeof buf). */
static const char *rep(char *buf, char c, size_t n)
{
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

/* A name of exactly len bytes in nseg segments ("aaa.aaa...."). */
static void make_name(char *buf, size_t len, int nseg)
{
    memset(buf, 'a', len);
    buf[len] = '\0';
    size_t step = len / (size_t)nseg;
    for (int i = 1; i < nseg; i++)
        buf[step * (size_t)i] = '.';
}

/* ---------------------------------------------------------------- names */

static void test_name_segments(void **state)
{
    (void)state;
    assert_int_equal(tb_event_name_valid("a"), 0);
    assert_int_equal(tb_event_name_valid("a.b"), 0);
    assert_int_equal(tb_event_name_valid("a.b.c.d.e.f.g.h"), 0);
    assert_int_equal(tb_event_name_valid("a.b.c.d.e.f.g.h.i"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a.b.c.d.e.f.g.h.i.j.k.l"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("user.42.login"), 0);
    assert_int_equal(tb_event_name_valid("AZaz09_-.-_"), 0);
    assert_int_equal(tb_event_name_valid("-"), 0);
    assert_int_equal(tb_event_name_valid("_"), 0);
}

static void test_name_empty_segments(void **state)
{
    (void)state;
    assert_int_equal(tb_event_name_valid(NULL), TB_EINVAL);
    assert_int_equal(tb_event_name_valid(""), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("."), TB_EINVAL);
    assert_int_equal(tb_event_name_valid(".."), TB_EINVAL);
    assert_int_equal(tb_event_name_valid(".a"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a."), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a..b"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a.b."), TB_EINVAL);
    /* 8 segments but one empty, and 9 separators-worth with empties */
    assert_int_equal(tb_event_name_valid("a.b.c.d.e.f.g."), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a.b.c.d.e.f.g.h."), TB_EINVAL);
}

static void test_name_length(void **state)
{
    (void)state;
    char buf[1100];
    assert_int_equal(tb_event_name_valid(rep(buf, 'x', 200)), 0);
    assert_int_equal(tb_event_name_valid(rep(buf, 'x', 201)), TB_ENAMETOOLONG);
    assert_int_equal(tb_event_name_valid(rep(buf, 'x', 1000)), TB_ENAMETOOLONG);
    make_name(buf, 200, 8);
    assert_int_equal(strlen(buf), 200);
    assert_int_equal(tb_event_name_valid(buf), 0);
    make_name(buf, 201, 8);
    assert_int_equal(tb_event_name_valid(buf), TB_ENAMETOOLONG);
    make_name(buf, 199, 1);
    assert_int_equal(tb_event_name_valid(buf), 0);
    /* Too long wins over malformed: the length is checked first. */
    rep(buf, ' ', 201);
    assert_int_equal(tb_event_name_valid(buf), TB_ENAMETOOLONG);
    make_name(buf, 200, 9);
    assert_int_equal(tb_event_name_valid(buf), TB_EINVAL);
}

static void test_name_characters(void **state)
{
    (void)state;
    /* Every byte value in the middle of a name. */
    for (int c = 1; c < 256; c++) {
        char name[4] = {'a', (char)c, 'b', '\0'};
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
        assert_int_equal(tb_event_name_valid(name), ok ? 0 : TB_EINVAL);
        char single[2] = {(char)c, '\0'};
        assert_int_equal(tb_event_name_valid(single),
                         ok && c != '.' ? 0 : TB_EINVAL);
    }
    assert_int_equal(tb_event_name_valid("a b"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid(" a"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a "), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("caf\xc3\xa9"), TB_EINVAL);  /* é */
    assert_int_equal(tb_event_name_valid("\xe2\x82\xac"), TB_EINVAL); /* € */
    assert_int_equal(tb_event_name_valid("a/b"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a:b"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a\nb"), TB_EINVAL);
    /* Wildcards are pattern syntax, not name syntax. */
    assert_int_equal(tb_event_name_valid("*"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("a.*"), TB_EINVAL);
    assert_int_equal(tb_event_name_valid("<id>"), TB_EINVAL);
}

static void test_name_nul_oddities(void **state)
{
    (void)state;
    /* A C string ends at its first NUL: what follows is not looked at. */
    static const char a_nul_b[] = "a\0.b";
    static const char a_dot_nul_b[] = "a.\0b";
    static const char nul_a[] = "\0a";
    assert_int_equal(tb_event_name_valid(a_nul_b), 0);
    assert_int_equal(tb_event_name_valid(a_dot_nul_b), TB_EINVAL);
    assert_int_equal(tb_event_name_valid(nul_a), TB_EINVAL);
    /* A 200-byte name followed by junk past the NUL stays valid, and the
     * length scan stops at 201 bytes even in a much longer buffer. */
    char buf[400];
    memset(buf, 'z', sizeof buf);
    buf[200] = '\0';
    assert_int_equal(tb_event_name_valid(buf), 0);
    buf[200] = 'z';
    buf[399] = '\0';
    assert_int_equal(tb_event_name_valid(buf), TB_ENAMETOOLONG);
}

/* ---------------------------------------------------------------- patterns */

static void test_pattern_valid(void **state)
{
    (void)state;
    static const char *ok[] = {
        "a",
        "*",
        "<id>",
        "a.*",
        "*.b",
        "a.<id>.c",
        "<a>.<b>",
        "<a>.<A>",
        "*.*",
        "*.*.*.*.*.*.*.*",
        "<a>.*.<b>.*",
        "<A_1>",
        "<_>",
        "<0>",
        "a.b.c.d.e.f.g.h",
        "x-y.<p_q>",
        ">",
        "a.>",
        "*.>",
        "<id>.>",
        "a.<id>.*.>",
        "*.*.*.*.*.*.*.>",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (tb_pattern_valid(ok[i]) != 0)
            fail_msg("pattern \"%s\" should be valid", ok[i]);
    }
    static const char *bad[] = {
        "",
        ".",
        "a.",
        ".a",
        "a..b",
        "*.*.*.*.*.*.*.*.*",
        "a.b.c.d.e.f.g.h.i",
        "**",
        "*a",
        "a*",
        "*.a*",
        "<>",
        "<a",
        "a>",
        "<a>b",
        "x<a>",
        "<<a>>",
        "<a>>",
        "<a-b>",
        "<a b>",
        "<a.b>",
        "<*>",
        "< a>",
        "<a>.<a>",
        "<a>.*.<a>",
        "<id>.x.<id>",
        "a b",
        "caf\xc3\xa9",
        "<caf\xc3\xa9>",
        /* ">" is a whole segment, and the last one */
        ">.a",
        "a.>.b",
        ">.>",
        "a>",
        "a.b>",
        ">a",
        "a.>>",
        ">>",
        "*>",
        "a.>*",
        "<>>",
        "*.*.*.*.*.*.*.*.>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (tb_pattern_valid(bad[i]) != TB_EINVAL)
            fail_msg("pattern \"%s\" should be TB_EINVAL, got %d", bad[i],
                     tb_pattern_valid(bad[i]));
    }
    assert_int_equal(tb_pattern_valid(NULL), TB_EINVAL);
}

/* Each kind of bad pattern says what is wrong with it, ">" included. */
static void test_pattern_problem(void **state)
{
    (void)state;
    static const struct {
        const char *pattern, *says;
    } cases[] = {
        {"a.>.b", "\">\" may only be the last segment"},
        {">.>", "\">\" may only be the last segment"},
        {"a.b>", "\">\" must be a whole segment"},
        {"a>.b", "\">\" must be a whole segment"},
        {"a*", "\"*\" must be a whole segment"},
        {"a..b", "an empty segment"},
        {"a.", "an empty segment"},
        {"", "empty"},
        {"a.b.c.d.e.f.g.h.i", "more than 8 segments"},
        {"*.*.*.*.*.*.*.*.>", "more than 8 segments"},
        {"<a-b>", "\"<param>\" name may hold only"},
        {"<>", "needs a name"},
        {"<a>.<a>", "used twice"},
        {"a b", "a segment holds only"},
        {NULL, "missing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *why = tb__pattern_problem(cases[i].pattern);
        if (!why || !strstr(why, cases[i].says))
            fail_msg("problem(\"%s\") = \"%s\", want \"%s\"",
                     cases[i].pattern ? cases[i].pattern : "(null)",
                     why ? why : "(null)", cases[i].says);
    }
    char buf[300];
    assert_non_null(strstr(tb__pattern_problem(rep(buf, 'a', 201)), "200"));
    assert_null(tb__pattern_problem("a.<b>.*.>"));
    assert_null(tb__pattern_problem(">"));
}

static void test_pattern_param_names(void **state)
{
    (void)state;
    char buf[300], p[320];
    snprintf(p, sizeof p, "<%s>", rep(buf, 'p', 64));
    assert_int_equal(tb_pattern_valid(p), 0);
    snprintf(p, sizeof p, "a.<%s>", rep(buf, 'p', 65));
    assert_int_equal(tb_pattern_valid(p), TB_EINVAL);
    snprintf(p, sizeof p, "<%s>", rep(buf, 'p', 1));
    assert_int_equal(tb_pattern_valid(p), 0);
    /* Every byte value inside the angle brackets. */
    for (int c = 1; c < 256; c++) {
        char pat[6] = {'<', 'a', (char)c, 'b', '>', '\0'};
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '_';
        if (tb_pattern_valid(pat) != (ok ? 0 : TB_EINVAL))
            fail_msg("param char 0x%02x: got %d", c, tb_pattern_valid(pat));
    }
    /* Repeats are found wherever they are, and only exact repeats count. */
    assert_int_equal(tb_pattern_valid("<a>.<b>.<c>.<d>.<e>.<f>.<g>.<a>"),
                     TB_EINVAL);
    assert_int_equal(tb_pattern_valid("<a>.<b>.<c>.<d>.<e>.<f>.<g>.<h>"), 0);
    assert_int_equal(tb_pattern_valid("<ab>.<a>.<abc>"), 0);
    assert_int_equal(tb_pattern_valid("<ab>.<a>.<ab>"), TB_EINVAL);
}

static void test_pattern_length(void **state)
{
    (void)state;
    char buf[400];
    make_name(buf, 200, 4);
    buf[0] = '*';
    buf[1] = '.'; /* "*." then the rest: still 200 bytes, 5 segments */
    assert_int_equal(strlen(buf), 200);
    assert_int_equal(tb_pattern_valid(buf), 0);
    make_name(buf, 201, 4);
    assert_int_equal(tb_pattern_valid(buf), TB_ENAMETOOLONG);
    /* 200 bytes made of params: <pppp...> segments */
    char p[400];
    snprintf(p, sizeof p, "<%s>.<%s>.<%s>.%s", rep(buf, 'a', 64),
             rep(buf + 100, 'b', 60), rep(buf + 200, 'c', 60), "ddddddd");
    assert_int_equal(strlen(p), 200);
    assert_int_equal(tb_pattern_valid(p), 0);
    strcat(p, "d");
    assert_int_equal(tb_pattern_valid(p), TB_ENAMETOOLONG);
}

/* ---------------------------------------------------------------- matching */

typedef struct {
    const char *pattern, *name;
    int match;
} match_case;

static const match_case match_cases[] = {
    {"a", "a", 1},
    {"a", "b", 0},
    {"a", "A", 0},
    {"ab", "a", 0},
    {"a", "ab", 0},
    {"a.b", "a.b", 1},
    {"a.b", "a.c", 0},
    {"a.b", "ab", 0},
    {"a.b", "a.b.c", 0},
    {"a.b.c", "a.b", 0},
    {"a.*", "a.b", 1},
    {"a.*", "a.anything-at_all", 1},
    {"a.*", "a", 0},
    {"a.*", "a.b.c", 0},
    {"a.*", "b.b", 0},
    {"*", "x", 1},
    {"*", "x.y", 0},
    {"*.*", "x.y", 1},
    {"*.b", "a.b", 1},
    {"*.b", "a.c", 0},
    {"<p>", "hello", 1},
    {"<p>.b", "x.b", 1},
    {"<p>.b", "x.c", 0},
    {"user.<id>.login", "user.42.login", 1},
    {"user.<id>.login", "user.42.logout", 0},
    {"user.<id>.login", "user.42.43.login", 0},
    {"user.<id>.login", "users.42.login", 0},
    {"a.b.c.d.e.f.g.h", "a.b.c.d.e.f.g.h", 1},
    {"*.*.*.*.*.*.*.*", "a.b.c.d.e.f.g.h", 1},
    {"*.*.*.*.*.*.*.*", "a.b.c.d.e.f.g", 0},
    {"a.b.c.d.e.f.g.<x>", "a.b.c.d.e.f.g.h", 1},
    {"a.b.c.d.e.f.g.<x>", "a.b.c.d.e.f.X.h", 0},
    {"ab.c", "a.bc", 0},
    /* ">": one or more segments, last only */
    {">", "a", 1},
    {">", "a.b.c", 1},
    {">", "a.b.c.d.e.f.g.h", 1},
    {"a.>", "a", 0},
    {"a.>", "a.b", 1},
    {"a.>", "a.b.c", 1},
    {"a.>", "a.b.c.d.e.f.g.h", 1},
    {"a.>", "b.a", 0},
    {"a.>", "ab.c", 0},
    {"a.>", "b", 0},
    {"orders.>", "orders", 0},
    {"orders.>", "orders.a", 1},
    {"orders.>", "orders.a.b.c", 1},
    {"orders.>", "order.a", 0},
    {"*.>", "a", 0},
    {"*.>", "a.b", 1},
    {"*.b.>", "a.b.c.d", 1},
    {"*.b.>", "a.c.c.d", 0},
    {"*.b.>", "a.b", 0},
    {"<p>.>", "x.y.z", 1},
    {"a.b.c.d.e.f.g.>", "a.b.c.d.e.f.g.h", 1},
    {"a.b.c.d.e.f.g.>", "a.b.c.d.e.f.g", 0},
    {"a.b.c.d.e.f.>", "a.b.c.d.e.f.g.h", 1},
    {"*.*.*.*.*.*.*.>", "a.b.c.d.e.f.g.h", 1},
    {"*.*.*.*.*.*.*.>", "a.b.c.d.e.f.g", 0},
    {"a.>", "a.>", 0}, /* not a name */
    {"a.>.b", "a.x.b", 0},
    /* invalid pattern or name: never a match */
    {"a..b", "a..b", 0},
    {"a.b", "a..b", 0},
    {"a.*", "a.*", 0},
    {"<a>.<a>", "x.y", 0},
    {"", "", 0},
    {NULL, "a", 0},
    {"a", NULL, 0},
};

static void test_match_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof match_cases / sizeof match_cases[0]; i++) {
        const match_case *c = &match_cases[i];
        int got = tb_pattern_match(c->pattern, c->name);
        if (got != c->match)
            fail_msg("tb_pattern_match(\"%s\", \"%s\") = %d, want %d",
                     c->pattern ? c->pattern : "(null)",
                     c->name ? c->name : "(null)", got, c->match);
        tb__pattern p;
        tb__name n;
        if (tb__pattern_compile(&p, c->pattern) == 0 &&
            tb__name_split(&n, c->name) == 0) {
            got = tb__pattern_match_split(&p, &n);
            if (got != c->match)
                fail_msg("match_split(\"%s\", \"%s\") = %d, want %d",
                         c->pattern, c->name, got, c->match);
        } else {
            assert_int_equal(c->match, 0);
        }
    }
}

/* ---------------------------------------------------------------- params */

static void test_param_extract(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(tb_pattern_param("user.<id>.login", "user.42.login", "id",
                                      out, sizeof out),
                     2);
    assert_string_equal(out, "42");
    assert_int_equal(
        tb_pattern_param("<a>.*.<b>", "first.mid.last", "a", out, sizeof out),
        5);
    assert_string_equal(out, "first");
    assert_int_equal(
        tb_pattern_param("<a>.*.<b>", "first.mid.last", "b", out, sizeof out),
        4);
    assert_string_equal(out, "last");
    assert_int_equal(tb_pattern_param("<x-y>", "v", "x-y", out, sizeof out),
                     TB_EINVAL);
    /* Param names are case-sensitive. */
    assert_int_equal(
        tb_pattern_param("<a>.<A>", "lower.upper", "A", out, sizeof out), 5);
    assert_string_equal(out, "upper");
}

static void test_param_buffer(void **state)
{
    (void)state;
    char out[8];
    /* "abcdef" needs 7 bytes */
    assert_int_equal(tb_pattern_param("x.<p>", "x.abcdef", "p", out, 7), 6);
    assert_string_equal(out, "abcdef");
    memset(out, '#', sizeof out);
    assert_int_equal(tb_pattern_param("x.<p>", "x.abcdef", "p", out, 6),
                     TB_ENAMETOOLONG);
    assert_string_equal(out, "");
    assert_int_equal(tb_pattern_param("x.<p>", "x.abcdef", "p", out, 1),
                     TB_ENAMETOOLONG);
    assert_string_equal(out, "");
    assert_int_equal(tb_pattern_param("x.<p>", "x.abcdef", "p", NULL, 0),
                     TB_ENAMETOOLONG);
    assert_int_equal(tb_pattern_param("x.<p>", "x.abcdef", "p", NULL, 5),
                     TB_EINVAL);
    /* A long capture into a big enough buffer. */
    char seg[200], name[220], big[200];
    rep(seg, 'q', 190);
    snprintf(name, sizeof name, "k.%s", seg);
    assert_int_equal(tb_pattern_param("k.<v>", name, "v", big, 191), 190);
    assert_string_equal(big, seg);
    assert_int_equal(tb_pattern_param("k.<v>", name, "v", big, 190),
                     TB_ENAMETOOLONG);
}

/* A "<param>" before a ">" captures its one segment; the ">" captures
 * nothing, at any name length up to TB_EVENT_SEGMENTS_MAX. */
static void test_param_before_tail(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(
        tb_pattern_param("orders.<id>.>", "orders.42.x", "id", out, sizeof out),
        2);
    assert_string_equal(out, "42");
    assert_int_equal(tb_pattern_param("orders.<id>.>", "orders.42.a.b.c.d.e.f",
                                      "id", out, sizeof out),
                     2);
    assert_string_equal(out, "42");
    assert_int_equal(
        tb_pattern_param("orders.<id>.>", "orders.42", "id", out, sizeof out),
        TB_ENOENT); /* ">" wants at least one segment more */
    assert_string_equal(out, "");
    assert_int_equal(
        tb_pattern_param("<a>.*.<b>.>", "x.y.z.w", "b", out, sizeof out), 1);
    assert_string_equal(out, "z");
    assert_int_equal(tb_pattern_param("a.b.c.d.e.f.<g>.>", "a.b.c.d.e.f.gg.h",
                                      "g", out, sizeof out),
                     2);
    assert_string_equal(out, "gg");
    /* ">" is no param name. */
    assert_int_equal(tb_pattern_param("a.>", "a.b", ">", out, sizeof out),
                     TB_ENOENT);
    assert_int_equal(tb_pattern_param("a.>", "a.b", "", out, sizeof out),
                     TB_ENOENT);
}

static void test_param_errors(void **state)
{
    (void)state;
    char out[32];
    strcpy(out, "junk");
    assert_int_equal(
        tb_pattern_param("user.<id>", "user.42", "nope", out, sizeof out),
        TB_ENOENT);
    assert_string_equal(out, "");
    /* The param name is given without its brackets. */
    assert_int_equal(
        tb_pattern_param("user.<id>", "user.42", "<id>", out, sizeof out),
        TB_ENOENT);
    assert_int_equal(
        tb_pattern_param("user.<id>", "user.42", "i", out, sizeof out),
        TB_ENOENT);
    assert_int_equal(
        tb_pattern_param("user.<id>", "user.42", "", out, sizeof out),
        TB_ENOENT);
    /* "*" captures nothing. */
    assert_int_equal(
        tb_pattern_param("user.*", "user.42", "*", out, sizeof out), TB_ENOENT);
    /* Known param, but the name does not match. */
    assert_int_equal(
        tb_pattern_param("user.<id>", "group.42", "id", out, sizeof out),
        TB_ENOENT);
    assert_int_equal(
        tb_pattern_param("user.<id>", "user.42.x", "id", out, sizeof out),
        TB_ENOENT);
    /* Invalid name: no match. Invalid pattern: the caller's bug. */
    assert_int_equal(
        tb_pattern_param("user.<id>", "user..42", "id", out, sizeof out),
        TB_ENOENT);
    assert_int_equal(
        tb_pattern_param("user.<id>.<id>", "user.4.2", "id", out, sizeof out),
        TB_EINVAL);
    assert_int_equal(tb_pattern_param(NULL, "user.4", "id", out, sizeof out),
                     TB_EINVAL);
    assert_int_equal(
        tb_pattern_param("user.<id>", "user.4", NULL, out, sizeof out),
        TB_EINVAL);
}

/* ---------------------------------------------------------------- compiled */

static void test_compiled_form(void **state)
{
    (void)state;
    tb__pattern p;
    tb__name n;
    assert_int_equal(tb__pattern_compile(&p, "user.<id>.*.x"), 0);
    assert_int_equal(p.nseg, 4);
    assert_int_equal(p.nwild, 2);
    assert_false(tb__pattern_is_exact(&p));
    assert_int_equal(p.seg[0].kind, TB__SEG_LITERAL);
    assert_int_equal(p.seg[1].kind, TB__SEG_PARAM);
    assert_int_equal(p.seg[2].kind, TB__SEG_ANY);
    assert_int_equal(p.seg[3].kind, TB__SEG_LITERAL);
    assert_int_equal(tb__pattern_param_index(&p, "id"), 1);
    assert_int_equal(tb__pattern_param_index(&p, "x"), -1);
    assert_string_equal(p.text, "user.<id>.*.x");
    assert_int_equal(p.spread, 0);

    assert_int_equal(tb__pattern_compile(&p, "user.<id>.>"), 0);
    assert_int_equal(p.nseg, 3);
    assert_int_equal(p.nwild, 2);
    assert_int_equal(p.spread, TB_EVENT_SEGMENTS_MAX);
    assert_int_equal(p.seg[2].kind, TB__SEG_TAIL);
    assert_false(tb__pattern_is_exact(&p));
    assert_int_equal(tb__pattern_compile(&p, ">"), 0);
    assert_int_equal(p.nseg, 1);
    assert_false(tb__pattern_is_exact(&p));

    assert_int_equal(tb__pattern_compile(&p, "user.login"), 0);
    assert_true(tb__pattern_is_exact(&p));
    assert_int_equal(tb__name_split(&n, "user.login"), 0);
    assert_int_equal(n.nseg, 2);
    assert_int_equal(n.len, 10);
    assert_int_equal(n.off[1], 5);
    assert_int_equal(n.seglen[0], 4);
    assert_int_equal(n.seglen[1], 5);
    /* An exact pattern and the name it matches hash alike: the dispatcher
     * relies on this to find exact waiters in its table. */
    assert_true(p.hash == n.hash);
    assert_true(n.hash == tb__hash_str("user.login", 10));
    assert_int_equal(tb__pattern_match_split(&p, &n), 1);

    /* Same length, same segment count, different text. */
    assert_int_equal(tb__name_split(&n, "user.logix"), 0);
    assert_int_equal(tb__pattern_match_split(&p, &n), 0);

    /* Copies are self-contained. */
    tb__name n2;
    assert_int_equal(tb__name_split(&n, "a.b"), 0);
    n2 = n;
    memset(&n, 0x55, sizeof n);
    assert_int_equal(tb__pattern_compile(&p, "a.<x>"), 0);
    char out[8];
    assert_int_equal(tb__pattern_param_split(&p, &n2, "x", out, sizeof out), 1);
    assert_string_equal(out, "b");

    assert_int_equal(tb__name_split(&n, "a.*"), TB_EINVAL);
    assert_int_equal(tb__name_split(&n, NULL), TB_EINVAL);
    assert_int_equal(tb__pattern_compile(&p, NULL), TB_EINVAL);
    char longp[300];
    assert_int_equal(tb__pattern_compile(&p, rep(longp, 'a', 201)),
                     TB_ENAMETOOLONG);
    assert_int_equal(tb__name_split(&n, longp), TB_ENAMETOOLONG);
}

static void test_hash(void **state)
{
    (void)state;
    /* Published FNV-1a 64 test vectors. */
    assert_true(tb__hash_str("", 0) == 0xcbf29ce484222325u);
    assert_true(tb__hash_str("a", 1) == 0xaf63dc4c8601ec8cu);
    assert_true(tb__hash_str("foobar", 6) == 0x85944171f73967e8u);
    /* Only len bytes count. */
    assert_true(tb__hash_str("foobarXYZ", 6) == 0x85944171f73967e8u);
    assert_true(tb__hash_str("a.b", 3) != tb__hash_str("a.c", 3));
}

/* ------------------------------------------------- reference + random pairs */

/* A deliberately naive reference: copy, split with strchr, compare strings. */
#define REF_MAXSEG 16

typedef struct {
    int n;
    char seg[REF_MAXSEG][TB_EVENT_NAME_MAX + 2];
} ref_split;

static const char NAME_CHARS[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
static const char PARAM_CHARS[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";

/* Returns 0, TB_EINVAL or TB_ENAMETOOLONG like the real thing; fills *r. */
static int ref_parse(const char *s, int wild, ref_split *r)
{
    if (s == NULL)
        return TB_EINVAL;
    if (strlen(s) > TB_EVENT_NAME_MAX)
        return TB_ENAMETOOLONG;
    r->n = 0;
    const char *p = s;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (r->n == REF_MAXSEG)
            return TB_EINVAL;
        memcpy(r->seg[r->n], p, len);
        r->seg[r->n][len] = '\0';
        r->n++;
        if (!dot)
            break;
        p = dot + 1;
    }
    if (r->n > TB_EVENT_SEGMENTS_MAX)
        return TB_EINVAL;
    for (int i = 0; i < r->n; i++) {
        const char *g = r->seg[i];
        size_t len = strlen(g);
        if (len == 0)
            return TB_EINVAL;
        if (wild && strcmp(g, "*") == 0)
            continue;
        if (wild && strcmp(g, ">") == 0) {
            if (i != r->n - 1)
                return TB_EINVAL;
            continue;
        }
        if (wild && g[0] == '<') {
            if (g[len - 1] != '>' || len < 3 || len > 66 ||
                strspn(g + 1, PARAM_CHARS) != len - 2)
                return TB_EINVAL;
            for (int j = 0; j < i; j++)
                if (strcmp(r->seg[j], g) == 0)
                    return TB_EINVAL;
            continue;
        }
        if (strspn(g, NAME_CHARS) != len)
            return TB_EINVAL;
    }
    return 0;
}

static int ref_match(const char *pattern, const char *name)
{
    static ref_split p, n;
    if (ref_parse(pattern, 1, &p) != 0 || ref_parse(name, 0, &n) != 0)
        return 0;
    int tail = strcmp(p.seg[p.n - 1], ">") == 0;
    if (tail ? n.n < p.n : n.n != p.n)
        return 0;
    for (int i = 0; i < p.n; i++)
        if (strcmp(p.seg[i], "*") != 0 && strcmp(p.seg[i], ">") != 0 &&
            p.seg[i][0] != '<' && strcmp(p.seg[i], n.seg[i]) != 0)
            return 0;
    return 1;
}

/* The captured text, or NULL for "no such param or no match". */
static const char *ref_param(const char *pattern, const char *name,
                             const char *param)
{
    static ref_split p, n;
    char want[80];
    if (!ref_match(pattern, name))
        return NULL;
    ref_parse(pattern, 1, &p);
    ref_parse(name, 0, &n);
    snprintf(want, sizeof want, "<%s>", param);
    for (int i = 0; i < p.n; i++)
        if (strcmp(p.seg[i], want) == 0)
            return n.seg[i];
    return NULL;
}

static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
    /* xorshift64*: fixed seed, so a failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717u) >> 33) % n;
}

static void rand_literal(char *out)
{
    static const char *vocab[] = {"a", "b", "ab", "x-1", "_", "B", "a0"};
    if (rnd(6) == 0) {
        /* sometimes long, to cross the 200-byte limit */
        size_t len = 1 + rnd(75);
        memset(out, 'l', len);
        out[len] = '\0';
        return;
    }
    strcpy(out, vocab[rnd(sizeof vocab / sizeof vocab[0])]);
}

/* Random name: mostly valid, sometimes with 9+ segments or a bad segment. */
static void rand_name(char *out, char segs[][256], int *nseg)
{
    int n = 1 + (int)rnd(9);
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (rnd(40) == 0)
            strcpy(segs[i], rnd(2) ? "" : "b d");
        else
            rand_literal(segs[i]);
        if (i)
            strcat(out, ".");
        strcat(out, segs[i]);
    }
    /* Sometimes pad with one more segment to land at 198..202 bytes. */
    size_t len = strlen(out), target = 198 + rnd(5);
    if (n < 9 && rnd(6) == 0 && len + 2 <= target) {
        size_t pad = target - len - 1;
        memset(segs[n], 'p', pad);
        segs[n][pad] = '\0';
        strcat(out, ".");
        strcat(out, segs[n]);
        n++;
    }
    *nseg = n;
}

static void rand_pattern(char *out, char segs[][256], int nseg)
{
    int n = rnd(4) == 0 ? 1 + (int)rnd(9) : nseg;
    int tail = rnd(4) == 0; /* ends in ">": often shorter than the name */
    if (tail && n > 1 && rnd(2) == 0)
        n -= (int)rnd((uint32_t)n - 1);
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        char seg[256];
        switch (rnd(6)) {
        case 0:
        case 1:
            strcpy(seg, i < nseg ? segs[i] : "a");
            break;
        case 2:
            rand_literal(seg);
            break;
        case 3:
            strcpy(seg, "*");
            break;
        case 4:
            if (rnd(8) == 0) /* ">" anywhere: valid only last */
                strcpy(seg, ">");
            else /* repeats happen */
                snprintf(seg, sizeof seg, "<p%u>", rnd(4));
            break;
        default:
            if (rnd(10) == 0)
                strcpy(seg, rnd(2) ? "<p-1>" : "<>"); /* bad param */
            else
                strcpy(seg, i < nseg ? segs[i] : "b");
        }
        if (tail && i == n - 1)
            strcpy(seg, ">");
        if (i)
            strcat(out, ".");
        strcat(out, seg);
    }
}

static void test_random_against_reference(void **state)
{
    (void)state;
    rng_state = 0x9e3779b97f4a7c15u;
    int matches = 0, valid_patterns = 0, invalid_patterns = 0, too_long = 0,
        captures = 0, at_limit = 0, tail_matches = 0, tail_longer = 0;
    const int iterations = 5000;
    for (int it = 0; it < iterations; it++) {
        char name[2600], pattern[2600], segs[9][256];
        int nseg;
        rand_name(name, segs, &nseg);
        rand_pattern(pattern, segs, nseg);

        ref_split scratch;
        int want_pv = ref_parse(pattern, 1, &scratch);
        int want_nv = ref_parse(name, 0, &scratch);
        if (tb_pattern_valid(pattern) != want_pv)
            fail_msg("it %d: tb_pattern_valid(\"%s\") = %d, want %d", it,
                     pattern, tb_pattern_valid(pattern), want_pv);
        if (tb_event_name_valid(name) != want_nv)
            fail_msg("it %d: tb_event_name_valid(\"%s\") = %d, want %d", it,
                     name, tb_event_name_valid(name), want_nv);
        valid_patterns += want_pv == 0;
        invalid_patterns += want_pv == TB_EINVAL;
        too_long += want_pv == TB_ENAMETOOLONG || want_nv == TB_ENAMETOOLONG;
        at_limit += strlen(name) == TB_EVENT_NAME_MAX && want_nv == 0;

        int want = ref_match(pattern, name);
        matches += want;
        size_t plen = strlen(pattern);
        if (want && plen >= 1 && pattern[plen - 1] == '>') {
            tail_matches++;
            /* ">" took more than one segment */
            ref_split rp, rn;
            ref_parse(pattern, 1, &rp);
            ref_parse(name, 0, &rn);
            tail_longer += rn.n > rp.n;
        }
        if (tb_pattern_match(pattern, name) != want)
            fail_msg("it %d: tb_pattern_match(\"%s\", \"%s\") = %d, want %d",
                     it, pattern, name, !want, want);
        tb__pattern p;
        tb__name n;
        if (tb__pattern_compile(&p, pattern) == 0 &&
            tb__name_split(&n, name) == 0) {
            if (tb__pattern_match_split(&p, &n) != want)
                fail_msg("it %d: match_split(\"%s\", \"%s\") != %d", it,
                         pattern, name, want);
            assert_int_equal(tb__pattern_is_exact(&p),
                             strchr(pattern, '*') == NULL &&
                                 strchr(pattern, '<') == NULL &&
                                 strchr(pattern, '>') == NULL);
        }
        for (int k = 0; k < 4; k++) {
            char param[8], out[256];
            snprintf(param, sizeof param, "p%d", k);
            const char *ref = ref_param(pattern, name, param);
            int got = tb_pattern_param(pattern, name, param, out, sizeof out);
            if (want_pv != 0) {
                assert_int_equal(got, TB_EINVAL);
            } else if (ref == NULL) {
                if (got != TB_ENOENT)
                    fail_msg("it %d: param %s of \"%s\" in \"%s\" = %d, want "
                             "ENOENT",
                             it, param, pattern, name, got);
            } else {
                if (got != (int)strlen(ref) || strcmp(out, ref) != 0)
                    fail_msg("it %d: param %s of \"%s\" in \"%s\" = %d \"%s\","
                             " want \"%s\"",
                             it, param, pattern, name, got, out, ref);
                captures++;
            }
        }
    }
    /* The generator must exercise every branch, or this test proves
     * little. */
    print_message("random: %d matches, %d valid / %d invalid patterns, "
                  "%d too long, %d valid at 200 bytes, %d captures, %d by a "
                  "\">\" (%d of several segments)\n",
                  matches, valid_patterns, invalid_patterns, too_long, at_limit,
                  captures, tail_matches, tail_longer);
    assert_true(matches > iterations / 20);
    assert_true(valid_patterns > iterations / 4);
    assert_true(invalid_patterns > iterations / 20);
    assert_true(too_long > 100);
    assert_true(at_limit > 20);
    assert_true(captures > iterations / 20);
    assert_true(tail_matches > iterations / 50);
    assert_true(tail_longer > iterations / 100);
}

/* Garbage strings over the interesting alphabet: the validators agree with
 * the reference on every one. */
static void test_random_garbage_validity(void **state)
{
    (void)state;
    static const char alphabet[] = "ab.*<>-_ \xc3\xa9";
    rng_state = 12345;
    int valid = 0;
    for (int it = 0; it < 20000; it++) {
        char s[32];
        size_t len = rnd(14);
        for (size_t i = 0; i < len; i++)
            s[i] = alphabet[rnd(sizeof alphabet - 1)];
        s[len] = '\0';
        ref_split r;
        int want_p = ref_parse(s, 1, &r), want_n = ref_parse(s, 0, &r);
        if (tb_pattern_valid(s) != want_p)
            fail_msg("tb_pattern_valid(\"%s\") = %d, want %d", s,
                     tb_pattern_valid(s), want_p);
        if (tb_event_name_valid(s) != want_n)
            fail_msg("tb_event_name_valid(\"%s\") = %d, want %d", s,
                     tb_event_name_valid(s), want_n);
        valid += want_p == 0;
    }
    assert_true(valid > 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_segments),
        cmocka_unit_test(test_name_empty_segments),
        cmocka_unit_test(test_name_length),
        cmocka_unit_test(test_name_characters),
        cmocka_unit_test(test_name_nul_oddities),
        cmocka_unit_test(test_pattern_valid),
        cmocka_unit_test(test_pattern_problem),
        cmocka_unit_test(test_pattern_param_names),
        cmocka_unit_test(test_pattern_length),
        cmocka_unit_test(test_match_table),
        cmocka_unit_test(test_param_extract),
        cmocka_unit_test(test_param_buffer),
        cmocka_unit_test(test_param_before_tail),
        cmocka_unit_test(test_param_errors),
        cmocka_unit_test(test_compiled_form),
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_random_against_reference),
        cmocka_unit_test(test_random_garbage_validity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
