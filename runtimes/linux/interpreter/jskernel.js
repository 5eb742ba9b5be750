// The JavaScript kernel: one node process per context, driven by the server over pipes.
//
// Same protocol as the Python kernel: JSON-line requests {code, env} on stdin, JSON-line
// messages (ready, count, stream, result, error, done) on the fd given as argv[2].
// Code runs in one persistent `vm` context. Top-level declarations become context globals
// (so a cell may declare `const x` again, as in a notebook), top-level `await` works, and
// the value of a final expression statement is the main result (text/plain, util.inspect).
// The rewrite is node's own REPL transform (internal/repl/await, needs --expose-internals);
// without it, cells run as plain scripts. SIGINT interrupts a running cell.
'use strict';

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');
const readline = require('readline');
const util = require('util');
const vm = require('vm');
const { Console } = require('console');
const { Writable } = require('stream');

const PROTO_FD = Number(process.argv[2]);

let processTopLevelAwait = null;
try {
  ({ processTopLevelAwait } = require('internal/repl/await'));
} catch {
  processTopLevelAwait = null;
}

function send(msg) {
  const data = Buffer.from(JSON.stringify(msg) + '\n');
  let off = 0;
  while (off < data.length) {
    try {
      off += fs.writeSync(PROTO_FD, data, off);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
    }
  }
}

// Output is batched like the Python kernel's: a line is sent at once when nothing was sent
// for INTERVAL ms, otherwise with what follows (by size, time, or a timer) — a loop that
// logs 200k lines sends a few hundred messages. stdout and stderr keep their order.
const INTERVAL = 20;
const pending = [];
let pendingSize = 0;
let lastSend = 0;
let timer = null;

function flushOutput() {
  if (timer !== null) {
    clearTimeout(timer);
    timer = null;
  }
  for (const [name, text] of pending) send({ t: 'stream', name, text });
  if (pending.length > 0) lastSend = performance.now();
  pending.length = 0;
  pendingSize = 0;
}

function sendStream(name, chunk, encoding) {
  const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString(typeof encoding === 'string' ? encoding : 'utf8');
  if (text.length === 0) return;
  const last = pending[pending.length - 1];
  if (last !== undefined && last[0] === name) last[1] += text;
  else pending.push([name, text]);
  pendingSize += text.length;
  if ((text.includes('\n') && performance.now() - lastSend >= INTERVAL) || pendingSize > 65536) flushOutput();
  else if (timer === null) timer = setTimeout(flushOutput, INTERVAL);
}

// Any other message first sends the output written before it.
function emit(msg) {
  flushOutput();
  send(msg);
}

function streamTo(name) {
  return new Writable({
    decodeStrings: false,
    write(chunk, encoding, callback) {
      sendStream(name, chunk, encoding);
      callback();
    },
  });
}

// process.stdout/stderr writes (and console) become messages, so they keep their order;
// child processes inheriting fds 1 and 2 still reach the server through those pipes.
for (const name of ['stdout', 'stderr']) {
  process[name].write = (chunk, encoding, callback) => {
    sendStream(name, chunk, encoding);
    const cb = typeof encoding === 'function' ? encoding : callback;
    if (typeof cb === 'function') process.nextTick(cb);
    return true;
  };
}

const userConsole = new Console({ stdout: streamTo('stdout'), stderr: streamTo('stderr'), colorMode: false });

// `require` resolves from the context's working directory (its node_modules), not from here.
const cellModule = { exports: {} };
const sandbox = {
  console: userConsole,
  process,
  require: createRequire(path.join(process.cwd(), '[cell]')),
  module: cellModule,
  exports: cellModule.exports,
  __filename: path.join(process.cwd(), '[cell]'),
  __dirname: process.cwd(),
};
for (const name of [
  'Buffer', 'URL', 'URLSearchParams', 'TextEncoder', 'TextDecoder', 'AbortController', 'AbortSignal',
  'setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'setImmediate', 'clearImmediate',
  'queueMicrotask', 'structuredClone', 'fetch', 'Headers', 'Request', 'Response', 'FormData', 'Blob',
  'performance', 'crypto', 'atob', 'btoa', 'EventTarget', 'Event', 'BroadcastChannel', 'MessageChannel',
]) {
  if (name in globalThis) sandbox[name] = globalThis[name];
}
sandbox.globalThis = sandbox;
const context = vm.createContext(sandbox, { name: 'cell' });

// The cell's transformed source: {source, mode} where mode is 'async' (a promise of
// {value}), 'wrapped' ({value} directly) or 'plain' (the script's completion value).
function transform(code) {
  if (processTopLevelAwait === null) return { source: code, mode: 'plain' };
  let real;
  try {
    real = processTopLevelAwait(code);
  } catch {
    return { source: code, mode: 'plain' }; // let vm report the syntax error
  }
  if (real !== null) return { source: hoistAsVar(real), mode: 'async' };
  // No top-level await: borrow the same rewrite for its hoisting, then run it synchronously
  // (so that an endless loop stays interruptible by SIGINT).
  const marker = '(async () => { await 0;';
  let wrapped;
  try {
    wrapped = processTopLevelAwait('await 0;' + code);
  } catch {
    return { source: code, mode: 'plain' };
  }
  if (wrapped === null || !wrapped.includes(marker)) return { source: code, mode: 'plain' };
  return { source: hoistAsVar(wrapped.replace(marker, '(() => {')), mode: 'wrapped' };
}

// `let`/`const` hoisted outside the wrapper would forbid declaring the name again in a
// later cell; `var` on the context global does not.
function hoistAsVar(source) {
  const at = source.indexOf('(async () => {') >= 0 ? source.indexOf('(async () => {') : source.indexOf('(() => {');
  if (at <= 0) return source;
  return source.slice(0, at).replace(/\blet\b/g, 'var') + source.slice(at);
}

// Stack frames of the kernel and of node's vm machinery are not the user's.
const KERNEL_FRAME = /^\s+at .*(jskernel\.js|node:vm|node:internal|node:events|node:domain|sigintHandlersWrap)/;

function errorMessage(err) {
  if (err !== null && typeof err === 'object' && 'stack' in err) {
    const interrupted = err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
    const name = interrupted ? 'Interrupted' : String(err.name || 'Error');
    const stack = String(err.stack || `${name}: ${err.message}`);
    return {
      name,
      value: String(err.message ?? ''),
      traceback: stack.split('\n').filter((line) => !KERNEL_FRAME.test(line)).join('\n'),
    };
  }
  const text = util.inspect(err);
  return { name: 'Error', value: text, traceback: `Uncaught ${text}` };
}

let interrupt = null;
process.on('SIGINT', () => {
  if (interrupt !== null) interrupt();
});
process.on('uncaughtException', (err) => sendStream('stderr', `Uncaught ${errorMessage(err).traceback}\n`));
process.on('unhandledRejection', (err) => sendStream('stderr', `Unhandled rejection: ${errorMessage(err).traceback}\n`));

// import() in a cell uses node's own loader where this node has it (v20.10+).
const dynamicImport = vm.constants?.USE_MAIN_CONTEXT_DEFAULT_LOADER
  ? { importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER }
  : {};

// Node's default warning printer goes to fd 2 and would announce that loader as
// experimental in every cell that imports; other warnings still reach the cell's stderr.
process.removeAllListeners('warning');
process.on('warning', (warning) => {
  if (warning.name !== 'ExperimentalWarning') sendStream('stderr', `${warning.name}: ${warning.message}\n`);
});

let count = 0;

async function run(code, env) {
  count += 1;
  emit({ t: 'count', n: count });
  const saved = {};
  for (const [key, value] of Object.entries(env)) {
    saved[key] = process.env[key];
    process.env[key] = value;
  }
  try {
    if (code.trim() === '') return;
    const { source, mode } = transform(code);
    const script = new vm.Script(source, { filename: `<cell-${count}>`, ...dynamicImport });
    let value = script.runInContext(context, { breakOnSigint: true, displayErrors: false });
    if (mode === 'async') {
      const interrupted = new Promise((_, reject) => {
        interrupt = () => {
          const err = new Error('Script execution was interrupted by `SIGINT`');
          err.name = 'Interrupted';
          reject(err);
        };
      });
      value = (await Promise.race([value, interrupted]))?.value; // no {value} when the last statement is not an expression
    } else if (mode === 'wrapped') {
      value = value?.value;
    }
    if (value !== undefined) {
      emit({ t: 'result', main: true, data: { 'text/plain': util.inspect(value, { colors: false }) } });
    }
  } catch (err) {
    emit({ t: 'error', ...errorMessage(err) });
  } finally {
    interrupt = null;
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
    emit({ t: 'done' });
  }
}

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
let queue = Promise.resolve();
input.on('line', (line) => {
  const request = JSON.parse(line);
  queue = queue.then(() => run(String(request.code), request.env || {}));
});
input.on('close', () => process.exit(0));
send({ t: 'ready', pid: process.pid });
