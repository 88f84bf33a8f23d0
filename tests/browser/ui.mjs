// Browser test of the `dwflow serve` web page, driven by tests/serve_browser.rs.
//
//   node tests/browser/ui.mjs http://127.0.0.1:PORT
//
// Starts the turbine-assessment pipeline from the page (year 2014), follows it to its run
// page and waits until every step of the DAG is green. Uses playwright-core with the
// system Chromium (env CHROMIUM, default /usr/bin/chromium); nothing is downloaded.
// Env SCREENSHOT: where to write a full-page PNG of the finished run page (also written,
// as SCREENSHOT with `-failure` before the extension, when the test fails).
// Exit 0 on success; 1 with a description of what the page showed on failure.

import { chromium } from 'playwright-core';

const PIPELINE = 'turbine-assessment';
const YEAR = '2014';
const EXPECTED_STEPS = ['aggregate', 'rank'];
const EXPECTED_OUTPUT = ['ResultDatasetName', `lhb-daily-${YEAR}`];
// The fill of a succeeded DAG node: --ok in src/service/web/style.css (#1f883d).
const GREEN = 'rgb(31, 136, 61)';
const STEPS_TIMEOUT_MS = 60_000;

const base = process.argv[2];
if (!base || !/^https?:\/\//.test(base)) {
  console.error('usage: node ui.mjs http://HOST:PORT');
  process.exit(2);
}
const origin = new URL(base).origin;

const log = [];
function note(line) {
  log.push(line);
  console.log(`ui: ${line}`);
}

// A last resort against a hung browser: never outlive the Rust test's patience.
const watchdog = setTimeout(() => {
  console.error('ui: FAILED: the browser test did not finish within 150 s');
  process.exit(1);
}, 150_000);

let browser;
let page;
const consoleLines = [];
const pageErrors = [];
const foreignRequests = [];
const failedResponses = [];

async function describePage() {
  if (!page) return '(no page)';
  const out = [];
  try {
    out.push(`url: ${page.url()}`);
    const nodes = await page.$$eval('[data-step]', (els) =>
      els.map((e) => `${e.getAttribute('data-step')}=${e.getAttribute('data-state')}`));
    out.push(`dag nodes: ${nodes.length ? nodes.join(', ') : '(none)'}`);
    const text = await page.evaluate(() => document.body.innerText);
    out.push('page text:');
    out.push(text.split('\n').filter((l) => l.trim()).slice(0, 80).map((l) => `  | ${l}`).join('\n'));
  } catch (e) {
    out.push(`(could not read the page: ${e.message})`);
  }
  if (consoleLines.length) out.push('browser console:\n' + consoleLines.slice(-40).map((l) => `  ${l}`).join('\n'));
  if (pageErrors.length) out.push('page errors:\n' + pageErrors.map((l) => `  ${l}`).join('\n'));
  if (failedResponses.length) out.push('failed responses:\n' + failedResponses.slice(-20).map((l) => `  ${l}`).join('\n'));
  if (foreignRequests.length) out.push('blocked requests to other origins:\n' + foreignRequests.map((l) => `  ${l}`).join('\n'));
  return out.join('\n');
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const context = await browser.newContext({viewport: {width: 1280, height: 900}});
  // Violations of the page's Content-Security-Policy (inline styles, foreign scripts).
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.violatedDirective}: ${e.blockedURI || 'inline'} (${e.sourceFile || ''}:${e.lineNumber || ''})`);
    });
  });
  page = await context.newPage();
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
  page.on('response', (r) => {
    if (r.status() >= 400) failedResponses.push(`${r.status()} ${r.request().method()} ${r.url()}`);
  });
  // The page must be self-contained: anything not on the service's origin is refused.
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + '/') || url === origin || url.startsWith('data:')) return route.continue();
    foreignRequests.push(url);
    return route.abort();
  });

  note(`opening ${base}`);
  await page.goto(base, {waitUntil: 'domcontentloaded', timeout: 20_000});

  // 1. The pipeline list shows turbine-assessment.
  const card = page.locator(`[data-pipeline="${PIPELINE}"]`);
  await card.waitFor({state: 'visible', timeout: 20_000});
  const title = (await card.locator('h3').innerText()).trim();
  check(title === PIPELINE, `pipeline card title is "${title}", expected "${PIPELINE}"`);
  note(`pipeline list shows ${PIPELINE}`);

  // 2. Fill its form and run it.
  const year = page.locator(`[data-testid="param-${PIPELINE}-year"]`);
  await year.waitFor({state: 'visible', timeout: 5_000});
  const placeholder = await year.getAttribute('placeholder');
  note(`year input placeholder: ${placeholder}`);
  await year.fill(YEAR);
  await page.locator(`[data-testid="run-${PIPELINE}"]`).click();
  await page.waitForURL(/\/runs\/[^/?#]+$/, {timeout: 20_000});
  const runId = decodeURIComponent(new URL(page.url()).pathname.split('/').pop());
  note(`run page: ${page.url()} (run ${runId})`);

  // 3. The DAG appears with the pipeline's steps and every node turns green.
  await page.waitForSelector('[data-step]', {timeout: 20_000});
  const ids = await page.$$eval('[data-step]', (els) => els.map((e) => e.getAttribute('data-step')));
  check(
    JSON.stringify([...ids].sort()) === JSON.stringify([...EXPECTED_STEPS].sort()),
    `DAG nodes are [${ids.join(', ')}], expected [${EXPECTED_STEPS.join(', ')}]`,
  );
  const seen = new Set();
  const started = Date.now();
  for (;;) {
    const states = await page.$$eval('[data-step]', (els) =>
      els.map((e) => `${e.getAttribute('data-step')}=${e.getAttribute('data-state')}`));
    const line = states.join(', ');
    if (!seen.has(line)) {
      seen.add(line);
      note(`+${((Date.now() - started) / 1000).toFixed(1)}s steps: ${line}`);
    }
    if (states.length && states.every((x) => x.endsWith('=succeeded'))) break;
    const bad = states.filter((x) => /=(failed|timed_out|canceled|skipped|not_run)$/.test(x));
    check(bad.length === 0, `steps ended without success: ${bad.join(', ')}`);
    check(Date.now() - started < STEPS_TIMEOUT_MS, `steps not all succeeded after ${STEPS_TIMEOUT_MS / 1000} s: ${line}`);
    await page.waitForTimeout(250);
  }

  const fills = await page.$$eval('[data-step]', (els) => els.map((g) => {
    const rect = g.querySelector('rect');
    return {id: g.getAttribute('data-step'), fill: rect ? getComputedStyle(rect).fill : '(no rect)'};
  }));
  for (const f of fills) {
    check(f.fill === GREEN, `node ${f.id} is filled ${f.fill}, expected green ${GREEN}`);
  }
  note(`all nodes green: ${fills.map((f) => `${f.id} ${f.fill}`).join(', ')}`);

  const edges = await page.$$eval('svg.dag path.edge', (els) => els.map((e) => `${e.dataset.from}->${e.dataset.to}`));
  check(edges.includes('aggregate->rank'), `expected an edge aggregate->rank, DAG has [${edges.join(', ')}]`);

  // 4. The run itself ends succeeded and the Cancel button goes away.
  await page.waitForFunction(
    () => document.querySelector('[data-testid="run-state"] [data-state]')?.getAttribute('data-state') === 'succeeded',
    null,
    {timeout: 20_000},
  ).catch(async () => {
    const s = await page.locator('[data-testid="run-state"]').innerText().catch(() => '(none)');
    throw new Error(`run state is "${s.trim()}", expected succeeded`);
  });
  check(await page.locator('[data-testid="cancel"]').count() === 0, 'Cancel button still shown on a finished run');
  note('run state: succeeded');

  // 5. The step table shows the remote run id and the ResultDatasetName output.
  const rids = (await page.locator('[data-testid="rids-aggregate"]').innerText()).trim();
  check(rids && rids !== '–', `no remote run id shown for step aggregate (cell: "${rids}")`);
  note(`aggregate remote run id: ${rids.split('\n').join(', ')}`);

  const io = page.locator('[data-testid="io-aggregate"]');
  await io.locator('summary').click();
  const outputs = page.locator('[data-testid="outputs-aggregate"]');
  await outputs.waitFor({state: 'visible', timeout: 5_000});
  const rows = await outputs.locator('tr').evaluateAll((trs) =>
    trs.map((tr) => [tr.querySelector('th')?.innerText.trim(), tr.querySelector('td')?.innerText.trim()]));
  const hit = rows.find(([k]) => k === EXPECTED_OUTPUT[0]);
  check(hit, `step aggregate shows no ${EXPECTED_OUTPUT[0]} output; outputs: ${JSON.stringify(rows)}`);
  check(hit[1] === EXPECTED_OUTPUT[1], `${EXPECTED_OUTPUT[0]} is "${hit[1]}", expected "${EXPECTED_OUTPUT[1]}"`);
  note(`aggregate output ${hit[0]} = ${hit[1]}`);

  check(pageErrors.length === 0, `the page threw: ${pageErrors.join(' | ')}`);
  const csp = await page.evaluate(() => window.__cspViolations || []);
  check(csp.length === 0, `Content-Security-Policy violations: ${csp.join(' | ')}`);
  check(foreignRequests.length === 0, `the page requested other origins: ${foreignRequests.join(', ')}`);

  if (process.env.SCREENSHOT) {
    await page.mouse.move(0, 0);
    await page.screenshot({path: process.env.SCREENSHOT, fullPage: true});
    note(`screenshot: ${process.env.SCREENSHOT}`);
  }
}

let code = 0;
try {
  await main();
  console.log('ui: OK');
} catch (e) {
  code = 1;
  console.error(`ui: FAILED: ${e && e.message ? e.message : e}`);
  console.error(await describePage());
  if (process.env.SCREENSHOT && page) {
    const path = process.env.SCREENSHOT.replace(/(\.png)?$/i, '-failure.png');
    await page.screenshot({path, fullPage: true}).then(() => console.error(`ui: failure screenshot: ${path}`), () => {});
  }
} finally {
  if (browser) await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
process.exit(code);
