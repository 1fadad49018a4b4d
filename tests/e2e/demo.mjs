// Drives Debian's Chromium through `proxy --demo`, for tests/demo_e2e.rs: loads the page, prints
// "PAGE <backend>", and waits for a line on stdin (the test sends it once the demo's log shows the
// browser's own /favicon.ico request: Playwright does not report that one); then reloads twice,
// printing "PAGE <backend>" after each.
//
// usage: node demo.mjs <demo-url>
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [url] = process.argv.slice(2);
if (!url) {
  console.error("usage: node demo.mjs <demo-url>");
  process.exit(2);
}
const profile = mkdtempSync(join(tmpdir(), "pibl-chromium-"));
// The flags this machine needs: no sandbox as root, and no background connections to Google,
// which a closed network refuses.
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(20000);
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  for (let i = 0; i < 3; i++) {
    if (i === 0) {
      await page.goto(url);
    } else {
      await page.reload();
    }
    const name = (await page.textContent("h1")).replace("Served by ", "").trim();
    console.log(`PAGE ${name}`);
    if (i === 0 && (await lines.next()).done) throw new Error("the test closed stdin before the icon was asked for");
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
