"""The `nanolearn` console command, run as a user runs it: a subprocess on the embedded default model."""
import subprocess, sys
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
    tokenizer, model = smol
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)[0, len(ids):]
    return tokenizer.decode(out, skip_special_tokens=True)


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
])
def test_bad_input_is_a_clear_error(args, message):
    r = run(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
