/* fuzz_http_api.c - the HTTP API's handling of a request (service/http.c,
 * api.c, kinds.c, metrics.c, api_ui.c): routing, the token check, query
 * parameters and JSON bodies, through tb__http_handle as the server adapter
 * calls it, on a stopped app with the API, the built-in kinds and the
 * dashboard. The input is an HTTP request without the version: "METHOD
 * /path?query\n", header lines (X-Request-ID, Authorization,
 * If-None-Match), an empty line, the body; a first
 * byte with its low bit set picks the app that has an API token. Every
 * answer is one send with a status, and an error is a JSON object with a
 * code and a message. */
#include <jansson.h>

#include "../unit/http_fake.h"
#include "fuzz.h"

#define TOKEN "fuzz-token"

static int setup(tb_app *app)
{
    int rc = tb_app_add_api(app);
    if (rc == 0)
        rc = tb_app_add_dashboard(app);
    return rc ? rc : tb_app_add_builtin_kinds(app);
}

static void check_answer(const fake_conn *c, int status)
{
    FUZZ_CHECK(c->sends == 1 && c->status == status);
    FUZZ_CHECK(status >= 200 && status <= 599);
    FUZZ_CHECK(strlen(c->headers) < sizeof c->headers - 1);
    if (status < 400)
        return;
    json_error_t err;
    json_t *o = json_loadb(c->body, c->len, 0, &err);
    FUZZ_CHECK(json_is_object(o));
    FUZZ_CHECK(json_is_string(json_object_get(o, "error")));
    FUZZ_CHECK(json_string_length(json_object_get(o, "error")) > 0);
    /* Whole, even when it quotes the client's text cut short. */
    json_t *m = json_object_get(o, "message");
    FUZZ_CHECK(json_is_string(m));
    FUZZ_CHECK(strcmp(json_string_value(m), "(message not UTF-8)") != 0);
    json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tb_app *open_app, *token_app;
    if (!open_app) {
        fuzz_quiet_logs();
        tb_app_config cfg;
        tb_app_config_init(&cfg);
        open_app = fuzz_stopped_app(&cfg, setup);
        cfg.http.api_token = TOKEN;
        token_app = fuzz_stopped_app(&cfg, setup);
    }
    if (size < 1)
        return 0;
    tb_app *app = data[0] & 1 ? token_app : open_app;
    char *req = fuzz_cstr(data + 1, size - 1);
    char *line = req, *rest = fuzz_split_line(line);

    /* "METHOD target": the method is what comes before the first space. */
    char *target = strchr(line, ' ');
    if (!target) {
        free(req);
        return 0;
    }
    *target++ = '\0';
    char *query = strchr(target, '?');
    if (query)
        *query++ = '\0';

    fake_conn c;
    memset(&c, 0, sizeof c);
    while (*rest) {
        char *h = rest;
        rest = fuzz_split_line(h);
        if (!*h)
            break; /* the empty line: the body follows */
        char *colon = strchr(h, ':');
        if (!colon)
            continue;
        *colon = '\0';
        const char *value = colon + 1 + (colon[1] == ' ');
        if (strcasecmp(h, "X-Request-ID") == 0)
            c.request_id = value;
        else if (strcasecmp(h, "Authorization") == 0)
            c.auth = value;
        else if (strcasecmp(h, "If-None-Match") == 0)
            c.inm = value;
    }
    size_t body_len = size - 1 - (size_t)(rest - req);
    int status = fake_handle(&c, app, line, target, query,
                             body_len ? rest : NULL, body_len);
    check_answer(&c, status);
    free(c.body);
    free(req);
    return 0;
}
