// What the Chromium scripts (call.mjs, pbx.mjs) share: their command line, launching
// Debian's Chromium through playwright-core, checks that fail with a message, waiting on the
// demo page's window.icegate hook, and the watchdog that turns a hang into a JSON failure.
//
// A script calls main(name, usageLine, extraOptions, run): the last line on stdout is one
// JSON object, {"ok":true,...} from run() or {"ok":false,"step":...,"error":...}, and the
// exit status is 0 only when every check passed.

import { existsSync } from "node:fs";

/** Chromium's flags for this machine: headless, no network of its own, fake media devices. */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
];

/** A failed check: the message says what was expected and what was seen. */
export class CheckFailed extends Error {}

/** Throws CheckFailed with `message` unless `condition` holds. */
export function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

/** Where a run is: the current step (reported on failure) and when each mark was reached. */
export const progress = {
  started: Date.now(),
  step: "start",
  marks: {},
  /** The browser, once launched: the watchdog closes it before exiting. */
  browser: null,
  mark(name) { this.marks[name] = Date.now() - this.started; },
};

/**
 * The command line: the signal server's URL (http:// or https:// on loopback), --relay-ip,
 * --relay-ports MIN-MAX, --timeout SECONDS, and the script's own `extra` options, each
 * `{ "--flag": (value, options) => ... }`, applied to `defaults`.
 */
function parseArgs(name, usageLine, argv, defaults, extra) {
  const usage = (message) => {
    console.error(`${name}: ${message}`);
    console.error(`usage: node ${name} ${usageLine}`);
    process.exit(2);
  };
  const options = { url: null, relayIp: null, relayPorts: null, timeout: 50, ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "--relay-ip") options.relayIp = value();
    else if (arg === "--relay-ports") {
      const m = /^(\d+)-(\d+)$/.exec(value());
      if (!m) usage("--relay-ports is MIN-MAX");
      options.relayPorts = [Number(m[1]), Number(m[2])];
    } else if (arg === "--timeout") options.timeout = Number(value());
    else if (extra[arg]) {
      const problem = extra[arg](value(), options);
      if (problem) usage(problem);
    } else if (arg.startsWith("--")) usage(`unknown option ${arg}`);
    else if (options.url === null) options.url = arg;
    else usage(`unexpected argument ${arg}`);
  }
  if (!options.url) usage("the signal server's URL is required");
  const url = new URL(options.url);
  if (!["http:", "https:"].includes(url.protocol) || !["127.0.0.1", "localhost", "[::1]"].includes(url.hostname)) {
    usage("the URL must be http:// or https:// on loopback (https: the self-signed certificate of scripts/start is accepted)");
  }
  // Only a loopback server's self-signed certificate (scripts/start's) is ever accepted.
  options.ignoreHttpsErrors = url.protocol === "https:";
  return options;
}

/** Launches Debian's Chromium (or $CHROMIUM) headless on a fresh temporary profile. */
export async function launchChromium() {
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  check(existsSync(executablePath), `${executablePath} is missing: run scripts/install-deps (Debian package chromium)`);
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch (error) {
    throw new CheckFailed(`playwright-core is not installed in tests/browser/node_modules: run scripts/install-deps (${error.message})`);
  }
  progress.browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS, timeout: 20000 });
  progress.mark("launched");
  return progress.browser;
}

/**
 * A page in its own context (window) with camera and microphone granted for the server's
 * origin; page errors and console errors go to `diagnostics`, prefixed with `label`.
 */
export async function openPage(browser, options, label, diagnostics) {
  const origin = new URL(options.url).origin;
  const context = await browser.newContext({ ignoreHTTPSErrors: options.ignoreHttpsErrors });
  await context.grantPermissions(["camera", "microphone"], { origin });
  const page = await context.newPage();
  page.label = label;
  page.on("pageerror", (error) => diagnostics.push(`${label}: uncaught ${error.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") diagnostics.push(`${label}: console.error ${m.text()}`);
  });
  page.setDefaultTimeout(15000);
  return page;
}

/** Waits until `fn` (run in the page) returns a truthy value; fails with `what`. */
export async function waitInPage(page, what, fn, arg, timeout = 15000) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    return await handle.jsonValue();
  } catch (error) {
    const state = await page.evaluate(() => window.icegate && window.icegate.state()).catch(() => null);
    throw new CheckFailed(`${page.label}: timed out waiting for ${what}; page state: ${JSON.stringify(state)}`);
  }
}

/** The page's log lines, for diagnostics after a failure. */
export async function pageLog(page) {
  const events = await page.evaluate(() => window.icegate && window.icegate.events.map((e) => e.text)).catch(() => null);
  return events ? `${page.label} log:\n  ${events.join("\n  ")}` : null;
}

/**
 * Checks that getStats() summary `s` shows a selected pair of two relay candidates, the local
 * one at --relay-ip and both inside --relay-ports (both ends are relay-only).
 */
export function checkRelayed(label, s, options) {
  check(s && s.pair, `${label}: no selected candidate pair in getStats(): ${JSON.stringify(s)}`);
  const { local, remote } = s.pair;
  check(local && local.type === "relay",
    `${label}: the selected local candidate is ${JSON.stringify(local)}, expected type relay`);
  check(remote && remote.type === "relay",
    `${label}: the selected remote candidate is ${JSON.stringify(remote)}, expected type relay (the other end is relay-only)`);
  if (options.relayIp) {
    check(local.address === options.relayIp,
      `${label}: the local relay candidate is at ${local.address}, expected icegate-relay's relay IP ${options.relayIp}`);
  }
  if (options.relayPorts) {
    const [min, max] = options.relayPorts;
    check(local.port >= min && local.port <= max,
      `${label}: the local relay candidate's port ${local.port} is outside icegate-relay's range ${min}-${max}`);
    check(remote.port >= min && remote.port <= max,
      `${label}: the remote relay candidate's port ${remote.port} is outside icegate-relay's range ${min}-${max}`);
  }
}

/**
 * Parses the command line, runs `run(options)` under a watchdog of --timeout seconds and
 * prints the result; never returns.
 */
export async function main(name, usageLine, defaults, extra, run) {
  const options = parseArgs(name, usageLine, process.argv.slice(2), defaults, extra);
  let timedOut = false;
  const watchdog = setTimeout(async () => {
    timedOut = true;
    console.error(`${name}: FAILED at "${progress.step}": timed out after ${options.timeout} s`);
    console.log(JSON.stringify({ ok: false, step: progress.step, error: `timed out after ${options.timeout} s` }));
    const browser = progress.browser;
    if (browser) await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 3000))]).catch(() => {});
    process.exit(1);
  }, options.timeout * 1000);

  try {
    const result = await run(options);
    clearTimeout(watchdog);
    if (timedOut) await new Promise(() => {}); // the watchdog reports and exits
    console.log(JSON.stringify(result));
    process.exit(0);
  } catch (error) {
    clearTimeout(watchdog);
    if (timedOut) await new Promise(() => {});
    for (const line of error.diagnostics || []) console.error(line);
    const message = error instanceof CheckFailed ? error.message : `${error.name}: ${error.message}`;
    console.error(`${name}: FAILED at "${progress.step}": ${message}`);
    console.log(JSON.stringify({ ok: false, step: progress.step, error: message }));
    process.exit(1);
  }
}
