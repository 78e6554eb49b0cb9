// Drives a P2P node's browser GUI (GET / of the node) in headless Chromium, using only
// the element ids and classes that docs/protocols/p2p.md ("The page's elements")
// promises:
//
//   node p2p_gui.mjs <url> <user> <password> <other-node-address> <message> <reply>
//
// Signs in as the owner, waits for the contact <other-node-address> to be listed online,
// opens its conversation, sends <message>, waits until it shows as delivered, then waits
// for an incoming message whose text is <reply> (the Rust test posts it from the other
// node once <message> has arrived there). Exit code 0 on success, 1 on failure.
//
// Environment: CHROMIUM_PATH (default /usr/bin/chromium: Debian's package; Playwright
// never downloads a browser here), GUI_TIMEOUT_MS (each wait, default 30000),
// GUI_SCREENSHOT (a PNG path written at the end, success or failure).

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, user, password, other, message, reply] = process.argv.slice(2);
if (!reply) {
  console.error('usage: node p2p_gui.mjs <url> <user> <password> <other-node-address> <message> <reply>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const timeout = Number(process.env.GUI_TIMEOUT_MS || 30000);
const screenshot = process.env.GUI_SCREENSHOT;
const origin = new URL(url).origin;
const nodeAddress = new URL(url).host;

const log = (...args) => console.log('[p2p_gui]', ...args);
const fail = (what) => {
  throw new Error(what);
};

const profile = mkdtempSync(join(tmpdir(), 'p2p-gui-profile-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});
let page;
const external = [];
const pageErrors = [];
try {
  page = browser.pages()[0] || (await browser.newPage());
  page.setDefaultTimeout(timeout);
  page.on('console', (m) => log('console', m.type(), m.text()));
  page.on('pageerror', (e) => {
    pageErrors.push(e.message);
    log('page error', e.message);
  });
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin) && !u.startsWith('data:') && !u.startsWith('blob:')) external.push(u);
  });

  const response = await page.goto(url);
  if (!response || response.status() !== 200) fail(`GET ${url} answered ${response && response.status()}`);
  log('page loaded:', await page.title());

  // Sign in.
  await page.fill('#login-user', user);
  await page.fill('#login-password', password);
  await page.click('#login-button');
  const contactSel = `#contacts .contact[data-address="${other}"]`;
  const contact = page.locator(contactSel);
  await contact.waitFor({ state: 'visible' });
  log('signed in; status line:', JSON.stringify((await page.locator('#status').textContent()) || ''));
  const shownAddress = (await page.locator('#node-address').textContent()) || '';
  if (!shownAddress.includes(nodeAddress)) fail(`#node-address shows ${JSON.stringify(shownAddress)}, not ${nodeAddress}`);

  // Its online state (the page refreshes every 2 s).
  await page.locator(`${contactSel}[data-online="true"]`).waitFor();
  const classes = (await contact.getAttribute('class')) || '';
  if (!classes.split(/\s+/).includes('online') || classes.split(/\s+/).includes('offline')) {
    fail(`an online contact has classes ${JSON.stringify(classes)}`);
  }
  const contactText = (await contact.textContent()) || '';
  if (!contactText.includes(other)) fail(`the contact does not show its address: ${JSON.stringify(contactText)}`);
  log('contact online:', JSON.stringify(contactText.trim()));

  // Open the conversation and send.
  await contact.click();
  await page.fill('#message-input', message);
  await page.click('#send-button');
  const out = page
    .locator('#conversation .message[data-direction="out"]')
    .filter({ has: page.locator('.text', { hasText: message }) });
  await out.first().waitFor();
  const outText = ((await out.first().locator('.text').textContent()) || '').trim();
  if (outText !== message) fail(`the sent message shows ${JSON.stringify(outText)}`);
  const id = await out.first().getAttribute('data-id');
  if (!id || !id.startsWith(`${nodeAddress}/`)) fail(`the sent message's data-id is ${JSON.stringify(id)}`);
  log('sent, id', id);
  await page
    .locator('#conversation .message[data-direction="out"][data-delivered="true"]')
    .filter({ has: page.locator('.text', { hasText: message }) })
    .first()
    .waitFor();
  log('delivered');

  // The reply from the other node.
  const inbound = page
    .locator('#conversation .message[data-direction="in"]')
    .filter({ has: page.locator('.text', { hasText: reply }) });
  await inbound.first().waitFor({ timeout: Math.max(timeout, 60000) });
  const inText = ((await inbound.first().locator('.text').textContent()) || '').trim();
  if (inText !== reply) fail(`the reply shows ${JSON.stringify(inText)}`);
  if ((await inbound.count()) !== 1) fail(`the reply shows ${await inbound.count()} times`);
  if ((await out.count()) !== 1) fail(`the sent message shows ${await out.count()} times`);
  if (external.length) fail(`the page loaded external resources: ${external.join(', ')}`);
  if (pageErrors.length) fail(`the page threw: ${pageErrors.join('; ')}`);
  log('reply received: OK');
} catch (e) {
  console.error('[p2p_gui] FAILED:', e && e.stack ? e.stack : e);
  if (page) {
    try {
      console.error('[p2p_gui] #status:', await page.locator('#status').textContent({ timeout: 1000 }));
      console.error('[p2p_gui] #contacts:', await page.locator('#contacts').innerHTML({ timeout: 1000 }));
      console.error('[p2p_gui] #conversation:', await page.locator('#conversation').innerHTML({ timeout: 1000 }));
    } catch (_) {
      // The page may not have those elements at all.
    }
  }
  process.exitCode = 1;
} finally {
  if (page && screenshot) {
    try {
      await page.screenshot({ path: screenshot, fullPage: true });
    } catch (e) {
      console.error('[p2p_gui] no screenshot:', e.message);
    }
  }
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
