// WebhookServer: POST /validate answers AdmissionReviews, bad bodies get 400/413 with a message, /healthz answers, refusals are logged, and a swapped cert is served to new connections.
import { request } from 'node:https';
import { Writable } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { pino } from 'pino';
import t from 'tap';
import { makeCa, makeServingCert, webhookSans } from '../../src/controller/webhook-cert.js';
import { WebhookServer } from '../../src/controller/webhook-server.js';

const now = new Date();
const ca = makeCa(now);
const tls = makeServingCert(ca, webhookSans({ ips: ['127.0.0.1'] }), now);

interface Answer {
  status: number;
  body: string;
  fingerprint: string;
}

function call(port: number, method: string, path: string, body?: string | Buffer, caPem = ca.cert): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, ca: caPem, agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks).toString('utf8'),
          fingerprint: res.socket instanceof TLSSocket ? res.socket.getPeerCertificate().fingerprint256 : '',
        }),
      );
    });
    req.on('error', reject);
    req.end(body);
  });
}

function review(memory: string): string {
  return JSON.stringify({
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: 'u-1',
      kind: { group: 'vmlet.io', version: 'v1alpha1', kind: 'VirtualMachineInstance' },
      operation: 'CREATE',
      namespace: 'h3-srv',
      name: 'v',
      object: {
        apiVersion: 'vmlet.io/v1alpha1',
        kind: 'VirtualMachineInstance',
        metadata: { name: 'v', namespace: 'h3-srv' },
        spec: {
          domain: { memory: { guest: memory }, devices: { disks: [{ name: 'root', disk: {} }] } },
          volumes: [{ name: 'root', emptyDisk: { capacity: '1Gi' } }],
        },
      },
    },
  });
}

t.test('webhook server', async (t) => {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(JSON.parse(chunk.toString('utf8')) as Record<string, unknown>);
      cb();
    },
  });
  const server = new WebhookServer({ port: 0, host: '127.0.0.1', logger: pino({ level: 'info' }, sink), bodyLimit: 64 * 1024 });
  t.equal(server.address, undefined, 'the constructor does not listen');
  const { port } = await server.start(tls);
  t.teardown(() => server.stop());

  const ok = await call(port, 'POST', '/validate', review('128Mi'));
  t.equal(ok.status, 200);
  t.same(JSON.parse(ok.body), { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: { uid: 'u-1', allowed: true } });

  const no = await call(port, 'POST', '/validate', review('64Ti'));
  t.equal(no.status, 200, 'a refusal is still a 200 with allowed: false');
  t.match(JSON.parse(no.body), {
    response: { uid: 'u-1', allowed: false, status: { code: 422, reason: 'OUT_OF_RANGE', message: /^OUT_OF_RANGE: spec\.domain\.memory\.guest: / } },
  });
  const logged = lines.find((l) => l['msg'] === 'admission refused');
  t.match(
    logged,
    { component: 'webhook', code: 'OUT_OF_RANGE', kind: 'VirtualMachineInstance', namespace: 'h3-srv', name: 'v', operation: 'CREATE', uid: 'u-1' },
    'one log line per refusal',
  );
  t.equal(lines.filter((l) => l['msg'] === 'admission refused').length, 1, 'allowed requests are not logged as refusals');

  const malformed = await call(port, 'POST', '/validate', '{"apiVersion": ');
  t.equal(malformed.status, 400);
  t.match(JSON.parse(malformed.body), { code: 400, reason: 'BAD_REQUEST', message: /^BAD_REQUEST: the body is not JSON: / });

  const big = await call(port, 'POST', '/validate', Buffer.alloc(65 * 1024, 0x20));
  t.equal(big.status, 413, 'over the body limit');
  t.match(JSON.parse(big.body), { reason: 'BODY_TOO_LARGE' });

  const notReview = await call(port, 'POST', '/validate', '[1,2]');
  t.equal(notReview.status, 200);
  t.match(JSON.parse(notReview.body), { response: { allowed: false, status: { reason: 'WEBHOOK_BAD_REVIEW' } } });

  t.same(await call(port, 'GET', '/healthz').then((a) => [a.status, a.body]), [200, 'ok']);
  t.equal((await call(port, 'GET', '/validate')).status, 405);
  t.equal((await call(port, 'POST', '/healthz')).status, 405);
  t.equal((await call(port, 'GET', '/nope')).status, 404);

  // swap: a cert of another CA; new connections get it
  const ca2 = makeCa(now);
  const tls2 = makeServingCert(ca2, webhookSans({ ips: ['127.0.0.1'] }), now);
  const before = (await call(port, 'GET', '/healthz')).fingerprint;
  server.setCert(tls2);
  await t.rejects(call(port, 'GET', '/healthz'), 'the old CA no longer verifies it');
  const after = await call(port, 'GET', '/healthz', undefined, ca2.cert);
  t.equal(after.status, 200, 'the new CA does');
  t.not(after.fingerprint, before, 'another certificate');
  t.throws(() => server.setCert({ cert: 'x', key: 'y' }), { code: 'WEBHOOK_SERVER_FAILED' }, 'a broken cert is refused and the old one kept');
  t.equal((await call(port, 'GET', '/healthz', undefined, ca2.cert)).status, 200);

  const second = new WebhookServer({ port, host: '127.0.0.1', logger: pino({ level: 'silent' }) });
  await t.rejects(second.start(tls), { code: 'WEBHOOK_SERVER_FAILED' }, 'a taken port');
  await t.rejects(server.start(tls), { code: 'WEBHOOK_SERVER_FAILED' }, 'started twice');
});
