/* fuzz_redis_url.c - Redis URLs (service/url.c): parsing, with its error
 * messages into buffers of several sizes, and redaction for the logs. */
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
        if (t.nsentinels > 0) {
            /* redis-sentinel://: the sentinels and the master's name. */
            FUZZ_CHECK(!t.is_unix && t.nsentinels <= TB__SENTINELS_MAX);
            FUZZ_CHECK(t.master[0] != '\0' &&
                       terminated(t.master, sizeof t.master));
            for (int i = 0; i < t.nsentinels; i++)
                FUZZ_CHECK(t.sentinels[i].port >= 1 &&
                           t.sentinels[i].port <= 65535);
        } else {
            FUZZ_CHECK(t.is_unix ? t.path[0] == '/' && t.host[0] == '\0'
                                 : t.host[0] != '\0' && t.path[0] == '\0');
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
    free(url);
    return 0;
}
