// Drives one headless Firefox (Debian's firefox-esr, never a downloaded
// build) for the Rust browser tests, over WebDriver BiDi with puppeteer-core.
//
// Usage: node firefox.mjs <profile dir> <secure host>
// <secure host> is the server's address as the page sees it: Firefox treats
// it as a secure origin so the page may open the (fake) camera.
//
// A line protocol on stdin/stdout, one JSON object a line:
//   out: {"ready":true,"version":"firefox/153.8.0"} once the page is open
//        (or {"ready":false,"error":"..."} and exit 1)
//   in:  {"id":1,"cmd":"goto","url":"http://..."}
//   in:  {"id":2,"cmd":"eval","body":"return 1 + args[0];","args":[41]}
//        `body` is the body of an async function of `args`, run in the page
//   in:  {"id":3,"cmd":"close"}
//   out: {"id":2,"ok":true,"value":42} or {"id":2,"ok":false,"error":"..."}
// Logs go to stderr. When stdin closes (the test ended or died), Firefox is
// closed and the process exits.
import puppeteer from 'puppeteer-core';
import readline from 'node:readline';

const FIREFOX = '/usr/bin/firefox-esr';
const [profile, secureHost] = process.argv.slice(2);

const out = (msg) => process.stdout.write(JSON.stringify(msg) + '\n');
const log = (...a) => process.stderr.write(new Date().toISOString().slice(11, 23) + ' ' + a.join(' ') + '\n');

let browser = null;
let closing = null;
function shutdown(code) {
  if (!closing) {
    closing = (async () => {
      // A browser that does not close in time is killed with its process group by the test.
      const timer = setTimeout(() => process.exit(code), 5000);
      try { if (browser) await browser.close(); } catch (e) { log('close:', e.message); }
      clearTimeout(timer);
      process.exit(code);
    })();
  }
  return closing;
}

let page;
try {
  browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    userDataDir: profile,
    protocolTimeout: 60_000,
    extraPrefsFirefox: {
      // A fake camera and microphone, granted without a prompt.
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      // The page is served over plain HTTP from another host than localhost.
      'dom.securecontext.allowlist': secureHost || '',
      // Remote audio plays without a user gesture (as Chromium's --autoplay-policy).
      'media.autoplay.default': 0,
    },
  });
  page = (await browser.pages())[0] || (await browser.newPage());
  // As the Chromium harness's --window-size: remote tiles in the grid are about 317 px wide.
  await page.setViewport({ width: 1280, height: 720 });
  page.on('console', (m) => log('console.' + m.type() + ':', m.text()));
  page.on('pageerror', (e) => log('pageerror:', e.message));
  out({ ready: true, version: await browser.version() });
} catch (e) {
  out({ ready: false, error: String((e && e.stack) || e) });
  await shutdown(1);
}

// Runs in the page: the test's body as an async function of `args`; the
// result goes back as JSON text, so any value the page makes survives.
async function inPage(body, args) {
  try {
    const f = new Function('args', 'return (async () => {\n' + body + '\n})();');
    const value = await f(args);
    return JSON.stringify({ ok: true, value: value === undefined ? null : value });
  } catch (e) {
    return JSON.stringify({ ok: false, error: String((e && (e.stack ? e.message + '\n' + e.stack : e.message)) || e) });
  }
}

async function handle(req) {
  switch (req.cmd) {
    case 'goto':
      await page.goto(req.url, { waitUntil: 'load', timeout: 30_000 });
      return { ok: true, value: null };
    case 'eval':
      return JSON.parse(await page.evaluate(inPage, req.body, req.args || []));
    case 'close':
      out({ id: req.id, ok: true, value: null });
      await shutdown(0);
      return null;
    default:
      return { ok: false, error: 'unknown command ' + req.cmd };
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', async (line) => {
  let req;
  try { req = JSON.parse(line); } catch (e) { log('bad request:', line); return; }
  let reply;
  try { reply = await handle(req); } catch (e) { reply = { ok: false, error: String((e && e.message) || e) }; }
  if (reply) out({ id: req.id, ...reply });
});
lines.on('close', () => shutdown(0));
