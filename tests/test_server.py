"""`nanolearn serve` as a user runs it: a real server process on a free local port, the official `openai` client."""
import asyncio, json, os, re, signal, socket, subprocess, sys, time
import httpx
import openai
import pytest
from openai import OpenAI

MODEL, KEY = "smollm2", "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    p = subprocess.Popen(["nanolearn", "serve", "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY,
                          "--served-model-name", MODEL, "--max-model-len", "1024", "--max-num-seqs", "64",
                          "--uvicorn-log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert p.poll() is None, p.stderr.read()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200: break
        except httpx.HTTPError: time.sleep(0.3)
    else: pytest.fail("the server did not start")
    yield url
    p.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn finishes, the engine thread stops
    try: _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()
        pytest.fail("the server did not stop on Ctrl-C")
    assert p.returncode in (0, 130) and "Traceback" not in err, err[-2000:]  # a clean stop, whichever way uvicorn reports it


@pytest.fixture(scope="module")
def client(server): return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def metric(url, name) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(rf'^{re.escape(name)}\{{model_name="{MODEL}"\}} (\S+)$', text, re.M).group(1))


def wait_idle(url, within=20.0):
    "The engine runs nothing and the KV cache is empty again (freed blocks count as free)."
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if metric(url, "vllm:num_requests_running") == 0 and metric(url, "vllm:kv_cache_usage_perc") == 0: return
        time.sleep(0.1)
    raise AssertionError(f"not idle: running {metric(url, 'vllm:num_requests_running')}, kv {metric(url, 'vllm:kv_cache_usage_perc')}")


def test_models_health_version(server, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(f"{server}/health").status_code == 200
    assert httpx.get(f"{server}/version").json()["version"]


def test_completion_streaming_equals_whole(client):
    kw = dict(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=16)
    whole = client.completions.create(**kw)
    pieces = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in pieces if c.choices)
    assert text == whole.choices[0].text and text
    assert pieces[-1].usage.completion_tokens == whole.usage.completion_tokens == 16
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 16
    assert whole.choices[0].finish_reason == "length"


def test_chat_streaming_equals_whole(client):
    kw = dict(model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
              temperature=0, max_completion_tokens=20)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert whole.usage.completion_tokens > 0


def test_n_with_seed_is_reproducible(client):
    kw = dict(model=MODEL, prompt="Once upon a time", n=2, seed=7, temperature=1.0, max_tokens=12)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.choices[0].text != a.choices[1].text  # two samples, not one twice
    assert a.usage.completion_tokens == 24


def test_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="One, two,", temperature=0, max_tokens=4, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    for tok, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and logprob == pytest.approx(max(top.values()), abs=1e-5)  # greedy: the chosen is the likeliest
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=0, max_completion_tokens=3,
                                       logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 for t in content)
    assert "".join(t.token for t in content) == c.choices[0].message.content


def test_stop_strings(client):
    r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=30, stop=[" 7"])
    assert r.choices[0].finish_reason == "stop" and " 7" not in r.choices[0].text and "6" in r.choices[0].text


def test_echo_and_prompt_forms(client):
    r = client.completions.create(model=MODEL, prompt=["Hello", "Goodbye"], temperature=0, max_tokens=3, echo=True)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text.startswith("Hello") and r.choices[1].text.startswith("Goodbye")


@pytest.mark.parametrize("body,param,message", [
    ({"prompt": "Hi", "max_tokens": "5"}, "max_tokens", "valid integer"),
    ({"max_tokens": 5}, "prompt", "Field required"),
    ({"prompt": "Hi", "temperature": -1}, "temperature", "temperature must be"),
    ({"prompt": "Hi", "top_p": 1.5}, "top_p", "top_p must be"),
    ({"prompt": "Hi", "n": 0}, "n", "n must be"),
    ({"prompt": "Hi " * 2000}, None, "max_model_len is 1024"),
    ({"prompt": [10**9]}, None, "prompt token ids must be integers"),
])
def test_bad_requests_are_400_in_openai_envelope(server, body, param, message):
    r = httpx.post(f"{server}/v1/completions", json={"model": MODEL, **body}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and message in error["message"] and error["param"] == param


def test_malformed_json_unknown_model_and_keys(server):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(f"{server}/v1/chat/completions", content=b'{"model": "smollm2", "messages": [', headers=auth)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}, headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(f"{server}/v1/completions", json={"model": MODEL, "prompt": "Hi"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_an_error_does_not_disturb_requests_in_flight(server, client):
    kw = dict(model=MODEL, prompt="Count: 1, 2, 3,", temperature=0, max_tokens=40)
    want = client.completions.create(**kw).choices[0].text
    stream = client.completions.create(**kw, stream=True)
    first = next(stream)
    bad = httpx.post(f"{server}/v1/completions", json={"model": MODEL, "prompt": "Hi", "temperature": -3},
                     headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400
    assert first.choices[0].text + "".join(c.choices[0].text for c in stream if c.choices) == want


def test_metrics_names(server, client):
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    text = httpx.get(f"{server}/metrics").text
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_count"]:
        assert f"\n{name}" in text, name


def test_disconnect_aborts_and_frees_blocks(server):
    wait_idle(server)
    body = {"model": MODEL, "prompt": "Write a long story about a dragon.", "max_tokens": 900, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:
        lines = r.iter_lines()  # kept referenced: a dropped line iterator would close the response early
        for line in lines:
            if line.startswith("data: "): break
        assert metric(server, "vllm:num_requests_running") == 1 and metric(server, "vllm:kv_cache_usage_perc") > 0, httpx.get(f"{server}/metrics").text[:3000]
    # the connection is closed: the request must stop long before its 900 tokens
    wait_idle(server, within=10)
    tokens = metric(server, "vllm:generation_tokens_total")
    time.sleep(1)
    assert metric(server, "vllm:generation_tokens_total") == tokens  # nothing generates for nobody


def test_non_streaming_disconnect_aborts(server):
    wait_idle(server)
    body = {"model": MODEL, "prompt": "Tell me everything.", "max_tokens": 900, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=1.5)
    wait_idle(server, within=10)


def test_64_concurrent_streams(server, client):
    prompts = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(64)]
    batch = client.completions.create(model=MODEL, prompt=prompts, temperature=0, max_tokens=12)  # one request, 64 prompts
    want = [c.text for c in sorted(batch.choices, key=lambda c: c.index)]

    async def one(http, prompt):
        text, finish, done = "", None, False
        async with http.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 12, "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line == "data: [DONE]": done = True
                elif line.startswith("data: "):
                    choice = json.loads(line[6:])["choices"][0]
                    text, finish = text + choice["text"], choice["finish_reason"] or finish
        assert done and finish in ("stop", "length")
        return text

    async def all_at_once():
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                                     limits=httpx.Limits(max_connections=100)) as http:
            return await asyncio.gather(*(one(http, p) for p in prompts))

    texts = asyncio.run(all_at_once())
    assert texts == want  # 64 clients at once: each streams the greedy text the batched request gave
    wait_idle(server)


def test_a_thousand_requests_leave_nothing_behind(server):
    "Many short requests, some abandoned mid-stream: afterwards nothing runs and the KV cache is empty."
    async def one(http, i):
        body = {"model": MODEL, "prompt": f"Item {i}:", "max_tokens": 1 if i % 10 else 50, "stream": i % 2 == 0}
        if i % 10 == 0:  # every tenth streams and hangs up after its first event
            async with http.stream("POST", "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "): return
        r = await http.post("/v1/completions", json=body)
        assert r.status_code == 200

    async def run():
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                                     limits=httpx.Limits(max_connections=64)) as http:
            for start in range(0, 1000, 100): await asyncio.gather(*(one(http, i) for i in range(start, start + 100)))

    asyncio.run(run())
    wait_idle(server)


def test_running_counts_requests_not_samples(server):
    wait_idle(server)
    body = {"model": MODEL, "prompt": "Two stories:", "n": 2, "max_tokens": 300, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "): break
        assert metric(server, "vllm:num_requests_running") == 1  # one request of two samples
    wait_idle(server)
