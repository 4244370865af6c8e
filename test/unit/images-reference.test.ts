import t from 'tap';
import { isVmletError } from '../../src/errors.js';
import {
  canonicalName,
  canonicalTagged,
  formatReference,
  isDigest,
  nameKey,
  parseImageName,
  parseReference,
  referenceProblem,
  type NamedReference,
} from '../../src/api/image-reference.js';

const HEX = 'a'.repeat(64);
const DIGEST = `sha256:${HEX}`;

const named = (ref: string): NamedReference => {
  const r = parseReference(ref);
  if (r.kind !== 'named') throw new Error(`${ref} parsed as a digest`);
  return r;
};

t.test('good references parse into name, tag and digest; no tag and no digest means latest', async (t) => {
  const cases: [string, { name: string; canonicalName: string; tag: string | undefined; digest: string | undefined }][] = [
    ['debian', { name: 'debian', canonicalName: 'docker.io/library/debian', tag: 'latest', digest: undefined }],
    ['debian:12', { name: 'debian', canonicalName: 'docker.io/library/debian', tag: '12', digest: undefined }],
    ['library/debian:12', { name: 'library/debian', canonicalName: 'docker.io/library/debian', tag: '12', digest: undefined }],
    ['docker.io/library/debian:12', { name: 'docker.io/library/debian', canonicalName: 'docker.io/library/debian', tag: '12', digest: undefined }],
    ['docker.io/debian', { name: 'docker.io/debian', canonicalName: 'docker.io/library/debian', tag: 'latest', digest: undefined }],
    ['index.docker.io/foo/bar', { name: 'index.docker.io/foo/bar', canonicalName: 'docker.io/foo/bar', tag: 'latest', digest: undefined }],
    ['foo/bar', { name: 'foo/bar', canonicalName: 'docker.io/foo/bar', tag: 'latest', digest: undefined }],
    [
      'quay.io/containerdisks/debian:12',
      { name: 'quay.io/containerdisks/debian', canonicalName: 'quay.io/containerdisks/debian', tag: '12', digest: undefined },
    ],
    ['localhost:5000/x', { name: 'localhost:5000/x', canonicalName: 'localhost:5000/x', tag: 'latest', digest: undefined }],
    ['localhost:5000/x:v1.2_rc-3', { name: 'localhost:5000/x', canonicalName: 'localhost:5000/x', tag: 'v1.2_rc-3', digest: undefined }],
    ['localhost/x', { name: 'localhost/x', canonicalName: 'localhost/x', tag: 'latest', digest: undefined }],
    ['localhost:5000', { name: 'localhost', canonicalName: 'docker.io/library/localhost', tag: '5000', digest: undefined }],
    ['Registry.Example.COM/a/b/c', { name: 'Registry.Example.COM/a/b/c', canonicalName: 'Registry.Example.COM/a/b/c', tag: 'latest', digest: undefined }],
    ['10.0.0.1:5000/disks/fedora:39', { name: '10.0.0.1:5000/disks/fedora', canonicalName: '10.0.0.1:5000/disks/fedora', tag: '39', digest: undefined }],
    ['[::1]:5000/x', { name: '[::1]:5000/x', canonicalName: '[::1]:5000/x', tag: 'latest', digest: undefined }],
    ['ab_c__d-e--f/x.y', { name: 'ab_c__d-e--f/x.y', canonicalName: 'docker.io/ab_c__d-e--f/x.y', tag: 'latest', digest: undefined }],
    ['a.b-c.example/x', { name: 'a.b-c.example/x', canonicalName: 'a.b-c.example/x', tag: 'latest', digest: undefined }],
    ['my_disk__x-1--2', { name: 'my_disk__x-1--2', canonicalName: 'docker.io/library/my_disk__x-1--2', tag: 'latest', digest: undefined }],
    [`debian@${DIGEST}`, { name: 'debian', canonicalName: 'docker.io/library/debian', tag: undefined, digest: DIGEST }],
    [`debian:12@${DIGEST}`, { name: 'debian', canonicalName: 'docker.io/library/debian', tag: '12', digest: DIGEST }],
    [`quay.io/x/y:1@${DIGEST}`, { name: 'quay.io/x/y', canonicalName: 'quay.io/x/y', tag: '1', digest: DIGEST }],
    ['debian:UPPER_tag', { name: 'debian', canonicalName: 'docker.io/library/debian', tag: 'UPPER_tag', digest: undefined }],
    [`x:${'t'.repeat(128)}`, { name: 'x', canonicalName: 'docker.io/library/x', tag: 't'.repeat(128), digest: undefined }],
    ['abcdef123456', { name: 'abcdef123456', canonicalName: 'docker.io/library/abcdef123456', tag: 'latest', digest: undefined }],
  ];
  for (const [ref, want] of cases) {
    t.same(parseReference(ref), { kind: 'named', ...want }, ref);
    t.equal(referenceProblem(ref), undefined, `${ref} has no problem`);
  }
});

t.test('a bare digest is a digest reference', async (t) => {
  t.same(parseReference(DIGEST), { kind: 'digest', digest: DIGEST });
  t.ok(isDigest(DIGEST));
  t.notOk(isDigest(`sha256:${'A'.repeat(64)}`));
  t.notOk(isDigest(`sha256:${'a'.repeat(63)}`));
  t.notOk(isDigest(HEX));
});

t.test('bad references are IMAGE_NAME_INVALID with a reason', async (t) => {
  const bad: [string, RegExp][] = [
    ['', /empty/],
    ['Debian', /lowercase/],
    ['quay.io/Containerdisks/debian', /lowercase/],
    ['debian:', /not a tag/],
    ['debian:-x', /not a tag/],
    ['debian:.x', /not a tag/],
    [`debian:${'t'.repeat(129)}`, /not a tag/],
    ['debian:a/b', /registry host/],
    ['a.b_c/x', /registry host/],
    ['debian@sha256:abc', /not a digest/],
    [`debian@sha512:${'a'.repeat(128)}`, /not a digest/],
    [`debian@sha256:${'A'.repeat(64)}`, /not a digest/],
    ['debian@', /not a digest/],
    ['sha256:abc', /64 lowercase hex/],
    [`sha256:${'a'.repeat(65)}`, /64 lowercase hex/],
    ['/debian', /empty path component/],
    ['debian/', /empty path component/],
    ['a//b', /empty path component/],
    ['-debian', /not a name component/],
    ['debian-', /not a name component/],
    ['deb..ian', /not a name component/],
    ['deb___ian', /not a name component/],
    ['a b', /not a name component|not a tag/],
    ['debian:12:13', /not a name component|not a tag|host/],
    ['-bad.example.com/x', /registry host/],
    ['bad_host.example.com/x', /registry host/],
    ['example.com:port/x', /registry host/],
    [HEX, /64 hex digits/],
    [`${'a'.repeat(256)}`, /longer than 255/],
    [`${'a/'.repeat(600)}a`, /longer than 1024/],
    ['ünïcode', /not a name component/],
    ['x@y@z', /not a digest/],
  ];
  for (const [ref, why] of bad) {
    t.match(referenceProblem(ref), why, `problem of ${JSON.stringify(ref).slice(0, 40)}`);
    t.throws(() => parseReference(ref), { code: 'IMAGE_NAME_INVALID' });
  }
  try {
    parseReference('Debian:12');
  } catch (e) {
    t.ok(isVmletError(e, 'IMAGE_NAME_INVALID'));
    t.match((e as Error).message, /"Debian:12" is not an image reference: the name must be lowercase; expected name\[:tag\]/);
  }
});

t.test('names canonicalise so that the user form and the docker.io form match', async (t) => {
  t.equal(canonicalName('debian'), 'docker.io/library/debian');
  t.equal(canonicalName('docker.io/library/debian'), 'docker.io/library/debian');
  t.equal(canonicalName('index.docker.io/library/debian'), 'docker.io/library/debian');
  t.equal(canonicalName('someone/debian'), 'docker.io/someone/debian');
  t.equal(canonicalName('quay.io/debian'), 'quay.io/debian');
  t.equal(canonicalName('localhost/debian'), 'localhost/debian');
  t.equal(canonicalTagged(named('debian:12')), canonicalTagged(named('docker.io/library/debian:12')));
  t.equal(nameKey('debian'), 'docker.io/library/debian:latest');
  t.equal(nameKey('debian:latest'), nameKey('docker.io/library/debian'));
  t.not(nameKey('debian:12'), nameKey('debian:11'));
  t.not(nameKey('quay.io/debian:12'), nameKey('debian:12'));
  t.equal(nameKey(`debian@${DIGEST}`), undefined, 'a digest reference is no name');
  t.equal(nameKey(DIGEST), undefined);
  t.equal(nameKey('Bad'), undefined);
});

t.test('formatReference keeps the user form and adds the default tag', async (t) => {
  t.equal(formatReference(parseReference('debian')), 'debian:latest');
  t.equal(formatReference(parseReference('docker.io/library/debian:12')), 'docker.io/library/debian:12');
  t.equal(formatReference(parseReference(`debian@${DIGEST}`)), `debian@${DIGEST}`);
  t.equal(formatReference(parseReference(`debian:12@${DIGEST}`)), `debian:12@${DIGEST}`);
  t.equal(formatReference(parseReference(DIGEST)), DIGEST);
});

t.test('parseImageName: a name to give an image has no digest', async (t) => {
  t.same(parseImageName('debian'), { name: 'debian:latest', key: 'docker.io/library/debian:latest' });
  t.same(parseImageName('localhost:5000/disks/x:1'), { name: 'localhost:5000/disks/x:1', key: 'localhost:5000/disks/x:1' });
  t.throws(() => parseImageName(`debian@${DIGEST}`), { code: 'IMAGE_NAME_INVALID', message: /cannot hold a digest/ });
  t.throws(() => parseImageName(DIGEST), { code: 'IMAGE_NAME_INVALID' });
  t.throws(() => parseImageName('UPPER'), { code: 'IMAGE_NAME_INVALID' });
});
