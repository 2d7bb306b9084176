// The dashboard in a real browser: Debian's headless Chromium, driven by
// playwright-core, loads the page from a real gateway's metrics listener and
// follows requests and responses made through the gRPC API as they happen.
// Field values are user data: markup in them must show as text and never run.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_DIR } from '../src/protos.ts';
import { setupRelation, startHarness, struct, type Harness } from './helpers/harness.ts';

const XSS = '<img src=x onerror=alert(1)>';
const ARTIFACTS = path.join(PROJECT_DIR, 'test-artifacts');

/** Debian's chromium (CI installs it); a missing browser fails the test rather than skipping it. */
function chromiumPath(): string {
  const candidates = [process.env.RELGATE_CHROMIUM, 'chromium', 'chromium-browser'].filter((name): name is string => Boolean(name));
  for (const name of candidates) {
    try {
      return execFileSync('sh', ['-c', 'command -v "$1"', 'sh', name], { encoding: 'utf8' }).trim();
    } catch {
      // not this one
    }
  }
  throw new Error('Chromium is not installed: run `apt-get install -y chromium` (bash .ci/run does), or set RELGATE_CHROMIUM to its path');
}

describe('dashboard in headless Chromium', () => {
  let h: Harness;
  let browser: Browser;
  let page: Page;
  const dialogs: string[] = [];
  const pageErrors: string[] = [];

  beforeAll(async () => {
    browser = await chromium.launch({ executablePath: chromiumPath(), args: ['--no-sandbox'] });
    h = await startHarness({ metricsListen: '127.0.0.1:0' });
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on('dialog', (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    page.on('pageerror', (error) => pageErrors.push(error.message));
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await h?.close();
  });

  it('shows relations and waiting requests, follows a response live, and shows markup in fields as text', async () => {
    const relationId = await setupRelation(h);
    const requester = h.requester('webapp/0');
    const responder = h.responder('ca/0');
    const { request: hostile } = await requester.call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: XSS }) });

    await page.goto(`http://${h.server.metricsAddress}/dashboard/`);
    const relationRow = page.locator(`#relations tr[data-relation-id="${relationId}"]`);
    await relationRow.waitFor();
    expect(await relationRow.innerText()).toContain('tls-certificates v1');
    const units = await relationRow.locator('.unit').allInnerTexts();
    expect(units.join('\n')).toMatch(/webapp\/0 \(requester\) available/);
    expect(units.join('\n')).toMatch(/ca\/0 \(responder\) available\s*has_requests\s*new_requests/);

    const hostileRow = page.locator(`#waiting tr[data-request-id="${hostile.request_id}"]`);
    await hostileRow.waitFor();
    expect(await hostileRow.locator('td.fields').textContent()).toBe(JSON.stringify({ common_name: XSS }));
    expect(await page.locator('img').count()).toBe(0);
    expect(await page.locator('#status').textContent()).toBe('live');
    // The waiting time keeps growing between updates.
    const age = hostileRow.locator('td.age');
    const firstAge = await age.textContent();
    expect(firstAge).toMatch(/^\d+(\.\d)? (ms|s)$/);
    await expect.poll(() => age.textContent(), { timeout: 10_000 }).not.toBe(firstAge);

    // A request made now appears without reloading the page.
    const { request: live } = await requester.call('CreateRequest', { relation_id: relationId, fields: struct({ common_name: 'live.example' }) });
    const liveRow = page.locator(`#waiting tr[data-request-id="${live.request_id}"]`);
    await liveRow.waitFor();
    expect(await liveRow.innerText()).toContain('webapp/0');

    // Its answer moves it from waiting to the responses, with its latency.
    await responder.call('Respond', { request_id: live.request_id, fields: struct({ key: 'K', cert: XSS }) });
    const answered = page.locator(`#responses tr[data-request-id="${live.request_id}"]`);
    await answered.waitFor();
    await liveRow.waitFor({ state: 'detached' });
    expect(await answered.locator('td.latency').textContent()).toMatch(/^\d+(\.\d)? (ms|s)$/);
    expect(await answered.innerText()).toContain('ca/0');
    expect(await answered.locator('td.fields').textContent()).toContain(XSS);
    expect(await hostileRow.count()).toBe(1);
    await expect.poll(() => page.locator('#revision').textContent(), { timeout: 10_000 }).toBe(String(h.server.store.currentRevision()));

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png'), fullPage: true });

    // Nothing from the field values ran: no dialog, no image element, no script error.
    expect(await page.locator('img').count()).toBe(0);
    expect(dialogs).toEqual([]);
    expect(pageErrors).toEqual([]);
  });

  it('keeps the page from running anything but its own script', async () => {
    const response = await page.request.get(`http://${h.server.metricsAddress}/dashboard/`);
    expect(response.headers()['content-security-policy']).toContain("script-src 'self'");
    expect(response.headers()['x-content-type-options']).toBe('nosniff');
  });
});
