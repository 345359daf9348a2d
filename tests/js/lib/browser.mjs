// Headless Debian Chromium via playwright-core, launched exactly as shared/reference/browser-testing.md says.
//
//   import { launchBrowser, openPeerHarness } from './lib/browser.mjs';
//   const h = await openPeerHarness();           // static site + browser + one page with peerjs loaded
//   const id = await h.page.evaluate(async (opts) => { ... new peerjs.Peer(opts) ... }, srv.peerOptions());
//   h.browser.consoleErrors                      // [{ text, url, page }] console.error + uncaught page errors
//   h.browser.assertNoConsoleErrors([/Failed to load resource/])   // throws listing unexpected errors
//   await h.close();                             // closes page, browser, profile dir, static site
//
// launchBrowser({ origin, headless = true, extraArgs = [], executablePath = CHROMIUM }) ->
//   { context, userDataDir, commandLine, consoleErrors, consoleLog, newPage(url?, { waitReady }), assertNoConsoleErrors(ignore), close() }
//   - `chromium.launchPersistentContext(<fresh mkdtemp dir>, { executablePath: '/usr/bin/chromium' })`
//     (Playwright refuses --user-data-dir in args), removed again on close;
//   - args --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
//     --disable-component-update --disable-sync --allow-loopback-in-peer-connection, and
//     WebRtcHideLocalIpsWithMdns merged into Playwright's own --disable-features list (one switch: Chromium
//     reads only the last one). The merged switch is checked on the running browser's /proc cmdline.
//   - `context.grantPermissions(['camera','microphone'], { origin })`: without a media permission Chromium
//     gathers no ICE candidates on a loopback-only host.
// newPage(url, { waitReady: true }) navigates and waits for `window.harnessReady === true` (set by
// DEFAULT_PAGE of ./static-server.mjs). Everything is registered with ./cleanup.mjs.
// CHROMIUM env var overrides the executable path.

import { chromium } from 'playwright-core';
import { mkdtemp, rm, readdir, readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { register } from './cleanup.mjs';
import { startStaticServer } from './static-server.mjs';

/** The Chromium binary (Debian package). */
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Flags from browser-testing.md (besides the merged --disable-features). */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--allow-loopback-in-peer-connection',
];

/** Features we disable on top of Playwright's list. */
export const EXTRA_DISABLED_FEATURES = ['WebRtcHideLocalIpsWithMdns'];

let cachedDefaultDisableFeatures;

/**
 * Playwright's own `--disable-features=...` switch, exactly as it puts it on the command line.
 * playwright-core does not export its switch list, so it is read from its (pinned) bundle; a change of
 * layout fails loudly here rather than silently dropping either list.
 */
export function playwrightDisableFeaturesArg() {
  if (cachedDefaultDisableFeatures) return cachedDefaultDisableFeatures;
  const require = createRequire(import.meta.url);
  const bundle = readFileSync(require.resolve('playwright-core/lib/coreBundle'), 'utf8');
  const m = /\n\s*disabledFeatures = (\[[\s\S]*?\])\.filter\(Boolean\);/.exec(bundle);
  if (!m) throw new Error('cannot find Playwright disabledFeatures list in playwright-core/lib/coreBundle.js');
  const list = new Function('process', `return ${m[1]};`)(process).filter(Boolean);
  if (!list.length || !list.every((f) => typeof f === 'string')) {
    throw new Error('unexpected Playwright disabledFeatures list');
  }
  cachedDefaultDisableFeatures = `--disable-features=${list.join(',')}`;
  return cachedDefaultDisableFeatures;
}

/** Reads the command line of the browser (main) process that uses `userDataDir`. */
async function browserCommandLine(userDataDir) {
  const needle = `--user-data-dir=${userDataDir}`;
  for (const pid of await readdir('/proc').catch(() => [])) {
    if (!/^\d+$/.test(pid)) continue;
    const raw = await readFile(`/proc/${pid}/cmdline`).catch(() => null);
    if (!raw) continue;
    const argv = raw.toString('utf8').split('\0').filter(Boolean);
    if (argv.includes(needle) && !argv.some((a) => a.startsWith('--type='))) return argv;
  }
  return null;
}

async function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(t);
  }
}

/** Launches headless Chromium with a fresh profile; see the header comment. */
export async function launchBrowser({ origin, headless = true, extraArgs = [], executablePath = CHROMIUM } = {}) {
  const defaultFeatures = playwrightDisableFeaturesArg();
  const merged = `${defaultFeatures},${EXTRA_DISABLED_FEATURES.join(',')}`;
  const userDataDir = await mkdtemp(path.join(os.tmpdir(), 'ouroboros-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless,
      args: [...CHROMIUM_ARGS, merged, ...extraArgs],
      ignoreDefaultArgs: [defaultFeatures],
      timeout: 30000,
    });
  } catch (err) {
    await rm(userDataDir, { recursive: true, force: true });
    throw err;
  }
  const consoleErrors = [];
  const consoleLog = [];
  let pageCount = 0;
  let closing = null;
  const close = () => {
    if (!closing) {
      unregister();
      closing = (async () => {
        try {
          await withTimeout(context.close(), 15000, 'closing Chromium');
        } finally {
          await rm(userDataDir, { recursive: true, force: true, maxRetries: 3 });
        }
      })();
    }
    return closing;
  };
  const unregister = register(`chromium ${userDataDir}`, close);

  try {
    const commandLine = await browserCommandLine(userDataDir);
    if (commandLine) {
      const switches = commandLine.filter((a) => a.startsWith('--disable-features='));
      if (switches.length !== 1 || switches[0] !== merged) {
        throw new Error(`Chromium got disable-features ${JSON.stringify(switches)}, expected only ${merged}`);
      }
    }
    if (origin) await context.grantPermissions(['camera', 'microphone'], { origin });

    const watch = (page) => {
      const n = ++pageCount;
      page.on('console', (msg) => {
        const entry = { page: n, type: msg.type(), text: msg.text(), url: msg.location()?.url };
        consoleLog.push(entry);
        if (msg.type() === 'error') consoleErrors.push(entry);
      });
      page.on('pageerror', (err) => consoleErrors.push({ page: n, type: 'pageerror', text: String(err?.stack ?? err) }));
    };
    for (const p of context.pages()) watch(p);
    context.on('page', watch);

    return {
      context,
      userDataDir,
      commandLine,
      consoleErrors,
      consoleLog,
      /** Opens a page (reusing the initial about:blank tab first) and navigates to `url`. */
      async newPage(url, { waitReady = true } = {}) {
        const blank = context.pages().find((p) => p.url() === 'about:blank' && !p.__ouroborosUsed);
        const page = blank ?? (await context.newPage());
        page.__ouroborosUsed = true;
        page.setDefaultTimeout(20000);
        if (url) {
          await page.goto(url);
          if (waitReady) await page.waitForFunction(() => window.harnessReady === true, null, { timeout: 10000 });
        }
        return page;
      },
      /** Throws if a console error not matching any of `ignore` (RegExps) was seen. */
      assertNoConsoleErrors(ignore = []) {
        const bad = consoleErrors.filter((e) => !ignore.some((re) => re.test(e.text)));
        if (bad.length) throw new Error(`unexpected browser console errors:\n${bad.map((e) => `  [page ${e.page}] ${e.text}`).join('\n')}`);
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * Starts a static site (./static-server.mjs, `pages` as there), launches Chromium with permissions for
 * its origin, opens one page on `pagePath` and waits for peerjs to be loaded.
 */
export async function openPeerHarness({ pages, pagePath = '/', extraArgs } = {}) {
  const site = await startStaticServer(pages ? { pages } : undefined);
  let browser;
  try {
    browser = await launchBrowser({ origin: site.origin, extraArgs });
    const page = await browser.newPage(site.url(pagePath));
    return {
      site,
      browser,
      page,
      async close() {
        try {
          await browser.close();
        } finally {
          await site.close();
        }
      },
    };
  } catch (err) {
    if (browser) await browser.close().catch(() => {});
    await site.close();
    throw err;
  }
}
