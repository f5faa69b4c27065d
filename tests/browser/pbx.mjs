#!/usr/bin/env node
// End-to-end call from one headless-Chromium page of the icegate-signal demo page to a PBX
// extension (Asterisk's echo test, 600), forced through a TURN relay (iceTransportPolicy
// "relay"); the PBX side relays through the same TURN server and echoes the audio.
//
//   node pbx.mjs SIGNAL_URL [--extension 600] [--relay-ip IP] [--relay-ports MIN-MAX]
//                [--timeout SECONDS] [--screenshot FILE]
//
// SIGNAL_URL is the demo page over plain HTTP on loopback (a secure context, so
// getUserMedia works), e.g. http://127.0.0.1:8080/; its signal server must have an Asterisk
// gateway whose PBX answers the extension. Chromium is Debian's /usr/bin/chromium (or
// $CHROMIUM); nothing is downloaded. A fake microphone feeds the call.
//
// The page signs in as alice, switches "relay only" on and calls "ext:EXTENSION" through
// the callee field. Checked: the call is to the extension (audio only); ICE reached
// "connected"; the selected local candidate is of type relay, at --relay-ip and inside
// --relay-ports (and so is the remote one: the PBX is relay-only too); inbound-rtp audio
// bytes arrive and keep growing (the echo comes back), while outbound audio grows too; the
// DTMF keypad shows, and digits sent with it and with window.icegate.sendDtmf are
// acknowledged; Hold then Resume renegotiate (re-INVITEs to the PBX) and the echo comes
// back after resuming; alice hangs up.
//
// The last line on stdout is one JSON object: {"ok":true,...} or {"ok":false,"error":...}.
// The exit status is 0 only when every check passed.

import { existsSync } from "node:fs";

const CHROMIUM_ARGS = [
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

const started = Date.now();
/** The browser, once launched: the watchdog closes it before exiting. */
let launched = null;
let step = "start";
/** Milliseconds since start at which each step was reached. */
const marks = {};
function mark(name) { marks[name] = Date.now() - started; }

/** A failed check: the message says what was expected and what was seen. */
class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

function usage(message) {
  console.error(`pbx.mjs: ${message}`);
  console.error("usage: node pbx.mjs http://127.0.0.1:PORT/ [--extension 600] [--relay-ip IP] [--relay-ports MIN-MAX] [--timeout S] [--screenshot FILE]");
  process.exit(2);
}

function parseArgs(argv) {
  const options = { url: null, extension: "600", relayIp: null, relayPorts: null, timeout: 50, screenshot: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "--extension") options.extension = value();
    else if (arg === "--relay-ip") options.relayIp = value();
    else if (arg === "--relay-ports") {
      const m = /^(\d+)-(\d+)$/.exec(value());
      if (!m) usage("--relay-ports is MIN-MAX");
      options.relayPorts = [Number(m[1]), Number(m[2])];
    } else if (arg === "--timeout") options.timeout = Number(value());
    else if (arg === "--screenshot") options.screenshot = value();
    else if (arg.startsWith("--")) usage(`unknown option ${arg}`);
    else if (options.url === null) options.url = arg;
    else usage(`unexpected argument ${arg}`);
  }
  if (!options.url) usage("the signal server's URL is required");
  const url = new URL(options.url);
  if (!["http:", "https:"].includes(url.protocol) || !["127.0.0.1", "localhost", "[::1]"].includes(url.hostname)) {
    usage("the URL must be http:// or https:// on loopback (https: the self-signed certificate of scripts/start is accepted)");
  }
  if (!/^[0-9A-Za-z*#+._-]{1,32}$/.test(options.extension)) usage("--extension is 1 to 32 of 0-9 A-Z a-z * # + . _ -");
  options.ignoreHttpsErrors = url.protocol === "https:";
  return options;
}

/** Waits until `fn` (run in the page) returns a truthy value; fails with `what`. */
async function waitInPage(page, what, fn, arg, timeout = 15000) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    return await handle.jsonValue();
  } catch (error) {
    const state = await page.evaluate(() => window.icegate && window.icegate.state()).catch(() => null);
    throw new CheckFailed(`timed out waiting for ${what}; page state: ${JSON.stringify(state)}`);
  }
}

function checkRelayed(s, options) {
  check(s && s.pair, `no selected candidate pair in getStats(): ${JSON.stringify(s)}`);
  const { local, remote } = s.pair;
  check(local && local.type === "relay",
    `the selected local candidate is ${JSON.stringify(local)}, expected type relay`);
  check(remote && remote.type === "relay",
    `the selected remote candidate is ${JSON.stringify(remote)}, expected type relay (the PBX relays too)`);
  if (options.relayIp) {
    check(local.address === options.relayIp,
      `the local relay candidate is at ${local.address}, expected icegate-relay's relay IP ${options.relayIp}`);
  }
  if (options.relayPorts) {
    const [min, max] = options.relayPorts;
    check(local.port >= min && local.port <= max,
      `the local relay candidate's port ${local.port} is outside icegate-relay's range ${min}-${max}`);
    check(remote.port >= min && remote.port <= max,
      `the remote relay candidate's port ${remote.port} is outside icegate-relay's range ${min}-${max}`);
  }
}

async function run(options) {
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  check(existsSync(executablePath), `${executablePath} is missing: run scripts/install-deps (Debian package chromium)`);
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch (error) {
    throw new CheckFailed(`playwright-core is not installed in tests/browser/node_modules: run scripts/install-deps (${error.message})`);
  }

  const browser = (launched = await chromium.launch({
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 20000,
  }));
  mark("launched");
  const diagnostics = [];
  let page = null;
  try {
    const origin = new URL(options.url).origin;
    const context = await browser.newContext({ ignoreHTTPSErrors: options.ignoreHttpsErrors });
    await context.grantPermissions(["camera", "microphone"], { origin });
    page = await context.newPage();
    page.on("pageerror", (error) => diagnostics.push(`uncaught ${error.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") diagnostics.push(`console.error ${m.text()}`);
    });
    page.setDefaultTimeout(15000);

    step = "sign in";
    await page.goto(options.url, { waitUntil: "load" });
    mark("loaded");
    check(await page.evaluate(() => window.isSecureContext), `${options.url} is not a secure context`);
    const placeholder = await page.getByTestId("callee").getAttribute("placeholder");
    check(placeholder.includes("ext:"), `the callee field's placeholder does not explain ext: (${JSON.stringify(placeholder)})`);
    await page.getByTestId("name").fill("alice");
    await page.getByTestId("relay-only").check();
    await page.getByTestId("connect").click();
    await waitInPage(page, "signaling to connect", () => window.icegate.state().signal === "connected");
    const welcome = await page.evaluate(() => window.icegate.state());
    const urls = welcome.iceServers.flatMap((s) => s.urls);
    check(urls.some((u) => u.startsWith("turn:")), `no turn: URI in the welcome: ${JSON.stringify(urls)}`);
    check(await page.getByTestId("keypad").isHidden(), "the DTMF keypad shows before any call");
    mark("signedIn");

    step = `call extension ${options.extension}`;
    await page.getByTestId("callee").fill(`ext:${options.extension}`);
    await page.getByTestId("call").click();
    const placed = await waitInPage(page, "the call to be placed", () => {
      const call = window.icegate.state().call;
      return call && call.id !== null && call;
    });
    check(placed.extension === options.extension && placed.dataChannel === null,
      `the call is ${JSON.stringify(placed)}, expected one to extension ${options.extension} without a data channel`);
    mark("placed");

    step = "answer and ICE";
    const connected = () => {
      const call = window.icegate.state().call;
      if (call && call.state === "ended") return { ended: call.reason };
      return call && call.state === "connected" && call.iceStates.some((s) => s === "connected" || s === "completed") && call;
    };
    const up = await waitInPage(page, "the PBX to answer and ICE to reach connected", connected, undefined, 25000);
    check(!up.ended, `the call ended before it connected: ${up.ended}`);
    mark("connected");
    await page.getByTestId("keypad").waitFor({ state: "visible" });

    step = "relayed candidates and echoed audio";
    // The echo must keep coming back: wait for the first bytes, then sample 1.5 s apart.
    // (Polled from here: waitForFunction would take the pending promise of an async
    // predicate for a truthy value.) DTLS and SRTP follow ICE, so this takes a moment.
    let first = null;
    for (const deadline = Date.now() + 10000; Date.now() < deadline;) {
      first = await page.evaluate(() => window.icegate.pollStats());
      if (first && first.audio.bytesReceived > 0) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    check(first && first.audio.bytesReceived > 0,
      `no echoed audio within 10 s of ICE connecting (inbound-rtp audio: ${JSON.stringify(first && first.audio)})`);
    mark("firstEcho");
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const second = await page.evaluate(() => window.icegate.pollStats());
    checkRelayed(second, options);
    const [a, b] = [first.audio, second.audio];
    check(a.bytesReceived > 0, `no audio bytes received (inbound-rtp audio bytesReceived = ${a.bytesReceived})`);
    check(b.bytesReceived > a.bytesReceived,
      `the echo stopped: inbound audio bytesReceived ${a.bytesReceived} -> ${b.bytesReceived} over 1.5 s`);
    check(b.packetsReceived >= a.packetsReceived + 25,
      `too few echoed packets: ${a.packetsReceived} -> ${b.packetsReceived} over 1.5 s (50 a second expected)`);
    check(b.bytesSent > a.bytesSent, `outbound audio bytesSent did not grow: ${a.bytesSent} -> ${b.bytesSent}`);
    check(second.video.bytesReceived === 0 && second.video.bytesSent === 0,
      `a call to an extension is audio only, but video flowed: ${JSON.stringify(second.video)}`);
    const shown = await page.getByTestId("local-candidate").textContent();
    check(shown.startsWith("relay "), `the page shows the local candidate as ${JSON.stringify(shown)}`);
    mark("mediaChecked");

    step = "DTMF";
    for (const key of ["1", "2", "hash"]) await page.getByTestId(`dtmf-${key}`).click();
    await waitInPage(page, "the keypad's digits to be acknowledged", () => window.icegate.state().call.dtmfSent === "12#");
    check(await page.evaluate(() => window.icegate.sendDtmf("*9")), "window.icegate.sendDtmf refused");
    const dtmfSent = await page.evaluate(() => window.icegate.state().call.dtmfSent);
    check(dtmfSent === "12#*9", `DTMF sent: ${JSON.stringify(dtmfSent)}, expected "12#*9"`);
    const dtmfShown = await page.getByTestId("dtmf-sent").textContent();
    check(dtmfShown === "12#*9", `the page shows DTMF sent as ${JSON.stringify(dtmfShown)}`);
    mark("dtmf");

    if (options.screenshot) await page.screenshot({ path: options.screenshot, fullPage: true });

    step = "hold and resume (re-INVITEs)";
    await page.getByTestId("hold").click();
    await waitInPage(page, "the hold's answer", () => window.icegate.state().call.held);
    await page.getByTestId("hold").click();
    await waitInPage(page, "the resume's answer",
      () => !window.icegate.state().call.held && window.icegate.state().call.renegotiations >= 2);
    const resumed = await page.evaluate(() => window.icegate.pollStats());
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const afterResume = await page.evaluate(() => window.icegate.pollStats());
    check(afterResume.audio.bytesReceived > resumed.audio.bytesReceived,
      `the echo did not come back after resuming: ${resumed.audio.bytesReceived} -> ${afterResume.audio.bytesReceived}`);
    mark("heldAndResumed");

    step = "hang up";
    // Still echoing after the DTMF.
    const third = await page.evaluate(() => window.icegate.pollStats());
    check(third.audio.bytesReceived > b.bytesReceived,
      `the echo stopped after DTMF: ${b.bytesReceived} -> ${third.audio.bytesReceived}`);
    await page.getByTestId("hangup").click();
    const end = await waitInPage(page, "the call to end", () => {
      const call = window.icegate.state().call;
      return call && call.state === "ended" && call;
    });
    check(end.reason === "normal" && end.endedBy === "local", `after hanging up: ${JSON.stringify(end)}`);
    check(await page.getByTestId("keypad").isHidden(), "the DTMF keypad still shows after the call");
    await waitInPage(page, "the call controls to reset", () => !document.querySelector("[data-testid=call]").disabled);
    mark("hungUp");

    const uncaught = diagnostics.filter((d) => d.includes("uncaught"));
    check(uncaught.length === 0, `uncaught errors in the page: ${uncaught.join("; ")}`);
    const errors = await page.evaluate(() => window.icegate.errors);
    check(errors.length === 0, `the page showed errors: ${JSON.stringify(errors)}`);

    return {
      ok: true,
      durationMs: Date.now() - started,
      marks,
      chromium: browser.version(),
      extension: options.extension,
      call: end.id,
      local: second.pair.local,
      remote: second.pair.remote,
      rttMs: second.pair.rttMs,
      audioBytesReceived: third.audio.bytesReceived,
      audioPacketsReceived: third.audio.packetsReceived,
      audioBytesSent: third.audio.bytesSent,
      dtmfSent,
    };
  } catch (error) {
    if (page) {
      const events = await page.evaluate(() => window.icegate && window.icegate.events.map((e) => e.text)).catch(() => null);
      if (events) diagnostics.push(`page log:\n  ${events.join("\n  ")}`);
    }
    error.diagnostics = diagnostics;
    throw error;
  } finally {
    await browser.close().catch(() => {});
  }
}

const options = parseArgs(process.argv.slice(2));
let timedOut = false;
const watchdog = setTimeout(async () => {
  timedOut = true;
  console.error(`pbx.mjs: FAILED at "${step}": timed out after ${options.timeout} s`);
  console.log(JSON.stringify({ ok: false, step, error: `timed out after ${options.timeout} s` }));
  if (launched) await Promise.race([launched.close(), new Promise((r) => setTimeout(r, 3000))]).catch(() => {});
  process.exit(1);
}, options.timeout * 1000);

try {
  const result = await run(options);
  clearTimeout(watchdog);
  if (timedOut) await new Promise(() => {});
  console.log(JSON.stringify(result));
  process.exit(0);
} catch (error) {
  clearTimeout(watchdog);
  if (timedOut) await new Promise(() => {}); // the watchdog reports and exits
  for (const line of error.diagnostics || []) console.error(line);
  const message = error instanceof CheckFailed ? error.message : `${error.name}: ${error.message}`;
  console.error(`pbx.mjs: FAILED at "${step}": ${message}`);
  console.log(JSON.stringify({ ok: false, step, error: message }));
  process.exit(1);
}
