// The same data-channel and chat flow over https:// and wss://, with development certificates
// from `intercessor gen-certs`, trusted by pinning the leaf's public key (not by turning off checks).

import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe } from 'node:test';
import { browserTest, chromiumMissing, launchBrowser } from './lib/browser.js';
import { assertIceStaysOnMachine, connectPair, relayErrors, sendChat, waitForChat, withPeople } from './lib/pages.js';
import { generateCertificates, startRelay } from './lib/relay.js';

/** base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in a PEM file: the leaf. */
function spkiPin(pemFile) {
  const leaf = new X509Certificate(readFileSync(pemFile));
  const spki = leaf.publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(spki).digest('base64');
}

describe('demo page over wss://', () => {
  let certs;
  let relay;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    certs = generateCertificates();
    relay = await startRelay({ tls: certs });
    // Chromium accepts a certificate it cannot chain to a trusted root only when its public key
    // is on this list: exactly the relay's freshly made leaf key, and nothing else. Every other
    // check (names, dates, the TLS handshake itself) stays on, and any other certificate is
    // still refused. Installing dev-ca.pem in an NSS database would also work, but would touch
    // state outside the test; the headless browser's profile is temporary anyway.
    browser = await launchBrowser([`--ignore-certificate-errors-spki-list=${spkiPin(certs.cert)}`]);
  });

  after(async () => {
    await browser?.close();
    await relay?.stop();
    certs?.remove();
  });

  browserTest('without the pin the browser refuses the certificate', async () => {
    const plain = await launchBrowser();
    try {
      const page = await plain.newPage();
      await assert.rejects(page.goto(relay.origin), /ERR_CERT_AUTHORITY_INVALID/);
    } finally {
      await plain.close();
    }
  });

  browserTest('data channel opens and chat crosses both ways over wss', () =>
    withPeople('wss chat', browser, relay.origin, async (open) => {
      const { host, guest } = await connectPair(open);
      for (const page of [host, guest]) {
        const urls = await page.evaluate(() => window.__socketUrls);
        assert.ok(urls.length > 0 && urls.every((url) => url.startsWith('wss://')), `sockets: ${urls}`);
      }
      assert.match(await host.locator('[data-testid="share-link"]').inputValue(), /^https:\/\/127\.0\.0\.1:\d+\/\?code=/);
      await sendChat(guest, 'over TLS, from the guest');
      await waitForChat(host, 'over TLS, from the guest');
      await sendChat(host, 'over TLS, from the host', { withEnter: true });
      await waitForChat(guest, 'over TLS, from the host');
      await assertIceStaysOnMachine(guest);
      assert.deepEqual(await relayErrors(host), []);
      assert.deepEqual(await relayErrors(guest), []);
    }));
});
