"""Tensor parallelism's lifecycle, run as a user runs it: scripts in their own processes, on CPU ranks (gloo).

Each test checks that no process is left behind: the workers' pids, printed by the script, are gone afterwards.
"""
import json, os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

PREAMBLE = """
import json, os, sys
from nanolearn import LLM, SamplingParams
MODEL = sys.argv[1]
PROMPTS = [{"prompt_token_ids": p} for p in json.loads(sys.argv[2])]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
def start(tp=2, **kw):
    llm = LLM(MODEL, tensor_parallel_size=tp, skip_tokenizer_init=True, device="cpu", max_num_seqs=8,
              max_num_batched_tokens=256, num_gpu_blocks_override=64, **kw)
    if llm.llm_engine.runner.tp is not None and llm.llm_engine.runner.tp.rank == 0:
        print("PIDS", json.dumps(llm.llm_engine.runner.tp.pids), flush=True)
    return llm
def tokens(llm, prompts=PROMPTS, params=GREEDY): return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tp") / "qwen3-tiny"
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=32, vocab_size=500, max_position_embeddings=256,
                                 architectures=["Qwen3ForCausalLM"])).save_pretrained(path)
    rng = random.Random(0)
    prompts = [[rng.randrange(500) for _ in range(n)] for n in (4, 30, 9)]
    return str(path), prompts


@pytest.fixture(scope="module")
def reference(model):
    "TP=1 greedy tokens, in this process."
    from nanolearn import LLM, SamplingParams
    path, prompts = model
    llm = LLM(path, skip_tokenizer_init=True, device="cpu", max_num_seqs=8, max_num_batched_tokens=256, num_gpu_blocks_override=64)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def script(tmp_path, body: str) -> Path:
    f = tmp_path / "script.py"
    f.write_text(PREAMBLE + textwrap.dedent(body))
    return f


def pids_of(stdout: str) -> list[int]:
    return [p for line in stdout.splitlines() if line.startswith("PIDS ") for p in json.loads(line[5:])]


def assert_gone(pids: list[int], within: float = 15.0):
    "Every pid has exited (and is not a zombie of ours) within `within` seconds."
    deadline = time.monotonic() + within
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
        time.sleep(0.1)
    assert not alive, f"processes left behind: {alive}"


def run(f, model, *args, timeout=300, **kw):
    path, prompts = model
    return subprocess.run([sys.executable, str(f), path, json.dumps(prompts), *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_equal_to_tp1_and_workers_exit_with_the_program(tmp_path, model, reference):
    r = run(script(tmp_path, """
        llm = start()
        print("TOKENS", json.dumps(tokens(llm)))
        """), model)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.split("TOKENS ")[1])
    assert got == reference
    assert_gone(pids_of(r.stdout))


def test_torchrun(tmp_path, model, reference):
    "The same script under torchrun: rank 1's LLM(...) is the worker and ends its process; rank 0 prints."
    f = script(tmp_path, """
        llm = start()
        print("TOKENS", json.dumps(tokens(llm)), flush=True)
        """)
    path, prompts = model
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(f), path, json.dumps(prompts)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("TOKENS ")]
    assert len(lines) == 1  # rank 0 only: rank 1 never ran the rest of the script
    assert json.loads(lines[0][7:]) == reference


def test_dead_worker_raises_instead_of_hanging(tmp_path, model):
    r = run(script(tmp_path, """
        import signal, time
        from nanolearn.distributed import WorkerDied
        llm = start()
        tokens(llm)
        os.kill(llm.llm_engine.runner.tp.pids[0], signal.SIGKILL)
        time.sleep(0.5)
        try: tokens(llm)
        except WorkerDied as e: print("RAISED", e, flush=True)
        try: tokens(llm)
        except RuntimeError as e: print("AFTER", e, flush=True)
        """), model, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "RAISED tensor-parallel worker rank 1 exited (code -9)" in r.stdout
    assert "AFTER this engine's tensor-parallel workers were stopped" in r.stdout
    assert_gone(pids_of(r.stdout))


def test_exception_on_rank0_leaves_no_process(tmp_path, model):
    r = run(script(tmp_path, """
        llm = start()
        tokens(llm)
        raise ValueError("the user's script fails")
        """), model)
    assert r.returncode == 1 and "the user's script fails" in r.stderr
    assert_gone(pids_of(r.stdout))


def test_ctrl_c_keeps_the_ranks_in_step(tmp_path, model, reference):
    "Ctrl-C during generation: caught, the engine still works (the ranks never parted); uncaught, nothing is left."
    f = script(tmp_path, """
        long = [{"prompt_token_ids": p["prompt_token_ids"] * 3} for p in PROMPTS] * 2
        llm = start()
        print("GENERATING", flush=True)
        try:
            while True: tokens(llm, long, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
        except KeyboardInterrupt: print("INTERRUPTED", flush=True)
        print("TOKENS", json.dumps(tokens(llm)), flush=True)
        print("GENERATING", flush=True)
        while True: tokens(llm, long, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
        """)
    path, prompts = model
    p = subprocess.Popen([sys.executable, str(f), path, json.dumps(prompts)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    out = []
    try:
        for interrupt in range(2):
            while not (line := p.stdout.readline()).startswith("GENERATING"):
                assert line, p.stderr.read()
                out.append(line)
            time.sleep(1.5)
            os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to every process of the group (workers ignore it)
        rest, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    out += rest.splitlines(keepends=True)
    text = "".join(out)
    assert "INTERRUPTED" in text, err
    assert json.loads(text.split("TOKENS ")[1].splitlines()[0]) == reference  # the engine works after the interrupt
    assert p.returncode != 0 and "KeyboardInterrupt" in err  # the second Ctrl-C, uncaught, ends the program
    assert_gone(pids_of(text))
