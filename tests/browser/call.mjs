#!/usr/bin/env node
// End-to-end call between two headless-Chromium pages of the icegate-signal demo page,
// forced through a TURN relay (iceTransportPolicy "relay").
//
//   node call.mjs SIGNAL_URL [--relay-ip IP] [--relay-ports MIN-MAX] [--timeout SECONDS]
//                 [--screenshots DIR]
//
// SIGNAL_URL is the demo page over plain HTTP on loopback (a secure context, so
// getUserMedia works), e.g. http://127.0.0.1:8080/. Chromium is Debian's /usr/bin/chromium
// (or $CHROMIUM); nothing is downloaded. Fake camera and microphone feed the call.
//
// Page A signs in as alice, page B as bob; both switch "relay only" on; alice calls bob, bob
// accepts. Checked: ICE reached "connected" on both sides; the selected local (and remote)
// candidate is of type relay, at --relay-ip and inside --relay-ports; chat messages cross
// the data channel both ways; audio bytes arrive on both sides and keep growing; bob
// restarts ICE (still relayed, audio still flowing), alice holds and resumes (each a
// renegotiation answered by the other page), alice hangs up and bob sees the hangup.
//
// The last line on stdout is one JSON object: {"ok":true,...} or {"ok":false,"error":...}.
// The exit status is 0 only when every check passed.

import { mkdirSync } from "node:fs";
import { join } from "node:path";

import {
  check, checkRelayed, launchChromium, main, openPage, pageLog, progress, waitInPage,
} from "./harness.mjs";

async function signIn(page, url, name) {
  progress.step = `${name}: sign in`;
  await page.goto(url, { waitUntil: "load" });
  progress.mark(`${name}.loaded`);
  check(await page.evaluate(() => window.isSecureContext), `${page.label}: ${url} is not a secure context`);
  await page.getByTestId("name").fill(name);
  await page.getByTestId("relay-only").check();
  await page.getByTestId("connect").click();
  progress.mark(`${name}.clicked`);
  await waitInPage(page, "signaling to connect", () => window.icegate.state().signal === "connected");
  const state = await page.evaluate(() => window.icegate.state());
  check(state.user === name, `${page.label}: signed in as ${state.user}, expected ${name}`);
  const urls = state.iceServers.flatMap((s) => s.urls);
  check(urls.some((u) => u.startsWith("turn:")), `${page.label}: no turn: URI in the welcome: ${JSON.stringify(urls)}`);
  return state;
}

async function stats(page) {
  return page.evaluate(() => window.icegate.pollStats());
}

async function run(options) {
  const browser = await launchChromium();
  const diagnostics = [];
  const pages = [];
  try {
    const open = async (label) => {
      // One context (window) per person: separate storage, and each page is in front, so
      // that neither is throttled as a background tab.
      const page = await openPage(browser, options, label, diagnostics);
      pages.push(page);
      return page;
    };
    const alice = await open("alice");
    const bob = await open("bob");
    progress.mark("pages");

    await signIn(alice, options.url, "alice");
    await signIn(bob, options.url, "bob");

    progress.mark("signedIn");

    // Two short calls that fail, as a person would see them.
    progress.step = "alice calls a name nobody uses";
    const ended = () => {
      const call = window.icegate.state().call;
      return call && call.state === "ended" && { reason: call.reason, endedBy: call.endedBy };
    };
    await alice.getByTestId("callee").fill("nobody");
    await alice.getByTestId("call").click();
    const unknown = await waitInPage(alice, "the call to fail", ended);
    check(unknown.reason === "unknown_user", `alice: calling nobody ended with ${JSON.stringify(unknown)}, expected unknown_user`);
    const shownError = await alice.getByTestId("error").textContent();
    check(shownError.startsWith("unknown_user:"), `alice: the page shows the error as ${JSON.stringify(shownError)}`);

    progress.step = "bob declines a call";
    await alice.getByTestId("callee").fill("bob");
    await alice.getByTestId("call").click();
    await bob.getByTestId("incoming").waitFor({ state: "visible" });
    await bob.getByTestId("reject").click();
    const declined = await waitInPage(alice, "the decline", ended);
    check(declined.reason === "declined" && declined.endedBy === "remote",
      `alice: the declined call ended with ${JSON.stringify(declined)}, expected declined by the remote side`);
    check(await bob.getByTestId("incoming").isHidden(), "bob: the incoming-call panel is still shown after declining");
    progress.mark("declined");

    progress.step = "alice calls bob";
    await alice.getByTestId("call").click();
    await bob.getByTestId("incoming").waitFor({ state: "visible" });
    const from = await bob.getByTestId("incoming-from").textContent();
    check(from === "alice", `bob: the incoming call is from ${JSON.stringify(from)}, expected alice`);
    await waitInPage(alice, "ringing", () => {
      const id = window.icegate.state().call.id;
      return id !== null && window.icegate.events.some((e) => e.type === "ringing" && e.call === id);
    });

    progress.mark("ringing");
    progress.step = "bob answers";
    await bob.getByTestId("accept").click();
    const connected = () => {
      const call = window.icegate.state().call;
      return call && call.state === "connected" && call.iceStates.some((s) => s === "connected" || s === "completed");
    };
    await waitInPage(alice, "ICE to reach connected", connected, undefined, 20000);
    await waitInPage(bob, "ICE to reach connected", connected, undefined, 20000);
    progress.mark("connected");

    progress.step = "data channel";
    const dcOpen = () => window.icegate.state().call.dataChannel === "open";
    await waitInPage(alice, "the data channel to open", dcOpen);
    await waitInPage(bob, "the data channel to open", dcOpen);
    // One message through the chat UI, one through the hook, each way.
    await alice.getByTestId("chat-input").fill("hello bob, from alice");
    await alice.getByTestId("chat-send").click();
    check(await bob.evaluate(() => window.icegate.sendData("hello alice, from bob")), "bob: sendData refused");
    check(await alice.evaluate(() => window.icegate.sendData("second from alice")), "alice: sendData refused");
    const has = (texts) => texts.every((t) => window.icegate.received.includes(t));
    await waitInPage(bob, "alice's chat messages", has, ["hello bob, from alice", "second from alice"]);
    await waitInPage(alice, "bob's chat message", has, ["hello alice, from bob"]);
    const bobChat = await bob.getByTestId("chat-log").textContent();
    check(bobChat.includes("hello bob, from alice"), `bob: the chat log does not show alice's message: ${bobChat}`);

    progress.mark("chatted");
    progress.step = "relayed candidates and audio";
    // Audio must keep flowing: sample twice, 1.5 s apart.
    const first = { alice: await stats(alice), bob: await stats(bob) };
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const second = { alice: await stats(alice), bob: await stats(bob) };
    for (const label of ["alice", "bob"]) {
      checkRelayed(label, second[label], options);
      const [a, b] = [first[label].audio, second[label].audio];
      check(a.bytesReceived > 0, `${label}: no audio bytes received (inbound-rtp audio bytesReceived = ${a.bytesReceived})`);
      check(b.bytesReceived > a.bytesReceived,
        `${label}: audio stopped flowing: bytesReceived ${a.bytesReceived} -> ${b.bytesReceived} over 1.5 s`);
      check(b.bytesSent > a.bytesSent, `${label}: audio bytesSent did not grow: ${a.bytesSent} -> ${b.bytesSent}`);
      const rate = second[label].bitrate;
      check(rate && rate.receiveKbps > 0 && rate.sendKbps > 0,
        `${label}: the page's bitrate is ${JSON.stringify(rate)}, expected both directions above 0`);
    }
    const shown = await alice.getByTestId("local-candidate").textContent();
    check(shown.startsWith("relay "), `alice: the page shows the local candidate as ${JSON.stringify(shown)}`);

    if (options.screenshots) {
      mkdirSync(options.screenshots, { recursive: true });
      await alice.screenshot({ path: join(options.screenshots, "alice.png"), fullPage: true });
      await bob.screenshot({ path: join(options.screenshots, "bob.png"), fullPage: true });
    }

    progress.mark("mediaChecked");
    progress.step = "bob restarts ICE";
    const renegotiated = (n) => window.icegate.state().call.renegotiations >= n;
    await bob.getByTestId("restart-ice").click();
    await waitInPage(bob, "the ICE restart's answer", renegotiated, 1);
    await waitInPage(alice, "the ICE restart offer answered", renegotiated, 1);
    const restartedIce = () => {
      const call = window.icegate.state().call;
      return call.iceConnectionState === "connected" || call.iceConnectionState === "completed";
    };
    await waitInPage(bob, "ICE to reconnect after the restart", restartedIce, undefined, 20000);
    const beforeHold = { alice: await stats(alice), bob: await stats(bob) };
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const afterRestart = { alice: await stats(alice), bob: await stats(bob) };
    for (const label of ["alice", "bob"]) {
      checkRelayed(label, afterRestart[label], options);
      check(afterRestart[label].audio.bytesReceived > beforeHold[label].audio.bytesReceived,
        `${label}: audio stopped after the ICE restart: ${JSON.stringify(afterRestart[label].audio)}`);
    }
    const restartLogged = await bob.evaluate(() => window.icegate.events.some((e) => e.text === "ICE restart: offer sent"));
    check(restartLogged, "bob: no ICE restart offer in the log");
    progress.mark("iceRestarted");

    progress.step = "alice holds and resumes";
    await alice.getByTestId("hold").click();
    await waitInPage(alice, "the hold", () => window.icegate.state().call.held);
    const holdLabel = await alice.getByTestId("hold").textContent();
    check(holdLabel === "Resume", `alice: the hold button says ${JSON.stringify(holdLabel)} while held`);
    await alice.getByTestId("hold").click();
    await waitInPage(alice, "the resume", () => !window.icegate.state().call.held && window.icegate.state().call.renegotiations >= 3);
    await waitInPage(bob, "both renegotiations answered", renegotiated, 3);
    progress.mark("heldAndResumed");

    progress.step = "alice hangs up";
    await alice.getByTestId("hangup").click();
    const hungUp = await waitInPage(bob, "the hangup", ended);
    check(hungUp.reason === "normal" && hungUp.endedBy === "remote",
      `bob: the call ended with ${JSON.stringify(hungUp)}, expected reason normal, ended by the remote side`);
    const aliceEnd = await alice.evaluate(() => window.icegate.state().call);
    check(aliceEnd.state === "ended" && aliceEnd.endedBy === "local", `alice: after hanging up: ${JSON.stringify(aliceEnd)}`);
    await waitInPage(bob, "the call controls to reset", () => !document.querySelector("[data-testid=call]").disabled);

    progress.mark("hungUp");
    const uncaught = diagnostics.filter((d) => d.includes("uncaught"));
    check(uncaught.length === 0, `uncaught errors in the page: ${uncaught.join("; ")}`);
    const errors = {
      // The one expected error: calling nobody.
      alice: (await alice.evaluate(() => window.icegate.errors)).filter((e) => e.code !== "unknown_user"),
      bob: await bob.evaluate(() => window.icegate.errors),
    };
    check(errors.alice.length === 0 && errors.bob.length === 0, `the pages showed errors: ${JSON.stringify(errors)}`);

    const summary = (s) => ({
      local: s.pair.local, remote: s.pair.remote, rttMs: s.pair.rttMs, bitrate: s.bitrate,
      audioBytesReceived: s.audio.bytesReceived, audioBytesSent: s.audio.bytesSent,
      videoBytesReceived: s.video.bytesReceived,
    });
    return {
      ok: true,
      durationMs: Date.now() - progress.started,
      marks: progress.marks,
      chromium: browser.version(),
      alice: summary(second.alice),
      bob: summary(second.bob),
    };
  } catch (error) {
    for (const page of pages) {
      const log = await pageLog(page);
      if (log) diagnostics.push(log);
    }
    error.diagnostics = diagnostics;
    throw error;
  } finally {
    await browser.close().catch(() => {});
  }
}

await main(
  "call.mjs",
  "http://127.0.0.1:PORT/ [--relay-ip IP] [--relay-ports MIN-MAX] [--timeout S] [--screenshots DIR]",
  { screenshots: null },
  { "--screenshots": (value, options) => { options.screenshots = value; } },
  run,
);
