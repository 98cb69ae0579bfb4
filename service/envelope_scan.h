/* envelope_scan.h - the fast path for taskbus's own envelope (private). */
#ifndef TASKBUS_ENVELOPE_SCAN_H
#define TASKBUS_ENVELOPE_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include "history.h"
#include "taskbus/taskbus.h"

/* Where the data of a scanned envelope is. */
typedef enum tb__scan_data {
    TB__SCAN_DATA_NULL,    /* null: empty data */
    TB__SCAN_DATA_RAW,     /* a string without escapes, or an object or
                              array exactly as jansson dumps it: the bytes
                              at data are the event's data */
    TB__SCAN_DATA_ESCAPED, /* a string with escapes: tb__scan_unescape */
} tb__scan_data;

/* An envelope's members, pointing into the scanned message. */
typedef struct tb__envelope_view {
    const char *id; /* 1..TB_EVENT_ID_MAX-1 printable ASCII, no escapes */
    size_t idlen;
    const char *origin; /* NULL when absent; else valid, no escapes */
    size_t originlen;
    const char *data; /* see kind; for ESCAPED, the string's inside */
    size_t datalen;   /* for ESCAPED, the raw length (>= the decoded one) */
    tb__scan_data kind;
    int64_t ts;  /* > 0 */
    int hops;    /* 0..255 */
    tb__pos pos; /* pos.seq 0 when absent */
} tb__envelope_view;

/* Scans the len bytes at msg, a message received on the channel of event
 * `name`, for the envelope taskbus writes: one JSON object whose members
 * are "id", "data", "ts" (each once, required), "name", "origin", "hops",
 * "pos" (each at most once, optional), in any order, with JSON blanks
 * between tokens, where
 *   id, name, origin, pos are strings without escapes, id and origin pass
 *   tb__envelope_decode's checks and name equals `name`; ts is an integer
 *   1..10^18-1, hops 0..255 (no sign, fraction or exponent);
 *   data is null, a string (escapes allowed), or an object or array in
 *   jansson's compact form (what its dump would write back, byte for byte:
 *   no blanks, integers only, no duplicate keys, escapes as jansson writes
 *   them), at most max_size bytes, nested at most max_depth - 1 deep.
 * Returns 1 with *v filled when the message is such an envelope: then
 * jansson and tb__envelope_decode's checks would accept it and give the
 * same event. Returns 0 for anything else, valid or not: the caller falls
 * back to jansson, which decides and gives the reasons. Reads nothing past
 * msg + len; allocates nothing. */
int tb__envelope_scan(const char *msg, size_t len, const char *name,
                      size_t max_size, int max_depth, tb__envelope_view *v);

/* Scans one JSON value starting at p as the envelope's data is scanned
 * (see tb__envelope_scan): null, true, false, an integer of at most 18
 * digits, a string without raw controls or bad UTF-8 whose escapes are
 * spelled as jansson writes them, or an object or array of such values in
 * jansson's compact form (no blanks, no duplicate or escaped keys, at most
 * 16 keys an object), nested at most depth levels (a scalar is 0, "[]"
 * 1). Returns the end of the value, or NULL for anything else (then
 * jansson decides: NULL is no verdict on validity). What it accepts,
 * jansson accepts with JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, as the
 * same value. Reads nothing at or past end; allocates nothing. */
const char *tb__scan_value(const char *p, const char *end, int depth);

/* The closing quote of the JSON string whose opening quote is at p[-1],
 * when the string has no escapes and jansson would accept it (no raw
 * controls, valid UTF-8): its bytes are then its text. Else NULL. Reads
 * nothing at or past end. */
const char *tb__scan_plain_string(const char *p, const char *end);

/* Decodes the escaped string data of a view (kind TB__SCAN_DATA_ESCAPED)
 * into out, which has room for v->datalen bytes. Returns the decoded
 * length. */
size_t tb__scan_unescape(const tb__envelope_view *v, char *out);

/* Writes ev's envelope exactly as tb__envelope_encode_jansson does, when
 * ev's data is not JSON-like (an object or array after blanks) or is
 * already in jansson's compact form nested at most max_depth - 1 deep.
 * ev's strings must have passed tb__utf8_valid. Returns 1 with *out
 * malloc'ed (NUL-terminated, *outlen bytes without the NUL; the caller
 * frees it), 0 when ev's data needs jansson (nothing allocated), or
 * TB_ENOMEM. */
int tb__envelope_write(const tb_event *ev, char **out, size_t *outlen);

#endif /* TASKBUS_ENVELOPE_SCAN_H */
