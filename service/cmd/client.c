/* client.c - the client commands, taskbus dispatch, tasks, instances, watch
 * and healthcheck: requests to a running service's HTTP API (and its /ws
 * websocket for watch), its answers printed, its errors as exit codes. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "taskbus/taskbus.h"

#include "cmd.h"
#include "http_client.h"

typedef struct client {
    char host[300];
    int port;
    char prefix[256]; /* path prefix of the URL, "" or "/x" */
    char *token;
    int timeout_ms;
} client;

/* "http://host:port[/prefix]" or "host:port". */
static void parse_url(client *cl, const char *url)
{
    const char *p = url;
    if (strncmp(p, "https://", 8) == 0)
        cmd_die_usage("--url: https is not supported (civetweb 1.15 was built "
                      "without a client TLS path here); use http://");
    if (strncmp(p, "http://", 7) == 0)
        p += 7;
    const char *slash = strchr(p, '/');
    size_t hp = slash ? (size_t)(slash - p) : strlen(p);
    char hostport[300];
    if (hp == 0 || hp >= sizeof hostport)
        cmd_die_usage("--url: bad URL \"%s\" (want http://host:port)", url);
    memcpy(hostport, p, hp);
    hostport[hp] = '\0';
    char *colon = strrchr(hostport, ':');
    cl->port = 80;
    if (colon) {
        *colon = '\0';
        cl->port = (int)cmd_num_arg("--url port", colon + 1, 1, 65535);
    }
    if (strcmp(hostport, "0.0.0.0") == 0 || hostport[0] == '\0')
        snprintf(hostport, sizeof hostport, "127.0.0.1");
    snprintf(cl->host, sizeof cl->host, "%s", hostport);
    snprintf(cl->prefix, sizeof cl->prefix, "%s", slash ? slash : "");
    size_t n = strlen(cl->prefix);
    while (n && cl->prefix[n - 1] == '/')
        cl->prefix[--n] = '\0';
}

/* The default URL: TASKBUS_URL, else the local service's TASKBUS_LISTEN. */
static void client_defaults(client *cl)
{
    memset(cl, 0, sizeof *cl);
    const char *u = getenv("TASKBUS_URL");
    const char *l = getenv("TASKBUS_LISTEN");
    if (u && *u)
        parse_url(cl, u);
    else if (l && *l && strcmp(l, "off") != 0)
        parse_url(cl, l);
    else
        parse_url(cl, "http://127.0.0.1:8080");
    const char *t = getenv("TASKBUS_TOKEN");
    const char *tf = getenv("TASKBUS_TOKEN_FILE");
    if (t && *t)
        cl->token = strdup(t);
    else if (tf && *tf)
        cl->token = cmd_read_secret("TASKBUS_TOKEN_FILE", tf);
    cl->timeout_ms = 30000;
}

/* Percent-encodes s for a path segment or a query value. */
static void encode(char *out, size_t outsz, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (; *s && n + 4 < outsz; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
            (ch >= '0' && ch <= '9') || strchr("-._~*<>", ch)) {
            out[n++] = (char)ch;
        } else {
            out[n++] = '%';
            out[n++] = hex[ch >> 4];
            out[n++] = hex[ch & 15];
        }
    }
    out[n] = '\0';
}

/* One request; prints the body (stdout on 2xx, stderr otherwise). Exit
 * codes: 0 on 2xx, 1 on an HTTP error, 3 when the service is unreachable. */
/* GET path, its 2xx body parsed as JSON into *out (new reference). 0, or
 * the exit status to give (the error printed). */
static int get_json(client *cl, const char *path, json_t **out)
{
    char target[2048];
    snprintf(target, sizeof target, "%s%s", cl->prefix, path);
    int status = 0;
    char *resp = NULL;
    size_t rlen = 0;
    char err[256] = "";
    *out = NULL;
    int rc = cmd_http_request(cl->host, cl->port, "GET", target, cl->token,
                              NULL, NULL, 0, cl->timeout_ms, &status, &resp,
                              &rlen, err, sizeof err);
    if (rc) {
        fprintf(stderr, "taskbus: GET http://%s:%d%s: %s\n", cl->host, cl->port,
                target, err[0] ? err : tb_strerror(rc));
        return 3;
    }
    if (status < 200 || status >= 300) {
        if (rlen)
            fprintf(stderr, "%s%s", resp, resp[rlen - 1] == '\n' ? "" : "\n");
        else
            fprintf(stderr, "HTTP %d\n", status);
        free(resp);
        return 1;
    }
    json_error_t je;
    *out = json_loadb(resp ? resp : "", rlen, 0, &je);
    free(resp);
    if (!*out) {
        fprintf(stderr, "taskbus: GET %s: the answer is not JSON: %s\n", path,
                je.text);
        return 1;
    }
    return 0;
}

/* Sends body (if not NULL) as ctype, or (ctype NULL) as JSON when it
 * parses, else as text; prints the answer. The exit status. */
static int request_as(client *cl, const char *method, const char *path,
                      const char *ctype, const char *body, size_t len,
                      int quiet)
{
    char target[2048];
    snprintf(target, sizeof target, "%s%s", cl->prefix, path);
    int status = 0;
    char *resp = NULL;
    size_t rlen = 0;
    char err[256] = "";
    if (body && !ctype) {
        json_error_t je;
        json_t *j = json_loadb(body, len, JSON_DECODE_ANY, &je);
        ctype = j ? "application/json" : "text/plain; charset=utf-8";
        json_decref(j);
    }
    int rc = cmd_http_request(cl->host, cl->port, method, target, cl->token,
                              ctype, body, len, cl->timeout_ms, &status, &resp,
                              &rlen, err, sizeof err);
    if (rc) {
        fprintf(stderr, "taskbus: %s http://%s:%d%s: %s\n", method, cl->host,
                cl->port, target, err[0] ? err : tb_strerror(rc));
        return 3;
    }
    int ok = status >= 200 && status < 300;
    if (!quiet || !ok) {
        FILE *f = ok ? stdout : stderr;
        if (rlen)
            fprintf(f, "%s%s", resp, resp[rlen - 1] == '\n' ? "" : "\n");
        else if (!ok)
            fprintf(f, "HTTP %d\n", status);
    }
    free(resp);
    return ok ? 0 : 1;
}

static int request(client *cl, const char *method, const char *path,
                   const char *body, size_t len, int quiet)
{
    return request_as(cl, method, path, NULL, body, len, quiet);
}

static const struct option client_opts[] = {
    {"url", required_argument, NULL, 'u'},
    {"token", required_argument, NULL, 'k'},
    {"token-file", required_argument, NULL, 'K'},
    {"timeout", required_argument, NULL, 't'},
    {"state", required_argument, NULL, 's'},
    {"name", required_argument, NULL, 'n'},
    {"args", required_argument, NULL, 'a'},
    {"worker", required_argument, NULL, 'w'},
    {"scope", required_argument, NULL, 'S'},
    {"limit", required_argument, NULL, 'l'},
    {"cursor", required_argument, NULL, 'c'},
    {"output", required_argument, NULL, 'o'},
    {"batch", required_argument, NULL, 'b'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

const char cmd_client_usage[] =
    "usage:\n"
    "  taskbus dispatch NAME [DATA|-]      dispatch an event (DATA, or stdin "
    "with -)\n"
    "  taskbus dispatch --batch FILE|-     dispatch the events of FILE (or "
    "stdin):\n"
    "                                      a JSON array of {\"name\", "
    "\"data\"}\n"
    "                                      objects, or one a line (NDJSON); "
    "all or none\n"
    "  taskbus tasks [list] [--state S] [--scope local|cluster] [--limit N]\n"
    "        [--cursor C] [--output table|json]\n"
    "                                      list the cluster's tasks: a table "
    "of\n"
    "                                      every page on a terminal, else one "
    "page\n"
    "                                      of JSON (its \"cursor\" fetches "
    "the next)\n"
    "  taskbus tasks get NAME              one task\n"
    "  taskbus tasks cancel NAME [--timeout S]  cancel and wait\n"
    "  taskbus tasks purge                 drop finished tasks\n"
    "  taskbus tasks spawn KIND [--name N] [--args JSON] [--worker W]\n"
    "  taskbus instances [list] [--output table|json]  the live instances\n"
    "  taskbus watch PATTERN...            print events as they arrive "
    "(websocket)\n"
    "  taskbus healthcheck                 exit 0 if /healthz answers 200\n"
    "  taskbus config --markdown           the settings as a Markdown table\n"
    "common options: --url http://HOST:PORT (env TASKBUS_URL; default the "
    "local service, from TASKBUS_LISTEN or 127.0.0.1:8080), --token T (env "
    "TASKBUS_TOKEN), --token-file F (env TASKBUS_TOKEN_FILE), --timeout S\n"
    "exit status: 0 success, 1 the service answered an error, 2 bad usage, "
    "3 the service is unreachable\n";

typedef struct client_args {
    const char *state, *name, *args, *worker, *timeout;
    const char *scope, *limit, *cursor, *output, *batch;
} client_args;

/* Parses the common options; leaves the positional arguments in
 * argv[optind..]. */
static void client_parse(client *cl, client_args *a, int argc, char **argv)
{
    client_defaults(cl);
    memset(a, 0, sizeof *a);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", client_opts, NULL)) != -1) {
        switch (c) {
        case 'u':
            parse_url(cl, optarg);
            break;
        case 'k':
            free(cl->token);
            cl->token = strdup(optarg);
            break;
        case 'K':
            free(cl->token);
            cl->token = cmd_read_secret("--token-file", optarg);
            break;
        case 't':
            a->timeout = optarg;
            cl->timeout_ms = cmd_seconds_arg("--timeout", optarg, 3600) + 5000;
            break;
        case 's':
            a->state = optarg;
            break;
        case 'n':
            a->name = optarg;
            break;
        case 'a':
            a->args = optarg;
            break;
        case 'w':
            a->worker = optarg;
            break;
        case 'S':
            a->scope = optarg;
            break;
        case 'l':
            a->limit = optarg;
            break;
        case 'c':
            a->cursor = optarg;
            break;
        case 'o':
            if (strcmp(optarg, "table") != 0 && strcmp(optarg, "json") != 0)
                cmd_die_usage("--output is table or json");
            a->output = optarg;
            break;
        case 'b':
            a->batch = optarg;
            break;
        case 'h':
            fputs(cmd_client_usage, stdout);
            exit(0);
        default:
            fputs(cmd_client_usage, stderr);
            exit(2);
        }
    }
}

/* All of f, or NULL (out of memory, or a read error: errno). */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    if (buf && ferror(f)) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    if (!buf)
        errno = ENOMEM;
    *len = n;
    return buf;
}

static char *read_stdin(size_t *len)
{
    return read_all(stdin, len);
}

/* POST /events with the batch in path ("-": stdin): an array when it
 * starts with '[' (after a BOM and blanks), else NDJSON (the service checks
 * every item). */
static int dispatch_batch(client *cl, const char *path)
{
    size_t len = 0;
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    char *body = f ? read_all(f, &len) : NULL;
    int err = errno;
    if (f && f != stdin)
        fclose(f);
    if (!body) {
        fprintf(stderr, "taskbus: cannot read %s: %s\n", path, strerror(err));
        return 2;
    }
    /* A UTF-8 byte order mark (editors write one) is not the body's start;
     * the service skips it too. */
    size_t i = len >= 3 && !memcmp(body, "\xEF\xBB\xBF", 3) ? 3 : 0;
    while (i < len && strchr(" \t\r\n", body[i]) && body[i])
        i++;
    const char *ctype =
        i < len && body[i] == '[' ? "application/json" : "application/x-ndjson";
    int rc = request_as(cl, "POST", "/events", ctype, body, len, 0);
    free(body);
    return rc;
}

int cmd_dispatch_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    int npos = argc - optind;
    if (a.batch) {
        if (npos != 0)
            cmd_die_usage("dispatch --batch FILE takes no NAME or DATA: the "
                          "names are in the file");
        int rc = dispatch_batch(&cl, a.batch);
        free(cl.token);
        return rc;
    }
    if (npos < 1 || npos > 2)
        cmd_die_usage("dispatch wants NAME and at most one DATA argument");
    char path[1024], enc[700];
    encode(enc, sizeof enc, argv[optind]);
    snprintf(path, sizeof path, "/events/%s", enc);
    const char *data = npos == 2 ? argv[optind + 1] : "";
    size_t len = strlen(data);
    char *owned = NULL;
    if (strcmp(data, "-") == 0) {
        owned = read_stdin(&len);
        if (!owned)
            cmd_die_usage("out of memory reading stdin");
        data = owned;
    }
    int rc = request(&cl, "POST", path, data, len, 0);
    free(owned);
    free(cl.token);
    return rc;
}

/* One task's row: the cluster view, with the instance it runs on. */
static void task_row(json_t *t)
{
    const char *started = json_string_value(json_object_get(t, "started"));
    const char *inst = json_string_value(json_object_get(t, "instance"));
    const char *kind = json_string_value(json_object_get(t, "kind"));
    printf("%-24s %-16s %6lld %-10s %-12s %8lld  %s\n",
           json_string_value(json_object_get(t, "name")), inst ? inst : "-",
           (long long)json_integer_value(json_object_get(t, "worker")),
           json_string_value(json_object_get(t, "state")),
           kind && kind[0] ? kind : "-",
           (long long)json_integer_value(json_object_get(t, "id")),
           started ? started : "-");
}

/* GET /tasks: one page as JSON, or (table) every page from the cursor on
 * as rows, with the instances that did not answer named at the end. */
static int list_tasks(client *cl, const client_args *a, int table)
{
    char query[1024] = "", enc[700];
    size_t q = 0;
    const char *keys[] = {"state", "scope", "limit"};
    const char *vals[] = {a->state, a->scope, a->limit};
    for (size_t i = 0; i < 3; i++) {
        if (!vals[i])
            continue;
        encode(enc, sizeof enc, vals[i]);
        q += (size_t)snprintf(query + q, sizeof query - q, "%s%s=%s",
                              q ? "&" : "?", keys[i], enc);
    }
    char cursor[128] = "";
    if (a->cursor)
        snprintf(cursor, sizeof cursor, "%s", a->cursor);
    char path[2048];
    if (!table) {
        encode(enc, sizeof enc, cursor);
        snprintf(path, sizeof path, "/tasks%s%s%s", query,
                 cursor[0] ? (q ? "&cursor=" : "?cursor=") : "",
                 cursor[0] ? enc : "");
        return request(cl, "GET", path, NULL, 0, 0);
    }
    printf("%-24s %-16s %6s %-10s %-12s %8s  %s\n", "NAME", "INSTANCE",
           "WORKER", "STATE", "KIND", "ID", "STARTED");
    json_t *missing = json_array();
    for (int pages = 0; pages < 1000; pages++) {
        encode(enc, sizeof enc, cursor);
        snprintf(path, sizeof path, "/tasks%s%s%s", query,
                 cursor[0] ? (q ? "&cursor=" : "?cursor=") : "",
                 cursor[0] ? enc : "");
        json_t *page;
        int rc = get_json(cl, path, &page);
        if (rc) {
            json_decref(missing);
            return rc;
        }
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(page, "tasks"), i, t) task_row(t);
        json_array_extend(missing, json_object_get(page, "unreachable"));
        const char *next = json_string_value(json_object_get(page, "cursor"));
        snprintf(cursor, sizeof cursor, "%s", next ? next : "");
        json_decref(page);
        if (!cursor[0])
            break;
    }
    size_t i;
    json_t *m;
    json_array_foreach(missing, i, m)
        fprintf(stderr,
                "taskbus: instance %s did not answer: its tasks are "
                "missing above\n",
                json_string_value(m));
    json_decref(missing);
    return 0;
}

int cmd_tasks_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    const char *sub = optind < argc ? argv[optind++] : "list";
    char path[1024], enc[700];
    int rc;
    if (strcmp(sub, "list") == 0) {
        int table = a.output ? a.output[0] == 't' : isatty(STDOUT_FILENO);
        rc = list_tasks(&cl, &a, table);
    } else if (strcmp(sub, "get") == 0 || strcmp(sub, "cancel") == 0) {
        if (optind != argc - 1)
            cmd_die_usage("tasks %s wants one task NAME", sub);
        encode(enc, sizeof enc, argv[optind]);
        if (sub[0] == 'g') {
            snprintf(path, sizeof path, "/tasks/%s", enc);
            rc = request(&cl, "GET", path, NULL, 0, 0);
        } else {
            snprintf(path, sizeof path, "/tasks/%s%s%s", enc,
                     a.timeout ? "?timeout=" : "", a.timeout ? a.timeout : "");
            rc = request(&cl, "DELETE", path, NULL, 0, 0);
        }
    } else if (strcmp(sub, "purge") == 0) {
        rc = request(&cl, "POST", "/tasks/purge", "", 0, 0);
    } else if (strcmp(sub, "spawn") == 0) {
        if (optind != argc - 1)
            cmd_die_usage("tasks spawn wants one KIND");
        json_t *o = json_object();
        json_object_set_new(o, "kind", json_string(argv[optind]));
        if (a.name)
            json_object_set_new(o, "name", json_string(a.name));
        if (a.args) {
            json_error_t je;
            json_t *args = json_loads(a.args, 0, &je);
            if (!args)
                cmd_die_usage("--args is not JSON: %s", je.text);
            json_object_set_new(o, "args", args);
        }
        if (a.worker)
            json_object_set_new(
                o, "worker",
                json_integer(cmd_num_arg("--worker", a.worker, 0, 255)));
        char *body = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!body)
            cmd_die_usage("out of memory");
        rc = request(&cl, "POST", "/tasks", body, strlen(body), 0);
        free(body);
    } else {
        cmd_die_usage("tasks: unknown subcommand \"%s\" (list, get, cancel, "
                      "purge, spawn)",
                      sub);
    }
    free(cl.token);
    return rc;
}

/* taskbus instances [list]: GET /instances, as a table on a terminal or
 * as JSON. */
int cmd_instances_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    if (optind < argc && strcmp(argv[optind], "list") == 0)
        optind++;
    if (optind != argc)
        cmd_die_usage("instances: unknown argument \"%s\" (list)",
                      argv[optind]);
    int table = a.output ? a.output[0] == 't' : isatty(STDOUT_FILENO);
    if (!table) {
        int rc = request(&cl, "GET", "/instances", NULL, 0, 0);
        free(cl.token);
        return rc;
    }
    json_t *o;
    int rc = get_json(&cl, "/instances", &o);
    free(cl.token);
    if (rc)
        return rc;
    printf("%-16s %-20s %-22s %-8s %7s %-6s %s\n", "ID", "HOST", "LISTEN",
           "VERSION", "WORKERS", "BUS", "STARTED");
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(o, "instances"), i, x)
    {
        const char *listen = json_string_value(json_object_get(x, "listen"));
        printf("%-16s %-20s %-22s %-8s %7lld %-6s %s%s\n",
               json_string_value(json_object_get(x, "id")),
               json_string_value(json_object_get(x, "host")),
               listen ? listen : "-",
               json_string_value(json_object_get(x, "version")),
               (long long)json_integer_value(json_object_get(x, "workers")),
               json_string_value(json_object_get(x, "bus")),
               json_string_value(json_object_get(x, "started")),
               json_is_true(json_object_get(x, "self")) ? " (this one)" : "");
    }
    json_decref(o);
    return 0;
}

static volatile sig_atomic_t watch_stop;

static void on_watch_signal(int sig)
{
    (void)sig;
    watch_stop = 1;
}

static void print_text(const char *text, size_t len, void *ud)
{
    (void)ud;
    fwrite(text, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

int cmd_watch_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    if (optind >= argc)
        cmd_die_usage("watch wants at least one event PATTERN");
    char target[4096];
    size_t n =
        (size_t)snprintf(target, sizeof target, "%s/ws?events=", cl.prefix);
    for (int i = optind; i < argc && n < sizeof target; i++) {
        char enc[700];
        encode(enc, sizeof enc, argv[i]);
        n += (size_t)snprintf(target + n, sizeof target - n, "%s%s",
                              i > optind ? "," : "", enc);
    }
    if (cl.token && n < sizeof target) {
        char enc[800];
        encode(enc, sizeof enc, cl.token);
        snprintf(target + n, sizeof target - n, "&token=%s", enc);
    }
    struct sigaction sa = {.sa_handler = on_watch_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    char err[256] = "";
    int rc = cmd_ws_watch(cl.host, cl.port, target, print_text, NULL,
                          &watch_stop, err, sizeof err);
    if (rc == TB_ENOTCONN) {
        /* civetweb's client does not say what the server answered: ask
         * again without the upgrade (401, 400 bad_pattern... come back the
         * same; 426 means the upgrade itself failed). */
        char probe[4096];
        snprintf(probe, sizeof probe, "%s", target + strlen(cl.prefix));
        int prc = request(&cl, "GET", probe, NULL, 0, 1);
        explicit_bzero(probe, sizeof probe);
        if (prc == 3)
            return 3;
        fprintf(stderr, "taskbus: watch: cannot open ws://%s:%d%s/ws: %s\n",
                cl.host, cl.port, cl.prefix, err[0] ? err : "refused");
        free(cl.token);
        return 1;
    }
    explicit_bzero(target, sizeof target);
    free(cl.token);
    if (rc) {
        fprintf(stderr, "taskbus: watch: %s\n", err);
        return 1;
    }
    return 0;
}

int cmd_healthcheck_main(int argc, char **argv)
{
    client cl;
    client_args a;
    client_parse(&cl, &a, argc, argv);
    if (!a.timeout)
        cl.timeout_ms = 3000;
    return request(&cl, "GET", "/healthz", NULL, 0, 1) == 0 ? 0 : 1;
}
