/* fuzz_ws_message.c - the messages a /ws client sends (service/api_ws.c):
 * the first byte picks a binary frame (bit 7) and the JSON depth limit
 * (the rest, modulo 80); the others are the message. What parses is one
 * action with a valid event name or valid patterns; what does not is
 * answered with a known code and a message the client can read (text that
 * is UTF-8, as the JSON answer needs). */
#include <jansson.h>

#include "api.h"
#include "fuzz.h"

static const char *const codes[] = {"bad_message", "bad_json", "unknown_field",
                                    "bad_type",    "bad_name", "bad_pattern"};

static int known_code(const char *code)
{
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (code && strcmp(code, codes[i]) == 0)
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int binary = data[0] >> 7;
    int max_depth = (data[0] & 0x7f) % 80;
    size_t len = size - 1;
    char *msg = malloc(len ? len : 1); /* exactly the message's bytes */
    FUZZ_CHECK(msg != NULL);
    memcpy(msg, data + 1, len);

    tb__ws_cmd cmd;
    int rc = tb__ws_cmd_parse(msg, len, binary, max_depth, &cmd);
    if (rc == 0) {
        FUZZ_CHECK(!binary && json_is_object(cmd.root));
        FUZZ_CHECK(cmd.error == NULL);
        switch (cmd.kind) {
        case TB__WS_CMD_DISPATCH:
            FUZZ_CHECK(json_is_string(cmd.event));
            FUZZ_CHECK(tb_event_name_valid(json_string_value(cmd.event)) == 0);
            FUZZ_CHECK(cmd.patterns == NULL);
            break;
        case TB__WS_CMD_SUBSCRIBE:
        case TB__WS_CMD_UNSUBSCRIBE: {
            FUZZ_CHECK(cmd.event == NULL && cmd.data == NULL);
            FUZZ_CHECK(json_is_array(cmd.patterns));
            size_t i;
            json_t *p;
            json_array_foreach(cmd.patterns, i, p)
            {
                FUZZ_CHECK(json_is_string(p));
                FUZZ_CHECK(tb_pattern_valid(json_string_value(p)) == 0);
            }
            break;
        }
        default:
            FUZZ_CHECK(!"a parsed message has an action");
        }
    } else {
        FUZZ_CHECK(rc == TB_EINVAL && cmd.kind == 0);
        FUZZ_CHECK(known_code(cmd.error));
        size_t mlen = strnlen(cmd.message, sizeof cmd.message);
        FUZZ_CHECK(mlen > 0 && mlen < sizeof cmd.message);
        FUZZ_CHECK(cmd.ref == NULL || cmd.root != NULL);
        /* The client reads the whole message, even when it quotes its
         * own text cut in the middle of a character. */
        json_t *answer = tb__ws_cmd_error_json(&cmd);
        json_t *m = json_object_get(answer, "message");
        FUZZ_CHECK(json_is_string(m) && json_string_length(m) >= mlen);
        FUZZ_CHECK(memcmp(json_string_value(m), cmd.message, 8) == 0);
        FUZZ_CHECK(json_equal(json_object_get(answer, "ref"), cmd.ref) ||
                   !cmd.ref);
        json_decref(answer);
    }
    tb__ws_cmd_free(&cmd);
    FUZZ_CHECK(cmd.root == NULL);
    free(msg);
    return 0;
}
