"""The `nanolearn` console command, run as a user runs it: a subprocess on the embedded default model."""
import os, pty, signal, subprocess, sys
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from nanolearn.hub import resolve_model


def run(*args, stdin=None):
    return subprocess.run(["nanolearn", *args], input=stdin, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smol():
    path = resolve_model()
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(smol, prompt, max_new_tokens):
    "transformers' greedy reply to one user message."
    return hf_chat_greedy(smol, [{"role": "user", "content": prompt}], max_new_tokens)


def test_generates_what_transformers_generates(smol):
    prompt = "What is the capital of France?"
    r = run(prompt, "--max-tokens", "16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == hf_greedy(smol, prompt, 16).strip()


def test_prompt_from_stdin(smol):
    r = run("--max-tokens", "8", stdin="Name a fruit.")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == hf_greedy(smol, "Name a fruit.", 8).strip()


@pytest.mark.parametrize("args,message", [
    (["   "], "prompt is empty"),
    (["hi", "--max-tokens", "0"], "max_tokens must be an integer >= 1"),
    (["hi", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["hi", "--model", "/no/such/model/dir"], "/no/such/model/dir"),
    (["hi", "--model", "/no/such/file.whl"], "model file /no/such/file.whl: does not exist"),
    (["download", "a", "b"], "unrecognized arguments: b"),
    (["bench", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_input_is_a_clear_error(args, message):
    r = run(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def hf_chat_greedy(smol, messages, max_new_tokens):
    "transformers' greedy reply to a whole conversation (a list of {'role', 'content'})."
    tokenizer, _ = smol
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return hf_generate(smol, list(ids), max_new_tokens)


def hf_generate(smol, ids, max_new_tokens):
    tokenizer, model = smol
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)[0, len(ids):]
    return tokenizer.decode(out, skip_special_tokens=True)


def test_stdout_holds_the_answer_alone(smol):
    # `nanolearn "..." > answer.txt`: the file holds the completion and its newline, nothing else
    prompt = "What is the capital of France?"
    r = run(prompt, "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout == hf_greedy(smol, prompt, 12) + "\n"


NOISY = """
import os, sys
import nanolearn.llm, nanolearn.cli
init = nanolearn.llm.LLM.__init__
def noisy_init(self, *args, **kwargs):  # what fetching the model does: prints, and a child process (pip) writing to fd 1
    print("python noise")
    os.system("echo child process noise")
    init(self, *args, **kwargs)
nanolearn.llm.LLM.__init__ = noisy_init
sys.exit(nanolearn.cli.main(sys.argv[1:]))
"""

def test_what_loading_prints_goes_to_stderr(smol):
    r = subprocess.run([sys.executable, "-c", NOISY, "complete", "The capital of France is", "--max-tokens", "8"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "python noise" in r.stderr and "child process noise" in r.stderr
    tokenizer, _ = smol
    assert r.stdout == hf_generate(smol, tokenizer("The capital of France is")["input_ids"], 8) + "\n"


def test_system_prompt(smol):
    system, prompt = "You are a pirate.", "Say hello."
    r = run(prompt, "--system-prompt", system, "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout == hf_chat_greedy(smol, [{"role": "system", "content": system}, {"role": "user", "content": prompt}], 12) + "\n"


def test_complete_is_raw_text(smol):
    tokenizer, _ = smol
    text = "def fibonacci(n):"
    r = run("complete", "--max-tokens", "12", stdin=text)  # no prompt: standard input
    assert r.returncode == 0, r.stderr
    assert r.stdout == hf_generate(smol, tokenizer(text)["input_ids"], 12) + "\n"


def test_chat_sends_the_history(smol):
    # two turns piped in: the second prompt holds the first exchange, as in transformers' run of the same conversation
    system = [{"role": "system", "content": "Answer in one short sentence."}]
    turns = ["What is the capital of France?", "And of Italy?"]
    r = run("chat", "--max-tokens", "12", "--system-prompt", system[0]["content"], stdin="\n".join(turns) + "\n")
    assert r.returncode == 0, r.stderr
    first = hf_chat_greedy(smol, system + [{"role": "user", "content": turns[0]}], 12)
    second = hf_chat_greedy(smol, system + [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": first},
                                            {"role": "user", "content": turns[1]}], 12)
    assert second != hf_chat_greedy(smol, system + [{"role": "user", "content": turns[1]}], 12)  # the history changes the reply
    assert r.stdout == f"{first}\n{second}\n"
    assert "> " not in r.stderr  # no prompt marker when standard input is not a terminal


def test_chat_ends_at_exit_or_an_empty_line():
    for stdin in ["/exit\nHello\n", "\nHello\n"]:
        r = run("chat", "--max-tokens", "4", stdin=stdin)
        assert (r.returncode, r.stdout) == (0, ""), r.stderr


def test_chat_on_a_terminal_asks_on_stderr():
    master, terminal = pty.openpty()
    proc = subprocess.Popen(["nanolearn", "chat", "--max-tokens", "4"], stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(terminal)
    try:
        os.write(master, b"Hello\n/exit\n")
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(master)
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 0, err
    assert err.count("> ") == 2 and "/exit" in err  # a marker per turn, and how to leave
    assert out.count("\n") == 1 and "> " not in out  # one reply, and only the reply


def test_n_completions():
    r = run("complete", "Once upon a time", "-n", "2", "--temperature", "1", "--seed", "3", "--max-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("--- completion 1 of 2 ---\n") and "\n--- completion 2 of 2 ---\n" in r.stdout
    assert len(r.stdout.splitlines()) >= 4  # each header, then its completion


def test_version():
    from nanolearn import __version__
    r = run("--version")
    assert (r.returncode, r.stdout) == (0, f"nanolearn {__version__}\n")


@pytest.mark.parametrize("args,message", [
    (["hi", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["hi", "-n", "2"], "greedy copies are identical"),
    (["hi", "--dtype", "float8"], "unsupported dtype 'float8'"),
    (["hi", "--device", "tpu"], "unknown device 'tpu'"),
    (["complete", "  "], "prompt is empty"),
    (["chat", "--temperature", "nan"], "temperature must be a finite number"),
    (["hi", "--max-tokens", "x"], "argument --max-tokens: invalid int value: 'x'"),
])
def test_bad_flags_are_a_clear_error(args, message):
    # one per path: argparse, SamplingParams, EngineArgs, the device check, the prompt (the chapter checks every flag in-process)
    r = run(*args, stdin="")
    assert r.returncode in (1, 2)
    assert message in r.stderr and r.stderr.startswith(("nanolearn: ", "usage: nanolearn"))
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["hi"], ["chat"]])
def test_cuda_without_cuda_is_a_clear_error(command):
    r = run(*command, "--device", "cuda", stdin="")
    assert r.returncode == 1
    assert r.stderr.startswith("nanolearn: device 'cuda': CUDA is not available on this machine")
    assert "Traceback" not in r.stderr


def test_ctrl_c_stops_cleanly():
    proc = subprocess.Popen(["nanolearn", "complete", "Once upon a time", "--max-tokens", "2000", "--temperature", "1", "--seed", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = os.read(proc.stdout.fileno(), 64)  # blocks until the stream has begun
        assert first, proc.stderr.read().decode()
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    out = (first + rest).decode()
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode() and "nanolearn: interrupted" in err.decode()
    assert out.endswith("\n") and len(out) < 2000 * 20
