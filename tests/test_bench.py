"""`nanolearn bench` as a user runs it: the installed command, as a subprocess, on a tiny random model and workload."""
import json, subprocess
import pytest
import torch
from nanolearn.bench import qwen3_0_6b_config, random_model_dir, reference_workload


def bench(*args):
    return subprocess.run(["nanolearn", "bench", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    config = qwen3_0_6b_config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, vocab_size=10_240, max_position_embeddings=256, eos_token_id=2)
    return random_model_dir(config, torch.float32, root=tmp_path_factory.mktemp("models"))


def test_bench_writes_the_record_and_prints_the_table(tiny_model, tmp_path):
    r = bench("--model", str(tiny_model), "--num-seqs", "5", "--min-len", "4", "--max-len", "12", "--seed", "3",
              "--out", str(tmp_path / "out"), "--device", "cpu", "--hf", "--hf-num-seqs", "3", "--hf-batch-size", "2")
    assert r.returncode == 0, r.stderr
    workload = reference_workload(5, 4, 12, seed=3)
    [record_path] = (tmp_path / "out").glob("*.json")
    record = json.loads(record_path.read_text())
    assert f"nanolearn: wrote {record_path} and {record_path.with_suffix('.png')}" in r.stdout
    assert record_path.with_suffix(".png").is_file()
    for run in ("cold", "warm"):
        assert record["runs"][run]["output_tokens"] == workload.output_tokens
        assert 0 < record["runs"][run]["fraction_of_roofline"]
    assert record["hf"]["output_tokens"] == sum(workload.output_lens[:3])
    assert record["workload"] == dict(num_seqs=5, min_len=4, max_len=12, seed=3, input_tokens=workload.input_tokens,
                                      output_tokens=workload.output_tokens)
    assert record["engine"]["device"] == "cpu" and record["model"]["path"] == str(tiny_model)
    lines = r.stdout.splitlines()
    assert any(line.startswith("nanolearn cold") for line in lines) and any(line.startswith("HF generate (3 seqs, batch 2)") for line in lines)


@pytest.mark.parametrize("args,message", [
    (["--num-seqs", "0"], "num_seqs must be >= 1"),
    (["--min-len", "50", "--max-len", "10"], "min_len=50, max_len=10"),
    (["--model", "/no/such/model/dir"], "/no/such/model/dir"),
])
def test_bad_arguments_are_a_clear_error(args, message):
    r = bench(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
