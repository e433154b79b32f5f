// The browser test: Debian's chromium, driven by playwright-core (no browser download), opens
// vtx's page, uploads a clip through tus-js-client, follows the status and plays the video with
// hls.js to the end; then a page on another origin plays the same HLS URL (CORS).
//
// node tests/browser/run.mjs <gateway base URL> <token> <clip> <screenshot dir>
// Prints a JSON summary; exits non-zero on failure.
import { createRequire } from 'node:module';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const [base, token, clip, shots] = process.argv.slice(2);
const web = process.env.VTX_WEB_DIR;
const require = createRequire(path.join(web, 'package.json'));
const { chromium } = require('playwright-core');

const fail = (why, extra = {}) => {
  console.log(JSON.stringify({ ok: false, why, ...extra }));
  process.exit(1);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required'],
});
const summary = { ok: true };
let page;
try {
  page = await browser.newPage({ viewport: { width: 1100, height: 820 } });
  const consoleErrors = (summary.console_errors = []);
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  await page.goto(`${base}/?token=${encodeURIComponent(token)}`);
  await page.setInputFiles('#file', clip);
  const started = Date.now();
  await page.click('#upload');
  // Progress moves, then the first tier plays to the end.
  await page.waitForFunction(() => window.vtx.progress >= 1, null, { timeout: 120_000 });
  summary.uploaded_ms = Date.now() - started;
  await page.waitForFunction(() => window.vtx.state === 'published', null, { timeout: 120_000 });
  summary.published_ms = Date.now() - started;
  await page.waitForFunction(() => window.vtx.ended || window.vtx.errors.length > 0, null, { timeout: 240_000 });
  summary.played_ms = Date.now() - started;
  await page.screenshot({ path: path.join(shots, 'web-page.png'), fullPage: true });
  // The high tier replaces the fast one on the page.
  await page.waitForFunction(() => window.vtx.liveTier === 'high' || window.vtx.errors.length > 0, null, { timeout: 300_000 });
  await page.waitForTimeout(1500);
  await page.screenshot({ path: path.join(shots, 'web-page-high-tier.png'), fullPage: true });
  const vtx = await page.evaluate(() => ({ ...window.vtx, hls: undefined, renditions: document.querySelectorAll('#renditions tbody tr').length }));
  Object.assign(summary, { tiers: vtx.tiers, errors: vtx.errors, ended: vtx.ended, video_id: vtx.videoId, renditions: vtx.renditions });
  if (vtx.errors.length || !vtx.ended || vtx.tiers.join() !== 'fast,high') fail('the page did not upload and play cleanly', summary);

  // Another origin plays the HLS URL.
  const service = process.env.VTX_SERVICE_TOKEN;
  const video = await (await fetch(`${base}/v1/videos/${vtx.videoId}`, { headers: { Authorization: `Bearer ${service}` } })).json();
  const hlsUrl = video.playback.hls;
  const files = {
    '/player.html': [fs.readFileSync(new URL('./player.html', import.meta.url)), 'text/html'],
    '/hls.min.js': [fs.readFileSync(path.join(web, 'node_modules/hls.js/dist/hls.min.js')), 'text/javascript'],
  };
  const server = http.createServer((req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname];
    if (!f) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': f[1] }).end(f[0]);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const other = `http://127.0.0.1:${server.address().port}`;
  const player = await browser.newPage();
  await player.goto(`${other}/player.html?src=${encodeURIComponent(hlsUrl)}`);
  await player.waitForFunction(() => window.state.ended || window.state.errors.length > 0, null, { timeout: 120_000 });
  const state = await player.evaluate(() => window.state);
  await player.screenshot({ path: path.join(shots, 'web-other-origin.png') });
  server.close();
  Object.assign(summary, { other_origin: other, other_state: state });
  if (state.errors.length || !state.ended) fail('the other origin could not play the video', summary);
} catch (e) {
  if (page) {
    summary.page_log = await page.$eval('#log', (el) => el.textContent).catch(() => null);
    summary.page_state = await page.evaluate(() => ({ ...window.vtx, hls: undefined })).catch(() => null);
  }
  fail(String(e), summary);
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
