"""Smoke test and throughput probe for an OpenAI-compatible vLLM server (standard library only).

    python scripts/vllm/smoke.py http://127.0.0.1:8011 [--model gemma-3-270m] [--json out.json]

1. GET /v1/models must list the model.
2. POST /tokenize: the prompt must start with exactly one <bos> (id 2 for Gemma), both for a
   plain completion prompt and for a rendered chat; without it Gemma writes garbage.
3. A few /v1/chat/completions requests (text only, greedy; one with OpenAI content parts) and
   one few-shot /v1/completions request; the answers are printed and must be non-empty.
4. Throughput: the same N prompts with the same max_tokens (ignore_eos, so each request
   generates exactly max_tokens), first one at a time, then all N in flight at once.
   Prints completion tokens/s for both and their ratio.

Exit code 0 when every check passed, 1 otherwise. Works with any Python >= 3.9.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "In one sentence, what does a microscope do?",
]
FEW_SHOT = (
    "Q: What is the capital of Germany?\nA: Berlin\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
    "Q: What is the capital of France?\nA:"
)
BENCH_PROMPTS = [
    "Describe a walk through a quiet forest in autumn.",
    "Explain how bread is made, step by step.",
    "Write a short story about a lighthouse keeper.",
    "Describe the tissue seen under a microscope in a stained section.",
    "Explain why the sky looks blue during the day.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe the city of Paris to someone who has never been there.",
    "Explain how a bicycle works.",
]
STOP = ["\nUser:"]  # the plain-text chat template's next turn (see prepare_model.py)


def http(url: str, payload: dict | None = None, timeout: float = 300.0) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(
            f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}"
        ) from None


def chat(base: str, model: str, text: str, max_tokens: int, **extra) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        **extra,
    }
    return http(f"{base}/v1/chat/completions", body)


def bench(base: str, model: str, prompts: list[str], max_tokens: int, concurrent: bool) -> dict:
    results: list[dict | Exception] = [None] * len(prompts)  # type: ignore[list-item]

    def one(i: int) -> None:
        try:
            t = time.perf_counter()
            r = chat(base, model, prompts[i], max_tokens, ignore_eos=True)
            results[i] = {
                "tokens": r["usage"]["completion_tokens"],
                "latency_s": time.perf_counter() - t,
            }
        except Exception as e:  # reported below
            results[i] = e

    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    else:
        for i in range(len(prompts)):
            one(i)
    wall = time.perf_counter() - t0
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise RuntimeError(f"{len(errors)} benchmark request(s) failed: {errors[0]}")
    tokens = sum(r["tokens"] for r in results)
    return {
        "requests": len(prompts),
        "in_flight": len(prompts) if concurrent else 1,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "mean_latency_s": round(sum(r["latency_s"] for r in results) / len(results), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "url", help="server base URL, e.g. http://127.0.0.1:8011 (a trailing /v1 is accepted)"
    )
    ap.add_argument("--model", default="gemma-3-270m", help="served model name")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per benchmark request")
    ap.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight in the parallel run"
    )
    ap.add_argument(
        "--bos-id", type=int, default=2, help="expected BOS token id (Gemma: 2); -1 skips"
    )
    ap.add_argument("--no-bench", action="store_true", help="skip the throughput measurement")
    ap.add_argument("--json", help="write the measured numbers to this file")
    args = ap.parse_args(argv)

    base = args.url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    failures: list[str] = []
    report: dict = {"url": base, "model": args.model}

    models = [m["id"] for m in http(f"{base}/v1/models")["data"]]
    print(f"models: {models}")
    if args.model not in models:
        print(f"FAIL: {args.model!r} not served")
        return 1

    if args.bos_id >= 0:
        plain = http(f"{base}/tokenize", {"model": args.model, "prompt": "Hello world"})["tokens"]
        chat_toks = http(
            f"{base}/tokenize",
            {
                "model": args.model,
                "messages": [{"role": "user", "content": "Hello"}],
                "add_generation_prompt": True,
            },
        )["tokens"]
        for name, toks in (("completion prompt", plain), ("chat prompt", chat_toks)):
            ok = toks[:1] == [args.bos_id] and toks[1:2] != [args.bos_id]
            verdict = "ok" if ok else "FAIL (want exactly one BOS first)"
            print(f"tokenize {name}: {toks[:6]}... {verdict}")
            if not ok:
                failures.append(f"BOS on {name}")

    t = time.perf_counter()
    first = None
    for text in CHAT_PROMPTS:
        r = chat(base, args.model, text, 48, stop=STOP)
        first = first or time.perf_counter() - t
        answer = r["choices"][0]["message"]["content"] or ""
        print(
            f"\nchat> {text}\n  <  {answer.strip()!r}  [{r['usage']['completion_tokens']} tokens]"
        )
        if not answer.strip():
            failures.append(f"empty chat answer to {text!r}")
    report["first_chat_answer_s"] = round(first, 2)

    # OpenAI-style content parts (what a VLM client sends, minus the image): vLLM joins the
    # text parts for a template that takes plain string content.
    parts = [{"type": "text", "text": "What is the capital of"}, {"type": "text", "text": "Italy?"}]
    r = http(
        f"{base}/v1/chat/completions",
        {
            "model": args.model,
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": 24,
            "temperature": 0.0,
            "stop": ["\n"],
        },
    )
    answer = r["choices"][0]["message"]["content"] or ""
    print(f"\nchat (content parts)> What is the capital of Italy?\n  <  {answer.strip()!r}")
    if not answer.strip():
        failures.append("empty answer to a content-parts message")

    r = http(
        f"{base}/v1/completions",
        {
            "model": args.model,
            "prompt": FEW_SHOT,
            "max_tokens": 8,
            "temperature": 0.0,
            "stop": ["\n"],
        },
    )
    answer = r["choices"][0]["text"]
    print(f"\ncompletion> ...What is the capital of France?\nA:\n  <  {answer.strip()!r}")
    report["few_shot_answer"] = answer.strip()
    if not answer.strip():
        failures.append("empty completion")

    if not args.no_bench:
        prompts = [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(args.concurrency)]
        chat(base, args.model, prompts[0], 8, ignore_eos=True)  # warm-up, not counted
        seq = bench(base, args.model, prompts, args.max_tokens, concurrent=False)
        par = bench(base, args.model, prompts, args.max_tokens, concurrent=True)
        ratio = par["tokens_per_s"] / seq["tokens_per_s"]
        print(
            f"\n1 in flight : {seq['completion_tokens']} tokens in {seq['wall_s']} s = "
            f"{seq['tokens_per_s']} tokens/s (mean latency {seq['mean_latency_s']} s)"
        )
        print(
            f"{args.concurrency} in flight : {par['completion_tokens']} tokens in "
            f"{par['wall_s']} s = {par['tokens_per_s']} tokens/s "
            f"(mean latency {par['mean_latency_s']} s)"
        )
        print(f"ratio {args.concurrency}/1: {ratio:.2f}x")
        report.update(sequential=seq, concurrent=par, ratio=round(ratio, 2))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if failures:
        print("\nFAILED: " + "; ".join(failures))
        return 1
    print("\nsmoke OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
