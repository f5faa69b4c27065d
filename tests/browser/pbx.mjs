#!/usr/bin/env node
// End-to-end call from one headless-Chromium page of the icegate-signal demo page to a PBX
// extension (Asterisk's echo test, 600), forced through a TURN relay (iceTransportPolicy
// "relay"); the PBX side relays through the same TURN server and echoes the audio.
//
//   node pbx.mjs SIGNAL_URL [--extension 600] [--relay-ip IP] [--relay-ports MIN-MAX]
//                [--timeout SECONDS] [--screenshot FILE] [--end-with hangup|hash]
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
// acknowledged (none of them `#`: Asterisk's Echo() ends on `#`); Hold then Resume
// renegotiate (re-INVITEs to the PBX) and the echo comes back after resuming; alice hangs
// up. With --end-with hash, alice presses `#` on the keypad instead of hanging up, and the
// PBX ends the call: the page shows it ended by the remote side, reason "normal".
//
// The last line on stdout is one JSON object: {"ok":true,...} or {"ok":false,"error":...}.
// The exit status is 0 only when every check passed.

import {
  check, checkRelayed, launchChromium, main, openPage, pageLog, progress, waitInPage,
} from "./harness.mjs";

async function run(options) {
  const browser = await launchChromium();
  const diagnostics = [];
  let page = null;
  try {
    page = await openPage(browser, options, "alice", diagnostics);

    progress.step = "sign in";
    await page.goto(options.url, { waitUntil: "load" });
    progress.mark("loaded");
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
    progress.mark("signedIn");

    progress.step = `call extension ${options.extension}`;
    await page.getByTestId("callee").fill(`ext:${options.extension}`);
    await page.getByTestId("call").click();
    const placed = await waitInPage(page, "the call to be placed", () => {
      const call = window.icegate.state().call;
      return call && call.id !== null && call;
    });
    check(placed.extension === options.extension && placed.dataChannel === null,
      `the call is ${JSON.stringify(placed)}, expected one to extension ${options.extension} without a data channel`);
    progress.mark("placed");

    progress.step = "answer and ICE";
    const connected = () => {
      const call = window.icegate.state().call;
      if (call && call.state === "ended") return { ended: call.reason };
      return call && call.state === "connected" && call.iceStates.some((s) => s === "connected" || s === "completed") && call;
    };
    const up = await waitInPage(page, "the PBX to answer and ICE to reach connected", connected, undefined, 25000);
    check(!up.ended, `the call ended before it connected: ${up.ended}`);
    progress.mark("connected");
    await page.getByTestId("keypad").waitFor({ state: "visible" });

    progress.step = "relayed candidates and echoed audio";
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
    progress.mark("firstEcho");
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const second = await page.evaluate(() => window.icegate.pollStats());
    checkRelayed("alice", second, options);
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
    progress.mark("mediaChecked");

    progress.step = "DTMF";
    for (const key of ["1", "2", "star"]) await page.getByTestId(`dtmf-${key}`).click();
    await waitInPage(page, "the keypad's digits to be acknowledged", () => window.icegate.state().call.dtmfSent === "12*");
    check(await page.evaluate(() => window.icegate.sendDtmf("09")), "window.icegate.sendDtmf refused");
    const dtmfSent = await page.evaluate(() => window.icegate.state().call.dtmfSent);
    check(dtmfSent === "12*09", `DTMF sent: ${JSON.stringify(dtmfSent)}, expected "12*09"`);
    const dtmfShown = await page.getByTestId("dtmf-sent").textContent();
    check(dtmfShown === "12*09", `the page shows DTMF sent as ${JSON.stringify(dtmfShown)}`);
    progress.mark("dtmf");

    if (options.screenshot) await page.screenshot({ path: options.screenshot, fullPage: true });

    progress.step = "hold and resume (re-INVITEs)";
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
    progress.mark("heldAndResumed");

    progress.step = "hang up";
    // Still echoing after the DTMF.
    const third = await page.evaluate(() => window.icegate.pollStats());
    check(third.audio.bytesReceived > b.bytesReceived,
      `the echo stopped after DTMF: ${b.bytesReceived} -> ${third.audio.bytesReceived}`);
    const ender = options.hashEndsCall ? "dtmf-hash" : "hangup";
    await page.getByTestId(ender).click();
    const end = await waitInPage(page, "the call to end", () => {
      const call = window.icegate.state().call;
      return call && call.state === "ended" && call;
    });
    const endedBy = options.hashEndsCall ? "remote" : "local";
    check(end.reason === "normal" && end.endedBy === endedBy,
      `after ${options.hashEndsCall ? "pressing #" : "hanging up"}: ${JSON.stringify(end)}, expected reason normal, ended by ${endedBy}`);
    check(await page.getByTestId("keypad").isHidden(), "the DTMF keypad still shows after the call");
    await waitInPage(page, "the call controls to reset", () => !document.querySelector("[data-testid=call]").disabled);
    progress.mark("hungUp");

    const uncaught = diagnostics.filter((d) => d.includes("uncaught"));
    check(uncaught.length === 0, `uncaught errors in the page: ${uncaught.join("; ")}`);
    const errors = await page.evaluate(() => window.icegate.errors);
    check(errors.length === 0, `the page showed errors: ${JSON.stringify(errors)}`);

    return {
      ok: true,
      durationMs: Date.now() - progress.started,
      marks: progress.marks,
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
      endedBy: end.endedBy,
    };
  } catch (error) {
    const log = page && (await pageLog(page));
    if (log) diagnostics.push(log);
    error.diagnostics = diagnostics;
    throw error;
  } finally {
    await browser.close().catch(() => {});
  }
}

await main(
  "pbx.mjs",
  "http://127.0.0.1:PORT/ [--extension 600] [--relay-ip IP] [--relay-ports MIN-MAX] [--timeout S] [--screenshot FILE] [--end-with hangup|hash]",
  { extension: "600", screenshot: null, hashEndsCall: false },
  {
    "--extension": (value, options) => {
      if (!/^[0-9A-Za-z*#+._-]{1,32}$/.test(value)) return "--extension is 1 to 32 of 0-9 A-Z a-z * # + . _ -";
      options.extension = value;
      return null;
    },
    "--screenshot": (value, options) => { options.screenshot = value; },
    "--end-with": (value, options) => {
      if (!["hangup", "hash"].includes(value)) return "--end-with is hangup or hash";
      options.hashEndsCall = value === "hash";
      return null;
    },
  },
  run,
);
