"""CPU demo: an SGL_DFLASH server on the bundled tiny target/draft pair.

Starts the server, sends one request through the native API and one through
the OpenAI API, prints the outputs with their accept length, then keeps
serving until Ctrl-C (``--once`` to stop right away).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import requests

from sgl_dflash.launcher import Server
from sgl_dflash.tiny_models import make_pair

ASSETS = Path(__file__).parent / "assets"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "demo"


def bundled_pair() -> tuple[Path, Path, str]:
    """The shipped trained pair if present, else a random pair made locally."""
    target, draft = ASSETS / "tiny-target", ASSETS / "tiny-draft"
    if (target / "config.json").is_file() and (draft / "config.json").is_file():
        return target, draft, "import os\nimport sys\n\n\ndef main(argv):\n"
    target, draft = make_pair(CACHE, flavour="random")
    return target, draft, "def hello("


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--once", action="store_true", help="stop after the demo requests")
    ap.add_argument("--prompt")
    args = ap.parse_args()

    target, draft, prompt = bundled_pair()
    prompt = args.prompt or prompt
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"[demo] target {target}\n[demo] draft  {draft}\n[demo] starting SGL_DFLASH server on CPU ...")
    server = Server(target, CACHE / "server.log", draft=draft)
    try:
        server.wait_ready()
        out = server.generate(prompt, max_new_tokens=48, temperature=0)
        meta = out["meta_info"]
        print(f"\n[demo] POST /generate  prompt={prompt!r}\n{out['text']!r}")
        print(f"[demo] {meta['completion_tokens']} tokens in {meta.get('spec_verify_ct')} speculative steps, "
              f"accept length {meta.get('spec_accept_length', 1.0):.2f}")
        chat = requests.post(f"{server.url}/v1/chat/completions", timeout=120, json={
            "model": "default", "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        }).json()
        print(f"\n[demo] POST /v1/chat/completions\n{chat['choices'][0]['message']['content']!r}")
        if args.once:
            return
        print(f"\n[demo] serving at {server.url} (log: {server.log_path}); Ctrl-C to stop. Try:\n"
              f"  curl {server.url}/generate -H 'Content-Type: application/json' "
              f"-d '{{\"text\": \"def main(\", \"sampling_params\": {{\"max_new_tokens\": 32}}}}'")
        while server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
