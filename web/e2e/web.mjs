// The web page end to end in a real browser (Playwright driving Chromium
// headless), against two real ternd daemons that crates/tern/tests/web.rs
// starts:
//   TERN_A_URL, TERN_A_TOKEN   the daemon the VM is created on
//   TERN_B_URL, TERN_B_TOKEN   the daemon it migrates to
//   CHROMIUM                   the browser (default /usr/bin/chromium)
//   TERN_SHOTS                 where to write screenshots (optional)
// Exits non-zero, naming the step, on the first failure; prints the
// figures it saw (migration progress samples, timings) as JSON lines.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const A = { url: env("TERN_A_URL"), token: env("TERN_A_TOKEN") };
const B = { url: env("TERN_B_URL"), token: env("TERN_B_TOKEN") };
const shots = process.env.TERN_SHOTS;
if (shots) mkdirSync(shots, { recursive: true });

const t0 = Date.now();
let step = "start";
const log = (what, extra = {}) =>
  console.log(JSON.stringify({ t_ms: Date.now() - t0, step: what, ...extra }));
const begin = (s) => {
  step = s;
  log(s);
};
const check = (ok, msg) => {
  if (!ok) throw new Error(msg);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a container: no user namespaces for the sandbox.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const shot = async (page, name) => {
  if (shots) await page.screenshot({ path: join(shots, `${name}.png`) });
};

/** Text the console shows (xterm's DOM renderer keeps the rows as text). */
const consoleText = (page) => page.locator("[data-test=console] .xterm-rows").innerText();
const waitConsole = async (page, needle, timeout = 20000) => {
  await page.waitForFunction(
    (n) => document.querySelector("[data-test=console] .xterm-rows")?.textContent.includes(n),
    needle,
    { timeout },
  ).catch(async () => {
    throw new Error(`the console did not show ${JSON.stringify(needle)}; it shows:\n${await consoleText(page)}`);
  });
};
const typeLine = async (page, line) => {
  await page.locator("[data-test=console] .xterm").click();
  await page.keyboard.type(line);
  await page.keyboard.press("Enter");
};
const signIn = async (page, token) => {
  await page.locator("[data-test=token-form] input[name=token]").fill(token);
  await page.locator("[data-test=token-form] button[type=submit]").click();
};
const waitState = (page, state, timeout = 20000) =>
  page.locator("[data-test=vm-view] .title-row [data-test=state]", { hasText: state }).waitFor({ timeout });

let failed = false;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => log("page error", { error: String(e) }));

  begin("a wrong token is refused");
  await page.goto(A.url + "/");
  await page.locator("[data-test=token-form]").waitFor();
  await signIn(page, "not-the-token");
  const refusal = page.locator("[data-test=token-error]");
  await refusal.waitFor();
  const text = await refusal.innerText();
  check(/refused/.test(text) && /invalid bearer token/.test(text), `refusal says: ${text}`);
  check(await page.locator("[data-test=host-view]").count() === 0, "the host view showed with a wrong token");
  await shot(page, "token-refused");

  begin("the right token shows the host");
  await signIn(page, A.token);
  await page.locator("[data-test=host-view]").waitFor();
  await page.locator("[data-test=host-view] .figure .value").first().waitFor();

  begin("create and start a VM");
  await page.goto(A.url + "/#/vms");
  await page.getByRole("button", { name: "New VM" }).click();
  const form = page.locator("[data-test=create-vm]");
  await form.locator("input[name=name]").fill("web1");
  await form.locator("input[name=memory]").fill("64M");
  await form.locator("input[name=guest]").fill("probe:hello+echo");
  await form.locator("input[name=start]").check();
  await form.locator("button[type=submit]").click();
  await page.waitForURL(/#\/vms\/web1$/);
  await waitState(page, "running");

  begin("the guest's greeting in the console");
  await waitConsole(page, "Hello from the Tern probe guest!");
  await waitConsole(page, "echo: type a line");

  begin("a typed line is echoed");
  await typeLine(page, "typed-in-the-browser");
  await waitConsole(page, "echo: typed-in-the-browser");
  await shot(page, "vm");
  await page.goto(A.url + "/#/vms");
  await page.locator("[data-test=vm-table] tr[data-vm=web1] [data-test=state]", { hasText: "running" }).waitFor();
  await shot(page, "vms");
  await page.goto(A.url + "/#/");
  await page.locator("[data-test=host-view]").waitFor();
  await page.waitForTimeout(2500); // one refresh: the worker's figures
  await shot(page, "host");

  begin("live migration to the second daemon");
  await page.goto(A.url + "/#/vms/web1");
  await waitState(page, "running");
  const mig = page.locator("[data-test=migrate-form]");
  await mig.locator("input[name=to]").fill(B.url);
  await mig.locator("input[name=dest-token]").fill(B.token);
  await mig.locator("button[type=submit]").click();
  const bar = page.locator("[data-test=migration]");
  await bar.waitFor();
  // The bar as the page shows it, sampled until the migration ends.
  const samples = [];
  const deadline = Date.now() + 60000;
  for (;;) {
    const s = await bar.evaluate((el) => ({
      state: el.dataset.state,
      progress: Number(el.querySelector("[data-test=bar]").dataset.progress),
      text: el.querySelector(".mig-figures").textContent,
    }));
    if (!samples.length || samples[samples.length - 1].progress !== s.progress || samples[samples.length - 1].state !== s.state)
      samples.push(s);
    if (["completed", "failed", "cancelled"].includes(s.state)) break;
    check(Date.now() < deadline, "the migration did not end in 60 s");
    await page.waitForTimeout(25);
  }
  const end = samples[samples.length - 1];
  log("migration samples", { samples });
  check(end.state === "completed", `the migration ended ${end.state}: ${end.text}`);
  check(end.progress === 1, `the bar ended at ${end.progress}`);
  check(samples.every((s, i) => i === 0 || s.progress >= samples[i - 1].progress), "the bar went backwards");
  check(/round [1-9]/.test(end.text) && /downtime/.test(end.text), `the result lacks rounds or downtime: ${end.text}`);
  await page.locator("[data-test=migrated]").waitFor();
  await shot(page, "migration");

  begin("the VM runs on the second daemon, its console too");
  const pageB = await ctx.newPage();
  await pageB.goto(B.url + "/");
  await pageB.locator("[data-test=token-form]").waitFor();
  await signIn(pageB, B.token);
  await pageB.locator("[data-test=host-view]").waitFor();
  await pageB.goto(B.url + "/#/vms/web1");
  await waitState(pageB, "running");
  await pageB.locator("[data-test=console-status]", { hasText: "connected" }).waitFor();
  await typeLine(pageB, "after-the-move");
  await waitConsole(pageB, "echo: after-the-move");

  begin("checkpoints: a tree, and one applied");
  const cpForm = pageB.locator("[data-test=create-checkpoint]");
  const take = async (name) => {
    await cpForm.locator("input[name=checkpoint]").fill(name);
    await cpForm.locator("button[type=submit]").click();
    await pageB.locator(`[data-test=checkpoints] [data-cp=${name}].current`).waitFor({ timeout: 30000 });
  };
  await take("base");
  await typeLine(pageB, "between-checkpoints");
  await waitConsole(pageB, "echo: between-checkpoints");
  await take("later");
  // "later" was taken from "base": it is its child in the tree.
  await pageB.locator("[data-test=checkpoints] li:has(> [data-cp=base]) > ul [data-cp=later]").waitFor();
  await pageB.locator("[data-cp=base] button", { hasText: "Apply" }).click();
  await pageB.locator("[data-test=checkpoints] [data-cp=base].current").waitFor({ timeout: 30000 });
  check(await pageB.locator("[data-cp=later].current").count() === 0, "'later' is still current after applying 'base'");
  await waitState(pageB, "running");
  // The guest runs on from the checkpoint: it still echoes.
  await typeLine(pageB, "after-apply");
  await waitConsole(pageB, "echo: after-apply");
  await shot(pageB, "checkpoints");

  begin("disks");
  await pageB.goto(B.url + "/#/disks");
  const dForm = pageB.locator("[data-test=create-disk]");
  await dForm.locator("input[name=disk]").fill("data1");
  await dForm.locator("input[name=size]").fill("1G");
  await dForm.locator("button[type=submit]").click();
  await pageB.locator("[data-test=disk-table]").getByRole("cell", { name: "data1", exact: true }).waitFor();
  await shot(pageB, "disks");
  await pageB.goto(B.url + "/#/migrations");
  await pageB.locator("[data-test=migrations-view] .badge", { hasText: "completed" }).waitFor();
  await shot(pageB, "migrations");

  begin("done");
} catch (e) {
  failed = true;
  console.error(`E2E FAILED at step "${step}": ${e?.stack ?? e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
