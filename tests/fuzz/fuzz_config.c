/* fuzz_config.c - configuration values (service/config.c): the input is
 * "key=value" lines, each set with tb_config_set as a flag or a variable
 * would; every setting then formats to text that sets it to the same value,
 * and the whole configuration goes through tb_app_new's checks. */
#include "fuzz.h"
#include "internal.h"

/* Each setting formatted, set from that text again, formatted again: the
 * same text (secrets and redacted URLs excepted: they do not round-trip by
 * design). */
static void check_round_trip(const tb_app_config *cfg)
{
    size_t n;
    const tb_config_setting *s = tb_config_settings(&n);
    for (size_t i = 0; i < n; i++) {
        char text[1024], again[1024];
        int len = tb_config_format(cfg, &s[i], text, sizeof text);
        FUZZ_CHECK(len >= 0 || len == TB_ENAMETOOLONG);
        if (len < 0)
            continue;
        FUZZ_CHECK((size_t)len == strlen(text));
        char tiny[3];
        int cut = tb_config_format(cfg, &s[i], tiny, sizeof tiny);
        FUZZ_CHECK(cut == (len < 3 ? len : TB_ENAMETOOLONG));
        if (s[i].type == TB_CONFIG_SECRET || s[i].type == TB_CONFIG_URL)
            continue;
        tb_app_config copy = *cfg;
        char err[256];
        FUZZ_CHECK(tb_config_set(&copy, s[i].name, text, err, sizeof err) == 0);
        FUZZ_CHECK(tb_config_format(&copy, &s[i], again, sizeof again) == len);
        FUZZ_CHECK(strcmp(text, again) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        fuzz_quiet_logs();
        once = 1;
    }
    char *text = fuzz_cstr(data, size);
    tb_app_config cfg;
    tb_app_config_init(&cfg);
    for (char *line = text, *next; *line; line = next) {
        next = fuzz_split_line(line);
        char *eq = strchr(line, '=');
        char *value = NULL;
        if (eq) {
            *eq = '\0';
            value = eq + 1;
        }
        tb_app_config before;
        memcpy(&before, &cfg, sizeof cfg); /* padding too */
        char err[128];
        int rc = tb_config_set(&cfg, line, value, err, sizeof err);
        FUZZ_CHECK(rc == 0 || rc == TB_ENOENT || rc == TB_EINVAL);
        if (rc) {
            FUZZ_CHECK(memchr(err, '\0', sizeof err) && err[0]);
            /* A refused value changes nothing. */
            FUZZ_CHECK(memcmp(&before, &cfg, sizeof cfg) == 0);
        }
    }
    check_round_trip(&cfg);
    /* Values set one by one within their bounds may still break a rule
     * between settings: refused, never a crash. */
    int rc = tb__config_check(&cfg);
    FUZZ_CHECK(rc == 0 || rc == TB_EINVAL);
    free(text);
    return 0;
}
