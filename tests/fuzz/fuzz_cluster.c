/* fuzz_cluster.c - what the cluster takes from outside
 * (service/cluster_calls.c, cluster_tasks.c, service/periodic.c): the first
 * byte picks the parser, the rest is its input. 0: a message on this instance's
 * control channel (anyone who can publish on Redis can send one); 1: a GET
 * /tasks cursor; 2: a periodic task's "every" duration. On a stopped app of the
 * in-process bus: a request is parsed and checked, and its answer goes nowhere.
 */
#include "cluster.h"
#include "fuzz.h"
#include "internal.h"
#include "singleton.h"

static tb_app *app;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!app) {
        fuzz_quiet_logs();
        tb_app_config cfg;
        tb_app_config_init(&cfg);
        cfg.core.workers = 1;
        app = fuzz_stopped_app(&cfg, NULL);
    }
    if (size < 1)
        return 0;
    int mode = data[0] % 3;
    char *s = fuzz_cstr(data + 1, size - 1);
    if (mode == 0) {
        tb__cluster_message(app, s, size - 1);
    } else if (mode == 1) {
        json_t *tasks = NULL, *unreachable = NULL;
        char next[TB_CURSOR_MAX];
        int rc =
            tb__cluster_list(app, s, 10, NULL, 0, &tasks, next, &unreachable);
        FUZZ_CHECK(rc == 0 || rc == TB_EINVAL);
        FUZZ_CHECK(rc == 0 ? tasks != NULL && unreachable != NULL
                           : tasks == NULL && unreachable == NULL);
        FUZZ_CHECK(strlen(next) < TB_CURSOR_MAX);
        json_decref(tasks);
        json_decref(unreachable);
    } else {
        int64_t ms = -1;
        int rc = tb__duration_ms(s, &ms);
        FUZZ_CHECK(rc == 0 || rc == TB_EINVAL);
        if (rc == 0) {
            FUZZ_CHECK(ms >= 0 && ms <= TB_PERIODIC_MAX_MS);
            size_t n = strlen(s);
            FUZZ_CHECK(n >= 2 &&
                       (s[n - 1] == 's' || s[n - 1] == 'm' || s[n - 1] == 'h'));
        }
    }
    free(s);
    return 0;
}
