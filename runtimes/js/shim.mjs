// SoulBox JS host shim: loads one function's module and serves it to the
// Python host over a unix socket. The same file runs under Bun and Deno.
// The protocol (frames, messages, modes) is documented in runtimes/js/wire.py.
//
//   bun|deno run shim.mjs <socket path> <module path> <fetch|script>
//
// Only runtime-native APIs here: importing node:* modules (or, in Deno, touching
// `process`) costs ~10-25 ms of start-up, more than the rest of the shim.

const isDeno = typeof Deno !== "undefined";
const [socketPath, modulePath, mode] = isDeno ? Deno.args : process.argv.slice(2);
const moduleUrl = new URL(`file://${modulePath}`).href;
const runtime = isDeno ? "deno" : "bun";
const version = isDeno ? Deno.version.deno : Bun.version;
const inspect = isDeno ? Deno.inspect : Bun.inspect;
const exit = (code) => (isDeno ? Deno.exit(code) : process.exit(code));
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const writeStderr = (text) => (isDeno ? writeAllSync(Deno.stderr, encoder.encode(text)) : console.error(text.trimEnd()));

let env = {};
let handler = null;
let current = null; // the invocation being served (fetch mode)

function writeAllSync(file, bytes) {
  for (let done = 0; done < bytes.length; ) done += file.writeSync(bytes.subarray(done));
}

function concat(parts, length = parts.reduce((n, p) => n + p.length, 0)) {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// ---- the control connection ----------------------------------------------

async function connect(path, onData, onClose) {
  if (isDeno) {
    const conn = await Deno.connect({ transport: "unix", path });
    let chain = Promise.resolve();
    (async () => {
      const buffer = new Uint8Array(64 * 1024);
      try {
        for (let n; (n = await conn.read(buffer)) !== null; ) onData(buffer.slice(0, n));
      } catch {}
      onClose();
    })();
    return {
      write: (bytes) => (chain = chain.then(async () => {
        for (let done = 0; done < bytes.length; ) done += await conn.write(bytes.subarray(done));
      }).catch(() => exit(1))), // the host is gone
      unref: () => conn.unref(),
    };
  }
  const queue = []; // what the socket did not take yet (Bun's write is partial under back-pressure)
  const waiters = [];
  const socket = await Bun.connect({
    unix: path,
    socket: {
      data: (_, data) => onData(data),
      close: onClose,
      error: onClose,
      drain(s) {
        while (queue.length) {
          const sent = s.write(queue[0]);
          if (sent < queue[0].length) return void (queue[0] = queue[0].subarray(sent));
          queue.shift();
        }
        for (const resolve of waiters.splice(0)) resolve();
      },
    },
  });
  return {
    write(bytes) {
      if (!queue.length) {
        const sent = socket.write(bytes);
        if (sent === bytes.length) return Promise.resolve();
        bytes = bytes.subarray(sent);
      }
      queue.push(bytes);
      return new Promise((resolve) => waiters.push(resolve));
    },
    unref: () => socket.unref(),
  };
}

// ---- frames ---------------------------------------------------------------

function frame(meta, payload = new Uint8Array(0)) {
  const json = encoder.encode(JSON.stringify(meta));
  const out = new Uint8Array(8 + json.length + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, 4 + json.length + payload.length);
  view.setUint32(4, json.length);
  out.set(json, 8);
  out.set(payload, 8 + json.length);
  return out;
}

let chunks = [];
let have = 0;
let need = 4; // bytes needed before the next step can be taken

function onData(chunk) {
  chunks.push(chunk);
  have += chunk.length;
  while (have >= need) {
    const data = concat(chunks, have);
    const view = new DataView(data.buffer, data.byteOffset, data.length);
    need = 4 + view.getUint32(0);
    if (data.length < need) {
      chunks = [data];
      return;
    }
    const metaLength = view.getUint32(4);
    const meta = JSON.parse(decoder.decode(data.subarray(8, 8 + metaLength)));
    const payload = data.subarray(8 + metaLength, need);
    const rest = data.subarray(need);
    chunks = rest.length ? [rest] : [];
    have = rest.length;
    need = 4;
    dispatch(meta, payload);
  }
}

const channel = await connect(socketPath, onData, () => exit(1)); // closed: the host went away
const send = (meta, payload) => channel.write(frame(meta, payload));

// ---- failures -------------------------------------------------------------

function describe(err) {
  if (err instanceof Error) return { message: `${err.name}: ${err.message}`, stack: err.stack ?? "" };
  return { message: `non-error thrown: ${inspect(err)}`, stack: "" };
}

function fatal(kind, err) {
  const report = { type: "error", id: current?.id ?? null, kind, ...describe(err) };
  if (mode === "script") writeStderr(`${report.stack || report.message}\n`); // as the runtime would
  send(report).then(() => exit(1));
  setTimeout(() => exit(1), 1000);
}

if (isDeno) {
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    fatal("uncaught", event.error);
  });
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    fatal("unhandled_rejection", event.reason);
  });
} else {
  process.on("uncaughtException", (err) => fatal("uncaught", err));
  process.on("unhandledRejection", (reason) => fatal("unhandled_rejection", reason));
}

// ---- messages -------------------------------------------------------------

async function dispatch(meta, payload) {
  switch (meta.type) {
    case "init":
      env = meta.env ?? {};
      if (mode === "fetch" && !(await load())) return;
      send({ type: "ready", mode, runtime, version });
      return;
    case "run":
      return runScript();
    case "invoke":
      return invoke(meta, payload);
  }
}

async function runScript() {
  try {
    await import(moduleUrl);
  } catch (err) {
    return fatal("uncaught", err);
  }
  channel.unref(); // the script's own work decides when the process ends
}

async function load() {
  try {
    handler = (await import(moduleUrl)).default;
  } catch (err) {
    fatal("load", err);
    return false;
  }
  if (typeof handler?.fetch !== "function") {
    fatal("load", new TypeError("the default export has no fetch(request, env, ctx) method"));
    return false;
  }
  captureConsole();
  return true;
}

// ---- fetch mode -----------------------------------------------------------

class Logs {
  constructor(limit) {
    this.limit = limit;
    this.parts = [];
    this.kept = 0;
    this.size = 0;
  }
  write(text) {
    const bytes = encoder.encode(text);
    if (this.kept < this.limit) {
      const part = bytes.subarray(0, this.limit - this.kept);
      this.parts.push(part);
      this.kept += part.length;
    }
    this.size += bytes.length;
  }
  text() {
    return decoder.decode(concat(this.parts));
  }
}

const formatArgs = (args) => args.map((arg) => (typeof arg === "string" ? arg : inspect(arg))).join(" ");

function captureConsole() {
  for (const name of ["log", "info", "debug", "warn", "error", "trace"]) {
    const original = console[name].bind(console);
    console[name] = (...args) => (current ? current.logs.write(`${formatArgs(args)}\n`) : original(...args));
  }
  // process.stdout/stderr are left alone: creating them costs Bun ~10 ms (and
  // Deno its Node layer). What is written past console reaches the host's
  // pipes, which it adds to the running invocation's logs as it arrives.
}

class BadResponse extends TypeError {}

async function invoke(meta, body) {
  const logs = new Logs(meta.max_logs);
  current = { id: meta.id, logs };
  const waits = [];
  const ctx = { waitUntil: (promise) => void waits.push(promise), passThroughOnException() {} };
  try {
    const init = { method: meta.method, headers: meta.headers };
    if (body.length && meta.method !== "GET" && meta.method !== "HEAD") init.body = body;
    const response = await handler.fetch(new Request(meta.url, init), env, ctx);
    if (!(response instanceof Response)) throw new BadResponse(`fetch returned ${inspect(response)}, not a Response`);
    const data = new Uint8Array(await response.arrayBuffer());
    await Promise.allSettled(waits);
    const done = { status: response.status, headers: [...response.headers], body_bytes: data.length };
    send({ type: "result", id: meta.id, ...done, logs: logs.text(), logs_bytes: logs.size }, data.subarray(0, meta.max_body));
  } catch (err) {
    const kind = err instanceof BadResponse ? "bad_response" : "exception";
    send({ type: "error", id: meta.id, kind, ...describe(err), logs: logs.text(), logs_bytes: logs.size });
  } finally {
    current = null;
  }
}
