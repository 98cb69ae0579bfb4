// browser_checks.mjs - how the browser tests (browser*/ beside it) report:
// one JSON line a check, {"check", "ok", "detail"}, read by
// tbharness.run_browser_test. No dependencies.
let failed = 0;

// Prints one check's line.
export function report(check, ok, detail = '') {
  if (!ok) failed++;
  console.log(JSON.stringify({check, ok, detail: String(detail)}));
}

// Runs one check: passed with what fn returns, failed with what it throws.
export async function step(name, fn) {
  try {
    report(name, true, (await fn()) || '');
  } catch (e) {
    report(name, false, (e && e.stack) || e);
  }
}

// How many checks have failed so far: the script's exit status is 1 if any.
export function failures() {
  return failed;
}

// Runs in the page (page.evaluate(pageWidths)): [the document's scroll
// width, the viewport's width, the right edge of the widest section or
// header].
export function pageWidths() {
  return [document.documentElement.scrollWidth, window.innerWidth,
    Math.max(...[...document.querySelectorAll('section, header')].map(
      (e) => e.getBoundingClientRect().right))];
}

// Throws unless pageWidths' answer w shows nothing wider than the
// viewport (no horizontal scrolling); else says how wide it was.
export function noOverflow(w) {
  if (w[0] > w[1] || w[2] > w[1])
    throw new Error(`scrollWidth ${w[0]}, widest ${w[2]}, viewport ${w[1]}`);
  return `scrollWidth ${w[0]} <= ${w[1]}`;
}
