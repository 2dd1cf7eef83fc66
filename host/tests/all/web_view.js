// Drives a node's cluster view in headless Chromium (playwright-core),
// as an operator would: refused without the token; with it, the nodes,
// the overlay's graph, the reactors and a live message rate show; a
// snapshot, a migration and a stop are done from the page's buttons.
// Usage: node web_view.js <base url> <token> <snapshot A> <move B> <stop C> <screenshot.png>
// Prints one JSON line; exit code 0 when every step held.
"use strict";
const { chromium } = require("playwright-core");

const [base, token, snapA, moveB, stopC, shot] = process.argv.slice(2);

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const out = {};
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 820 } });
    page.setDefaultTimeout(20000);
    const refused = await page.goto(base + "/");
    out.without_token = refused.status();
    const wrong = await page.goto(base + "/?token=" + "0".repeat(64));
    out.wrong_token = wrong.status();
    const ok = await page.goto(base + "/?token=" + token);
    out.with_token = ok.status();
    await page.waitForSelector("#conn.live");
    await page.waitForFunction(() => document.querySelectorAll('#graph .node[data-up="true"]').length === 2);
    out.members = await page.$$eval("#members tr.member", (rows) => rows.length);
    out.edges = await page.$$eval("#graph line", (l) => l.length);
    await page.waitForFunction((n) => document.querySelectorAll("tr.reactor").length >= n, 3);
    // A rate that moves: the test drives traffic meanwhile.
    await page.waitForFunction(() => Number(document.querySelector("#rate").textContent) > 0);
    out.rate = Number(await page.textContent("#rate"));

    const row = (a) => `tr.reactor[data-address="${a}"]`;
    await page.click(`${row(snapA)} button.snapshot`);
    await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("snapshot written"));
    out.snapshot = await page.textContent("#status");

    await page.selectOption(`${row(moveB)} select.to`, "1");
    await page.click(`${row(moveB)} button.migrate`);
    await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("moved"));
    out.migrate = await page.textContent("#status");
    await page.waitForSelector(row(moveB), { state: "detached" });

    await page.click(`${row(stopC)} button.stop`);
    await page.waitForFunction((a) => [...document.querySelectorAll("li.failure")].some((li) => li.textContent.includes(a) && li.textContent.includes("stopped by the operator")), stopC);
    out.failures = await page.$$eval("li.failure", (l) => l.map((x) => x.textContent));
    await page.screenshot({ path: shot });
    out.ok = true;
  } catch (e) {
    out.ok = false;
    out.error = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
  process.exit(out.ok ? 0 : 1);
}

main();
