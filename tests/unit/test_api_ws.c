/* test_api_ws.c - unit tests for service/api_ws.c's parse of /ws client
 * messages (tb__ws_cmd_parse): each action, each refusal and its code, and
 * the answer a refusal gets. The endpoint itself runs in the ws_* suites. */
#include "harness.h"

#include <jansson.h>

#include "api.h"

/* Parses text, which must be refused with code; returns the message the
 * client would read (caller frees). */
static char *refused(const char *text, size_t len, int binary, const char *code)
{
    tb__ws_cmd cmd;
    int rc = tb__ws_cmd_parse(text, len, binary, 64, &cmd);
    if (rc != TB_EINVAL || !cmd.error || strcmp(cmd.error, code) != 0)
        fail_msg("%.*s: rc %d, code %s, want %s", (int)len, text, rc,
                 cmd.error ? cmd.error : "(none)", code);
    assert_int_equal(cmd.kind, 0);
    json_t *answer = tb__ws_cmd_error_json(&cmd);
    assert_non_null(answer);
    assert_string_equal(json_string_value(json_object_get(answer, "error")),
                        code);
    char *msg = strdup(json_string_value(json_object_get(answer, "message")));
    json_decref(answer);
    tb__ws_cmd_free(&cmd);
    return msg;
}

static void refused_with(const char *text, const char *code, const char *part)
{
    char *msg = refused(text, strlen(text), 0, code);
    if (!strstr(msg, part))
        fail_msg("%s: message \"%s\" lacks \"%s\"", text, msg, part);
    free(msg);
}

static void test_actions(void **state)
{
    (void)state;
    tb__ws_cmd cmd;
    const char *d = "{\"event\":\"a.b\",\"data\":{\"x\":1},\"ref\":7}";
    assert_int_equal(tb__ws_cmd_parse(d, strlen(d), 0, 64, &cmd), 0);
    assert_int_equal(cmd.kind, TB__WS_CMD_DISPATCH);
    assert_string_equal(json_string_value(cmd.event), "a.b");
    assert_true(json_is_object(cmd.data));
    assert_int_equal(json_integer_value(cmd.ref), 7);
    tb__ws_cmd_free(&cmd);

    const char *s = "{\"subscribe\":[\"a.*\",\"b.<id>\"]}";
    assert_int_equal(tb__ws_cmd_parse(s, strlen(s), 0, 64, &cmd), 0);
    assert_int_equal(cmd.kind, TB__WS_CMD_SUBSCRIBE);
    assert_int_equal(json_array_size(cmd.patterns), 2);
    assert_null(cmd.ref);
    tb__ws_cmd_free(&cmd);

    const char *u = "{\"unsubscribe\":[],\"ref\":\"r\"}";
    assert_int_equal(tb__ws_cmd_parse(u, strlen(u), 0, 64, &cmd), 0);
    assert_int_equal(cmd.kind, TB__WS_CMD_UNSUBSCRIBE);
    assert_string_equal(json_string_value(cmd.ref), "r");
    tb__ws_cmd_free(&cmd);
}

static void test_refusals(void **state)
{
    (void)state;
    char *m = refused("{}", 2, 1, "bad_message");
    assert_non_null(strstr(m, "binary"));
    free(m);
    refused_with("{\"event\":", "bad_json", "not JSON");
    char deep[2 * 65 + 1];
    memset(deep, '[', 65);
    memset(deep + 65, ']', 65);
    deep[2 * 65] = '\0';
    refused_with(deep, "bad_json", "json_max_depth"); /* 64 is the limit */
    refused_with("[1]", "bad_message", "JSON object");
    refused_with("{\"event\":\"a\",\"x\":1}", "unknown_field", "\"x\"");
    refused_with("{\"event\":\"a\",\"event\":\"b\"}", "bad_json", "duplicate");
    refused_with("{\"event\":\"a\",\"subscribe\":[]}", "bad_message",
                 "one thing");
    refused_with("{\"data\":1}", "bad_message", "one thing");
    refused_with("{\"event\":1}", "bad_type", "\"event\"");
    refused_with("{\"event\":\"a\\u0000b\"}", "bad_name", "\\u0000");
    refused_with("{\"event\":\"a..b\"}", "bad_name", "\"a..b\"");
    refused_with("{\"subscribe\":\"a\"}", "bad_type", "array");
    refused_with("{\"unsubscribe\":[\"a\",2]}", "bad_type",
                 "\"unsubscribe\"[1]");
    refused_with("{\"subscribe\":[\"a.<>\"]}", "bad_pattern",
                 "\"subscribe\"[0]");
}

/* A refusal that quotes the client's text cut in the middle of a character
 * (unknown field names are cut at 64 bytes): the client reads the message,
 * with U+FFFD for the cut character. It read "(not UTF-8)" (found by
 * fuzz_ws_message). */
static void test_refusal_cut_utf8(void **state)
{
    (void)state;
    char text[128] = "{\"x";
    for (int i = 0; i < 40; i++)
        strcat(text, "\xc3\xa9"); /* U+00E9 */
    strcat(text, "\":1}");
    char *m = refused(text, strlen(text), 0, "unknown_field");
    assert_non_null(strstr(m, "unknown field \"x\xc3\xa9"));
    assert_non_null(strstr(m, "\xc3\xa9\xef\xbf\xbd\": a message"));
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_actions),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_refusal_cut_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
