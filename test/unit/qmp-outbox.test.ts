// The QMP outbox tells a failed sendmsg apart by its fields (errno, details), never by its message.
import t from 'tap';
import { VmletError } from '../../src/errors.js';
import { classifySendError } from '../../src/qmp/outbox.js';

t.test('EAGAIN (nothing sent) is retried', async (t) => {
  t.equal(classifySendError(new VmletError('SYS_SENDMSG', 'sendmsg with 1 fd(s) failed: EAGAIN', { errno: 'EAGAIN' })), 'retry');
  t.equal(classifySendError(Object.assign(new Error('busy'), { code: 'EAGAIN' })), 'retry', 'a Node-style errno error');
  t.equal(classifySendError(new Error('EAGAIN')), 'failed', 'the word in a message means nothing');
});

t.test('a short write corrupts the stream', async (t) => {
  t.equal(classifySendError(new VmletError('SYS_SENDMSG', 'sendmsg wrote 3 of 10 bytes', { details: { written: 3, length: 10 } })), 'short');
  t.equal(classifySendError(new Error('sendmsg wrote 3 of 10 bytes')), 'failed', 'not from the message');
});

t.test('anything else fails the one command', async (t) => {
  t.equal(classifySendError(new VmletError('SYS_SENDMSG', 'sendmsg with 1 fd(s) failed: EBADF', { errno: 'EBADF' })), 'failed');
  t.equal(classifySendError('boom'), 'failed');
  t.equal(classifySendError(undefined), 'failed');
});
