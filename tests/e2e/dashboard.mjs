// Drives Debian's Chromium through the dashboard, for tests/dashboard_e2e.rs, which starts pibl and
// answers on stdin once it has taken a backend down.
//
// usage: node dashboard.mjs <dashboard-url> <email> <password> <healthy-backend> <failing-backend> <blocked-email> <out-dir>
// Prints "HEALTHY" when the page shows both backends healthy, then waits for a line on stdin, expects
// the failing backend to turn unhealthy, saves <out-dir>/dashboard.png, and unblocks <blocked-email>.
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [url, email, password, healthy, failing, blocked, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node dashboard.mjs <url> <email> <password> <healthy> <failing> <blocked-email> <out-dir>");
  process.exit(2);
}
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const profile = mkdtempSync(join(tmpdir(), "pibl-chromium-"));
// The flags this machine needs: no sandbox as root, and no background connections to Google,
// which a closed network refuses.
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const row = (backend, state) => `tr[data-backend="${backend}"][data-healthy="${state}"]`;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(20000);
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(url);
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click("#login-button");
  await page.waitForSelector(row(healthy, "true"));
  await page.waitForSelector(row(failing, "true"));
  if (!(await page.evaluate(() => sessionStorage.getItem("pibl.token")))) throw new Error("no token in sessionStorage");
  console.log("HEALTHY");
  const answer = await lines.next();
  if (answer.done) throw new Error("the test closed stdin before taking the backend down");
  await page.waitForSelector(row(failing, "false"));
  const text = await page.textContent(row(failing, "false"));
  if (!text.includes("unhealthy")) throw new Error(`the failing backend's row reads: ${text}`);
  await page.waitForSelector(row(healthy, "true"));
  await page.waitForSelector(`button.unblock[data-email="${blocked}"]`);
  mkdirSync(outDir, { recursive: true });
  await page.screenshot({ path: join(outDir, "dashboard.png"), fullPage: true });
  await page.click(`button.unblock[data-email="${blocked}"]`);
  await page.waitForSelector(`button.unblock[data-email="${blocked}"]`, { state: "detached" });
  console.log("OK");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
