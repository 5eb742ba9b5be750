"""The conformance cases as source for the interpreters that run on the Wasmtime tier."""

from __future__ import annotations

JAVASCRIPT = {
    "hello": "console.log('hello from quickjs')",
    "echo": (
        "const buf = new ArrayBuffer(65536); let n;"
        " while ((n = std.in.read(buf, 0, 65536)) > 0) std.out.write(buf, 0, n);"
    ),
    "stderr_exit3": "std.out.puts('out\\n'); std.err.puts('err\\n'); std.exit(3);",
    "loop": "for (;;) {}",
    "grow": "const chunks = []; for (;;) chunks.push(new Uint8Array(1 << 20).fill(1));",
    "trap": "throw new Error('boom')",
    "big_output": "const s = 'x'.repeat(65536); for (let i = 0; i < 64; i++) std.out.puts(s);",
    "slow": "const t = Date.now(); while (Date.now() - t < 300) {} console.log('done')",
}

PYTHON = {
    "hello": "print('hello from micropython')\n",
    "echo": (
        "import sys\n"
        "while True:\n"
        "    b = sys.stdin.buffer.read(65536)\n"
        "    if not b:\n"
        "        break\n"
        "    sys.stdout.buffer.write(b)\n"
    ),
    "stderr_exit3": "import sys\nsys.stdout.write('out\\n')\nsys.stderr.write('err\\n')\nsys.exit(3)\n",
    "loop": "while True:\n    pass\n",
    "grow": "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n",
    "trap": "raise ValueError('boom')\n",
    "big_output": "import sys\ns = 'x' * 65536\nfor i in range(64):\n    sys.stdout.write(s)\n",
    "slow": "import time\ntime.sleep(0.3)\nprint('done')\n",
}
