/* fuzz_kinds.c - task kinds' arguments (service/kinds.c): the input is
 * "kind\nargs JSON", spawned with tb_task_spawn on a stopped app that has
 * the built-in kinds and one kind with an argument of every type. The
 * spec's checks run, then that kind's own check, which verifies what they
 * let through; nothing is ever started (the app has stopped). */
#include <math.h>

#include "fuzz.h"

static const tb_arg_spec every_type[] = {
    {"n", TB_ARG_NUMBER, 0, -1.5, 1e6},
    {"i", TB_ARG_INT, 1, -5, 5},
    {"s", TB_ARG_STRING, 0, 0, 0},
    {"e", TB_ARG_EVENT_NAME, 0, 0, 0},
    {"p", TB_ARG_PATTERN, 0, 0, 0},
    {"b", TB_ARG_BOOL, 0, 0, 0},
    {"any", TB_ARG_NUMBER, 0, 0, 0}, /* min == max: no range */
    {NULL, 0, 0, 0, 0},
};

static int never_runs(tb_task *self, void *arg)
{
    (void)self;
    (void)arg;
    abort();
}

/* What the spec promised, checked through the getters a kind's task uses;
 * then refuses every other spawn by policy, to cover that answer too. */
static int check(const tb_kind_args *a, void *ud, char *err, size_t errsz)
{
    (void)ud;
    double n = tb_kind_number(a, "n", 0);
    FUZZ_CHECK(n >= -1.5 && n <= 1e6);
    long long i = tb_kind_int(a, "i", 99);
    FUZZ_CHECK(i >= -5 && i <= 5); /* required: never the default */
    FUZZ_CHECK(tb_kind_number(a, "i", 99) == (double)i);
    const char *s = tb_kind_string(a, "s");
    FUZZ_CHECK(s == NULL || strlen(s) < 1u << 24);
    const char *e = tb_kind_string(a, "e");
    FUZZ_CHECK(e == NULL || tb_event_name_valid(e) == 0);
    const char *p = tb_kind_string(a, "p");
    FUZZ_CHECK(p == NULL || tb_pattern_valid(p) == 0);
    int b = tb_kind_bool(a, "b", 7);
    FUZZ_CHECK(b == 0 || b == 1 || b == 7);
    FUZZ_CHECK(isfinite(tb_kind_number(a, "any", 0)));
    FUZZ_CHECK(tb_kind_string(a, "nope") == NULL);
    if (i & 1) {
        snprintf(err, errsz, "odd i");
        return TB_EPERM;
    }
    return 0;
}

static int setup(tb_app *app)
{
    int rc = tb_app_add_builtin_kinds(app);
    if (!rc)
        rc = tb_app_add_kind(app, "fuzz.every", never_runs, every_type);
    if (!rc)
        rc = tb_app_add_kind_check(app, "fuzz.every", check, NULL, NULL);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tb_app *app;
    if (!app) {
        fuzz_quiet_logs();
        app = fuzz_stopped_app(NULL, setup);
    }
    char *kind = fuzz_cstr(data, size);
    char *args = fuzz_split_line(kind);
    char err[512];
    memset(err, 'x', sizeof err);
    uint64_t id = 0;
    int rc = tb_task_spawn(app, kind, args, NULL, &id, err, sizeof err);
    /* Valid arguments get as far as adding the task, which the stopped
     * app refuses. */
    FUZZ_CHECK(rc == TB_EINVAL || rc == TB_ENOENT || rc == TB_EPERM ||
               rc == TB_ESHUTDOWN);
    FUZZ_CHECK(memchr(err, '\0', sizeof err) != NULL && err[0] != '\0');
    FUZZ_CHECK(id == 0);
    free(kind);
    return 0;
}
