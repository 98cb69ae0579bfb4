// client.mjs - a real EventSource client (the npm package "eventsource",
// pinned by package-lock.json) for sse_suite.py: connects to the URL,
// prints one JSON line per thing it sees ({"open": true}, {"event", "id",
// "data"}, {"error"}), and exits 0 once it has count events named `name`
// ("warm" events, sent until one arrives, tell it the stream is live).
// When the stream ends, EventSource reconnects by itself and sends the
// last id it got as Last-Event-ID: the events keep coming from there.
//
//   node client.mjs URL NAMES COUNT [TOKEN]
//
// NAMES: comma-separated event names to listen for (EventSource only
// dispatches named events to listeners of that name); the first is the
// one counted. TOKEN: sent as "Authorization: Bearer TOKEN".
import { EventSource } from "eventsource";

const [url, names, count, token] = process.argv.slice(2);
const want = Number(count);
const counted = names.split(",")[0];
let got = 0;

const init = token
  ? {
      fetch: (input, opts) =>
        fetch(input, {
          ...opts,
          headers: { ...opts.headers, Authorization: `Bearer ${token}` },
        }),
    }
  : undefined;
const es = new EventSource(url, init);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

es.onopen = () => say({ open: true });
es.onerror = (e) => say({ error: String(e.message || e.code || "error") });
for (const n of names.split(",")) {
  es.addEventListener(n, (e) => {
    say({ event: e.type, id: e.lastEventId, data: JSON.parse(e.data) });
    if (e.type === counted && ++got >= want) {
      es.close();
      process.exit(0);
    }
  });
}
