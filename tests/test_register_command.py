"""``lorainbox register``: a GGUF into the local Ollama by hand, and every way it can go wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.daemon_proc import lorainbox
from tests.fake_ollama import FakeOllama

pytest_plugins = ["tests.fixtures_models"]


def register(*args: str | Path, host: str = "127.0.0.1:9") -> subprocess.CompletedProcess[str]:
    return lorainbox("register", *args, timeout=300, columns=250, OLLAMA_HOST=host)


def test_register_uploads_the_gguf_and_ollama_answers_with_it(
    tiny_gguf: Path, fake_ollama: FakeOllama
) -> None:
    done = register(tiny_gguf, "--name", "handmade", "--quantize", "none", host=fake_ollama.url)
    assert done.returncode == 0, done.stderr
    assert "try `ollama run handmade`" in done.stdout
    tags = httpx.get(f"{fake_ollama.url}/api/tags").json()["models"]
    assert {"handmade:latest"} <= {m["name"] for m in tags}
    shown = httpx.post(f"{fake_ollama.url}/api/show", json={"model": "handmade"}).json()
    assert shown["details"]["format"] == "gguf"


def test_register_says_what_is_wrong_and_how_to_fix_it(tmp_path: Path, tiny_gguf: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello\n")
    binary = tmp_path / "broken.gguf"
    binary.write_bytes(bytes(range(256)))
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(tiny_gguf.read_bytes()[:64])
    not_gguf = ["is not a GGUF file", "GGUF magic", "model.gguf from a results folder"]
    cases = {
        "bad name": ((tiny_gguf, "--name", "Pirate Bot!"), ["--name", "letters, digits"]),
        "no file": ((tmp_path / "none.gguf", "--name", "x"), ["none.gguf does not exist"]),
        "a folder": ((tmp_path, "--name", "x"), ["is not a file"]),
        "text": ((text, "--name", "x"), not_gguf),
        "not a gguf": ((binary, "--name", "x"), not_gguf),
        "damaged": ((damaged, "--name", "x"), ["not a readable GGUF", "export the model again"]),
        "bad quantize": (
            (tiny_gguf, "--name", "x", "--quantize", "q5_weird"),
            ["--quantize", "q5_weird", "Q4_K_M", "Q8_0"],
        ),
        "no ollama": ((tiny_gguf, "--name", "x"), ["not reachable", "ollama serve"]),
    }
    for case, (args, words) in cases.items():
        done = register(*args)
        assert done.returncode == 1, (case, done.stdout, done.stderr)
        message = " ".join(done.stderr.split())
        assert "Traceback" not in done.stderr, case
        assert "recipe.toml" not in message and "dtype" not in message, (case, message)
        for word in words:
            assert word in message, (case, word, message)
        assert message.count("127.0.0.1:9") <= 1, (case, message)  # said once


def _job_folder(tmp_path: Path, tiny_gguf: Path, **recipe: object) -> Path:
    """A results folder as the daemon leaves it: the GGUF beside the recipe it trained with."""
    import shutil

    from lorainbox.core.layout import RESOLVED_RECIPE, WORK_DIR
    from lorainbox.drop.recipe import Recipe

    folder = tmp_path / "Done" / "pirate"
    (folder / WORK_DIR).mkdir(parents=True)
    shutil.copy(tiny_gguf, folder / "model.gguf")
    resolved = Recipe(name="pirate", base_model="lorainbox:tiny-llama", **recipe)
    (folder / WORK_DIR / RESOLVED_RECIPE).write_text(resolved.model_dump_json())
    return folder


def test_register_in_a_results_folder_uses_the_recipes_ollama_settings(
    tmp_path: Path, tiny_gguf: Path, fake_ollama: FakeOllama
) -> None:
    folder = _job_folder(
        tmp_path,
        tiny_gguf,
        export={"quantize": "q8_0"},
        ollama={"system": "Arr.", "parameters": {"temperature": 0.3, "num_ctx": 512}},
    )
    done = register(folder / "model.gguf", "--name", "pirate", host=fake_ollama.url)
    assert done.returncode == 0, done.stderr
    shown = httpx.post(f"{fake_ollama.url}/api/show", json={"model": "pirate"}).json()
    assert shown["system"] == "Arr."
    assert "temperature                    0.3" in shown["parameters"]
    assert "num_ctx                        512" in shown["parameters"]
    assert shown["details"]["quantization_level"] == "Q8_0"

    done = register(
        folder / "model.gguf", "--name", "pirate", "--system", "Ahoy.", host=fake_ollama.url
    )
    assert done.returncode == 0, done.stderr
    shown = httpx.post(f"{fake_ollama.url}/api/show", json={"model": "pirate"}).json()
    assert shown["system"] == "Ahoy."  # the option wins over the recipe


def test_register_refuses_a_recipe_setting_ollama_would_refuse(
    tmp_path: Path, tiny_gguf: Path, fake_ollama: FakeOllama
) -> None:
    folder = _job_folder(tmp_path, tiny_gguf, ollama={"parameters": {"stop": "###"}})
    done = register(folder / "model.gguf", "--name", "pirate", host=fake_ollama.url)
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "recipe.resolved.json" in message and 'stop = ["###"]' in message, message
    assert fake_ollama.stats["blob_uploads"] == 0
