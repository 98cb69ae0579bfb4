/* fuzz_redis_url.c - Redis URLs (service/url.c): parsing, with its error
 * messages into buffers of several sizes, and redaction for the logs; and
 * the same bytes as what sentinels say, which is as hostile: a
 * +switch-master message, and "host port" as a master's address. */
#include "fuzz.h"
#include "url.h"

static int terminated(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = fuzz_cstr(data, size);
    tb__redis_target t;
    char err[256];
    int rc = tb__redis_url_parse(url, &t, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == TB_EINVAL);
    FUZZ_CHECK(terminated(err, sizeof err));
    FUZZ_CHECK(rc == 0 ? err[0] == '\0' : err[0] != '\0');
    if (rc == 0) {
        FUZZ_CHECK(terminated(t.host, sizeof t.host));
        FUZZ_CHECK(terminated(t.path, sizeof t.path));
        FUZZ_CHECK(terminated(t.user, sizeof t.user));
        FUZZ_CHECK(terminated(t.password, sizeof t.password));
        FUZZ_CHECK(t.port >= 1 && t.port <= 65535 && t.db >= 0);
        FUZZ_CHECK(t.nsentinels >= 0 && t.nsentinels <= TB__SENTINELS_MAX);
        if (t.is_unix) {
            FUZZ_CHECK(t.path[0] == '/' && t.host[0] == '\0');
            FUZZ_CHECK(t.nsentinels == 0);
        } else if (t.nsentinels > 0) {
            size_t ml = strnlen(t.master, sizeof t.master);
            FUZZ_CHECK(ml > 0 && ml < sizeof t.master && t.path[0] == '\0');
            for (int i = 0; i < t.nsentinels; i++) {
                const tb__redis_hostport *h = &t.sentinels[i];
                FUZZ_CHECK(terminated(h->host, sizeof h->host));
                FUZZ_CHECK(h->host[0] && h->port >= 1 && h->port <= 65535);
            }
        } else {
            FUZZ_CHECK(t.host[0] != '\0' && t.path[0] == '\0');
        }
        /* A user name goes with a password (AUTH user password). */
        FUZZ_CHECK(!t.user[0] || t.password[0]);
        /* Parsing again gives the same (no state between calls). */
        tb__redis_target again;
        FUZZ_CHECK(tb__redis_url_parse(url, &again, NULL, 0) == 0);
        FUZZ_CHECK(memcmp(&t, &again, sizeof t) == 0);
    } else {
        /* Nothing half-decoded is left behind. */
        FUZZ_CHECK(t.password[0] == '\0' && t.user[0] == '\0');
    }
    /* Short error buffers are cut, never overrun. */
    char tiny[7];
    FUZZ_CHECK(tb__redis_url_parse(url, &t, tiny, sizeof tiny) == rc);
    FUZZ_CHECK(terminated(tiny, sizeof tiny));

    /* Redaction: NUL-terminated in any buffer; when the URL had a
     * password, what stands in for it is there. */
    size_t cap = size + 8;
    char *red = malloc(cap);
    FUZZ_CHECK(red != NULL);
    tb__redis_url_redact(url, red, cap);
    FUZZ_CHECK(strlen(red) < cap);
    if (rc == 0 && t.password[0])
        FUZZ_CHECK(strstr(red, "***") != NULL);
    char small[5];
    tb__redis_url_redact(url, small, sizeof small);
    FUZZ_CHECK(strlen(small) < sizeof small);
    free(red);

    /* What a sentinel says. */
    char name[TB__SENTINEL_MASTER_MAX + 1];
    tb__redis_hostport from, to, addr;
    if (tb__sentinel_switch_parse(url, size, name, &from, &to) == 0) {
        FUZZ_CHECK(name[0] && strlen(name) <= TB__SENTINEL_MASTER_MAX);
        FUZZ_CHECK(from.host[0] && from.port >= 1 && from.port <= 65535);
        FUZZ_CHECK(to.host[0] && to.port >= 1 && to.port <= 65535);
        FUZZ_CHECK(terminated(from.host, sizeof from.host));
        FUZZ_CHECK(terminated(to.host, sizeof to.host));
    }
    const char *sp = memchr(url, ' ', size);
    size_t hlen = sp ? (size_t)(sp - url) : size;
    const char *port = sp ? sp + 1 : "";
    size_t plen = sp ? size - hlen - 1 : 0;
    if (tb__sentinel_addr_parse(url, hlen, port, plen, &addr) == 0) {
        FUZZ_CHECK(terminated(addr.host, sizeof addr.host) && addr.host[0]);
        FUZZ_CHECK(addr.port >= 1 && addr.port <= 65535);
    }
    free(url);
    return 0;
}
