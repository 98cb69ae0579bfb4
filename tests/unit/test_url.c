/* test_url.c - unit tests for service/url.c: the Redis URL forms accepted
 * (redis://, unix://, redis-sentinel://), every error (whose message never
 * shows the password), redaction, and the checks of what sentinels say. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taskbus/taskbus.h"
#include "url.h"

#define SECRET "s3cretPW"

/* Parses url, which must be accepted. */
static tb__redis_target ok(const char *url)
{
    tb__redis_target t;
    char err[256] = "untouched";
    int rc = tb__redis_url_parse(url, &t, err, sizeof err);
    if (rc != 0)
        fail_msg("%s: refused (%s): %s", url, tb_err_name(rc), err);
    assert_string_equal(err, "");
    return t;
}

static void assert_tcp(const char *url, const char *host, int port, int db,
                       const char *user, const char *password)
{
    tb__redis_target t = ok(url);
    assert_int_equal(t.is_unix, 0);
    assert_string_equal(t.host, host);
    assert_int_equal(t.port, port);
    assert_int_equal(t.db, db);
    assert_string_equal(t.user, user);
    assert_string_equal(t.password, password);
    assert_string_equal(t.path, "");
}

static void assert_unix(const char *url, const char *path, int db,
                        const char *user, const char *password)
{
    tb__redis_target t = ok(url);
    assert_int_equal(t.is_unix, 1);
    assert_string_equal(t.path, path);
    assert_int_equal(t.db, db);
    assert_string_equal(t.user, user);
    assert_string_equal(t.password, password);
}

/* Parses url, which must be refused with a message that does not contain
 * SECRET; the target is left empty. Returns the message. */
static const char *bad(const char *url)
{
    static char err[256];
    tb__redis_target t;
    memset(&t, 0x55, sizeof t);
    int rc = tb__redis_url_parse(url, &t, err, sizeof err);
    if (rc != TB_EINVAL)
        fail_msg("%s: got %s, want EINVAL", url ? url : "(null)",
                 tb_err_name(rc));
    if (err[0] == '\0')
        fail_msg("%s: no message", url);
    if (strstr(err, SECRET) || strstr(err, "s3cret"))
        fail_msg("%s: the message shows the password: %s", url, err);
    assert_string_equal(t.password, "");
    assert_string_equal(t.user, "");
    return err;
}

/* bad(url), whose message must contain want. */
static void bad_saying(const char *url, const char *want)
{
    const char *msg = bad(url);
    if (!strstr(msg, want))
        fail_msg("%s: the message \"%s\" lacks \"%s\"", url, msg, want);
}

/* A string of n copies of c (n < sizeof buf), after prefix. */
static const char *make(char *buf, const char *prefix, const char *unit,
                        size_t n, const char *suffix)
{
    size_t len = (size_t)sprintf(buf, "%s", prefix);
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(buf + len, "%s", unit);
    sprintf(buf + len, "%s", suffix);
    return buf;
}

/* ---------------------------------------------------------------- accepted */

static void test_tcp_forms(void **state)
{
    (void)state;
    assert_tcp("redis://localhost", "localhost", 6379, 0, "", "");
    assert_tcp("redis://localhost:6380", "localhost", 6380, 0, "", "");
    assert_tcp("redis://localhost:6380/2", "localhost", 6380, 2, "", "");
    assert_tcp("redis://localhost/5", "localhost", 6379, 5, "", "");
    assert_tcp("redis://localhost/", "localhost", 6379, 0, "", "");
    assert_tcp("redis://127.0.0.1:1/0", "127.0.0.1", 1, 0, "", "");
    assert_tcp("redis://h:65535/2147483647", "h", 65535, 2147483647, "", "");
    assert_tcp("redis://redis_1.internal-net:7000", "redis_1.internal-net",
               7000, 0, "", "");
    assert_tcp("REDIS://Host", "Host", 6379, 0, "", "");
    assert_tcp("redis://h:06379/007", "h", 6379, 7, "", "");
}

static void test_tcp_auth(void **state)
{
    (void)state;
    assert_tcp("redis://alice:" SECRET "@host:6380/1", "host", 6380, 1, "alice",
               SECRET);
    assert_tcp("redis://:" SECRET "@host", "host", 6379, 0, "", SECRET);
    assert_tcp("redis://:@host", "host", 6379, 0, "", "");
    /* Percent-encoded '@', ':', '/', '%' and a space. */
    assert_tcp("redis://al%69ce:p%40ss%3Aw%2Fo%25rd%20x@host", "host", 6379, 0,
               "alice", "p@ss:w/o%rd x");
    /* Unencoded '@' and ':' in the password: the last '@' ends it. */
    assert_tcp("redis://u:p@ss:w@host:1/2", "host", 1, 2, "u", "p@ss:w");
    assert_tcp("redis://:%c3%A9@host", "host", 6379, 0, "", "\xc3\xa9");
}

static void test_ipv6(void **state)
{
    (void)state;
    assert_tcp("redis://[::1]", "::1", 6379, 0, "", "");
    assert_tcp("redis://[::1]:6380/3", "::1", 6380, 3, "", "");
    assert_tcp("redis://[::1]/3", "::1", 6379, 3, "", "");
    assert_tcp("redis://:" SECRET "@[2001:db8::8:800:200c:417a]:7000",
               "2001:db8::8:800:200c:417a", 7000, 0, "", SECRET);
    assert_tcp("redis://[::ffff:192.0.2.1]", "::ffff:192.0.2.1", 6379, 0, "",
               "");
    assert_tcp("redis://[fe80::1%25eth0]:6379", "fe80::1%eth0", 6379, 0, "",
               "");
}

static void test_unix_forms(void **state)
{
    (void)state;
    assert_unix("unix:///run/redis/redis.sock", "/run/redis/redis.sock", 0, "",
                "");
    assert_unix("unix:///run/redis.sock?db=3", "/run/redis.sock", 3, "", "");
    assert_unix("unix:///run/redis.sock?", "/run/redis.sock", 0, "", "");
    assert_unix("unix://:" SECRET "@/tmp/r.sock?db=1", "/tmp/r.sock", 1, "",
                SECRET);
    assert_unix("unix://bob:p%40w@/tmp/r.sock", "/tmp/r.sock", 0, "bob", "p@w");
    /* '@' in the path is not userinfo. */
    assert_unix("unix:///run/redis-server@main/r.sock",
                "/run/redis-server@main/r.sock", 0, "", "");
    assert_unix("UNIX:///r.sock?db=2147483647", "/r.sock", 2147483647, "", "");

    char url[512], path[256];
    make(path, "/", "p", 106, ""); /* 107 bytes: the most sun_path holds */
    snprintf(url, sizeof url, "unix://%s", path);
    assert_unix(url, path, 0, "", "");
}

static void test_limits_accepted(void **state)
{
    (void)state;
    char url[2048], want[1024];
    tb__redis_target t;
    t = ok(make(url, "redis://", "h", 255, ":1"));
    assert_int_equal(strlen(t.host), 255);
    t = ok(make(url, "redis://", "u", 127, ":pw@h"));
    assert_int_equal(strlen(t.user), 127);
    t = ok(make(url, "redis://:", "p", 511, "@h"));
    assert_int_equal(strlen(t.password), 511);
    /* Decoded length counts: 511 escapes are 1533 bytes of URL. */
    t = ok(make(url, "redis://:", "%41", 511, "@h"));
    assert_string_equal(t.password, make(want, "", "A", 511, ""));
}

/* ---------------------------------------------------------------- errors */

static void test_scheme_errors(void **state)
{
    (void)state;
    bad(NULL);
    bad("");
    bad("localhost:6379");
    bad("http://localhost");
    bad("redis:/localhost");
    bad("redis:localhost");
    bad("tcp://localhost:6379");
    bad("unix:/run/r.sock");
    const char *msg = bad("rediss://:" SECRET "@host:6380");
    assert_non_null(strstr(msg, "TLS is not supported by Debian's hiredis "
                                "0.14; use a TLS proxy such as stunnel"));
    bad("REDISS://host");
}

static void test_port_errors(void **state)
{
    (void)state;
    bad("redis://host:0");
    bad("redis://:" SECRET "@host:65536");
    bad("redis://host:99999999999999");
    bad("redis://host:abc");
    bad("redis://host:");
    bad("redis://host:/1");
    bad("redis://host:-1");
    bad("redis://host:+80");
    bad("redis://host:80x");
    bad("redis://host:6379:6380");
    bad("redis://[::1]:0");
    bad("redis://[::1]:");
}

static void test_db_errors(void **state)
{
    (void)state;
    bad("redis://host/-1");
    bad("redis://host/abc");
    bad("redis://host/2147483648");
    bad("redis://host/99999999999");
    bad("redis://host/1/2");
    bad("redis://host/1x");
    bad("redis://host/ 1");
    bad("redis://host?db=1"); /* redis:// takes the db as its path */
    bad("redis://host/1?x=2");
    bad("redis://host/1#frag");
    bad("unix:///r.sock?db=-1");
    bad("unix:///r.sock?db=");
    bad("unix:///r.sock?db=abc");
    bad("unix:///r.sock?db=2147483648");
}

static void test_host_errors(void **state)
{
    (void)state;
    bad("redis://");
    bad("redis://:6379");
    bad("redis:///0");
    bad("redis://:" SECRET "@");
    bad("redis://:" SECRET "@:6379/0");
    bad("redis://:" SECRET "@/0");
    bad("redis://ho st");
    bad("redis://ho%41st");
    bad("redis://host,other");
    bad("redis://::1:6379");
    bad("redis://[::1");
    bad("redis://[]");
    bad("redis://[zz::1]");
    bad("redis://[127.0.0.1]");
    bad("redis://[::1]x");
    bad("redis://[::1]6379");
    bad("redis://[fe80::1%eth0]");
    bad("redis://[fe80::1%25]");
    bad("redis://[fe80::1%25e th]");
}

static void test_unix_errors(void **state)
{
    (void)state;
    bad("unix://run/redis.sock");
    bad("unix://");
    bad("unix://:" SECRET "@run/redis.sock");
    bad("unix://:" SECRET "@");
    bad("unix:///r.sock?timeout=5");
    bad("unix:///r.sock?db=1&timeout=5");
    bad("unix:///r.sock?db");
    bad("unix:///r.sock?DB=1");
    bad("unix:///r.sock?db=1&db=2");
    bad("unix:///r\n.sock");
    bad("unix:///r.sock\t");

    char url[512];
    bad(make(url, "unix:///", "p", 107, "")); /* 108 bytes */
    bad(make(url, "unix://:" SECRET "@/", "p", 200, "?db=1"));
}

static void test_userinfo_errors(void **state)
{
    (void)state;
    bad("redis://:%zz@host");
    bad("redis://:%4@host");
    bad("redis://:" SECRET "%@host");
    bad("redis://:" SECRET "%4g@host");
    bad("redis://:" SECRET "%00@host");
    bad("redis://us%2@host:" SECRET);
    bad("redis://u%zz:" SECRET "@host");
    bad("unix://:%G1@/r.sock");
    /* A user name needs a password. */
    bad("redis://" SECRET "@host");
    bad("redis://alice:@host");
    bad("unix://alice@/r.sock");

    char url[2048];
    bad(make(url, "redis://", "h", 256, ""));
    bad(make(url, "redis://", "u", 128, ":" SECRET "@h"));
    bad(make(url, "redis://:" SECRET, "p", 512 - 8, "@h"));
    bad(make(url, "redis://:" SECRET, "%41", 512 - 8, "@h"));
}

static void test_error_buffer(void **state)
{
    (void)state;
    tb__redis_target t;
    char err[8];
    assert_int_equal(tb__redis_url_parse("redis://host:0", &t, err, sizeof err),
                     TB_EINVAL);
    assert_int_equal(strlen(err), sizeof err - 1);
    assert_int_equal(tb__redis_url_parse("redis://host:0", &t, NULL, 0),
                     TB_EINVAL);
    assert_int_equal(tb__redis_url_parse("redis://host:0", &t, err, 0),
                     TB_EINVAL);
    assert_int_equal(tb__redis_url_parse("redis://h", NULL, err, sizeof err),
                     TB_EINVAL);
    /* Success clears an earlier message. */
    assert_int_equal(tb__redis_url_parse("redis://h", &t, err, sizeof err), 0);
    assert_string_equal(err, "");
}

/* ---------------------------------------------------------------- sentinel */

static void assert_sentinel(const tb__redis_target *t, int i, const char *host,
                            int port)
{
    assert_true(i < t->nsentinels);
    assert_string_equal(t->sentinels[i].host, host);
    assert_int_equal(t->sentinels[i].port, port);
}

static void test_sentinel_forms(void **state)
{
    (void)state;
    tb__redis_target t = ok("redis-sentinel://s1/mymaster");
    assert_int_equal(t.nsentinels, 1);
    assert_sentinel(&t, 0, "s1", 26379);
    assert_string_equal(t.master, "mymaster");
    assert_int_equal(t.db, 0);
    assert_int_equal(t.is_unix, 0);
    assert_string_equal(t.host, ""); /* the sentinels say where */
    assert_string_equal(t.password, "");

    t = ok("redis-sentinel://s1:26380,10.0.0.2,[::1]:26381,[fe80::1%25eth0]"
           "/Prod_cache-1.eu/3");
    assert_int_equal(t.nsentinels, 4);
    assert_sentinel(&t, 0, "s1", 26380);
    assert_sentinel(&t, 1, "10.0.0.2", 26379);
    assert_sentinel(&t, 2, "::1", 26381);
    assert_sentinel(&t, 3, "fe80::1%eth0", 26379);
    assert_string_equal(t.master, "Prod_cache-1.eu");
    assert_int_equal(t.db, 3);

    /* The user and password are the master's. */
    t = ok("redis-sentinel://alice:" SECRET "@s1:1,s2:65535/m");
    assert_string_equal(t.user, "alice");
    assert_string_equal(t.password, SECRET);
    assert_int_equal(t.nsentinels, 2);
    assert_sentinel(&t, 1, "s2", 65535);
    t = ok("redis-sentinel://:p%40ss@s1/m/");
    assert_string_equal(t.password, "p@ss");
    assert_int_equal(t.db, 0);
    t = ok("REDIS-SENTINEL://S1/M/2147483647");
    assert_int_equal(t.db, 2147483647);

    /* The limits: 16 sentinels, a name of 64 bytes, hosts of 255. */
    char url[8400], name[80];
    make(url, "redis-sentinel://", "s:1,", 15, "s:2/m");
    t = ok(url);
    assert_int_equal(t.nsentinels, TB__SENTINELS_MAX);
    assert_sentinel(&t, 15, "s", 2);
    make(name, "", "n", TB__SENTINEL_MASTER_MAX, "");
    snprintf(url, sizeof url, "redis-sentinel://s/%s", name);
    t = ok(url);
    assert_string_equal(t.master, name);
    char host[300];
    make(host, "", "h", 255, "");
    snprintf(url, sizeof url, "redis-sentinel://a,%s:7/m", host);
    t = ok(url);
    assert_sentinel(&t, 1, host, 7);
}

static void test_sentinel_errors(void **state)
{
    (void)state;
    bad_saying("redis-sentinel://:" SECRET "@s1:26379", "names no master");
    bad_saying("redis-sentinel://s1/", "master's name");
    bad("redis-sentinel://s1//2");
    bad_saying("redis-sentinel:///m", "sentinel 1 of the Redis URL is empty");
    bad_saying("redis-sentinel://s1,/m",
               "sentinel 2 of the Redis URL is empty");
    bad("redis-sentinel://,s1/m");
    bad("redis-sentinel://s1,,s2/m");
    bad_saying("redis-sentinel://s1,s2:0/m",
               "the port in sentinel 2 of the Redis URL");
    bad("redis-sentinel://s1:65536/m");
    bad("redis-sentinel://s1:/m");
    bad("redis-sentinel://s1:x/m");
    bad("redis-sentinel://s1:26379:1/m");
    bad_saying("redis-sentinel://s1,s%31/m", "sentinel 2 of the Redis URL");
    bad("redis-sentinel://[::1/m");
    bad("redis-sentinel://[::1]x/m");
    bad("redis-sentinel://[zz]/m");
    bad("redis-sentinel://s1/m?db=1");
    bad("redis-sentinel://s1/m#x");
    bad("redis-sentinel://s1/m x");
    bad("redis-sentinel://s1/m%41");
    bad("redis-sentinel://s1/m:1");
    bad("redis-sentinel://s1/m/x");
    bad("redis-sentinel://s1/m/1/2");
    bad("redis-sentinel://s1/m/-1");
    bad("redis-sentinel://:" SECRET "@/m");
    bad("redis-sentinel://alice:@s1/m");
    bad("redis-sentinel:/s1/m");
    bad("sentinel://s1/m");

    char url[9000], name[80];
    bad_saying(make(url, "redis-sentinel://:" SECRET "@", "s,", 16, "s/m"),
               "more than 16 sentinels");
    make(name, "", "n", TB__SENTINEL_MASTER_MAX + 1, "");
    snprintf(url, sizeof url, "redis-sentinel://s/%s", name);
    bad(url);
    bad_saying(make(url, "redis-sentinel://a,", "h", 256, "/m"),
               "host in sentinel 2 of the Redis URL is "
               "longer than 255 bytes");
    /* A URL over TB__REDIS_URL_MAX is refused before it is read. */
    bad_saying(make(url, "redis://:" SECRET "@", "h", TB__REDIS_URL_MAX, ""),
               "longer than 8192 bytes");
    make(url, "redis-sentinel://", "s:1,", 2047, "s:1/m"); /* 8210 bytes */
    bad(url);
}

static void assert_addr(const char *host, const char *port, const char *want,
                        int want_port)
{
    tb__redis_hostport a;
    memset(&a, 0x55, sizeof a);
    int rc =
        tb__sentinel_addr_parse(host, strlen(host), port, strlen(port), &a);
    if (!want) {
        assert_int_equal(rc, TB_EINVAL);
        return;
    }
    assert_int_equal(rc, 0);
    assert_string_equal(a.host, want);
    assert_int_equal(a.port, want_port);
}

static void test_sentinel_answers(void **state)
{
    (void)state;
    assert_addr("127.0.0.1", "6380", "127.0.0.1", 6380);
    assert_addr("redis-1.internal", "1", "redis-1.internal", 1);
    assert_addr("::1", "65535", "::1", 65535);
    assert_addr("fe80::1%eth0", "6379", "fe80::1%eth0", 6379);
    assert_addr("127.0.0.1", "0", NULL, 0);
    assert_addr("127.0.0.1", "65536", NULL, 0);
    assert_addr("127.0.0.1", "", NULL, 0);
    assert_addr("127.0.0.1", "-1", NULL, 0);
    assert_addr("127.0.0.1", "6379 ", NULL, 0);
    assert_addr("", "6379", NULL, 0);
    assert_addr("a b", "6379", NULL, 0);
    assert_addr("host\r\n", "6379", NULL, 0);
    assert_addr("[::1]", "6379", NULL, 0);
    assert_addr("zz::1", "6379", NULL, 0);
    assert_addr("fe80::1%", "6379", NULL, 0);
    assert_addr("fe80::1%e/0", "6379", NULL, 0);
    char host[300];
    assert_addr(make(host, "", "h", 255, ""), "1", host, 1);
    assert_addr(make(host, "", "h", 256, ""), "1", NULL, 0);
    tb__redis_hostport a;
    assert_int_equal(tb__sentinel_addr_parse("a\0b", 3, "1", 1, &a), TB_EINVAL);
    assert_int_equal(tb__sentinel_addr_parse("h", 1, "1\0", 2, &a), TB_EINVAL);
    assert_int_equal(tb__sentinel_addr_parse(NULL, 0, "1", 1, &a), TB_EINVAL);

    char name[TB__SENTINEL_MASTER_MAX + 1];
    tb__redis_hostport from, to;
    const char *m = "mymaster 127.0.0.1 6379 ::1 6380";
    assert_int_equal(tb__sentinel_switch_parse(m, strlen(m), name, &from, &to),
                     0);
    assert_string_equal(name, "mymaster");
    assert_string_equal(from.host, "127.0.0.1");
    assert_int_equal(from.port, 6379);
    assert_string_equal(to.host, "::1");
    assert_int_equal(to.port, 6380);
    static const char *const bads[] = {
        "",
        "mymaster",
        "mymaster 127.0.0.1 6379 127.0.0.1",
        "mymaster 127.0.0.1 6379 127.0.0.1 6380 extra",
        "mymaster 127.0.0.1 6379 127.0.0.1 6380 ",
        "mymaster  127.0.0.1 6379 127.0.0.1 6380",
        "mymaster 127.0.0.1 6379 127.0.0.1 0",
        "mymaster 127.0.0.1 x 127.0.0.1 6380",
        "my%master 127.0.0.1 6379 127.0.0.1 6380",
        "mymaster 127.0.0.1 6379 bad\thost 6380",
    };
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++)
        if (tb__sentinel_switch_parse(bads[i], strlen(bads[i]), name, &from,
                                      &to) != TB_EINVAL)
            fail_msg("accepted +switch-master \"%s\"", bads[i]);
    char big[1100];
    make(big, "m 127.0.0.1 1 ", "h", 1000, " 2");
    assert_int_equal(
        tb__sentinel_switch_parse(big, strlen(big), name, &from, &to),
        TB_EINVAL);
    /* A master's name one byte too long. */
    char msg[200];
    make(msg, "", "n", TB__SENTINEL_MASTER_MAX + 1, " h 1 h 2");
    assert_int_equal(
        tb__sentinel_switch_parse(msg, strlen(msg), name, &from, &to),
        TB_EINVAL);
    make(msg, "", "n", TB__SENTINEL_MASTER_MAX, " h 1 h 2");
    assert_int_equal(
        tb__sentinel_switch_parse(msg, strlen(msg), name, &from, &to), 0);
    assert_int_equal(strlen(name), TB__SENTINEL_MASTER_MAX);
}

/* ---------------------------------------------------------------- redact */

static void assert_redact(const char *url, const char *want)
{
    char buf[512];
    memset(buf, 'Z', sizeof buf);
    tb__redis_url_redact(url, buf, sizeof buf);
    assert_string_equal(buf, want);
    assert_null(strstr(buf, SECRET));

    /* Cut short, the output is always a prefix of the full one: no byte of
     * the password slips through a truncation. */
    size_t full = strlen(want);
    for (size_t n = 1; n <= full + 1; n++) {
        char small[512];
        memset(small, 'Z', sizeof small);
        tb__redis_url_redact(url, small, n);
        size_t got = strlen(small);
        assert_int_equal(got, n - 1 < full ? n - 1 : full);
        assert_memory_equal(small, want, got);
        assert_int_equal(small[n], 'Z'); /* nothing written past n bytes */
    }
}

static void test_redact(void **state)
{
    (void)state;
    assert_redact("redis://alice:" SECRET "@host:6379/2",
                  "redis://alice:***@host:6379/2");
    assert_redact("redis://:" SECRET "@host", "redis://:***@host");
    assert_redact("redis://:" SECRET "@[::1]:6380/1",
                  "redis://:***@[::1]:6380/1");
    assert_redact("redis://:p%40" SECRET "%3A@host", "redis://:***@host");
    assert_redact("redis://:p@" SECRET "@host", "redis://:***@host");
    assert_redact("redis://:" SECRET "/x@host", "redis://:***@host");
    assert_redact("unix://:" SECRET "@/run/r.sock?db=1",
                  "unix://:***@/run/r.sock?db=1");
    assert_redact("unix://bob:" SECRET "@/run/r.sock",
                  "unix://bob:***@/run/r.sock");
    assert_redact("rediss://:" SECRET "@host", "rediss://:***@host");
    assert_redact("redis-sentinel://:" SECRET "@s1:26379,[::1]:26380/m/1",
                  "redis-sentinel://:***@s1:26379,[::1]:26380/m/1");
    assert_redact("redis-sentinel://alice:p@" SECRET "@s1,s2/m",
                  "redis-sentinel://alice:***@s1,s2/m");
    assert_redact("redis-sentinel://s1,s2/m", "redis-sentinel://s1,s2/m");
    /* A password written without its ':' is hidden whole. */
    assert_redact("redis://" SECRET "@host", "redis://***@host");
    /* No password: unchanged. */
    assert_redact("redis://host:6379/0", "redis://host:6379/0");
    assert_redact("redis://[::1]:6379", "redis://[::1]:6379");
    assert_redact("redis://:@host", "redis://:@host");
    assert_redact("redis://alice:@host", "redis://alice:@host");
    assert_redact("unix:///run/r.sock?db=1", "unix:///run/r.sock?db=1");
    assert_redact("unix:///run/redis@main/r.sock",
                  "unix:///run/redis@main/r.sock");
    assert_redact("", "");
    assert_redact("not a url", "not a url");

    char buf[4] = "xyz";
    tb__redis_url_redact("redis://h", buf, 0); /* writes nothing */
    assert_string_equal(buf, "xyz");
    tb__redis_url_redact(NULL, buf, sizeof buf);
    assert_string_equal(buf, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_forms),
        cmocka_unit_test(test_tcp_auth),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_unix_forms),
        cmocka_unit_test(test_limits_accepted),
        cmocka_unit_test(test_scheme_errors),
        cmocka_unit_test(test_port_errors),
        cmocka_unit_test(test_db_errors),
        cmocka_unit_test(test_host_errors),
        cmocka_unit_test(test_unix_errors),
        cmocka_unit_test(test_userinfo_errors),
        cmocka_unit_test(test_error_buffer),
        cmocka_unit_test(test_sentinel_forms),
        cmocka_unit_test(test_sentinel_errors),
        cmocka_unit_test(test_sentinel_answers),
        cmocka_unit_test(test_redact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
