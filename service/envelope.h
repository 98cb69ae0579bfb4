/* envelope.h - the JSON envelope events travel in on Redis (private). */
#ifndef TASKBUS_ENVELOPE_H
#define TASKBUS_ENVELOPE_H

#include <stddef.h>

#include "taskbus/taskbus.h"

/* The wire format, documented in README:
 *   {"id": "...", "name": "my.custom.event", "data": ..., "ts": <µs>,
 *    "origin": "<instance>/<worker>"}
 * data is the JSON value when the event's data is a JSON object or array,
 * else a JSON string holding the data as text. Built and parsed by
 * envelope_scan.c when the envelope has exactly the shape taskbus writes
 * (the hot path of the Redis bus), else with jansson; the two give the same
 * bytes and the same events (tests/fuzz/fuzz_envelope_diff.c). */

/* Encodes ev. *out is malloc'ed, NUL-terminated, *outlen bytes without the
 * NUL; the caller frees it. Returns 0, TB_EINVAL (data is not valid UTF-8)
 * or TB_ENOMEM. */
int tb__envelope_encode(const tb_event *ev, char **out, size_t *outlen);

/* tb__envelope_encode with jansson only: the fallback, and the reference
 * the fast path is fuzzed against. Same contract. */
int tb__envelope_encode_jansson(const tb_event *ev, char **out, size_t *outlen);

/* 1 if the len bytes at s are valid UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF, nothing cut short), else 0. U+0000
 * is a character like any other. The one check of event data and
 * websocket text, wherever it comes from. s may be NULL when len is 0. */
int tb__utf8_valid(const char *s, size_t len);

/* 1 if the len bytes at s are an event id as an envelope may carry one:
 * 1..TB_EVENT_ID_MAX-1 printable ASCII characters. */
int tb__envelope_id_valid(const char *s, size_t len);

/* Makes an event from a message received on the channel of event `name`
 * (the caller has taken name from the channel and validated it):
 *  - an envelope (a JSON object with a "data" member and an "id" or a
 *    "name" member): id (string, 1..TB_EVENT_ID_MAX-1 printable ASCII
 *    bytes; absent: a fresh id), name (string equal to `name`; optional),
 *    ts (integer >= 0, optional: the time of receipt), origin (string up
 *    to 47 bytes, optional: "external"); a string data becomes the event's
 *    data as is, an object or array its compact JSON text, null empty
 *    data; other members are ignored;
 *  - anything else (plain text as `redis-cli PUBLISH` sends it, or JSON that
 *    is not an envelope) is delivered as it is: the whole message is the
 *    data, with a fresh id, the time of receipt and origin "external".
 * A message that starts like a JSON object ('{' after blanks) but does not
 * parse, an envelope whose members have the wrong types or values (a data
 * string holding "\u0000" is fine), or a message delivered as it is that
 * is not UTF-8 (a NUL byte is: U+0000, valid in event data), is malformed:
 * returns TB_EPROTO and sets *why to a static reason for the log. Data over
 * max_size bytes: TB_EMSGSIZE (*why says so too). Else 0 or TB_ENOMEM.
 * why may be NULL. On 0, *out holds a new event (refcount 1); on error *out
 * is NULL. */
int tb__envelope_decode(tb_app *app, const char *name, const char *msg,
                        size_t len, size_t max_size, tb_event **out,
                        const char **why);

/* tb__envelope_decode with jansson only: the fallback, and the reference
 * the fast path is fuzzed against. Same contract. */
int tb__envelope_decode_jansson(tb_app *app, const char *name, const char *msg,
                                size_t len, size_t max_size, tb_event **out,
                                const char **why);

#endif /* TASKBUS_ENVELOPE_H */
