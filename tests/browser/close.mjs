// The demo page's origin and the close handshake in headless Chromium: the demo page served
// by icegate-signal signs in; WebSockets it opens and closes, with a code and without, close
// cleanly (CloseEvent.wasClean); the same page loaded as http://localhost:PORT/, another
// origin than http://127.0.0.1:PORT, is refused before the upgrade. (A data: page would not
// do: Chromium keeps non-local pages off loopback addresses by itself.)
//
//   node close.mjs http://127.0.0.1:PORT/ [--relay-ip IP --relay-ports MIN-MAX] [--timeout S]
//
// The last line on stdout is {"ok":true,"closes":{...},"foreign":{...}} or {"ok":false,...}.

import { check, launchChromium, main, openPage, progress, waitInPage } from "./harness.mjs";

/** Opens `url`, closes it with `args` after the first message; resolves with the close. */
function openAndClose([url, args]) {
  return new Promise((resolve) => {
    const seen = [];
    const ws = new WebSocket(url);
    ws.onmessage = (event) => {
      seen.push(JSON.parse(event.data).type);
      ws.close(...args);
    };
    ws.onerror = () => seen.push("error");
    ws.onclose = (event) => resolve({ seen, code: event.code, wasClean: event.wasClean });
  });
}

async function run(options) {
  const browser = await launchChromium();
  try {
    const page = await openPage(browser, options, "demo", []);
    progress.step = "demo page: sign in";
    await page.goto(options.url, { waitUntil: "load" });
    await page.getByTestId("name").fill("demo");
    await page.getByTestId("connect").click();
    await waitInPage(page, "signaling to connect", () => window.icegate.state().signal === "connected");

    progress.step = "close handshakes";
    const ws = new URL("ws", options.url.replace(/^http/, "ws")).href;
    const closes = {};
    for (const [label, args] of [["code1000", [1000, "bye"]], ["code4000", [4000]], ["noCode", []]]) {
      const result = await page.evaluate(openAndClose, [`${ws}?name=${label}`, args]);
      check(result.seen[0] === "welcome", `${label}: expected a welcome first, got ${JSON.stringify(result)}`);
      check(result.wasClean === true, `${label}: the close was not clean: ${JSON.stringify(result)}`);
      closes[label] = result.code;
    }

    progress.step = "a page of another origin";
    const otherUrl = options.url.replace("//127.0.0.1:", "//localhost:");
    check(otherUrl !== options.url, `${options.url} is not on 127.0.0.1`);
    const other = await openPage(browser, { ...options, url: otherUrl }, "other", []);
    await other.goto(otherUrl, { waitUntil: "load" });
    const foreign = await other.evaluate(openAndClose, [`${ws}?name=foreign`, []]);
    check(!foreign.seen.includes("welcome"), `a data: page got a session: ${JSON.stringify(foreign)}`);
    return { ok: true, closes, foreign };
  } finally {
    await browser.close();
  }
}

main("close.mjs", "URL [--timeout S]", { timeout: 30 }, {}, run);
