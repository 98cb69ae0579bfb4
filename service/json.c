/* json.c - JSON parsing of outside input, bounded in nesting depth. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "json.h"

/* Where the first bracket beyond max_depth is, or len if there is none. */
static size_t depth_scan(const char *s, size_t len, int max_depth)
{
    int depth = 0;
    for (size_t i = 0; i < len; i++) {
        switch (s[i]) {
        case '"':
            /* Skip the string: a backslash escapes the next byte, so an
             * escaped quote does not end it. Unterminated: nothing more
             * nests. */
            for (i++; i < len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            break;
        case '[':
        case '{':
            if (++depth > max_depth)
                return i;
            break;
        case ']':
        case '}':
            if (depth > 0)
                depth--;
            break;
        default:
            break;
        }
    }
    return len;
}

int tb__json_too_deep(const char *text, size_t len, int max_depth)
{
    return depth_scan(text, len, max_depth) < len;
}

json_t *tb__json_loadb(const char *text, size_t len, size_t flags,
                       int max_depth, json_error_t *err)
{
    size_t at = depth_scan(text, len, max_depth);
    if (at < len) {
        if (err) {
            memset(err, 0, sizeof *err);
            snprintf(err->text, sizeof err->text,
                     "nested deeper than %d levels (json_max_depth)",
                     max_depth);
            snprintf(err->source, sizeof err->source, "<buffer>");
            err->position = (int)(at < (size_t)INT32_MAX ? at : INT32_MAX);
            err->line = -1;
            err->column = -1;
        }
        return NULL;
    }
    return json_loadb(text, len, flags, err);
}

int tb__json_event_data(const json_t *v, const char **d, size_t *len,
                        char **owned)
{
    *owned = NULL;
    *d = "";
    *len = 0;
    if (json_is_string(v)) {
        *d = json_string_value(v);
        *len = json_string_length(v);
    } else if (v && !json_is_null(v)) {
        if (!(*owned = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)))
            return -1;
        *d = *owned;
        *len = strlen(*owned);
    }
    return 0;
}
